"""Verify generated Python by parsing, linting and running unit tests in the sandbox.

The code-synthesis loop (problem -> solution -> verify -> repair with feedback) calls
:func:`run_unit_tests`; its :class:`VerifyResult` carries a short ``message`` written to be
fed back to the teacher model when a repair round is asked for.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from curation.synth.sandbox import SandboxLimits, SandboxResult, run_python

# Lint findings that mean the program is wrong whatever the tests say: names used but never
# defined (F821/F822), a local read before assignment (F823), and an assert on a tuple, which is
# always true (F631). Style findings such as unused imports (F401) are reported, not fatal.
FATAL_LINT_CODES: frozenset[str] = frozenset({"F821", "F822", "F823", "F631"})

# Feedback for a teacher stays short: the end of a traceback says what went wrong and where.
MAX_MESSAGE_CHARS = 1500
_TRACEBACK_FRAMES_KEPT = 3

# What the lint step did, in results and provenance: ruff is a dev dependency, so a runtime install may lack
# it, and a missing linter must not read as a clean lint.
LINT_RAN = "ok: ruff"
LINT_SKIPPED = "skipped: ruff not installed"
LINT_OFF = "off"

_FRAME = re.compile(r'^  File "(?P<file>[^"]*)", line (?P<line>\d+), in (?P<func>.*)$')
_EXC_NAME = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)(?::|$)")
# Caret/tilde markers under a source line (Python 3.11+ error locations).
_MARKER_LINE = re.compile(r"^\s*[~^]+\s*$")


@dataclass(frozen=True)
class LintIssue:
    """One lint finding, positions 1-based in the linted code."""

    code: str
    message: str
    line: int
    col: int

    @property
    def fatal(self) -> bool:
        return self.code in FATAL_LINT_CODES

    def __str__(self) -> str:
        return f"line {self.line}:{self.col}: {self.code} {self.message}"


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of checking one solution.

    ``status`` is one of ``passed``, ``syntax_error``, ``lint_error``, ``failed`` (a test assertion
    or an exception), ``timeout`` (wall or CPU time) or ``resource_limit`` (memory, file size, disk).
    ``lint_status`` says whether the lint step ran (:data:`LINT_RAN`), found no linter
    (:data:`LINT_SKIPPED`) or was turned off (:data:`LINT_OFF`); empty when the syntax check failed first.
    """

    passed: bool
    status: str
    message: str
    error_type: str | None = None
    lint: tuple[LintIssue, ...] = ()
    sandbox: SandboxResult | None = None
    lint_status: str = ""


def check_python_syntax(code: str, filename: str = "main.py") -> str | None:
    """``None`` when ``code`` compiles, else a one-line error with its position. Never runs it."""
    try:
        # compile() and not ast.parse(): it also rejects what only the compiler checks
        # ('return' outside a function, 'nonlocal' at module level, ...).
        compile(code, filename, "exec", dont_inherit=True)
    except SyntaxError as e:
        where = f"line {e.lineno}" + (f", column {e.offset}" if e.offset else "")
        text = (e.text or "").strip()
        return f"SyntaxError: {e.msg} ({where})" + (f": {text}" if text else "")
    except (ValueError, RecursionError, MemoryError, OverflowError) as e:
        # Null bytes, absurd nesting or size: not a program we can check.
        return f"{type(e).__name__}: {e}"
    return None


def _ruff_binary() -> str | None:
    # The venv's own ruff first: a ruff on PATH may be another version with other rule names.
    beside = Path(sys.executable).parent / "ruff"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("ruff")


def lint_available() -> bool:
    """Whether a linter (ruff) is installed here; without one, :func:`lint_python` finds nothing."""
    return _ruff_binary() is not None


def lint_python(code: str, select: str = "F", timeout_s: float = 30.0) -> list[LintIssue]:
    """Pyflakes-family findings (ruff's ``F`` rules) for ``code``; empty when no linter is installed
    (:func:`lint_available` tells the two apart; :func:`verify_program` reports it as :data:`LINT_SKIPPED`).

    Syntax errors are :func:`check_python_syntax`'s business and are not returned here.
    """
    ruff = _ruff_binary()
    if ruff is None:
        return []
    target = f"py{sys.version_info[0]}{sys.version_info[1]}"
    # --isolated: the project's own ruff config (ignores, line length) must not change verdicts.
    cmd = [
        ruff,
        "check",
        "--isolated",
        "--select",
        select,
        "--target-version",
        target,
        "--output-format",
        "json",
        "--stdin-filename",
        "main.py",
        "-",
    ]
    try:
        done = subprocess.run(
            cmd,
            input=code,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"ruff did not finish linting within {timeout_s} s") from e
    if done.returncode not in (0, 1):
        raise RuntimeError(f"ruff failed (exit {done.returncode}) on the code given: {done.stderr.strip()[:500]}")
    issues = []
    for item in json.loads(done.stdout or "[]"):
        if not item.get("code"):
            continue  # a syntax error, reported by check_python_syntax instead
        loc = item.get("location") or {}
        issues.append(LintIssue(item["code"], item["message"], int(loc.get("row", 0)), int(loc.get("column", 0))))
    return issues


