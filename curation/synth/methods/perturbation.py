"""Perturbation: noisy copies of human instructions with the human response kept."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field, field_validator

from curation.core.provenance import lineage_record
from curation.core.schema import Row, make_row_id
from curation.synth.methods.base import MethodSettings, SynthContext, derived_row, first_user_index
from curation.synth.methods.registry import synthesis_method
from curation.synth.teachers import PERTURBATIONS, perturb
from curation.synth.verify import Candidate


class PerturbationSettings(MethodSettings):
    rate: float = Field(default=0.15, ge=0, le=1, description="Share of the instruction's words touched.")
    kinds: tuple[str, ...] = Field(
        default=PERTURBATIONS, min_length=1, description="Perturbations used in turn: typo, word_swap, casing."
    )

    seed_salt = "perturbation"

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(kinds) - set(PERTURBATIONS))
        if unknown:
            raise ValueError(f"unknown {unknown}; choose from {list(PERTURBATIONS)}")
        return kinds

    def eligible(self, row: Row) -> bool:
        return row.get("kind") in ("sft", "chat") and first_user_index(row) is not None


@synthesis_method(
    "perturbation",
    PerturbationSettings,
    order=10,
    produces="`sft`/`chat` rows, origin `augmented`: the parent's response, a perturbed instruction",
)
def perturbation(ctx: SynthContext, seeds: Sequence[Row], settings: PerturbationSettings) -> list[Candidate]:
    """Noisy copies of instructions (typos, swapped words, casing) with the human response kept, for
    robustness to messy user input (Belinkov & Bisk 2018).

    The response is the parent's, already through the filters, so no judge is asked."""
    rate, kinds = settings.rate, settings.kinds
    out: list[Candidate] = []
    for position, parent in enumerate(settings.pick_seeds(seeds, ctx.seed)):
        kind = kinds[position % len(kinds)]
        index = first_user_index(parent)
        assert index is not None  # eligible rows have one
        messages = [dict(m) for m in parent["messages"]]
        original = messages[index]["content"]
        messages[index]["content"] = perturb(original, kind, seed=ctx.seed, rate=rate)
        row_id = make_row_id(parent["row_id"], "perturb", kind, str(ctx.seed))
        row = derived_row(
            ctx,
            [parent],
            row_id,
            extra=parent.get("extra"),
            origin="augmented",
            kind=parent["kind"],
            messages=messages,
            source=parent["source"],
            source_uri=parent["source_uri"],
            annotator=parent.get("annotator"),
        )
        changed = messages[index]["content"] != original
        out.append(
            Candidate(
                row=row,
                method="perturbation",
                parent_ids=(parent["row_id"],),
                lineage=(
                    lineage_record(
                        row_id,
                        parent["row_id"],
                        "synthetic",
                        f"perturb:{kind}",
                        f"messages[{index}].content perturbed ({kind}, rate {rate})",
                    ),
                ),
                generation_params={"perturbation": kind, "rate": rate, "seed": ctx.seed},
                prompt_template=f"perturb:{kind}",
                checks={"changed": changed, "response": "kept from parent"},
                failed=None if changed else "perturbation left the instruction unchanged",
                skip_judge=True,
                generated="none",
            )
        )
    return out
