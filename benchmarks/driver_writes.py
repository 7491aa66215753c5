"""How fast the driver can write: the one part of a run that no engine spreads over machines.

On either engine every stage's output goes through one process, the DuckDB writer of the warehouse, which
appends the batches the workers return. This measures that ceiling on a built warehouse (e.g. the scale
benchmark's ``home-1000000``): for each dataset table, its rows read back in 16,384-row Arrow batches and
appended to a fresh DuckDB file one batch at a time, as a stage appends (:meth:`StagedWrite.append`), two
ways: a commit per batch (how stages appended before :meth:`StagedWrite.appending`) and every batch in one
transaction (how they append now); rows/s, CPU seconds and the file size of each, against DuckDB copying
the same table by itself (``CREATE TABLE … AS SELECT``, all threads) in the same run. DuckDB's memory limit
is the warehouse's (:data:`DUCKDB_MEMORY_LIMIT`). Read-only on the given warehouse.

    .venv/bin/python -m benchmarks.driver_writes /tmp/distillery-scale/home-1000000/warehouse.duckdb
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from curation.core.warehouse import DUCKDB_MEMORY_LIMIT, insert_from, quote, read_batches

TABLES = ("raw", "deduped", "filtered", "formatted")
BATCH_ROWS = 16_384
LIMIT = {"memory_limit": DUCKDB_MEMORY_LIMIT}


def append(warehouse: Path, table: str, target: Path, one_transaction: bool) -> dict[str, float]:
    """Wall and CPU seconds and the file's MB for appending ``table`` batch by batch into ``target``."""
    target.unlink(missing_ok=True)
    with (
        duckdb.connect(str(warehouse), read_only=True, config=LIMIT) as source,
        duckdb.connect(str(target), config=LIMIT) as sink,
    ):
        ddl = ", ".join(
            f"{quote(name)} {kind}" for name, kind, *_ in source.execute(f"DESCRIBE {quote(table)}").fetchall()
        )
        sink.execute(f"CREATE TABLE appended ({ddl})")
        started, cpu = time.perf_counter(), time.process_time()
        if one_transaction:
            sink.execute("BEGIN TRANSACTION")
        for batch in read_batches(source, f"SELECT * FROM {quote(table)}", batch_rows=BATCH_ROWS):
            insert_from(sink, "INSERT INTO appended SELECT * FROM {rows}", batch)
        if one_transaction:
            sink.execute("COMMIT")
        sink.execute("CHECKPOINT")
        seconds, cpu_s = time.perf_counter() - started, time.process_time() - cpu
    size_mb = target.stat().st_size / 1e6
    target.unlink()
    return {"s": seconds, "cpu_s": cpu_s, "mb": size_mb}


def measure(warehouse: Path, table: str, scratch: Path) -> dict[str, object]:
    target = scratch / f"{table}.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as source:
        rows = source.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]  # type: ignore[index]
    per_batch = append(warehouse, table, target, one_transaction=False)
    one = append(warehouse, table, target, one_transaction=True)
    with duckdb.connect(str(target), config=LIMIT) as sink:
        sink.execute(f"ATTACH {_literal(str(warehouse))} AS source (READ_ONLY)")
        started = time.perf_counter()
        sink.execute(f"CREATE TABLE copied AS SELECT * FROM source.main.{quote(table)}")
        sink.execute("CHECKPOINT")
        copied_s = time.perf_counter() - started
    target.unlink()
    return {"rows": rows, "per_batch": per_batch, "one": one, "copied_s": copied_s}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warehouse", type=Path)
    args = parser.parse_args()
    print(
        "| table | rows | a commit per batch: s (CPU s, MB) | one transaction: s (CPU s, MB) | rows/s | "
        "DuckDB's own copy: s | one transaction / copy | per batch / one transaction (CPU) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for table in TABLES:
            m = measure(args.warehouse, table, Path(scratch))
            per_batch, one, rows = m["per_batch"], m["one"], m["rows"]
            assert isinstance(per_batch, dict) and isinstance(one, dict) and isinstance(rows, int)
            copied_s = float(m["copied_s"])  # type: ignore[arg-type]
            print(
                f"| {table} | {rows:,} | {per_batch['s']:.1f} ({per_batch['cpu_s']:.1f}, {per_batch['mb']:,.0f}) | "
                f"{one['s']:.1f} ({one['cpu_s']:.1f}, {one['mb']:,.0f}) | {rows / one['s']:,.0f} | {copied_s:.1f} | "
                f"{one['s'] / copied_s:.2f} | {per_batch['cpu_s'] / one['cpu_s']:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
