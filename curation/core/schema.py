"""The canonical row every dataset version shares (docs/architecture.md §3).

In Python a row is a plain ``dict`` with the keys of :data:`COLUMNS`; ``messages``,
``chosen``, ``rejected`` and ``extra`` hold Python objects (lists/dicts). In DuckDB and
Arrow those four are JSON strings; :func:`encode_row` / :func:`decode_row` convert.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

Row = dict[str, Any]
Message = dict[str, Any]

KINDS: tuple[str, ...] = ("sft", "chat", "preference", "reward", "text", "tool", "prompt")
"""``prompt`` rows carry user turns only (benchmarks, seed pools for synthesis)."""

ORIGINS: tuple[str, ...] = ("human", "synthetic", "augmented")
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")

JSON_COLUMNS: tuple[str, ...] = ("messages", "chosen", "rejected", "extra")

# (name, DuckDB type, description) — the single source for DDL, Arrow schema and UI metadata.
COLUMN_SPECS: tuple[tuple[str, str, str], ...] = (
    ("row_id", "VARCHAR", "Stable id: hash of source + normalised content for raw rows."),
    ("kind", "VARCHAR", "sft, chat, preference, reward, text, tool or prompt."),
    ("messages", "JSON", "List of {role, content[, name, tool_calls]}; the prompt side of preference rows."),
    ("chosen", "JSON", "Preferred completion (list of assistant messages) for preference rows."),
    ("rejected", "JSON", "Dispreferred completion for preference rows."),
    ("score", "DOUBLE", "Reward-model score for reward rows."),
    ("text", "VARCHAR", "Plain text for text rows."),
    ("source", "VARCHAR", "Source name from the project file."),
    ("source_uri", "VARCHAR", "File path and record number the row came from (file#record)."),
    ("license", "VARCHAR", "SPDX licence id (or a LicenseRef- name from the policy)."),
    ("origin", "VARCHAR", "human, synthetic or augmented."),
    ("generator", "VARCHAR", "Model or procedure that produced the row; NULL for human rows."),
    ("annotator", "VARCHAR", "Who wrote or labelled the row, when known."),
    ("extra", "JSON", "Every input field that was not mapped, so nothing is dropped."),
    ("ingested_at", "TIMESTAMP", "When the record was first ingested (re-reading its changed file keeps it)."),
)
COLUMNS: tuple[str, ...] = tuple(name for name, _, _ in COLUMN_SPECS)

_ARROW_TYPES = {"VARCHAR": pa.string(), "JSON": pa.string(), "DOUBLE": pa.float64(), "TIMESTAMP": pa.timestamp("us")}
ARROW_SCHEMA = pa.schema([(name, _ARROW_TYPES[sql]) for name, sql, _ in COLUMN_SPECS])


def content_key(row: Row) -> str:
    """The row's content as one canonical JSON string (what exact identity is judged on)."""
    payload = {k: row.get(k) for k in ("kind", "messages", "chosen", "rejected", "score", "text")}
    return json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def make_row_id(*parts: str) -> str:
    """A short, stable id from the given parts (sha256, 20 hex chars = 80 bits)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return digest[:20]


def derived_id(row: Row, parent_id: str) -> str:
    """The id of an edited copy of a row (cleaned, repeats removed): it depends on the parent and the
    new content, so it is stable across runs."""
    return make_row_id(parent_id, "clean", content_key(row))


def new_row(**fields: Any) -> Row:
    """A row with every canonical column present (missing ones NULL)."""
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise KeyError(f"not canonical columns: {sorted(unknown)}")
    return {name: fields.get(name) for name in COLUMNS}


def _dumps(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, ensure_ascii=False)


def encode_row(row: Row) -> dict[str, Any]:
    """Python row → record whose JSON columns are strings (for Arrow/DuckDB)."""
    record = {name: row.get(name) for name in COLUMNS}
    for name in JSON_COLUMNS:
        record[name] = _dumps(record[name])
    return record


def decode_row(record: dict[str, Any]) -> Row:
    """Record from Arrow/DuckDB → Python row with JSON columns parsed."""
    row = {name: record.get(name) for name in COLUMNS}
    for name in JSON_COLUMNS:
        value = row[name]
        if isinstance(value, str):
            row[name] = json.loads(value)
    return row


def rows_to_table(rows: Iterable[Row], schema: pa.Schema = ARROW_SCHEMA) -> pa.Table:
    """Python rows → Arrow table in the canonical schema."""
    records = [encode_row(r) for r in rows]
    return pa.Table.from_pylist(records, schema=schema)


def iter_rows(batches: Iterable[pa.RecordBatch]) -> Iterator[Row]:
    """Arrow batches → decoded Python rows, one batch in memory at a time."""
    for batch in batches:
        for record in batch.to_pylist():
            yield decode_row(record)


def utcnow() -> datetime:
    """Naive UTC timestamp (DuckDB TIMESTAMP has no zone)."""
    return datetime.now(UTC).replace(tzinfo=None, microsecond=0)
