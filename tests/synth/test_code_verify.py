"""Verifying code answers: syntax, lint, and HumanEval unit tests run in the sandbox."""

from __future__ import annotations

import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from curation.synth.code_verify import (
    VerifyResult,
    build_humaneval_program,
    check_python_syntax,
    lint_python,
    run_unit_tests,
)
from curation.synth.sandbox import SandboxLimits
from tests.conftest import SHARED_DATA, needs_shared_data

HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"
needs_humaneval = needs_shared_data


@pytest.fixture(scope="module")
def tasks() -> list[dict[str, Any]]:
    with gzip.open(HUMANEVAL, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _run(task: dict[str, Any], completion: str, **kw: Any) -> VerifyResult:
    return run_unit_tests(task["prompt"], completion, task["test"], task["entry_point"], **kw)


def test_syntax_check_reports_position_and_catches_compiler_errors() -> None:
    assert check_python_syntax("def f(x):\n    return x + 1\n") is None
    err = check_python_syntax("def f(x):\n    return (x +\n")
    assert err is not None and err.startswith("SyntaxError") and "line 2" in err
    # Valid grammar that only the compiler rejects.
    assert check_python_syntax("return 1\n") is not None
    assert check_python_syntax("x = 1\x00\n") is not None


def test_lint_finds_undefined_names_as_fatal_and_unused_imports_as_not() -> None:
    issues = lint_python("import os\n\ndef f(x):\n    return math.sqrt(x)\n")
    by_code = {i.code: i for i in issues}
    assert by_code["F821"].line == 4 and by_code["F821"].fatal and "math" in by_code["F821"].message
    assert by_code["F401"].line == 1 and not by_code["F401"].fatal
    assert lint_python("import math\n\ndef f(x):\n    return math.sqrt(x)\n") == []


def test_program_follows_the_humaneval_convention() -> None:
    program = build_humaneval_program("def f(x):\n", "    return x\n", "def check(c):\n    assert c(1) == 1\n", "f")
    assert program == "def f(x):\n    return x\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)"


@needs_humaneval
def test_reference_solution_passes_and_empty_body_fails_with_the_failing_test(tasks: list[dict[str, Any]]) -> None:
    task = tasks[0]
    good = _run(task, task["canonical_solution"])
    assert good.passed and good.status == "passed" and good.sandbox is not None and good.sandbox.ok
    bad = _run(task, "    pass\n")
    assert not bad.passed and bad.status == "failed" and bad.error_type == "AssertionError"
    # The message names the failing assertion so a teacher can repair the code.
    assert bad.message.startswith("Test failed:") and "assert candidate(" in bad.message


@needs_humaneval
def test_exception_in_the_solution_is_reported_with_its_line(tasks: list[dict[str, Any]]) -> None:
    task = tasks[2]  # truncate_number
    res = _run(task, "    raise ValueError('no idea how')\n")
    assert res.status == "failed" and res.error_type == "ValueError"
    assert "ValueError: no idea how" in res.message and "raise ValueError('no idea how')" in res.message


@needs_humaneval
def test_syntax_and_lint_errors_fail_before_running(tasks: list[dict[str, Any]]) -> None:
    task = tasks[2]
    syntax = _run(task, "    return number %% \n")
    assert syntax.status == "syntax_error" and syntax.sandbox is None and "line" in syntax.message
    # Correct logic but a forgotten import: caught by lint (ruff, a dev dependency) without a sandbox run.
    lint = _run(task, "    return number - math.floor(number)\n")
    assert lint.status == "lint_error" and lint.sandbox is None and "math" in lint.message
    # With lint off, the same code fails in the sandbox with a NameError.
    ran = _run(task, "    return number - math.floor(number)\n", lint=False)
    assert ran.status == "failed" and ran.error_type == "NameError"


@needs_humaneval
def test_endless_loop_is_a_timeout(tasks: list[dict[str, Any]]) -> None:
    limits = SandboxLimits(cpu_seconds=1, wall_seconds=5)
    res = _run(tasks[2], "    while True:\n        pass\n", limits=limits)
    assert res.status == "timeout" and not res.passed and "Timeout" in res.message


@needs_humaneval
@pytest.mark.slow
def test_all_humaneval_reference_solutions_pass_and_broken_ones_fail(tasks: list[dict[str, Any]]) -> None:
    assert len(tasks) == 164

    def run_all(completions: list[str]) -> list[VerifyResult]:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(_run, tasks, completions))

    started = time.monotonic()
    reference = run_all([t["canonical_solution"] for t in tasks])
    per_task = (time.monotonic() - started) / len(tasks)
    failed = {t["task_id"]: r.message for t, r in zip(tasks, reference, strict=True) if not r.passed}
    assert failed == {}
    print(f"\nHumanEval reference solutions: {per_task * 1000:.0f} ms/task with 2 workers")

    empty = run_all(["    pass\n"] * len(tasks))
    assert not any(r.passed for r in empty)
    assert all(r.message for r in empty)
    # Another task's reference solution: wrong answers or names that do not exist here.
    swapped = run_all([tasks[(i + 1) % len(tasks)]["canonical_solution"] for i in range(len(tasks))])
    assert not any(r.passed for r in swapped)
    assert {r.status for r in swapped} <= {"failed", "lint_error", "timeout"}


