"""The tables the ``formatted`` stage writes: ``formatted`` (canonical columns plus the rendering),
``format_rejections`` and ``contamination``; the record of one rendered row, and reading stored rows back.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from curation.core.schema import COLUMNS, JSON_COLUMNS, Row, make_row_id
from curation.core.warehouse import quote, read_batches, sample_sql

if TYPE_CHECKING:
    import duckdb

    from curation.format.render import RenderedRow

FORMATTED_COLUMNS: tuple[tuple[str, str], ...] = (
    ("parent_id", "VARCHAR"),
    ("split", "VARCHAR"),
    ("subset", "DOUBLE"),
    ("n_tokens", "BIGINT"),
    ("prompt_text", "VARCHAR"),
    ("chosen_text", "VARCHAR"),
    ("rejected_text", "VARCHAR"),
    ("input_ids", "JSON"),
    ("assistant_mask", "JSON"),
    ("mask_source", "VARCHAR"),
    ("truncation", "VARCHAR"),
    ("round_trip", "VARCHAR"),
    ("generation_prompt_ok", "BOOLEAN"),
    ("template_id", "VARCHAR"),
    ("tokenizer_id", "VARCHAR"),
)
"""Columns ``formatted`` adds to the canonical row. Its ``text`` holds the rendered text (the raw text
for text rows) and ``messages`` the messages actually rendered (system prompt added, earliest turns
dropped by truncation), so re-rendering ``messages`` gives ``text``. ``input_ids`` and
``assistant_mask`` are empty lists for preference rows (prompt/chosen/rejected texts are the split)."""

# format_rejections.stage: one of curation.format.stage.REJECTION_STAGES (decontamination, render, length,
# special_tokens, round_trip, loss_mask, then synthetic_cap over the whole table), in the order applied.
FORMAT_REJECTIONS_DDL = "row_id VARCHAR NOT NULL, stage VARCHAR NOT NULL, reason VARCHAR NOT NULL, detail VARCHAR"
FORMAT_REJECTIONS_SCHEMA = pa.schema(
    [("row_id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
# One row per benchmark match of a removed row (curation.format.decontam.FlaggedRow.records).
CONTAMINATION_DDL = (
    "row_id VARCHAR NOT NULL, source VARCHAR, benchmark VARCHAR, item_id VARCHAR, kind VARCHAR, "
    "overlap VARCHAR, ratio DOUBLE, n BIGINT"
)
CONTAMINATION_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("source", pa.string()),
        ("benchmark", pa.string()),
        ("item_id", pa.string()),
        ("kind", pa.string()),
        ("overlap", pa.string()),
        ("ratio", pa.float64()),
        ("n", pa.int64()),
    ]
)


_MASK_DIGITS = bytes.maketrans(b"\x00\x01" + bytes(range(2, 256)), b"01" + b"x" * 254)


def mask_json(mask: list[int]) -> str:
    """``json.dumps(mask)`` of a loss mask of 0s and 1s, written from the mask's bytes in C instead of one
    number at a time (a quarter of the time on the benchmark's rows; ``formatted`` writes one per row). Any
    other list, or a mask of booleans, goes to ``json.dumps``."""
    try:
        digits = bytes(mask).translate(_MASK_DIGITS)
    except (TypeError, ValueError):
        return json.dumps(mask)
    if b"x" in digits or not set(map(type, mask)) <= {int}:
        return json.dumps(mask)
    return "[" + ", ".join(digits.decode("ascii")) + "]"


def formatted_record(row: Row, rendered: RenderedRow, split: str, subset: float) -> dict[str, Any]:
    """The ``formatted`` row for one rendered input row (a new id; the edge goes to lineage).
    ``round_trip`` and ``generation_prompt_ok`` stay None until the record is verified."""
    record = dict(row)
    record.update(
        row_id=make_row_id(row["row_id"], "format", rendered.template_id, rendered.tokenizer_id),
        parent_id=row["row_id"],
        text=rendered.text,
        split=split,
        subset=subset,
        n_tokens=rendered.n_tokens,
        prompt_text=rendered.prompt,
        chosen_text=rendered.chosen,
        rejected_text=rendered.rejected,
        input_ids=json.dumps(rendered.input_ids),
        assistant_mask=mask_json(rendered.assistant_mask),
        mask_source=rendered.mask_source,
        truncation=rendered.truncation,
        round_trip=None,
        generation_prompt_ok=None,
        template_id=rendered.template_id,
        tokenizer_id=rendered.tokenizer_id,
    )
    if rendered.kind != "text":  # what was rendered: system prompt added, earliest turns dropped
        record["messages"] = rendered.messages
    return record


def formatted_batch(records: list[dict[str, Any]]) -> pa.Table:
    """Records as an Arrow batch for ``formatted``: canonical columns encoded like every other dataset
    table (:func:`~curation.core.schema.encode_row`), the formatting columns as they are.

    Built column by column: the same table as ``pa.Table.from_pylist`` of the encoded records (columns
    named after the first record's keys, a missing key read as None, each column's type inferred from its
    values), without building a dict per record first."""
    if not records:
        return pa.Table.from_pylist([])
    columns: dict[str, list[Any]] = {}
    for name in COLUMNS:
        values = [record.get(name) for record in records]
        if name in JSON_COLUMNS:  # as encode_row writes them
            values = [None if value is None else json.dumps(value, ensure_ascii=False) for value in values]
        columns[name] = values
    for name in records[0]:
        if name not in columns:
            columns[name] = [record.get(name) for record in records]
    return pa.Table.from_pydict(columns)


def iter_formatted_rows(
    connection: duckdb.DuckDBPyConnection, table: str = "formatted", batch_rows: int = 2_000, sample: int | None = None
) -> Iterator[Row]:
    """Stored ``formatted`` rows with every column (``curation.core.schema.iter_rows`` keeps only the canonical
    ones), JSON columns decoded, in ``(split, row_id)`` order, one batch in memory at a time. ``sample``:
    only that many rows, the same ones on every call (:func:`~curation.core.warehouse.sample_sql`)."""
    json_columns = (*JSON_COLUMNS, "input_ids", "assistant_mask")
    source = sample_sql(table, sample) if sample else f"SELECT * FROM {quote(table)}"
    for batch in read_batches(connection, f"{source} ORDER BY split, row_id", batch_rows=batch_rows):
        for record in batch.to_pylist():
            for column in json_columns:
                if isinstance(record.get(column), str):
                    record[column] = json.loads(record[column])
            yield record
