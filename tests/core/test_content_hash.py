"""Data versions (:func:`curation.core.warehouse.content_hash`) are a content hash anyone can recompute: the
canonical encoding it documents, reimplemented here with :mod:`hashlib` alone, gives the pinned value for a
small fixed table, so a DuckDB release cannot change a version without this failing; duplicated rows count;
row order, column order and ``ingested_at`` do not."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, datetime
from typing import Any

import duckdb
import pytest

from curation.core.warehouse import content_hash

COLUMNS = (
    ("row_id", "VARCHAR"),
    ("messages", "JSON"),
    ("score", "DOUBLE"),
    ("n", "BIGINT"),
    ("flag", "BOOLEAN"),
    ("created_at", "TIMESTAMP"),
    ("blob", "BLOB"),
    ("ingested_at", "TIMESTAMP"),
)
ROWS: tuple[tuple[Any, ...], ...] = (
    (
        "a",
        '{"role":  "user", "content": "héllo"}',
        1 / 3,
        7,
        True,
        datetime(2026, 1, 2, 3, 4, 5, 123456),
        b"\xab\x00",
        None,
    ),
    ("b", None, None, None, None, None, None, datetime(2026, 5, 1)),
    ("", "null", -0.0, -1, False, datetime(1969, 12, 31, 23, 59, 59), b"", datetime(2026, 5, 1)),
    ("null", "[]", float("nan"), 2**62, None, None, None, None),
    ("d", "[1.50]", 1e20, 0, True, datetime(2026, 1, 1), b"x", None),
)
PINNED = "f7b92679867b9f65"
"""The version of ROWS: computed by :func:`reference_hash` (hashlib), and by DuckDB, at the time of writing."""


def canonical_text(sql_type: str, value: Any) -> str:
    """The canonical text of one value, as ``canonical_text_sql`` documents it."""
    if sql_type == "DOUBLE":
        return "nan" if math.isnan(value) else f"{value:.17g}"  # C printf %.17g
    if sql_type == "TIMESTAMP":
        return str((value.replace(tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // _MICROSECOND)
    if sql_type == "BOOLEAN":
        return "true" if value else "false"
    if sql_type == "BLOB":
        return value.hex().upper()
    return str(value)


_MICROSECOND = datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)


def reference_hash(columns: tuple[tuple[str, str], ...], rows: tuple[tuple[Any, ...], ...]) -> str:
    """The data version of a table, computed from its documented definition with hashlib only."""
    total = 0
    for row in rows:
        fields = sorted((name, sql_type, value) for (name, sql_type), value in zip(columns, row, strict=True))
        text = ""
        for name, sql_type, value in fields:
            if name == "ingested_at":
                continue
            if value is None:
                text += f"{name}=null;"
            else:
                encoded = canonical_text(sql_type, value)
                text += f"{name}={len(encoded.encode('utf-8'))}:{encoded};"
        digest = hashlib.md5(text.encode("utf-8")).digest()
        total += int.from_bytes(digest[:8], "little")
    return f"{total % 2**64:016x}"


def table(
    rows: tuple[tuple[Any, ...], ...], columns: tuple[tuple[str, str], ...] = COLUMNS
) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute("CREATE TABLE t (" + ", ".join(f'"{n}" {t}' for n, t in columns) + ")")
    for row in rows:
        connection.execute(f"INSERT INTO t VALUES ({', '.join('?' * len(columns))})", list(row))
    return connection


def test_the_version_of_a_fixed_table_is_pinned_and_recomputed_with_hashlib() -> None:
    assert reference_hash(COLUMNS, ROWS) == PINNED
    assert content_hash(table(ROWS), "t") == PINNED


def test_a_duplicated_row_changes_the_version() -> None:
    once = content_hash(table(ROWS), "t")
    twice = content_hash(table(ROWS + ROWS[:1]), "t")
    assert twice != once
    assert twice == reference_hash(COLUMNS, ROWS + ROWS[:1])
    # XOR made two identical rows cancel out: a table with a row doubled hashed like one without it.
    assert content_hash(table(ROWS[1:] + ROWS[:1] * 2), "t") != content_hash(table(ROWS[1:]), "t")


def test_row_order_column_order_and_ingestion_time_are_not_content() -> None:
    reordered_columns = tuple(reversed(COLUMNS))
    reordered_rows = tuple(tuple(reversed(row)) for row in reversed(ROWS))
    assert content_hash(table(reordered_rows, reordered_columns), "t") == PINNED
    later = tuple((*row[:-1], datetime(2030, 1, 1)) for row in ROWS)
    assert content_hash(table(later), "t") == PINNED


@pytest.mark.parametrize(
    ("first", "second"),
    [(None, ""), (None, "null"), ("", "null"), ("a;b", "a"), ("1:x", "x")],
)
def test_null_empty_and_lookalike_values_differ(first: str | None, second: str | None) -> None:
    columns = (("x", "VARCHAR"), ("y", "VARCHAR"))
    one = content_hash(table(((first, "y"),), columns), "t")
    other = content_hash(table(((second, "y"),), columns), "t")
    assert one != other


def test_values_do_not_leak_into_the_next_column() -> None:
    columns = (("x", "VARCHAR"), ("y", "VARCHAR"))
    assert content_hash(table((("ab", "c"),), columns), "t") != content_hash(table((("a", "bc"),), columns), "t")


def test_an_empty_table_has_version_zero() -> None:
    assert content_hash(table(()), "t") == "0" * 16
