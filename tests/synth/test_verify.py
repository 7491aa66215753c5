"""Verification of synthetic candidates: heuristics, judge, off-topic, outliers, conflicts, self-judging."""

from __future__ import annotations

import pytest

from curation.core.provenance import TeacherInfo
from curation.core.schema import new_row
from curation.synth.judges import ProceduralJudge, RubricVerdict
from curation.synth.teachers import ChatRequest, Generation
from curation.synth.verify import (
    Candidate,
    ModelJudge,
    VerifySettings,
    modified_z_scores,
    topic_overlap,
    verify_candidates,
)

TEACHER = TeacherInfo("openai-compatible", "acme/teacher-7b", "2024-01", "Apache-2.0")


def sft(row_id: str, prompt: str, response: str) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        source="synthetic",
        source_uri="t",
        license="CC0-1.0",
        origin="synthetic",
    )


class FixedJudge:
    """Scores each response from a lookup; unknown responses get no parseable score."""

    def __init__(self, scores: dict[str, int | None], model: str = "acme/judge-70b") -> None:
        self.scores = scores
        self.info = TeacherInfo("openai-compatible", model, "1", "Apache-2.0")
        self.calls = 0

    def score(self, items):
        self.calls += 1
        return [RubricVerdict(self.scores.get(r), f"Score: {self.scores.get(r)}") for _, r in items]


def test_each_heuristic_rejects_with_its_reason_and_every_verdict_is_kept() -> None:
    cases = {
        "empty": sft("a", "Name a prime number.", "   "),
        "echo": sft("b", "Describe the water cycle in detail", "Describe the water cycle in detail"),
        "refusal": sft("c", "Tell me a joke about cats.", "I'm sorry, but I can't help with that request."),
        "repetition": sft("d", "Write a story.", " ".join(["the cat sat on the mat and looked at the dog"] * 8)),
        "encoding": sft("g", "Say hello.", "\x03\ufffd tq\ufffd in sem"),
        "fine": sft("e", "Name a prime number.", "Seven is a prime number."),
    }
    candidates = [Candidate(row=row, method="responses") for row in cases.values()]
    verify_candidates(candidates, ProceduralJudge(), TEACHER)
    by_id = {c.row["row_id"]: c for c in candidates}
    assert by_id["a"].rejected.startswith("heuristic empty")
    assert by_id["b"].rejected.startswith("heuristic echo")
    assert by_id["c"].rejected.startswith("heuristic refusal")
    assert by_id["d"].rejected.startswith("heuristic repetition")
    assert by_id["g"].rejected.startswith("heuristic encoding")
    assert by_id["e"].accepted and by_id["e"].judge_score == 3.0
    # Every heuristic's verdict is stored, on rejected rows too.
    assert set(by_id["b"].verification["heuristics"]) == {
        "empty",
        "length",
        "encoding",
        "echo",
        "repetition",
        "refusal",
    }
    assert by_id["b"].verification["heuristics"]["empty"] == "ok"


def test_judge_threshold_and_unparseable_scores_reject() -> None:
    rows = [sft("g", "q1", "good answer"), sft("m", "q2", "meh answer"), sft("x", "q3", "odd answer")]
    judge = FixedJudge({"good answer": 5, "meh answer": 2})
    candidates = [Candidate(row=r, method="responses") for r in rows]
    warnings = verify_candidates(candidates, judge, TEACHER, VerifySettings(min_judge_score=3))
    assert warnings == []
    good, meh, odd = candidates
    assert good.accepted and good.judge_score == 5.0 and good.verification["judge"]["model"] == "acme/judge-70b"
    assert meh.rejected == "judge score 2 < 3"
    assert odd.rejected == "judge gave no parseable score"


def test_method_failures_and_exact_checks_skip_the_judge() -> None:
    judge = FixedJudge({})
    failed = Candidate(row=sft("f", "What is 2 + 2?", "5"), method="template:arithmetic", failed="wrong answer")
    exact = Candidate(
        row=sft("t", "What is 2 + 2?", "4"),
        method="template:arithmetic",
        skip_judge=True,
        checks={"answer_matches": True},
    )
    verify_candidates([failed, exact], judge, TEACHER)
    assert judge.calls == 0
    assert failed.rejected == "wrong answer" and exact.accepted
    assert exact.verification["method_checks"] == {"answer_matches": True}


