"""Reuse what a per-row stage computed last time for the input rows it has already seen.

A stage whose output row depends only on its input row and its settings (rendering a row, running
the filter chain on it) need not compute that row again when neither changed: after appending 1% new
rows, 99% of the work of such a stage is already in the warehouse. Each such stage keeps a *memo*
table beside its outputs, written in the same staged write and so swapped in with them, holding for
every input row it processed the row's id, a digest of its content (DuckDB's 64-bit ``hash`` of the
row's columns) and the stage's *fingerprint*: the project's code and library versions, the stage's
settings and the files they name (:func:`curation.core.freshness.stage_fingerprint`).

On the next run the stage plans in SQL which input rows match the memo exactly (same id, same
digest, same fingerprint); their outputs are copied from the previous tables by SQL, and only the
other rows go through the stage's Python. Whatever a stage decides over the whole table (a split
planned over every row, a report) it still decides over the whole table. A stage that has no memo,
or a memo from other code or settings, simply computes every row, as on a first run.

A stage's main output (:func:`stage_output`) is not even copied when the run changes little of it: the
current table is patched in place (:meth:`~curation.core.warehouse.StagedWrite.patch`), so a re-run after
appending 1% new rows reads and writes about 1% of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from curation.core.warehouse import (
    MEMO_SUFFIX,
    PATCH_MAX_CHANGE,
    StagedWrite,
    count_rows,
    fetch_one,
    quote,
    table_names,
)

MEMO_DDL = "row_id VARCHAR NOT NULL, digest UBIGINT NOT NULL, fingerprint VARCHAR NOT NULL"


@dataclass(frozen=True)
class Reuse:
    """The input rows whose previous outputs a run copies instead of computing them again."""

    table: str
    """Quoted name of a work table holding their ``row_id`` (empty when none is reused)."""
    rows: int

    def excluding(self, row_id_sql: str) -> str:
        """A SQL condition true for the rows that must still be computed (``row_id_sql``: their id column)."""
        return f"{row_id_sql} NOT IN (SELECT row_id FROM {self.table})"


def plan_reuse(
    staged: StagedWrite, memo: str, source: str, columns: Sequence[str], fingerprint: str, outputs: Sequence[str]
) -> Reuse:
    """Record this run's memo (``memo``, staged with the stage's other tables) for every row of ``source``
    (a relation in SQL: a quoted table name or a parenthesised query; digest over ``columns``), and return
    the rows whose outputs can be copied from the previous run: those matching the previous memo exactly,
    when every table in ``outputs`` (the previous outputs to copy from) exists. Drop the work table with
    :func:`drop_reuse` when done."""
    if not memo.endswith(MEMO_SUFFIX):
        raise ValueError(f"memo table {memo!r} must be named *{MEMO_SUFFIX}")
    connection = staged.connection
    selected = ", ".join(quote(column) for column in columns)
    new_memo = staged.create(memo, MEMO_DDL)
    connection.execute(
        f"INSERT INTO {new_memo} SELECT row_id, hash(t), ? FROM (SELECT {selected} FROM {source}) AS t",
        [fingerprint],
    )
    reuse = quote(staged.staging_name(f"{memo}_reuse"))
    existing = table_names(connection)
    if memo in existing and all(table in existing for table in outputs):
        connection.execute(
            f"CREATE TABLE {reuse} AS SELECT n.row_id FROM {new_memo} n "
            f"JOIN {quote(memo)} o ON o.row_id = n.row_id AND o.digest = n.digest AND o.fingerprint = n.fingerprint"
        )
    else:
        connection.execute(f"CREATE TABLE {reuse} (row_id VARCHAR)")
    (rows,) = fetch_one(connection, f"SELECT count(*) FROM {reuse}")
    return Reuse(reuse, int(rows))


def rows_missing_from_memo(connection: duckdb.DuckDBPyConnection, source: str, memo: str) -> int:
    """How many rows of table ``source`` have no entry in ``memo`` under their id (every row when there is no
    memo yet): the run computes them whatever the rest of the memo says. A cheap lower bound, known before
    :func:`plan_reuse` hashes every row, for starting the stage's workers early."""
    if memo not in table_names(connection):
        return count_rows(connection, source)
    (missing,) = fetch_one(connection, f"SELECT count(*) FROM {quote(source)} ANTI JOIN {quote(memo)} USING (row_id)")
    return int(missing)


