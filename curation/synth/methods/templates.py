"""Templated word problems (arithmetic, unit conversions) whose answers are computed, not generated."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from pydantic import Field

from curation.core.schema import Row, make_row_id
from curation.synth.judges import mentions_value
from curation.synth.methods.base import MethodSettings, SynthContext, backend_record, derived_row, user_turn
from curation.synth.methods.registry import synthesis_method
from curation.synth.teachers import ChatRequest, GenerationParams, arithmetic_problem, unit_problem
from curation.synth.verify import Candidate

_PRODUCES = "`sft` rows, origin `synthetic`, with `extra.expected_answer`"


class TemplateSettings(MethodSettings):
    max_new_tokens: int = Field(default=128, gt=0, description="Longest answer the teacher may write.")


def template_candidates(
    ctx: SynthContext, method: str, make: Callable[[random.Random], tuple[str, str]], settings: TemplateSettings
) -> list[Candidate]:
    """``count`` distinct problems from ``make``; the teacher answers, and the answer must contain the
    computed value (exact comparison of numbers)."""
    rng = random.Random(f"{ctx.seed}:{method}")
    problems: dict[str, str] = {}
    count = settings.count
    for _ in range(count * 20):  # templates repeat now and then: draw until `count` distinct ones
        if len(problems) >= count:
            break
        question, expected = make(rng)
        problems.setdefault(question, expected)
    params = GenerationParams(seed=ctx.seed, max_new_tokens=settings.max_new_tokens)
    generations = ctx.teacher.generate([ChatRequest(user_turn(q), params) for q in problems])
    out = []
    for (question, expected), gen in zip(problems.items(), generations, strict=True):
        answer = gen.text
        matches = bool(answer.strip()) and mentions_value(answer, expected)
        row_id = make_row_id("synthetic", method, question, str(ctx.seed))
        row = derived_row(
            ctx,
            [],
            row_id,
            extra={"expected_answer": expected, "task_type": method},
            kind="sft",
            messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            source_uri=f"teacher:{ctx.info.model}/{method}",
        )
        out.append(
            Candidate(
                row=row,
                method=f"template:{method}",
                generation_params={"seed": ctx.seed, **backend_record(ctx, [gen])},
                prompt_template=method,
                checks={"expected": expected, "answer_matches": matches},
                failed=None if matches else f"answer does not contain the computed {expected}",
                skip_judge=matches,
            )
        )
    return out


@synthesis_method("arithmetic", TemplateSettings, order=20, produces=_PRODUCES)
def arithmetic(ctx: SynthContext, seeds: Sequence[Row], settings: TemplateSettings) -> list[Candidate]:
    """Arithmetic word problems with exact computed answers; only teacher answers that contain the
    computed value pass (no judge needed)."""
    return template_candidates(ctx, "arithmetic", arithmetic_problem, settings)


@synthesis_method("units", TemplateSettings, order=30, produces=_PRODUCES)
def units(ctx: SynthContext, seeds: Sequence[Row], settings: TemplateSettings) -> list[Candidate]:
    """Unit-conversion questions with exact computed answers; only teacher answers that contain the
    computed value pass (no judge needed)."""
    return template_candidates(ctx, "units", unit_problem, settings)
