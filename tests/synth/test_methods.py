"""Synthesis methods with the procedural teacher and scripted teachers; licence and terms propagation;
the code repair loop on HumanEval."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from datetime import datetime

import pytest

from curation.core.licenses import LicensePolicy
from curation.core.provenance import TeacherInfo
from curation.core.schema import new_row
from curation.synth.judges import ProceduralJudge
from curation.synth.methods import SynthContext, generate_candidates, select_seeds, validate_methods
from curation.synth.methods.code import CodeSettings, code_candidates, completion_for, extract_code
from curation.synth.methods.instructions import InstructionsSettings, coverage_matrix
from curation.synth.stage import synthesize
from curation.synth.teachers import ChatRequest, Generation, ProceduralTeacher
from curation.synth.terms import (
    inherited_terms,
    parse_model_registry,
    policy_violation,
    registered_teacher,
    terms_violations,
)
from curation.synth.verify import Judge, VerifySettings
from tests.conftest import SHARED_DATA

NOW = datetime(2026, 1, 1)
HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"


class ScriptedTeacher:
    """Answers with ``reply(messages) -> text``; records every request it was sent."""

    def __init__(
        self, reply: Callable[[list[dict]], str], model: str = "acme/teacher-7b", license: str = "Apache-2.0"
    ) -> None:
        self.reply = reply
        self.info = TeacherInfo("openai-compatible", model, "2025-01", license)
        self.requests: list[ChatRequest] = []

    def generate(self, requests, on_result=None):
        self.requests += requests
        return [Generation(self.reply(r.messages_list()), "stop") for r in requests]


PROCEDURAL_JUDGE = ProceduralJudge()


def context(teacher, registry=None, policy=None, judge: Judge | None = PROCEDURAL_JUDGE) -> SynthContext:
    reg = parse_model_registry(registry or {})
    return SynthContext(
        teacher, registered_teacher(teacher.info, reg), policy or LicensePolicy(), reg, seed=0, judge=judge
    )


def seed_row(
    row_id: str, prompt: str, response: str | None = None, license: str = "Apache-2.0", kind: str = "sft", **fields
) -> dict:
    messages = [{"role": "user", "content": prompt}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return new_row(
        **{
            "row_id": row_id,
            "kind": kind,
            "messages": messages,
            "source": "seeds",
            "source_uri": f"seeds.jsonl#{row_id}",
            "license": license,
            "origin": "human",
            **fields,
        }
    )


def test_procedural_templates_are_verified_by_their_computed_answers() -> None:
    result = synthesize(
        context(ProceduralTeacher()),
        [],
        {"arithmetic": {"count": 6}, "units": {"count": 6}},
        VerifySettings(),
        "research",
        NOW,
    )
    assert len(result.accepted) == 12 and result.rejected == []
    for s in result.accepted:
        expected = s.row["extra"]["expected_answer"]
        assert expected in s.row["messages"][1]["content"]
        assert s.provenance.verification["method_checks"] == {"expected": expected, "answer_matches": True}
        assert s.row["origin"] == "synthetic" and s.row["generator"] == "distillery-procedural"


def test_a_teacher_that_gets_the_arithmetic_wrong_is_rejected_with_the_expected_value() -> None:
    wrong = ScriptedTeacher(lambda m: "The answer is 123456789.")
    result = synthesize(context(wrong), [], {"arithmetic": {"count": 4}}, VerifySettings(), "research", NOW)
    assert result.accepted == [] and len(result.rejected) == 4
    assert all(c.rejected.startswith("answer does not contain the computed") for c in result.rejected)


def test_perturbation_keeps_the_human_response_and_links_its_parent() -> None:
    seeds = [
        seed_row(f"s{i}", f"Explain the idea number {i} of this lesson in simple words", f"Answer {i}.")
        for i in range(6)
    ]
    result = synthesize(
        context(ProceduralTeacher()), seeds, {"perturbation": {"count": 3}}, VerifySettings(), "research", NOW
    )
    assert len(result.accepted) == 3
    for s in result.accepted:
        (parent_id,) = s.provenance.parent_ids
        parent = next(r for r in seeds if r["row_id"] == parent_id)
        assert s.row["messages"][1] == parent["messages"][1]
        assert s.row["messages"][0]["content"] != parent["messages"][0]["content"]
        assert s.row["origin"] == "augmented"
        assert s.lineage[0]["parent_id"] == parent_id and s.lineage[0]["operation"].startswith("perturb:")


def test_licence_and_terms_propagate_as_every_obligation() -> None:
    registry = {
        "acme/teacher-7b": {"license": "LicenseRef-acme", "terms": "no-competing-models", "forbids": ["commercial"]},
        "old-writer": {"terms": "research-only", "forbids": ["commercial"]},
    }
    policy = LicensePolicy.with_overrides(
        {"LicenseRef-acme": {"commercial": True, "attribution": True, "share_alike": True}}
    )
    teacher = ScriptedTeacher(lambda m: "Photosynthesis turns light, water and carbon dioxide into sugar.")
    ctx = context(teacher, registry, policy)
    assert ctx.info.license == "LicenseRef-acme" and ctx.info.terms == "no-competing-models"
    nc = seed_row("nc", "What does photosynthesis produce?", license="CC-BY-NC-4.0", kind="prompt")
    by_model = seed_row(
        "gen",
        "Why are leaves green in photosynthesis?",
        license="MIT",
        kind="prompt",
        origin="synthetic",
        generator="old-writer",
    )
    result = synthesize(ctx, [nc, by_model], {"responses": {"count": 2}}, VerifySettings(), "research", NOW)
    rows = {s.provenance.parent_ids[0]: s.row for s in result.accepted}
    # Every input's licence, none dropped for a "stricter" one: the parent's and the teacher's.
    assert rows["nc"]["license"] == "CC-BY-NC-4.0 AND LicenseRef-acme"
    assert rows["gen"]["license"] == "LicenseRef-acme AND MIT"
    assert rows["nc"]["extra"]["terms"] == {
        "forbids": ["commercial"],
        "terms": ["no-competing-models"],
        "models": ["acme/teacher-7b"],
    }
    assert rows["gen"]["extra"]["terms"]["models"] == ["acme/teacher-7b", "old-writer"]
    # A grandchild inherits the restriction even from a teacher without terms.
    plain = TeacherInfo("procedural", "distillery-procedural", "1", "CC0-1.0")
    assert inherited_terms([rows["nc"]], plain, {})["forbids"] == ["commercial"]
    assert (
        policy_violation(rows["gen"], "commercial", policy) == "terms of acme/teacher-7b, old-writer forbid "
        "commercial use"
    )
    assert policy_violation(rows["gen"], "research", policy) is None
    # In a commercial build the rows are rejected with the reason, and never accepted.
    commercial = synthesize(ctx, [nc, by_model], {"responses": {"count": 2}}, VerifySettings(), "commercial", NOW)
    assert commercial.accepted == []
    # Every reason is recorded: the terms, and the non-commercial licence of the first row's parent.
    assert {c.rejected for c in commercial.rejected} == {
        "policy: terms of acme/teacher-7b forbid commercial use; CC-BY-NC-4.0 is non-commercial: not allowed in "
        "a commercial build",
        "policy: terms of acme/teacher-7b, old-writer forbid commercial use",
    }
    # The check re-reads the registry: a model whose terms were added later is still caught.
    untagged = {**rows["gen"], "extra": None}
    count, sample = terms_violations([untagged], parse_model_registry(registry), policy, "commercial")
    assert count == 1 and "acme/teacher-7b" in sample[0]["why"]


def test_registry_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="forbids must be a list of intended uses"):
        parse_model_registry({"m": {"forbids": "commercial"}})
    with pytest.raises(ValueError, match="unknown keys"):
        parse_model_registry({"m": {"licence": "MIT"}})


def test_coverage_matrix_crosses_every_axis_and_generates_missing_lists() -> None:
    cells = coverage_matrix(
        InstructionsSettings(
            topics=["a", "b"],
            task_types=["explain", "list"],
            formats=["json", "table"],
            lengths=["short", "long"],
            typos=True,
        )
    )
    assert len(cells) == 2 * 2 * 2 * 2 * 2
    assert {(c["typos"], c["length"]) for c in cells} == {
        (False, "short"),
        (True, "short"),
        (False, "long"),
        (True, "long"),
    }
    lister = ScriptedTeacher(lambda m: "1. Volcanoes\n- Tides\n\nVolcanoes\n")
    cells = coverage_matrix(InstructionsSettings(task_types=["explain"]), context(lister))
    assert [c["topic"] for c in cells] == ["Volcanoes", "Tides"]
    with pytest.raises(
        ValueError,
        match=r"synthesis\.methods\.instructions\.lengths\.0: Input should be 'short', "
        r"'medium' or 'long' \(got 'huge'\)",
    ):
        validate_methods({"instructions": {"topics": ["a"], "task_types": ["b"], "lengths": ["huge"]}})


def _instruction_writer(messages: list[dict]) -> str:
    text = messages[-1]["content"]
    if text.startswith("Write one"):
        topic = text.split("Topic: ")[1].split("\n")[0]
        return f"Explain {topic} to a curious student." if topic != "tides" else "Give me a pancake recipe."
    return (
        f"Here is a clear explanation: {text.removeprefix('Explain ').removesuffix(' to a curious student.')} "
        "works as described."
    )


def test_instructions_from_the_matrix_get_responses_and_off_topic_ones_are_rejected() -> None:
    teacher = ScriptedTeacher(_instruction_writer)
    settings = {"count": 4, "topics": ["volcanoes", "tides"], "task_types": ["explain"], "per_instruction": 2}
    result = synthesize(context(teacher), [], {"instructions": settings}, VerifySettings(), "research", NOW)
    accepted_topics = {s.row["extra"]["topic"] for s in result.accepted}
    assert accepted_topics == {"volcanoes"} and len(result.accepted) == 2  # two responses, different seeds
    assert {s.provenance.generation_params["seed"] for s in result.accepted} == {0, 1}
    assert all(c.rejected.startswith("off-topic") for c in result.rejected) and len(result.rejected) == 2


def test_reverse_instruction_keeps_the_human_text_as_the_response() -> None:
    essay = (
        "Bees pollinate flowers and make honey from nectar in their hives. A colony has one queen, "
        "thousands of female workers and, in summer, a few hundred drones. Workers forage for nectar and "
        "pollen, guard the entrance, clean cells and feed larvae; their tasks change as they age. Nectar "
        "is passed from bee to bee, enzymes break its sugars down, and fanning wings evaporate the water "
        "until the honey is thick enough to store. Wax comes from glands under the workers' abdomens and "
        "is shaped into hexagonal cells, a form that holds the most honey for the least wax. In winter "
        "the bees cluster around the queen and shiver their flight muscles to keep the centre warm."
    )
    doc = new_row(
        row_id="doc",
        kind="text",
        text=essay,
        source="essays",
        source_uri="essays.jsonl#1",
        license="CC-BY-4.0",
        origin="human",
    )
    teacher = ScriptedTeacher(lambda m: "Write an essay about how bees live and make honey.", license="CC0-1.0")
    result = synthesize(
        context(teacher),
        [doc],
        {"reverse_instruction": {"count": 1, "min_words": 50}},
        VerifySettings(),
        "research",
        NOW,
    )
    (s,) = result.accepted
    assert s.row["messages"] == [
        {"role": "user", "content": "Write an essay about how bees live and make honey."},
        {"role": "assistant", "content": essay},
    ]
    assert s.row["origin"] == "augmented" and s.row["license"] == "CC-BY-4.0 AND CC0-1.0"  # parent's and teacher's
    assert s.lineage[0]["parent_id"] == "doc" and s.lineage[0]["operation"] == "reverse_instruction"
    assert "Bees pollinate" in teacher.requests[0].messages[0]["content"]


def test_several_responses_per_instruction_and_what_the_procedural_teacher_cannot_do() -> None:
    seeds = [seed_row("p", "What is 12 * 12?", kind="prompt"), seed_row("q", "Write a haiku about rain", kind="prompt")]
    result = synthesize(
        context(ProceduralTeacher()),
        seeds,
        {"responses": {"count": 2, "per_instruction": 2}},
        VerifySettings(),
        "research",
        NOW,
    )
    assert len(result.accepted) == 2 and all("144" in s.row["messages"][1]["content"] for s in result.accepted)
    assert [c.rejected.startswith("teacher cannot do this") for c in result.rejected] == [True, True]


def test_preference_pairs_take_the_best_and_worst_when_both_judge_orders_agree() -> None:
    samples = iter(["12 * 12 = 144", "It is 140.", "144", "Maybe 150."] * 2)
    teacher = ScriptedTeacher(lambda m: next(samples))
    seeds = [seed_row("p", "What is 12 * 12?", kind="prompt")]
    result = synthesize(
        context(teacher), seeds, {"preference": {"count": 1, "samples": 4}}, VerifySettings(), "research", NOW
    )
    (s,) = result.accepted
    assert s.row["kind"] == "preference" and s.row["chosen"][0]["content"] == "12 * 12 = 144"
    assert s.row["rejected"][0]["content"] == "It is 140."
    assert s.provenance.verification["method_checks"]["scores"] == [5, 1, 5, 1]
    assert s.provenance.verification["method_checks"]["pairwise"]["consistent"] is True
    assert s.provenance.judge_score == 5.0 and s.provenance.judge_model == "distillery-procedural-judge"
    # All samples equally good: no pair, recorded as a rejection.
    same = synthesize(
        context(ScriptedTeacher(lambda m: "144")),
        seeds,
        {"preference": {"count": 1, "samples": 3}},
        VerifySettings(),
        "research",
        NOW,
    )
    assert same.accepted == [] and same.rejected[0].rejected.startswith("no pair")


def test_method_settings_are_validated_with_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown method 'paraphrase'"):
        validate_methods({"paraphrase": {"count": 1}})
    with pytest.raises(ValueError, match="unknown keys \\['n'\\]"):
        validate_methods({"responses": {"count": 1, "n": 2}})
    with pytest.raises(ValueError, match=r"^synthesis\.methods\.code: needs 'problems'"):
        validate_methods({"code": {"count": 1}})
    with pytest.raises(
        ValueError,
        match=r"^synthesis\.methods\.code\.problems: Input should be a valid string "
        r"\(got 7\)$",
    ):
        validate_methods({"code": {"count": 1, "problems": 7, "license": "MIT"}})
    with pytest.raises(
        ValueError,
        match=r"^synthesis\.methods\.perturbation\.count: Input should be greater than or "
        r"equal to 0 \(got -1\)$",
    ):
        validate_methods({"perturbation": {"count": -1}})
    with pytest.raises(ValueError, match=r"^synthesis\.methods\.perturbation\.kinds: unknown \['typos'\]"):
        validate_methods({"perturbation": {"count": 1, "kinds": ["typos"]}})
    with pytest.raises(
        ValueError,
        match=r"^synthesis\.methods\.preference\.samples: Input should be greater than or "
        r"equal to 2",
    ):
        validate_methods({"preference": {"count": 1, "samples": 1}})
    with pytest.raises(ValueError, match=r"^synthesis\.methods\.units: expected a mapping"):
        validate_methods({"units": 5})
    with pytest.raises(ValueError, match="needs a judge"):
        generate_candidates(
            context(ProceduralTeacher(), judge=None),
            [seed_row("p", "What is 2 + 2?", kind="prompt")],
            {"preference": {"count": 1}},
        )


def test_code_extraction_accepts_a_full_function_or_a_body() -> None:
    problem = {"entry_point": "add", "prompt": 'def add(a, b):\n    """Add."""\n'}
    assert (
        extract_code("Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.")
        == "def add(a, b):\n    return a + b"
    )
    # Tilde fences are fences too (CommonMark), and the first block wins whichever fence it uses.
    assert (
        extract_code("Here:\n~~~python\ndef add(a, b):\n    return a + b\n~~~\nand a test:\n```\nadd(1, 2)\n```")
        == "def add(a, b):\n    return a + b"
    )
    assert extract_code("return a + b") == "return a + b"  # no fence: the reply is the code
    assert completion_for(problem, "def add(a, b):\n    return a + b").startswith("\ndef add")
    assert completion_for(problem, "return a + b") == "    return a + b\n"


# ---------------------------------------------------------------------------------------------
# The code loop on HumanEval: a scripted teacher returns broken code first, the reference on repair.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def humaneval() -> dict[str, dict]:
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as fh:
        return {t["task_id"]: t for t in map(json.loads, fh)}


class RepairingTeacher:
    """Broken code on the first request; on a repair request (the error fed back), the reference solution,
    except for tasks in ``hopeless`` which stay broken."""

    def __init__(self, tasks: dict[str, dict], hopeless: set[str]) -> None:
        self.by_prompt = {t["prompt"]: t for t in tasks.values()}
        self.hopeless = hopeless
        self.info = TeacherInfo("openai-compatible", "scripted-coder", "1", "Apache-2.0")
        self.feedback: list[str] = []

    def generate(self, requests, on_result=None):
        out = []
        for request in requests:
            messages = request.messages_list()
            task = next(t for p, t in self.by_prompt.items() if p in messages[0]["content"])
            if len(messages) == 1 or task["task_id"] in self.hopeless:
                code = f"def {task['entry_point']}(*args):\n    return None\n"
            else:
                self.feedback.append(messages[-1]["content"])
                code = task["prompt"] + task["canonical_solution"]
            out.append(Generation(f"```python\n{code}```", "stop"))
        return out


def test_code_loop_repairs_with_feedback_and_drops_what_never_passes(humaneval) -> None:
    tasks = {k: humaneval[k] for k in ("HumanEval/0", "HumanEval/2", "HumanEval/4")}
    teacher = RepairingTeacher(tasks, hopeless={"HumanEval/4"})
    ctx = context(teacher)
    candidates = code_candidates(
        ctx, list(tasks.values()), CodeSettings(max_repairs=2, license="CC-BY-SA-4.0", problems="HumanEval.jsonl.gz")
    )
    by_task = {c.row["extra"]["task_id"]: c for c in candidates}
    for task_id in ("HumanEval/0", "HumanEval/2"):
        c = by_task[task_id]
        assert c.failed is None and c.checks["tests_passed"] and c.checks["repair_rounds"] == 1
        assert [a["status"] for a in c.checks["attempts"]] == ["failed", "passed"]
        assert tasks[task_id]["canonical_solution"].strip() in c.row["messages"][1]["content"]
        assert c.row["license"] == "Apache-2.0 AND CC-BY-SA-4.0"  # the problem set's and the teacher's
    hopeless = by_task["HumanEval/4"]
    assert not hopeless.checks["tests_passed"] and len(hopeless.checks["attempts"]) == 3  # 1 try + 2 repairs
    assert hopeless.failed == "unit tests still fail after 3 attempt(s): failed"
    # The test failure was fed back to the teacher.
    assert teacher.feedback and all("failed the unit tests" in f and "Test failed" in f for f in teacher.feedback)


def test_reference_solutions_pass_first_time_through_the_method(humaneval, tmp_path) -> None:
    picked = [humaneval[f"HumanEval/{i}"] for i in (1, 3, 7)]
    teacher = ScriptedTeacher(
        lambda m: next(
            f"```python\n{t['prompt']}{t['canonical_solution']}```" for t in picked if t["prompt"] in m[0]["content"]
        )
    )
    problems = tmp_path / "problems.jsonl"
    problems.write_text("\n".join(json.dumps(t) for t in picked))
    result = synthesize(
        context(teacher),
        [],
        {"code": {"count": 3, "problems": str(problems), "license": "MIT"}},
        VerifySettings(),
        "research",
        NOW,
    )
    assert len(result.accepted) == 3 and result.rejected == []
    assert all(s.provenance.verification["method_checks"]["repair_rounds"] == 0 for s in result.accepted)
    assert len(teacher.requests) == 3  # no repair round asked for


def test_streaming_seed_selection_picks_what_the_methods_pick_from_everything() -> None:
    seeds = [seed_row(f"s{i:03d}", f"What is {i} + {i}?", f"{2 * i}") for i in range(150)]
    seeds += [seed_row(f"p{i:03d}", f"What is {i} * 3?", kind="prompt") for i in range(150)]
    methods = {"perturbation": {"count": 7}, "responses": {"count": 5}, "arithmetic": {"count": 2}}
    selected = select_seeds(iter(seeds), methods, seed=3)
    assert len(selected) <= 12
    ctx = SynthContext(
        ProceduralTeacher(), ProceduralTeacher().info, LicensePolicy(), {}, seed=3, judge=ProceduralJudge()
    )
    full = synthesize(ctx, seeds, methods, VerifySettings(), "research", NOW)
    streamed = synthesize(ctx, selected, methods, VerifySettings(), "research", NOW)
    assert [s.row["row_id"] for s in streamed.accepted] == [s.row["row_id"] for s in full.accepted]
    assert [c.row["row_id"] for c in streamed.rejected] == [c.row["row_id"] for c in full.rejected]
    assert len(full.accepted) + len(full.rejected) == 7 + 5 + 2 and len(full.accepted) >= 10
