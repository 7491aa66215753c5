"""The ``formatted`` table's Arrow batches: built column by column, the same as from encoded records."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa

from curation.core.schema import COLUMNS, encode_row, new_row
from curation.format.table import formatted_batch, mask_json


def _from_records(records: list[dict]) -> pa.Table:
    """What ``formatted_batch`` built before: every record encoded, then ``from_pylist``."""
    return pa.Table.from_pylist([encode_row(r) | {k: v for k, v in r.items() if k not in COLUMNS} for r in records])


def test_formatted_batch_equals_the_table_of_encoded_records() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = new_row(
        row_id="a",
        kind="chat",
        messages=[{"role": "user", "content": "é 🙂"}, {"role": "assistant", "content": "x"}],
        extra={"tools": [{"type": "function"}], "n": 1.5},
        ingested_at=when,
    ) | {"parent_id": "p", "n_tokens": 3, "input_ids": "[1, 2, 3]", "generation_prompt_ok": True, "subset": 0.5}
    second = new_row(
        row_id="b",
        kind="preference",
        messages=[{"role": "user", "content": "q"}],
        chosen=[{"role": "assistant", "content": "c"}],
        rejected=[{"role": "assistant", "content": "r"}],
        score=1.0,
    ) | {"parent_id": "q", "n_tokens": 5, "generation_prompt_ok": None, "later_only": "dropped"}
    third = {"row_id": "c", "kind": "text", "text": "t", "parent_id": "r", "subset": 1}  # canonical keys missing
    for records in ([first], [second], [first, second, third], [third, first], [second, second]):
        built, expected = formatted_batch(records), _from_records(records)
        assert built.schema == expected.schema
        assert built.equals(expected)
    assert formatted_batch([]).equals(_from_records([]))


def test_loss_masks_are_written_exactly_as_json_writes_them() -> None:
    """The stored mask is what ``json.dumps`` gives, whichever way it was written: 0/1 lists through the fast
    path, anything else (booleans, other numbers, a mix) through ``json``."""
    masks = [[], [0], [1], [0, 0, 1, 1, 1, 0] * 300, [True, False], [0, True], [0, 2, 1], [1.0, 0], [256], [-1]]
    for mask in masks:
        assert mask_json(mask) == json.dumps(mask)