def build_humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval runs for one sample (its ``execution.py`` convention)."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def failure_message(result: SandboxResult, limits: SandboxLimits) -> tuple[str, str | None]:
    """A short, teacher-readable account of why a sandboxed run failed, and the exception name."""
    if result.killed_reason == "wall_time":
        return (
            f"Timeout: the program did not finish within {limits.wall_seconds:g} s "
            "(an infinite loop, or far too slow).",
            None,
        )
    if result.killed_reason == "cpu_time":
        return (
            f"Timeout: the program used more than {limits.cpu_seconds:g} s of CPU time "
            "(an infinite loop, or far too slow).",
            None,
        )
    summary, exc_name = _summarize_traceback(result.stderr)
    if result.killed_reason == "memory":
        return (
            f"MemoryError: the program exceeded the memory limit of {limits.memory_bytes >> 20} MiB."
            + (f"\n{summary}" if summary else ""),
            "MemoryError",
        )
    if result.killed_reason == "file_size":
        return (
            f"The program wrote more than {limits.max_file_bytes >> 20} MiB to a file or its output."
            + (f"\n{summary}" if summary else ""),
            exc_name,
        )
    if result.killed_reason == "disk":
        return (
            f"The program stored more than {limits.max_disk_bytes >> 20} MiB of files."
            + (f"\n{summary}" if summary else ""),
            exc_name,
        )
    if summary:
        return summary, exc_name
    tail = result.stderr.strip()[-MAX_MESSAGE_CHARS:]
    reason = result.killed_reason or f"exit code {result.exit_code}"
    return f"The program failed ({reason})." + (f"\n{tail}" if tail else ""), None


def _summarize_traceback(stderr: str) -> tuple[str, str | None]:
    """Last frames plus the exception of the last traceback in ``stderr``; ('', None) if none."""
    start = stderr.rfind("Traceback (most recent call last):")
    if start < 0:
        return "", None
    lines = [ln for ln in stderr[start:].splitlines()[1:] if not _MARKER_LINE.match(ln)]
    frames: list[list[str]] = []
    rest_at = len(lines)
    for i, ln in enumerate(lines):
        m = _FRAME.match(ln)
        if m:
            frames.append(
                [
                    f"line {m['line']}, in {m['func']}"
                    if m["file"] == "main.py"
                    else f"{m['file']}, line {m['line']}, in {m['func']}"
                ]
            )
        elif ln.startswith("    ") and frames:
            frames[-1].append(ln.strip())
        elif not ln.startswith(" "):
            rest_at = i
            break
    exception = "\n".join(lines[rest_at:]).strip()
    m = _EXC_NAME.match(exception)
    exc_name = m["name"] if m else None
    where = [": ".join(f) for f in frames[-_TRACEBACK_FRAMES_KEPT:]]
    text = exception or "(no exception message)"
    if exc_name == "AssertionError" and where:
        # A bare assert says nothing by itself: the failing line is the test that did not pass.
        text = f"Test failed: {where[-1]}" + (f"\n{exception}" if exception != "AssertionError" else "")
        where = where[:-1]
    out = text + ("\nTraceback (innermost last):\n  " + "\n  ".join(where) if where else "")
    if len(out) > MAX_MESSAGE_CHARS:
        out = out[: MAX_MESSAGE_CHARS - 15] + "\n...[truncated]"
    return out, exc_name


def verify_program(
    program: str, limits: SandboxLimits | None = None, lint: bool = True, *, allow_weaker: bool = False
) -> VerifyResult:
    """Syntax check, lint, then run ``program`` in the sandbox; it passes when it exits cleanly.

    Raises :class:`curation.synth.sandbox.SandboxSetupError` when the sandbox cannot start: that is no
    verdict on the program, and must not be recorded as a failure. Its subclass
    :class:`~curation.synth.sandbox.SandboxUnavailable` when the sandbox is incomplete here and
    ``allow_weaker`` is not set.
    """
    limits = limits or SandboxLimits()
    error = check_python_syntax(program)
    if error is not None:
        return VerifyResult(False, "syntax_error", error, "SyntaxError")
    lint_status = LINT_OFF if not lint else LINT_RAN if lint_available() else LINT_SKIPPED
    issues = tuple(lint_python(program)) if lint_status == LINT_RAN else ()
    fatal = [i for i in issues if i.fatal]
    if fatal:
        message = "Lint errors:\n" + "\n".join(str(i) for i in fatal[:10])
        return VerifyResult(False, "lint_error", message, None, issues, lint_status=lint_status)
    result = run_python(program, limits, allow_weaker=allow_weaker)
    if result.ok:
        return VerifyResult(True, "passed", "", None, issues, result, lint_status)
    message, exc_name = failure_message(result, limits)
    if result.killed_reason in ("wall_time", "cpu_time"):
        status = "timeout"
    elif result.killed_reason in ("memory", "file_size", "disk"):
        status = "resource_limit"
    else:
        status = "failed"
    return VerifyResult(False, status, message, exc_name, issues, result, lint_status)


def run_unit_tests(
    prompt: str,
    completion: str,
    test: str,
    entry_point: str,
    limits: SandboxLimits | None = None,
    lint: bool = True,
    *,
    allow_weaker: bool = False,
) -> VerifyResult:
    """Run a HumanEval-style ``test`` (defining ``check(candidate)``) against ``prompt + completion``."""
    if not entry_point.isidentifier():
        raise ValueError(f"entry_point must be a Python identifier, got {entry_point!r}")
    program = build_humaneval_program(prompt, completion, test, entry_point)
    return verify_program(program, limits, lint, allow_weaker=allow_weaker)
