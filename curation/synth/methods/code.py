"""Code: problem → solution → parse, lint and unit tests in the sandbox → repair with the error fed back."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from curation.core.hashing import stable_unit
from curation.core.schema import Row, make_row_id
from curation.core.texts import first_fenced_block
from curation.ingest.readers import read_objects
from curation.synth.code_verify import run_unit_tests
from curation.synth.methods.base import (
    MethodSettings,
    SynthContext,
    backend_record,
    derived_row,
    params_record,
    unsupported,
    user_turn,
)
from curation.synth.methods.registry import synthesis_method
from curation.synth.sandbox import require_isolation
from curation.synth.teachers import ChatRequest, Generation, GenerationParams
from curation.synth.verify import Candidate

_CODE_PROMPT = (
    "Complete the following Python function. Reply with the complete function in one "
    "```python code block.\n\n```python\n{prompt}```"
)
_REPAIR_PROMPT = (
    "Your solution failed the unit tests:\n\n{message}\n\nFix it. Reply with the complete "
    "corrected function in one ```python code block."
)


class CodeSettings(MethodSettings):
    problems: str | None = Field(
        default=None,
        description="HumanEval-style JSONL file (task_id, prompt, test, "
        "entry_point; `.gz` read as such), relative to the "
        "project file.",
    )
    license: str | None = Field(
        default=None,
        description="SPDX id of the problems file; rows carry the stricter of it and the teacher's licence.",
    )
    max_repairs: int = Field(
        default=2, ge=0, description="Repair rounds after the first attempt, each with the error fed back."
    )
    max_new_tokens: int = Field(default=768, gt=0, description="Longest solution the teacher may write.")
    temperature: float = Field(default=0.0, ge=0, description="Sampling temperature.")

    @model_validator(mode="after")
    def _needs_problems(self) -> CodeSettings:
        if self.count and (self.problems is None or self.license is None):
            raise ValueError(
                "needs 'problems': a HumanEval-style JSONL file (task_id, prompt, test, entry_point), "
                "and 'license': the SPDX id of that file"
            )
        return self


def load_code_problems(path: str | Path) -> list[dict[str, str]]:
    """HumanEval-style problems ``{task_id, prompt, test, entry_point}`` from a JSONL, JSON, CSV or Parquet file
    (``.gz`` read as such), through the one reader layer."""
    path = Path(path)
    problems = []
    for number, item in read_objects(path):
        missing = {"task_id", "prompt", "test", "entry_point"} - set(item)
        if missing:
            raise ValueError(
                f"{path}, record {number}: code problem lacks {sorted(missing)} "
                "(HumanEval layout: task_id, prompt, test, entry_point)"
            )
        problems.append(item)
    return problems


def extract_code(text: str) -> str:
    """The first fenced code block of a reply (``` or ~~~, untagged or python), or the whole reply when it
    has none."""
    block = first_fenced_block(text, ("python", "py"))
    return (text if block is None else block).strip("\n")


def completion_for(problem: Mapping[str, str], code: str) -> str:
    """What to append to the problem's prompt: a full redefinition of the entry point (kept as is;
    the prompt's stub with only a docstring is valid Python and is simply replaced), else a body."""
    if re.search(rf"^\s*def\s+{re.escape(problem['entry_point'])}\s*\(", code, re.M):
        return "\n" + code + "\n"
    return code if code.startswith((" ", "\t")) else "\n".join("    " + ln for ln in code.splitlines()) + "\n"


@dataclass
class _Attempt:
    problem: Mapping[str, str]
    messages: list[dict[str, str]]
    history: list[dict[str, Any]]
    solution: str = ""
    passed: bool = False
    generations: list[Generation] = field(default_factory=list)  # every round's, for provenance


def code_candidates(
    ctx: SynthContext, problems: Sequence[Mapping[str, str]], settings: CodeSettings
) -> list[Candidate]:
    """Solve, test, repair (at most ``max_repairs`` rounds); every attempt is in the verification record, with
    the sandbox's isolation and what the lint step did.

    Raises :class:`curation.synth.sandbox.SandboxSetupError` when the sandbox cannot run: no verdict then; its
    subclass :class:`~curation.synth.sandbox.SandboxUnavailable` before any teacher request when the sandbox
    is incomplete here and ``ctx.allow_weaker_sandbox`` is off.
    """
    # Checked before the first request: a sandbox that will refuse must not cost a teacher's tokens.
    isolation = require_isolation(ctx.allow_weaker_sandbox) if problems else None
    lint_status = ""
    max_repairs = settings.max_repairs
    params = GenerationParams(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, seed=ctx.seed)
    attempts = [_Attempt(p, list(user_turn(_CODE_PROMPT.format(prompt=p["prompt"]))), []) for p in problems]
    todo = attempts
    for round_no in range(max_repairs + 1):
        gens = ctx.teacher.generate([ChatRequest(tuple(a.messages), params) for a in todo])
        for attempt, gen in zip(todo, gens, strict=True):
            attempt.generations.append(gen)
            problem = attempt.problem
            no_answer = unsupported(gen)
            if no_answer:
                attempt.history.append({"round": round_no, "status": "no_code", "message": no_answer})
                continue
            code = extract_code(gen.text)
            result = run_unit_tests(
                problem["prompt"],
                completion_for(problem, code),
                problem["test"],
                problem["entry_point"],
                ctx.limits,
                allow_weaker=ctx.allow_weaker_sandbox,
            )
            lint_status = result.lint_status or lint_status
            attempt.solution = code
            attempt.passed = result.passed
            attempt.history.append({"round": round_no, "status": result.status, "message": result.message[:500]})
            attempt.messages += [
                {"role": "assistant", "content": gen.text},
                {"role": "user", "content": _REPAIR_PROMPT.format(message=result.message)},
            ]
        todo = [a for a in todo if not a.passed and a.history[-1]["status"] != "no_code"]
        if not todo:
            break
    out = []
    for attempt in attempts:
        problem = attempt.problem
        row_id = make_row_id("synthetic", "code", problem["task_id"], ctx.info.model, str(ctx.seed))
        row = derived_row(
            ctx,
            [],
            row_id,
            base_license=settings.license,
            extra={"task_id": problem["task_id"], "entry_point": problem["entry_point"], "task_type": "code"},
            kind="sft",
            messages=[attempt.messages[0], {"role": "assistant", "content": f"```python\n{attempt.solution}\n```"}],
            source_uri=f"{settings.problems or 'code'}#{problem['task_id']}",
        )
        last = attempt.history[-1]
        rounds = sum(1 for h in attempt.history if h["status"] != "no_code")
        checks = {
            "tests_passed": attempt.passed,
            "repair_rounds": max(0, rounds - 1),
            "attempts": attempt.history,
            # Which isolation ran the tests (full, or the weaker sandbox the project file allowed) and whether
            # lint ran or was skipped for want of ruff.
            "sandbox": isolation,
            "lint": lint_status or None,
        }
        out.append(
            Candidate(
                row=row,
                method="code",
                generation_params={
                    **params_record(params),
                    "max_repairs": max_repairs,
                    **backend_record(ctx, attempt.generations),
                },
                prompt_template="code:solve+repair",
                checks=checks,
                skip_judge=attempt.passed,
                failed=None
                if attempt.passed
                else f"unit tests still fail after {rounds} attempt(s): {last['status']}"
                if rounds
                else f"teacher produced no code: {last['message']}",
            )
        )
    return out


@synthesis_method(
    "code",
    CodeSettings,
    order=70,
    produces="`sft` rows, origin `synthetic`: a problem and a solution that passed its unit tests",
)
def code(ctx: SynthContext, seeds: Sequence[Row], settings: CodeSettings) -> list[Candidate]:
    """Solutions to ``count`` problems of a HumanEval-style file, checked by parsing, linting and the unit
    tests in the sandbox, repaired with the error fed back; only passing solutions are kept."""
    path = Path(settings.problems or "")
    if ctx.base_dir is not None and not path.is_absolute():
        path = ctx.base_dir / path
    problems = load_code_problems(path)
    picked = sorted(problems, key=lambda p: stable_unit(ctx.seed, "code", p["task_id"]))[: settings.count]
    return code_candidates(ctx, picked, settings)
