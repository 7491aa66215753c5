"""The facts pass takes rows that in-row repeats leave alone through FastFacts; the reference is edited() +
row_facts() + paragraph_keys() for every row. Both must give the same facts, paragraph keys and signatures,
and the batch functions must agree with the row-by-row ones they replace."""

from __future__ import annotations

import json
import random
from typing import Any

import pyarrow as pa
import pytest

from curation.core.config import DedupConfig
from curation.core.normalize import NormalizeOptions, normalize_text
from curation.core.schema import Row, encode_row, new_row, rows_to_table
from curation.dedup import facts
from curation.dedup.fields import dedup_text, normalizer
from curation.dedup.stage import plan_from_project

PARAGRAPHS = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "THE QUICK  brown fox jumps over the lazy dog near the river bank.",  # the same once normalised
    "I hope this helps! Let me know if you have any other questions.",
    "Straße und ﬁsh: Ｆｕｌｌｗｉｄｔｈ letters, e\u0301 and é, Ω and ω.",
    "short one",
    "Exactly  twenty chars",  # 20 characters once normalised: the in-row repeats floor
    "abcdefghij ABCDEFGHIJ abcdefgh",  # 30: the boilerplate floor
    "```python\nprint('hello world, hello world')\n```",
    "~~~\nfenced with tildes and long enough to count\n~~~",
    "Tabs\tand  spaces \u3000 and a no-break\u00a0space inside a sentence.",
    "",
    "   ",
]
SEPARATORS = ["\n\n", "\n \t\n", "\n", "\r\n\r\n", " "]


def _text(rng: random.Random) -> str:
    parts = [rng.choice(PARAGRAPHS) for _ in range(rng.randint(1, 4))]
    out = parts[0]
    for part in parts[1:]:
        out += rng.choice(SEPARATORS) + part
    return out


def _message(rng: random.Random, role: str) -> dict[str, Any]:
    content: Any = _text(rng)
    roll = rng.random()
    if roll < 0.05:
        content = None
    elif roll < 0.08:
        content = ""
    message = {"role": role, "content": content}
    if rng.random() < 0.05:
        message["tool_calls"] = [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]
    return message


def _row(rng: random.Random, index: int) -> Row:
    kind = rng.choice(["sft", "chat", "preference", "text", "prompt", "reward", "tool"])
    fields: dict[str, Any] = {"kind": kind, "row_id": f"r{index}", "source": "s", "source_uri": f"f#{index}"}
    if kind == "text":
        fields["text"] = _text(rng)
    elif kind == "prompt":
        fields["messages"] = [_message(rng, "user")]
    else:
        roles = ["system", "user", "assistant", "user", "assistant", "tool"][: rng.randint(1, 6)]
        fields["messages"] = [_message(rng, role) for role in roles]
        if kind == "preference":
            fields["messages"] = [m for m in fields["messages"] if m["role"] != "assistant"]
            fields["chosen"] = [_message(rng, "assistant") for _ in range(rng.randint(1, 2))]
            fields["rejected"] = [_message(rng, "assistant")]
    fields["origin"] = rng.choice(["human", "synthetic", "augmented", None, "other"])
    fields["license"] = rng.choice(["MIT", "CC-BY-NC-4.0", "Apache-2.0", None, "LicenseRef-unknown"])
    fields["score"] = rng.choice([None, 0.5, -2.0, float("nan")])
    fields["extra"] = rng.choice(
        [None, {"id": 3}, {"quality": 0.9}, {"quality": "high"}, {"nested": {"quality": 1}}, {"note": "caf\u00e9"}]
    )
    return new_row(**fields)


def _batch(rows: list[Row]) -> pa.RecordBatch:
    """The rows as the stage's query gives them to the batch functions: their input position first."""
    table = rows_to_table(rows).add_column(0, "position", pa.array(range(len(rows)), pa.int64()))
    (batch,) = table.combine_chunks().to_batches()
    return batch


ROWS = [_row(random.Random(seed), seed) for seed in range(600)]

SETTINGS = [
    {},
    {"strip_punctuation": True},
    {"lowercase": False},
    {"within": {"unit": "line"}},
    {"within": False},
    {"boilerplate": False},
    {"within": {"min_chars": 5}, "boilerplate": {"min_chars": 10, "roles": ["assistant", "user"]}},
    {"exact_fields": "conversation", "near": {"fields": "conversation"}},
    {"exact_fields": "first_prompt", "conflicts": {"mode": "off"}},
    {"conflicts": {"prompt_fields": "prompt_response", "mode": "flag"}},
    {"near": False},
]


@pytest.mark.parametrize("settings", SETTINGS, ids=[json.dumps(s) for s in SETTINGS])
def test_fast_facts_equal_the_reference_for_every_row(settings: dict[str, Any]) -> None:
    plan = plan_from_project(DedupConfig(**settings))
    batch = _batch(ROWS)
    facts.start_worker(plan)
    assert facts._WORKER["fast"] is not None
    fast = facts.facts_batch(batch)
    facts._WORKER["fast"] = None  # every row the long way
    reference = facts.facts_batch(batch)
    for got, expected in zip(fast, reference, strict=True):
        assert repr(got.to_pylist()) == repr(expected.to_pylist())
    edited = sum(fast[0].column("edited").to_pylist())
    assert 0 < edited < len(ROWS) or plan.within is None


def test_rows_with_boilerplate_known_take_the_reference_path() -> None:
    plan = plan_from_project(DedupConfig())
    facts.start_worker(plan, boilerplate=["0" * 32])
    assert facts._WORKER["fast"] is None


@pytest.mark.parametrize(
    "text",
    [p + q for p in PARAGRAPHS for q in ("", " ", "\n", "Ǆ ǅ", "İ", "\u212b", "ﬀ", "\x1c\x1f", "1⁄2")],
)
@pytest.mark.parametrize("options", [NormalizeOptions(), NormalizeOptions(strip_punctuation=True)])
def test_normalizer_is_normalize_text(text: str, options: NormalizeOptions) -> None:
    assert normalizer(options)(text) == normalize_text(text, options)


def test_published_and_candidate_texts_as_the_row_by_row_functions_make_them() -> None:
    plan = plan_from_project(DedupConfig(within={"min_chars": 5}))
    rows = ROWS[:200]
    flags = [bool(facts.edited(row, plan, ())[1]) for row in rows]
    assert any(flags) and not all(flags)
    batch = _batch(rows)
    sources = [
        [{"row_id": "x", "source": "s", "source_uri": "u", "license": "MIT"}] if i % 3 else None for i in range(200)
    ]
    extra = {"edited": pa.array(flags), "sources": pa.array(sources), "slot": pa.array(range(200), pa.int64())}
    for name, column in extra.items():
        batch = batch.append_column(name, column)
    facts.start_worker(plan)
    published, edges = facts.published_batch(batch)
    (texts,) = facts.texts_batch(batch)
    expected_rows, expected_edges = [], 0
    for row, source in zip(rows, sources, strict=True):
        changed, removals = facts.edited(row, plan, ())
        changed = facts.with_license_note(changed, source or ())
        if removals:
            changed = {**changed, "row_id": facts.derived_id(changed, row["row_id"])}
            expected_edges += 1
        expected_rows.append(encode_row(changed))
    assert repr(published.to_pylist()) == repr(expected_rows)  # repr: NaN scores compare equal
    assert edges.num_rows == expected_edges
    assert plan.near is not None
    assert texts.column("text").to_pylist() == [
        dedup_text(facts.edited(r, plan, ())[0], plan.near.fields) for r in rows
    ]