# ---------------------------------------------------------------------------------------------
# The lint step says when it did not run; code synthesis fails closed on an incomplete sandbox.
# ---------------------------------------------------------------------------------------------

# A solution that passes its test but uses an undefined name on a branch the test never takes: only lint sees it.
_UNTESTED_BUG = (
    "def f(x):\n    if x < 0:\n        return math.inf\n    return x\n\ndef check(c):\n    assert c(2) == 2\n"
)


def test_lint_runs_where_ruff_is_installed_and_says_so() -> None:
    from curation.synth import code_verify

    assert code_verify.lint_available()  # ruff ships with the dev install this suite runs in
    res = code_verify.verify_program(_UNTESTED_BUG + "check(f)\n")
    assert res.status == "lint_error" and res.lint_status == code_verify.LINT_RAN and "F821" in res.message
    assert code_verify.verify_program("print(1)\n", lint=False).lint_status == code_verify.LINT_OFF


def test_lint_without_ruff_is_reported_as_skipped_not_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    from curation.synth import code_verify

    monkeypatch.setattr(code_verify, "_ruff_binary", lambda: None)
    assert not code_verify.lint_available() and code_verify.lint_python("x = y\n") == []
    res = code_verify.verify_program(_UNTESTED_BUG + "check(f)\n")
    # The program runs and passes, but the result says that nothing linted it.
    assert res.passed and res.lint_status == "skipped: ruff not installed" == code_verify.LINT_SKIPPED


_PROBLEM = {
    "task_id": "toy/0",
    "prompt": 'def add(a, b):\n    """The sum of a and b."""\n',
    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n",
    "entry_point": "add",
}


class _Coder:
    """Answers every code request with a correct ``add``; records how many requests it got."""

    def __init__(self) -> None:
        from curation.core.provenance import TeacherInfo

        self.info = TeacherInfo("openai-compatible", "toy-coder", "1", "Apache-2.0")
        self.requests = 0

    def generate(self, requests: Any, on_result: Any = None) -> list[Any]:
        from curation.synth.teachers import Generation

        self.requests += len(requests)
        return [Generation("```python\ndef add(a, b):\n    return a + b\n```", "stop") for _ in requests]


def _code_context(teacher: _Coder, allow_weaker: bool) -> Any:
    from curation.core.licenses import LicensePolicy
    from curation.synth.judges import ProceduralJudge
    from curation.synth.methods import SynthContext

    return SynthContext(
        teacher, teacher.info, LicensePolicy(), {}, judge=ProceduralJudge(), allow_weaker_sandbox=allow_weaker
    )


@pytest.mark.fail_closed
@pytest.mark.usefixtures("no_namespaces")
def test_code_synthesis_refuses_an_incomplete_sandbox_before_asking_the_teacher() -> None:
    from curation.synth.methods.code import CodeSettings, code_candidates
    from curation.synth.sandbox import SandboxUnavailable

    teacher = _Coder()
    with pytest.raises(SandboxUnavailable, match=r"no network, pid and mount namespaces.*allow_weaker: true"):
        code_candidates(_code_context(teacher, False), [_PROBLEM], CodeSettings(license="MIT"))
    assert teacher.requests == 0


@pytest.mark.usefixtures("no_namespaces")
def test_an_allowed_weaker_sandbox_is_recorded_in_each_code_rows_provenance(tmp_path: Any) -> None:
    from datetime import datetime

    from curation.synth.stage import synthesize
    from curation.synth.verify import VerifySettings

    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps(_PROBLEM) + "\n")
    result = synthesize(
        _code_context(_Coder(), True),
        [],
        {"code": {"count": 1, "problems": str(problems), "license": "MIT"}},
        VerifySettings(),
        "research",
        datetime(2026, 1, 1),
    )
    assert len(result.accepted) == 1
    record = result.provenance_records()[0]
    checks = json.loads(record["verification"])["method_checks"]
    assert checks["tests_passed"] and checks["lint"] == "ok: ruff"
    assert checks["sandbox"]["level"] == "weaker" and "namespaces" in checks["sandbox"]["missing"]
    assert "socket_blocker" in checks["sandbox"]["layers"]


def test_the_project_file_allows_a_weaker_sandbox_explicitly(tmp_path: Any) -> None:
    import yaml

    from curation.core.config import ProjectConfig
    from curation.synth.stage import SynthesisPlan
    from tests.conftest import DEMO_CONFIG

    raw = yaml.safe_load(DEMO_CONFIG.read_text())
    assert SynthesisPlan.from_config(ProjectConfig.model_validate(raw)).allow_weaker_sandbox is False
    raw["synthesis"]["sandbox"] = {"allow_weaker": True}
    assert SynthesisPlan.from_config(ProjectConfig.model_validate(raw)).allow_weaker_sandbox is True
    raw["synthesis"]["sandbox"] = {"allow_weakre": True}
    with pytest.raises(ValueError, match="allow_weakre"):
        ProjectConfig.model_validate(raw)
