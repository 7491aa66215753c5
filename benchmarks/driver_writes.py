"""How fast the driver can write: the one part of a run that no engine spreads over machines.

On either engine every stage's output goes through one process, the DuckDB writer of the warehouse, which
appends the batches the workers return. This measures that ceiling on a built warehouse (e.g. the scale
benchmark's ``home-1000000``): for each dataset table, its rows read back in 16,384-row Arrow batches and
appended to a fresh DuckDB file one batch at a time, as a stage appends (``StagedTables.append``) — rows/s
and MB/s — against DuckDB copying the same table by itself (``CREATE TABLE … AS SELECT``, all threads) in
the same run. Read-only on the given warehouse.

    .venv/bin/python -m benchmarks.driver_writes /tmp/distillery-scale/home-1000000/warehouse.duckdb
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import duckdb

from curation.core.warehouse import quote, read_batches

TABLES = ("raw", "deduped", "filtered", "formatted")
BATCH_ROWS = 16_384


def measure(warehouse: Path, table: str, scratch: Path) -> dict[str, float]:
    target = scratch / f"{table}.duckdb"
    target.unlink(missing_ok=True)
    with duckdb.connect(str(warehouse), read_only=True) as source, duckdb.connect(str(target)) as sink:
        rows = source.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]  # type: ignore[index]
        ddl = ", ".join(
            f"{quote(name)} {kind}" for name, kind, *_ in source.execute(f"DESCRIBE {quote(table)}").fetchall()
        )
        sink.execute(f"CREATE TABLE appended ({ddl})")
        started = time.perf_counter()
        for batch in read_batches(source, f"SELECT * FROM {quote(table)}", batch_rows=BATCH_ROWS):
            sink.register("_incoming", batch)
            sink.execute("INSERT INTO appended SELECT * FROM _incoming")
            sink.unregister("_incoming")
        sink.execute("CHECKPOINT")
        appended_s = time.perf_counter() - started
    size_mb = target.stat().st_size / 1e6
    target.unlink()
    with duckdb.connect(str(target)) as sink:
        sink.execute(f"ATTACH {_literal(str(warehouse))} AS source (READ_ONLY)")
        started = time.perf_counter()
        sink.execute(f"CREATE TABLE copied AS SELECT * FROM source.main.{quote(table)}")
        sink.execute("CHECKPOINT")
        copied_s = time.perf_counter() - started
    target.unlink()
    return {"rows": rows, "appended_s": appended_s, "copied_s": copied_s, "size_mb": size_mb}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("warehouse", type=Path)
    args = parser.parse_args()
    print("| table | rows | appended batch by batch: s | rows/s | MB/s | DuckDB's own copy: s | append / copy |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for table in TABLES:
            m = measure(args.warehouse, table, Path(scratch))
            print(
                f"| {table} | {m['rows']:,} | {m['appended_s']:.1f} | {m['rows'] / m['appended_s']:,.0f} | "
                f"{m['size_mb'] / m['appended_s']:.0f} | {m['copied_s']:.1f} | {m['appended_s'] / m['copied_s']:.2f} |"
            )


if __name__ == "__main__":
    main()