def test_off_topic_rows_are_rejected_against_the_requested_topic() -> None:
    assert topic_overlap("photosynthesis in plants", "How do plants use photosynthetic pigments?") == 1.0
    assert topic_overlap("medieval castles", "Give me a recipe for pancakes") == 0.0
    on = Candidate(
        row=sft("on", "Explain how medieval castles were defended.", "With walls and moats."),
        method="instructions",
        topic="medieval castles",
    )
    off = Candidate(
        row=sft("off", "Give me a pancake recipe.", "Mix flour, eggs and milk."),
        method="instructions",
        topic="medieval castles",
    )
    verify_candidates([on, off], ProceduralJudge(), TEACHER)
    assert on.accepted and on.verification["topic"]["overlap"] == 1.0
    assert off.rejected.startswith("off-topic")


def test_length_outliers_are_found_by_modified_z_score() -> None:
    assert modified_z_scores([1, 1, 1]) == [0.0, 0.0, 0.0]
    normal = [sft(f"n{i}", f"Question {i}?", f"A plain answer number {i} with some words in it.") for i in range(12)]
    huge = sft("big", "Question big?", " ".join(f"word{i}" for i in range(2000)))
    candidates = [Candidate(row=r, method="responses") for r in [*normal, huge]]
    verify_candidates(candidates, None, TEACHER)
    assert candidates[-1].rejected.startswith("outlier: log_chars")
    assert all(c.accepted for c in candidates[:-1])
    # Fewer rows than MIN_ROWS_FOR_OUTLIERS: no statistics, no rejection.
    few = [Candidate(row=r, method="responses") for r in [*normal[:3], huge]]
    verify_candidates(few, None, TEACHER)
    assert all(c.accepted for c in few)


def test_same_instruction_with_different_answers_is_flagged_or_resolved() -> None:
    def pair() -> list[Candidate]:
        return [
            Candidate(row=sft("p1", "Capital of Australia?", "Sydney."), method="responses"),
            Candidate(row=sft("p2", "capital of  australia?", "Canberra."), method="responses"),
        ]

    flagged = pair()
    verify_candidates(flagged, FixedJudge({"Sydney.": 3, "Canberra.": 5}), TEACHER)
    assert all(c.accepted and c.verification["conflict"] == {"same_instruction_answers": 2} for c in flagged)
    resolved = pair()
    verify_candidates(
        resolved, FixedJudge({"Sydney.": 3, "Canberra.": 5}), TEACHER, VerifySettings(on_conflict="keep_best")
    )
    assert resolved[0].rejected.startswith("same instruction answered differently") and resolved[1].accepted


class EchoTeacher:
    def __init__(self, model: str) -> None:
        self.info = TeacherInfo("transformers", model, "sha256:abc", "Apache-2.0")

    def generate(self, requests: list[ChatRequest], on_result=None) -> list[Generation]:
        return [Generation("Looks right. Score: 4", "stop") for _ in requests]


def test_a_judge_that_is_the_teacher_is_warned_about_on_every_row() -> None:
    teacher = TeacherInfo("openai-compatible", "Qwen/Qwen2.5-7B-Instruct", "x", "Apache-2.0")
    judge = ModelJudge(EchoTeacher("qwen2.5-7b-instruct-awq"))
    candidate = Candidate(row=sft("w", "Name a colour.", "Blue."), method="responses")
    warnings = verify_candidates([candidate], judge, teacher)
    assert len(warnings) == 1 and "teacher's own model" in warnings[0]
    assert candidate.verification["warnings"] == warnings and candidate.judge_score == 4.0


def test_settings_from_the_project_file_refuse_unknown_keys() -> None:
    assert VerifySettings.from_mapping({"min_judge_score": 4}).min_judge_score == 4
    with pytest.raises(ValueError, match="unknown keys"):
        VerifySettings.from_mapping({"min_score": 4})
    with pytest.raises(ValueError, match="on_conflict"):
        VerifySettings.from_mapping({"on_conflict": "drop"})
