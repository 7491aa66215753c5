"""Reverse instruction: the prompt that would elicit a long human text; the text stays the response."""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from curation.core.provenance import lineage_record
from curation.core.schema import Row, make_row_id
from curation.synth.methods.base import (
    MethodSettings,
    SynthContext,
    backend_record,
    derived_row,
    unsupported,
    user_turn,
)
from curation.synth.methods.registry import synthesis_method
from curation.synth.teachers import ChatRequest, GenerationParams
from curation.synth.verify import Candidate

# Reverse instruction ("instruction backtranslation", Li et al. 2024, "Self-Alignment with
# Instruction Backtranslation"; LongForm, Köksal et al. 2023): the human text is the answer.
_REVERSE_PROMPT = (
    "Below is a text written by a person. Write the instruction or question a user could have given to an AI "
    "assistant for which this text would be an excellent answer. Reply with the instruction only.\n\n"
    "[Text]\n{text}"
)


def long_human_text(row: Row) -> str | None:
    """The human-written text of a ``text`` row, or the only answer of an ``sft`` row; None otherwise."""
    if row.get("origin") != "human":
        return None
    if row.get("kind") == "text":
        text: str | None = row.get("text")
        return text
    if row.get("kind") == "sft":
        answers = [m.get("content") or "" for m in row.get("messages") or [] if m.get("role") == "assistant"]
        return answers[0] if len(answers) == 1 else None
    return None


class ReverseInstructionSettings(MethodSettings):
    min_words: int = Field(default=120, ge=0, description="Shortest human text (in words) worth an instruction.")
    max_new_tokens: int = Field(default=200, gt=0, description="Longest instruction the teacher may write.")

    seed_salt = "reverse"

    def eligible(self, row: Row) -> bool:
        text = long_human_text(row)
        return bool(text) and len((text or "").split()) >= self.min_words


@synthesis_method(
    "reverse_instruction",
    ReverseInstructionSettings,
    order=60,
    produces="`sft` rows, origin `augmented`: a generated instruction, the human text as response",
)
def reverse_instruction(
    ctx: SynthContext, seeds: Sequence[Row], settings: ReverseInstructionSettings
) -> list[Candidate]:
    """For ``count`` human texts of at least ``min_words`` words, generate the prompt; the text stays
    the response (origin ``augmented``: the answer is human-written)."""
    chosen = {r["row_id"] for r in settings.pick_seeds(seeds, ctx.seed)}
    docs = [(r, long_human_text(r) or "") for r in seeds if r["row_id"] in chosen and settings.eligible(r)]
    params = GenerationParams(seed=ctx.seed, max_new_tokens=settings.max_new_tokens)
    gens = ctx.teacher.generate([ChatRequest(user_turn(_REVERSE_PROMPT.format(text=t)), params) for _, t in docs])
    out = []
    for (parent, text), gen in zip(docs, gens, strict=True):
        instruction = gen.text.strip().strip('"').strip()
        row_id = make_row_id(parent["row_id"], "reverse_instruction", ctx.info.model, str(ctx.seed))
        row = derived_row(
            ctx,
            [parent],
            row_id,
            extra=parent.get("extra"),
            origin="augmented",
            kind="sft",
            messages=[{"role": "user", "content": instruction}, {"role": "assistant", "content": text}],
            source=parent["source"],
            source_uri=parent["source_uri"],
            annotator=parent.get("annotator"),
        )
        problem = unsupported(gen)
        if problem is None and len(instruction.split()) >= len(text.split()):
            problem = "generated instruction is not shorter than the text it should elicit"
        out.append(
            Candidate(
                row=row,
                method="reverse_instruction",
                parent_ids=(parent["row_id"],),
                lineage=(
                    lineage_record(
                        row_id,
                        parent["row_id"],
                        "synthetic",
                        "reverse_instruction",
                        "instruction generated for the human-written response",
                    ),
                ),
                generation_params={
                    "seed": ctx.seed,
                    "max_new_tokens": params.max_new_tokens,
                    **backend_record(ctx, [gen]),
                },
                prompt_template="reverse_instruction",
                checks={"response": "human text kept verbatim"},
                failed=problem,
                generated="instruction",
            )
        )
    return out