def drop_reuse(connection: duckdb.DuckDBPyConnection, reuse: Reuse | None) -> None:
    if reuse is not None:
        connection.execute(f"DROP TABLE IF EXISTS {reuse.table}")


def stage_output(
    staged: StagedWrite,
    table: str,
    ddl: str,
    reuse: Reuse,
    key: str,
    kept_keys_sql: str,
    computed_rows: int,
    columns: Sequence[str],
) -> str:
    """Stage a memo stage's main ``table`` (``ddl``) with the previous rows it keeps already in it: those whose
    ``key`` is among ``kept_keys_sql`` (a query of one column without NULLs: the reused rows' outputs), as
    :func:`stage_kept_rows` does; a new, empty table when the run reuses nothing. ``computed_rows``: the rows
    the run will append. Returns the quoted table to append them to."""
    if not reuse.rows:
        return staged.create(table, ddl)
    return stage_kept_rows(staged, table, ddl, key, kept_keys_sql, computed_rows, columns)


def stage_rows(staged: StagedWrite, table: str, ddl: str, key: str, rows_sql: str, columns: Sequence[str]) -> None:
    """Stage ``table``'s new version (``ddl``) as the rows of ``rows_sql`` (a query of ``columns``, one row per
    ``key``) for a stage that copies whole rows of its inputs. The current rows equal to a new row (the same
    ``key`` and 64-bit digest of ``columns``) are kept by :func:`stage_kept_rows`, so after a small change the
    table is patched in place; only the other new rows are written. Hashing a million canonical rows takes
    DuckDB ~0.4 s on two cores, copying them ~5 s."""
    connection = staged.connection
    selected = ", ".join(quote(name) for name in columns)
    if table not in table_names(connection):
        connection.execute(f"INSERT INTO {staged.create(table, ddl)} ({selected}) SELECT {selected} FROM ({rows_sql})")
        return
    kept = quote(staged.staging_name(f"{table}_kept"))  # `_stage_`: a crash's debris is swept
    digest = f"hash({selected})"
    connection.execute(
        f"CREATE TABLE {kept} AS SELECT {quote(key)} AS key FROM {quote(table)} "
        f"WHERE ({quote(key)}, {digest}) IN (SELECT ({quote(key)}, {digest}) FROM ({rows_sql}))"
    )
    try:
        (total,) = fetch_one(connection, f"SELECT count(*) FROM ({rows_sql})")
        (staying,) = fetch_one(connection, f"SELECT count(*) FROM {kept}")
        into = stage_kept_rows(staged, table, ddl, key, f"SELECT key FROM {kept}", total - staying, columns)
        connection.execute(
            f"INSERT INTO {into} ({selected}) SELECT {selected} FROM ({rows_sql}) "
            f"WHERE {quote(key)} IS NULL OR {quote(key)} NOT IN (SELECT key FROM {kept})"
        )
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {kept}")


def stage_kept_rows(
    staged: StagedWrite,
    table: str,
    ddl: str,
    key: str,
    kept_keys_sql: str,
    added_rows: float,
    columns: Sequence[str],
) -> str:
    """Stage ``table``'s new version (``ddl``) with the current rows whose ``key`` is among ``kept_keys_sql`` (a
    query of one column without NULLs) already in it. The current table is patched in place when the rows it
    drops plus ``added_rows`` (the rows the caller will append, or an estimate) are at most
    :data:`PATCH_MAX_CHANGE` of it, else a new table is created and the kept rows' ``columns`` copied into it.
    Returns the quoted table to append the new rows to; the whole new version reads as
    ``staged.staging_name(table)`` either way."""
    connection = staged.connection
    current, dropped = fetch_one(
        connection,
        f"SELECT count(*), count(*) FILTER ({quote(key)} IS NULL OR {quote(key)} NOT IN ({kept_keys_sql})) "
        f"FROM {quote(table)}",
    )
    if dropped + added_rows <= PATCH_MAX_CHANGE * current:
        patch = staged.patch(table, ddl, key, kept_keys_sql)
        if patch is not None:
            return patch.added
    staged_table = staged.create(table, ddl)
    selected = ", ".join(quote(name) for name in columns)
    connection.execute(
        f"INSERT INTO {staged_table} ({selected}) SELECT {selected} FROM {quote(table)} "
        f"WHERE {quote(key)} IN ({kept_keys_sql})"
    )
    return staged_table
