"""Responses: the teacher answers the instructions of seed rows."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from curation.core.schema import Row
from curation.synth.methods.base import (
    SeedInstructionSettings,
    SynthContext,
    response_rows,
    seed_prompts,
    user_turn,
)
from curation.synth.methods.registry import synthesis_method
from curation.synth.teachers import ChatRequest, GenerationParams
from curation.synth.verify import Candidate


class ResponsesSettings(SeedInstructionSettings):
    per_instruction: int = Field(default=1, ge=1, description="Responses per instruction, each with its own seed.")
    temperature: float | None = Field(
        default=None,
        ge=0,
        description="Sampling temperature; unset: 0 for one response, 0.7 for several "
        "(several greedy samples would all be the same).",
    )
    max_new_tokens: int = Field(default=512, gt=0, description="Longest response the teacher may write.")

    seed_salt = "responses"


@synthesis_method(
    "responses",
    ResponsesSettings,
    order=40,
    produces="`sft` rows, origin `synthetic`: a seed instruction and a teacher response",
)
def responses(ctx: SynthContext, seeds: Sequence[Row], settings: ResponsesSettings) -> list[Candidate]:
    """``per_instruction`` responses (different seeds) for each of ``count`` seed instructions."""
    per = settings.per_instruction
    chosen = settings.pick_seeds(seeds, ctx.seed)
    prompts = {r["row_id"]: p for r, p in seed_prompts(chosen, settings.seed_kinds)}
    temperature = settings.temperature if settings.temperature is not None else 0.7 if per > 1 else 0.0
    jobs = [
        (
            row,
            [
                GenerationParams(temperature=temperature, max_new_tokens=settings.max_new_tokens, seed=ctx.seed + k)
                for k in range(per)
            ],
        )
        for row in chosen
    ]
    requests = [ChatRequest(user_turn(prompts[row["row_id"]]), p) for row, ps in jobs for p in ps]
    generations = iter(ctx.teacher.generate(requests))
    out: list[Candidate] = []
    for row, ps in jobs:
        gens = [next(generations) for _ in ps]
        task_type = (row.get("extra") or {}).get("task_type")
        out += response_rows(
            ctx,
            "responses",
            row,
            prompts[row["row_id"]],
            gens,
            ps,
            extra={"task_type": task_type} if task_type else None,
        )
    return out
