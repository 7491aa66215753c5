"""What every synthesis method shares: its settings base (``count``), the context it runs in, and the
helpers that build candidate rows (licence and terms inherited from parents and teacher)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.core.hashing import stable_unit
from curation.core.licenses import LicensePolicy, combine
from curation.core.provenance import TeacherInfo, lineage_record
from curation.core.schema import KINDS, Row, make_row_id, new_row
from curation.synth.sandbox import SandboxLimits
from curation.synth.teachers import Generation, GenerationParams, Teacher
from curation.synth.terms import ModelTerms, inherited_terms
from curation.synth.verify import Candidate, Judge


class MethodSettings(BaseModel):
    """The settings every method takes; a method's own model adds its keys, and unknown keys are refused
    (a typo never silently falls back to a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    count: int = Field(
        default=0,
        ge=0,
        strict=True,
        description="How many candidates to make (seed rows, problems or matrix cells); 0 turns the method off.",
    )

    # Salt of the seeded hash that picks this method's seed rows (part of the candidate ids' history: a new
    # salt picks other rows); None for methods that take no seed rows.
    seed_salt: ClassVar[str | None] = None

    def eligible(self, row: Row) -> bool:
        """Whether ``row`` may seed this method; methods without seed rows take none."""
        return False

    def pick_seeds(self, rows: Iterable[Row], seed: int) -> list[Row]:
        """The ``count`` eligible rows with the smallest seeded hash of their ids, in that order: stable as data
        grows, independent of input order. :func:`~curation.synth.methods.registry.select_seeds` streams the
        same choice out of the whole ``filtered`` table."""
        if self.seed_salt is None:
            return []
        salt = self.seed_salt
        return sorted((r for r in rows if self.eligible(r)), key=lambda r: stable_unit(seed, salt, r["row_id"]))[
            : self.count
        ]


class SeedInstructionSettings(MethodSettings):
    """Settings of methods that answer the instruction of seed rows (its first user message)."""

    seed_kinds: list[str] = Field(
        default_factory=lambda: ["prompt", "sft"],
        min_length=1,
        description="Kinds of filtered rows whose first instruction may seed the method.",
    )

    @field_validator("seed_kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown row kinds {unknown}; choose from {list(KINDS)}")
        return kinds

    def eligible(self, row: Row) -> bool:
        return row.get("kind") in self.seed_kinds and first_user_index(row) is not None


@dataclass(frozen=True)
class SynthContext:
    """What every method needs besides its own settings."""

    teacher: Teacher
    info: TeacherInfo  # the teacher as registered in the policy (licence and terms)
    policy: LicensePolicy
    registry: Mapping[str, ModelTerms]
    seed: int = 0
    source: str = "synthetic"
    judge: Judge | None = None  # scores responses in verification; preference pairs need it
    base_dir: Path | None = None  # relative paths in method settings (code problems) are read from here
    limits: SandboxLimits | None = None  # sandbox limits for generated code; None: the defaults
    # Run generated code even where the sandbox is incomplete (synthesis.sandbox.allow_weaker); off, the code
    # method refuses (curation.synth.sandbox.SandboxUnavailable) before asking the teacher for anything.
    allow_weaker_sandbox: bool = False


def derived_row(
    ctx: SynthContext,
    parents: Sequence[Row],
    row_id: str,
    extra: Mapping[str, Any] | None = None,
    origin: str = "synthetic",
    base_license: str | None = None,
    **fields: Any,
) -> Row:
    """A new canonical row that owes every obligation of what it was made from: its licence is the conjunction
    (:func:`curation.core.licenses.combine`) of its parents', the teacher's and ``base_license`` (the licence
    of a parentless seed pool such as a code problem set), and its terms the union of theirs."""
    licenses = [p.get("license") for p in parents] + [ctx.info.license] + ([base_license] if base_license else [])
    terms = inherited_terms(parents, ctx.info, ctx.registry)
    extra_out = dict(extra or {})
    if terms["forbids"] or terms["terms"]:
        extra_out["terms"] = terms
    return new_row(
        row_id=row_id,
        license=combine(licenses),
        origin=origin,
        generator=ctx.info.model,
        extra=extra_out or None,
        source=fields.pop("source", ctx.source),
        **fields,
    )


def first_user_index(row: Row) -> int | None:
    """Position of the first non-empty user message, or None."""
    for index, message in enumerate(row.get("messages") or []):
        if message.get("role") == "user" and (message.get("content") or "").strip():
            return index
    return None


def seed_prompts(seeds: Iterable[Row], kinds: Sequence[str]) -> list[tuple[Row, str]]:
    """(row, instruction) for single-instruction seed rows of the given kinds."""
    out = []
    for row in seeds:
        if row.get("kind") not in kinds:
            continue
        index = first_user_index(row)
        if index is not None:
            out.append((row, row["messages"][index]["content"]))
    return out


def user_turn(content: str) -> tuple[dict[str, str], ...]:
    """A conversation of one user message."""
    return ({"role": "user", "content": content},)


def unsupported(gen: Generation) -> str | None:
    """Why a generation is no answer (the procedural teacher's "unsupported", an empty text), or None."""
    if gen.finish_reason == "unsupported":
        return "teacher cannot do this (procedural rules have no answer; configure a model teacher)"
    if not gen.text.strip():
        return "teacher returned an empty generation"
    return None


def params_record(p: GenerationParams) -> dict[str, Any]:
    """Generation parameters as they go into provenance (what was requested)."""
    return {"temperature": p.temperature, "max_new_tokens": p.max_new_tokens, "top_p": p.top_p, "seed": p.seed}


_REQUESTED = ("temperature", "top_p", "max_new_tokens", "seed")  # the fields of GenerationParams


def backend_record(ctx: SynthContext, generations: Sequence[Generation]) -> dict[str, Any]:
    """What the backend reported for the generations that made one row, as provenance records it beside the
    requested parameters: ``effective`` (the sampling it confirms it applied; a list when the generations
    differ, e.g. one seed per sample), ``not_confirmed`` and a ``note`` for requested parameters it could not
    confirm (an OpenAI-compatible server reports none), and under ``served`` the model id and system
    fingerprint the server answered with (taken out into provenance columns by
    :func:`curation.synth.stage.accepted_row`). Empty for no generations."""
    out: dict[str, Any] = {}
    if not generations:
        return out
    known = [dict(g.effective_params) for g in generations if g.effective_params is not None]
    if known:
        out["effective"] = known[0] if all(e == known[0] for e in known) else known
    unconfirmed = sorted(
        {k for g in generations for k in _REQUESTED if g.effective_params is None or k not in g.effective_params}
    )
    if unconfirmed:
        out["not_confirmed"] = unconfirmed
        out["note"] = (
            f"{', '.join(unconfirmed)} requested, not confirmed: the {ctx.info.backend} backend did not report "
            "the sampling it applied"
        )
    served = {
        "model": ", ".join(sorted({g.served_model for g in generations if g.served_model})) or None,
        "system_fingerprint": ", ".join(sorted({g.system_fingerprint for g in generations if g.system_fingerprint}))
        or None,
    }
    if any(served.values()):
        out["served"] = served
    return out


def response_rows(
    ctx: SynthContext,
    method: str,
    parent: Row | None,
    instruction: str,
    generations: Sequence[Generation],
    params: Sequence[GenerationParams],
    *,
    extra: Mapping[str, Any] | None = None,
    topic: str | None = None,
    template: str = "instruction",
    lineage_op: str = "respond",
    instruction_generation: Generation | None = None,
) -> list[Candidate]:
    """One ``sft`` candidate per generated response to ``instruction`` (several when sampled with several
    seeds), linked to ``parent`` when the instruction came from a seed row; ``instruction_generation``: the
    generation that wrote the instruction, when the teacher wrote it (its backend report joins the row's)."""
    out = []
    parents = [parent] if parent is not None else []
    for gen, p in zip(generations, params, strict=True):
        row_id = make_row_id("synthetic", method, instruction, str(p.seed), ctx.info.model)
        row = derived_row(
            ctx,
            parents,
            row_id,
            extra=extra,
            kind="sft",
            messages=[{"role": "user", "content": instruction}, {"role": "assistant", "content": gen.text}],
            source_uri=f"teacher:{ctx.info.model}/{method}",
        )
        ids = tuple(r["row_id"] for r in parents)
        edges = tuple(
            lineage_record(row_id, pid, "synthetic", lineage_op, "response generated by the teacher") for pid in ids
        )
        out.append(
            Candidate(
                row=row,
                method=method,
                parent_ids=ids,
                lineage=edges,
                generation_params={
                    "temperature": p.temperature,
                    "max_new_tokens": p.max_new_tokens,
                    "seed": p.seed,
                    "finish_reason": gen.finish_reason,
                    **backend_record(ctx, [g for g in (instruction_generation, gen) if g is not None]),
                },
                prompt_template=template,
                topic=topic,
                failed=unsupported(gen),
            )
        )
    return out
