"""Rubric and pairwise judges, position-swap consistency, the procedural judge, self-judging."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import pytest

from curation.core.provenance import TeacherInfo
from curation.synth.cache import CachedTeacher, GenerationCache
from curation.synth.judges import (
    PairwiseJudge,
    ProceduralJudge,
    RubricJudge,
    judge_is_teacher,
    parse_preference,
    parse_score,
    self_judging_warning,
)
from curation.synth.teachers import ChatRequest, Generation, ResultCallback


class ScriptedJudge:
    """A judge model whose reply is a function of the prompt it is shown."""

    def __init__(self, reply: Callable[[str], str], model: str = "judge-model") -> None:
        self.reply = reply
        self.info = TeacherInfo("test", model, "r1", "MIT")
        self.prompts: list[str] = []

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        out = []
        for i, r in enumerate(requests):
            prompt = r.messages[-1]["content"]
            self.prompts.append(prompt)
            gen = Generation(self.reply(prompt), "stop")
            out.append(gen)
            if on_result:
                on_result(i, gen)
        return out


def _slots(prompt: str) -> tuple[str, str]:
    first = re.search(r"\[Response A\]\n(.*?)\n\n\[Response B\]", prompt, re.S)
    second = re.search(r"\[Response B\]\n(.*?)\n\nExplain", prompt, re.S)
    assert first and second
    return first.group(1), second.group(1)


ITEMS = [
    ("What is 2 + 2?", "4", "The answer is 4, because 2 + 2 = 4."),
    ("Name a colour.", "Blue is a colour of the sky.", "red"),
    ("Say hi.", "hi", "hello there"),
]


def test_a_judge_that_always_prefers_the_first_answer_is_entirely_discarded() -> None:
    judge = ScriptedJudge(lambda prompt: "Response A is clearly better. [[A]]")
    verdicts = PairwiseJudge(judge).compare(ITEMS)
    assert len(judge.prompts) == 2 * len(ITEMS)  # every pair asked in both orders
    assert [v.winner for v in verdicts] == [None] * len(ITEMS)
    assert not any(v.consistent for v in verdicts)


def test_a_judge_that_always_prefers_the_second_answer_is_entirely_discarded() -> None:
    verdicts = PairwiseJudge(ScriptedJudge(lambda prompt: "[[B]]")).compare(ITEMS)
    assert [v.winner for v in verdicts] == [None] * len(ITEMS)


def test_consistent_verdicts_are_kept_whatever_the_order() -> None:
    # Prefers the longer answer, wherever it is placed: an order-independent judge.
    def longer(prompt: str) -> str:
        first, second = _slots(prompt)
        return "[[A]]" if len(first) > len(second) else "[[B]]"

    verdicts = PairwiseJudge(ScriptedJudge(longer)).compare(ITEMS)
    assert [v.winner for v in verdicts] == ["b", "a", "b"]
    assert all(v.consistent for v in verdicts)
    assert all("[[" in v.raw_ab and "[[" in v.raw_ba for v in verdicts)


def test_ties_and_unparseable_verdicts() -> None:
    assert PairwiseJudge(ScriptedJudge(lambda p: "Equally good. [[C]]")).compare(ITEMS[:1])[0].winner == "tie"
    nothing = PairwiseJudge(ScriptedJudge(lambda p: "I cannot decide.")).compare(ITEMS[:1])[0]
    assert nothing.winner is None and not nothing.consistent


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("The answer is fine.\nScore: 4", 4),
        ("Rating: 2/5", 2),
        ("**Score:** 5", 5),
        ("I'd give it [[3]].", 3),
        ("3 out of 5", 3),
        (" 1. ", 1),
        ("Step 1 looks right, step 2 too.\nScore: 5", 5),
        ("Score: 7", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_score(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("A is better [[A]]", "A"),
        ("[[A]] ... on reflection [[B]]", "B"),
        ("[[C]]", "C"),
        ("B", "B"),
        ("Response A.", "A"),
        ("Both have merit", None),
    ],
)
def test_parse_preference(reply: str, verdict: str | None) -> None:
    assert parse_preference(reply) == verdict


def test_rubric_judge_scores_with_the_rubric_in_the_prompt(tmp_path: object) -> None:
    judge = ScriptedJudge(lambda p: "Correct.\nScore: 5" if "[Response]\n4\n" in p else "Wrong.\nScore: 1")
    rubric = "5 if the arithmetic is right, 1 otherwise."
    verdicts = RubricJudge(judge, rubric).score([("What is 2 + 2?", "4"), ("What is 2 + 2?", "5")])
    assert [v.score for v in verdicts] == [5, 1]
    assert verdicts[1].raw.startswith("Wrong.")
    assert all(rubric in p and "Score: N" in p for p in judge.prompts)


def test_judge_generations_are_cached(tmp_path: object) -> None:
    judge = ScriptedJudge(lambda p: "[[A]]")
    with GenerationCache(":memory:") as cache:
        cached = CachedTeacher(judge, cache)
        PairwiseJudge(cached).compare(ITEMS)
        PairwiseJudge(cached).compare(ITEMS)
    assert len(judge.prompts) == 2 * len(ITEMS)


@pytest.mark.parametrize(
    ("prompt", "response", "score"),
    [
        ("What is 12 * 12?", "12 * 12 = 144", 5),
        ("What is 12 * 12?", "It is 124.", 1),
        ("Convert 2 km to m.", "That is 2,000 m.", 5),
        ("What is 1/3?", "About 0.333333", 5),
        ("Tell me a joke.", "", 1),
        ("Tell me a joke.", "tell me a joke", 1),
        ("Tell me a joke.", "I'm sorry, but I can't help with that.", 2),
        ("Tell me a story.", "the cat sat on the mat " * 10, 2),
        ("Tell me a joke.", "Why did the chicken cross the road? To get to the other side.", 3),
    ],
)
def test_procedural_judge_known_scores(prompt: str, response: str, score: int) -> None:
    assert ProceduralJudge().score([(prompt, response)])[0].score == score


def test_procedural_judge_pairwise_is_order_independent() -> None:
    judge = ProceduralJudge()
    forward = judge.compare([("What is 6 * 7?", "42", "41")])[0]
    backward = judge.compare([("What is 6 * 7?", "41", "42")])[0]
    assert (forward.winner, backward.winner) == ("a", "b")
    assert judge.compare([("Tell me a joke.", "knock knock", "why not")])[0].winner == "tie"


@pytest.mark.parametrize(
    ("judge_model", "teacher_model", "same"),
    [
        ("meta-llama/Llama-3.1-8B-Instruct", "Llama-3.1-8B-Instruct", True),
        ("llama-3.1-8b-instruct-awq", "meta-llama/Llama-3.1-8B-Instruct", True),
        ("Qwen/Qwen2.5-7B-Instruct-GGUF", "qwen2.5-7b-instruct-q4_k_m", True),
        ("Qwen/Qwen2.5-72B-Instruct", "meta-llama/Llama-3.1-8B-Instruct", False),
        ("distillery-procedural-judge", "distillery-procedural", False),
    ],
)
def test_judge_is_teacher(judge_model: str, teacher_model: str, same: bool) -> None:
    judge = TeacherInfo("openai-compatible", judge_model, "unversioned", "x")
    teacher = TeacherInfo("transformers", teacher_model, "sha256:abc", "x")
    assert judge_is_teacher(judge, teacher) is same
    warning = self_judging_warning(judge, teacher)
    assert (warning is not None) is same
    if warning:
        assert judge_model in warning and "different judge" in warning


def test_same_weights_under_another_name_are_the_teacher() -> None:
    judge = TeacherInfo("transformers", "my-judge", "sha256:abc", "x")
    teacher = TeacherInfo("transformers", "my-teacher", "sha256:abc", "x")
    assert judge_is_teacher(judge, teacher)


def test_same_weights_under_configured_revisions_are_the_teacher() -> None:
    # Both configs name a revision, so only the weights fingerprint shows the two directories hold the same model.
    judge = TeacherInfo("transformers", "my-judge", "judge-v1", "x", weights="sha256:abc")
    teacher = TeacherInfo("transformers", "my-teacher", "teacher-v3", "x", weights="sha256:abc")
    assert judge_is_teacher(judge, teacher)
    assert not judge_is_teacher(judge, TeacherInfo("transformers", "my-teacher", "teacher-v3", "x", weights="sha256:d"))
