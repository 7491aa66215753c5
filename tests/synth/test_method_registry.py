"""The synthesis-method registry: one decorated function plus its settings model is a method (validated,
run in its order, documented); the generated reference in docs/ matches the registry; the stage entry point
the asset calls validates before any model is loaded."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pytest
from pydantic import Field

from curation.core.config import SynthesisConfig, load_project
from curation.core.licenses import LicensePolicy
from curation.core.provenance import lineage_record
from curation.core.schema import Row, make_row_id, new_row
from curation.synth.judges import ProceduralJudge
from curation.synth.methods import (
    MethodSettings,
    SynthContext,
    methods_reference,
    registered_methods,
    select_seeds,
    synthesis_method,
    validate_methods,
)
from curation.synth.methods import registry as method_registry
from curation.synth.methods.base import derived_row
from curation.synth.stage import SynthesisPlan, synthesize
from curation.synth.teachers import ProceduralTeacher
from curation.synth.verify import Candidate, VerifySettings
from tests.conftest import DEMO_CONFIG

NOW = datetime(2026, 1, 1)


class WordCountSettings(MethodSettings):
    unit: str = Field(default="words", min_length=1, description="What the answer counts.")

    seed_salt = "word_count"

    def eligible(self, row: Row) -> bool:
        return row.get("kind") == "prompt"


def word_count(ctx: SynthContext, seeds: Sequence[Row], settings: WordCountSettings) -> list[Candidate]:
    """Answers each picked prompt with the number of its words.

    A throwaway method: it exists only in this test module."""
    out = []
    for parent in settings.pick_seeds(seeds, ctx.seed):
        prompt = parent["messages"][0]["content"]
        row_id = make_row_id(parent["row_id"], "word_count", str(ctx.seed))
        row = derived_row(
            ctx,
            [parent],
            row_id,
            kind="sft",
            messages=[
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": f"It has {len(prompt.split())} {settings.unit}."},
            ],
            source_uri=f"teacher:{ctx.info.model}/word_count",
        )
        out.append(
            Candidate(
                row=row,
                method="word_count",
                parent_ids=(parent["row_id"],),
                lineage=(lineage_record(row_id, parent["row_id"], "synthetic", "word_count"),),
                prompt_template="word_count",
                checks={"counted": True},
                skip_judge=True,
            )
        )
    return out


@pytest.fixture
def with_word_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """``word_count`` registered with the decorator, in a copy of the registry that the test leaves behind."""
    monkeypatch.setattr(method_registry, "REGISTRY", dict(method_registry.REGISTRY))
    synthesis_method("word_count", WordCountSettings, order=1000, produces="`sft` rows")(word_count)


def prompt_row(row_id: str, prompt: str) -> Row:
    return new_row(
        row_id=row_id,
        kind="prompt",
        messages=[{"role": "user", "content": prompt}],
        source="seeds",
        source_uri=f"seeds.jsonl#{row_id}",
        license="MIT",
        origin="human",
    )


def test_the_built_in_methods_run_in_their_fixed_order() -> None:
    # The order decides which of two identical candidates is rejected as the duplicate: it must not drift.
    assert [m.name for m in registered_methods()] == [
        "perturbation",
        "arithmetic",
        "units",
        "responses",
        "instructions",
        "reverse_instruction",
        "code",
        "preference",
    ]


def test_a_method_registered_in_a_test_module_is_validated_dispatched_and_traced(with_word_count) -> None:
    with pytest.raises(
        ValueError,
        match=r"^synthesis\.methods\.word_count: unknown keys \['units'\]; "
        r"allowed: \['count', 'unit'\]$",
    ):
        validate_methods({"word_count": {"count": 1, "units": "tokens"}})
    with pytest.raises(
        ValueError,
        match=r"^synthesis\.methods\.word_count\.unit: String should have at least 1 "
        r"character \(got ''\)$",
    ):
        validate_methods({"word_count": {"count": 1, "unit": ""}})
    with pytest.raises(ValueError, match="registered twice"):
        synthesis_method("word_count", WordCountSettings, order=1, produces="")(word_count)

    seeds = [prompt_row(f"p{i}", f"Name {i + 2} rivers in Europe") for i in range(5)]
    seeds.append(
        new_row(
            row_id="t0",
            kind="text",
            text="Not a prompt.",
            source="seeds",
            source_uri="seeds#t0",
            license="MIT",
            origin="human",
        )
    )
    methods = {"word_count": {"count": 2, "unit": "tokens"}, "arithmetic": {"count": 1}}
    ctx = SynthContext(ProceduralTeacher(), ProceduralTeacher().info, LicensePolicy(), {}, judge=ProceduralJudge())
    result = synthesize(ctx, seeds, methods, VerifySettings(), "research", NOW)
    # Run order: arithmetic (order 20) before the new method (order 1000).
    assert [s.provenance.method for s in result.accepted] == ["template:arithmetic", "word_count", "word_count"]
    for s in result.accepted[1:]:
        (parent_id,) = s.provenance.parent_ids
        parent = next(r for r in seeds if r["row_id"] == parent_id)
        assert s.row["messages"][1]["content"] == f"It has {len(parent['messages'][0]['content'].split())} tokens."
        assert s.row["origin"] == "synthetic" and s.row["license"] == "CC0-1.0 AND MIT"  # parent's and teacher's
        assert s.provenance.verification["method_checks"] == {"counted": True}
        assert s.lineage == (lineage_record(s.row["row_id"], parent_id, "synthetic", "word_count"),)
    # The streaming seed selection knows the new method's eligibility and pick.
    assert {r["row_id"] for r in select_seeds(iter(seeds), methods, 0)} == {
        p for s in result.accepted[1:] for p in s.provenance.parent_ids
    }
    # And the reference lists it, with its settings.
    reference = methods_reference()
    assert "| `word_count` | `sft` rows | Answers each picked prompt with the number of its words. |" in reference
    assert '| `unit` | str | `"words"` | What the answer counts. |' in reference


def test_the_stage_refuses_bad_method_settings_before_any_model_is_loaded() -> None:
    config = load_project(DEMO_CONFIG)
    bad = config.model_copy(update={"synthesis": SynthesisConfig(methods={"responses": {"count": 1, "n": 2}})})
    with pytest.raises(ValueError, match=r"synthesis\.methods\.responses: unknown keys \['n'\]"):
        SynthesisPlan.from_config(bad)
    plan = SynthesisPlan.from_config(
        config.model_copy(
            update={
                "synthesis": SynthesisConfig(methods={"arithmetic": {"count": 2}, "responses": {"count": 1}}, seed=4)
            }
        )
    )
    seeds = (prompt_row(f"p{i}", f"What is {i} + {i}?") for i in range(30))  # streamed, read once
    result = plan.run(ProceduralTeacher(), ProceduralJudge(), seeds, NOW)
    assert [r["method"] for r in result.counts()] == ["responses", "template:arithmetic"]
    assert len(result.rows()) == 3 and all(r["ingested_at"] == NOW for r in result.rows())
    assert [e["parent_id"] for e in result.lineage_edges()] == list(result.accepted[2].provenance.parent_ids)
    assert {p["row_id"] for p in result.provenance_records()} == {r["row_id"] for r in result.rows()}
