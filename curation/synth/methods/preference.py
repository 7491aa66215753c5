"""Preference pairs: several responses judged; the best and worst when the judge is sure."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import Field

from curation.core.provenance import lineage_record
from curation.core.schema import Row, make_row_id
from curation.synth.methods.base import (
    SeedInstructionSettings,
    SynthContext,
    backend_record,
    derived_row,
    params_record,
    seed_prompts,
    user_turn,
)
from curation.synth.methods.registry import synthesis_method
from curation.synth.teachers import ChatRequest, GenerationParams
from curation.synth.verify import Candidate


class PreferenceSettings(SeedInstructionSettings):
    samples: int = Field(default=4, ge=2, description="Responses sampled per instruction (each with its own seed).")
    min_score_gap: float = Field(
        default=1.0,
        ge=0,
        description="Smallest judge-score difference between the best and the worst response that makes a pair.",
    )
    temperature: float = Field(default=0.8, ge=0, description="Sampling temperature.")
    max_new_tokens: int = Field(default=512, gt=0, description="Longest response the teacher may write.")

    seed_salt = "preference"


@synthesis_method(
    "preference",
    PreferenceSettings,
    order=80,
    produces="`preference` rows, origin `synthetic`: the instruction, chosen and rejected responses",
)
def preference(ctx: SynthContext, seeds: Sequence[Row], settings: PreferenceSettings) -> list[Candidate]:
    """``samples`` responses per instruction scored by the judge; the best and worst become a pair when their
    scores differ by ``min_score_gap`` and the pairwise judge, asked in both orders, prefers the best."""
    judge = ctx.judge
    if judge is None:
        raise ValueError("synthesis.methods.preference needs a judge (synthesis.judge)")
    samples, gap = settings.samples, settings.min_score_gap
    chosen = {r["row_id"] for r in settings.pick_seeds(seeds, ctx.seed)}
    pairs = [(r, p) for r, p in seed_prompts(seeds, settings.seed_kinds) if r["row_id"] in chosen]
    params = [
        GenerationParams(temperature=settings.temperature, max_new_tokens=settings.max_new_tokens, seed=ctx.seed + k)
        for k in range(samples)
    ]
    gens = ctx.teacher.generate([ChatRequest(user_turn(prompt), p) for _, prompt in pairs for p in params])
    texts = [g.text for g in gens]
    verdicts = (
        judge.score([(prompt, texts[i * samples + k]) for i, (_, prompt) in enumerate(pairs) for k in range(samples)])
        if texts
        else []
    )
    staged: list[tuple[Row, str, str, str, list[int | None], dict[str, Any]]] = []
    out: list[Candidate] = []
    for i, (parent, prompt) in enumerate(pairs):
        options = texts[i * samples : (i + 1) * samples]
        scores = [v.score for v in verdicts[i * samples : (i + 1) * samples]]
        scored = [(s, k) for k, s in enumerate(scores) if s is not None and options[k].strip()]
        best = max(scored, default=None, key=lambda sk: (sk[0], -sk[1]))  # the first of equals
        worst = min(scored, default=None, key=lambda sk: (sk[0], sk[1]))
        row_id = make_row_id(parent["row_id"], "preference", ctx.info.model, str(ctx.seed))
        if best is None or worst is None or best[0] - worst[0] < gap:
            row = derived_row(
                ctx,
                [parent],
                row_id,
                kind="preference",
                messages=list(user_turn(prompt)),
                source_uri=f"teacher:{ctx.info.model}/preference",
            )
            out.append(
                Candidate(
                    row=row,
                    method="preference",
                    parent_ids=(parent["row_id"],),
                    checks={"scores": scores},
                    skip_judge=True,
                    failed=f"no pair: judge scores {scores} differ by less than {gap:g}",
                )
            )
            continue
        backend = backend_record(ctx, gens[i * samples : (i + 1) * samples])
        staged.append((parent, prompt, options[best[1]], options[worst[1]], scores, backend))
    confirmations = judge.compare([(prompt, a, b) for _, prompt, a, b, _, _ in staged]) if staged else []
    for (parent, prompt, chosen_text, rejected_text, scores, backend), verdict in zip(
        staged, confirmations, strict=True
    ):
        row_id = make_row_id(parent["row_id"], "preference", ctx.info.model, str(ctx.seed))
        row = derived_row(
            ctx,
            [parent],
            row_id,
            kind="preference",
            messages=list(user_turn(prompt)),
            chosen=[{"role": "assistant", "content": chosen_text}],
            rejected=[{"role": "assistant", "content": rejected_text}],
            source_uri=f"teacher:{ctx.info.model}/preference",
        )
        agrees = verdict.consistent and verdict.winner == "a"
        candidate = Candidate(
            row=row,
            method="preference",
            parent_ids=(parent["row_id"],),
            lineage=(
                lineage_record(
                    row_id,
                    parent["row_id"],
                    "synthetic",
                    "preference",
                    f"{samples} sampled responses judged; best and worst kept",
                ),
            ),
            generation_params={"samples": samples, **params_record(params[0]), **backend},
            prompt_template="preference",
            checks={
                "scores": scores,
                "pairwise": {
                    "winner": verdict.winner,
                    "consistent": verdict.consistent,
                    "raw_ab": verdict.raw_ab[:300],
                    "raw_ba": verdict.raw_ba[:300],
                    **verdict.served,  # what the judge's server said answered
                },
            },
            skip_judge=True,
            failed=None if agrees else "pairwise judge did not prefer the best-scored response in both orders",
        )
        candidate.judge_score = float(max(s for s in scores if s is not None))
        out.append(candidate)
    return out
