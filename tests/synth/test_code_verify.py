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
from tests.conftest import SHARED_DATA

HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"
needs_humaneval = pytest.mark.skipif(not HUMANEVAL.exists(), reason=f"{HUMANEVAL} not present")


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
