"""Filter-chain throughput: the `filtered` stage's row-wise work on one and on two worker processes.

Reads the rows of a finished warehouse's ``deduped`` table (a warehouse built from a realistic mix,
e.g. ``benchmarks/scale_mix.py`` + ``distillery run --select deduped``), runs the project's cleaners
and filters over its Arrow batches exactly as the `filtered` asset does
(:func:`curation.filter.runner.filter_records` under :func:`curation.core.parallel.map_ordered`), once per
worker count in the same run, and prints rows/s, the ratio to one worker and per-step seconds. The
results of every worker count are compared: kept rows, rejections and lineage must be identical.

Timed: reading batches from DuckDB, the workers' start (a fresh fork server here; in a pipeline run
the first stage's is reused) and the chain; not writing the results. "to first batch" is when the first
batch's results came back. A worker starts the compiled screens of curation/filter/compiled.py (numba,
about a CPU-second) once it has filtered ``JIT_AFTER_ROWS`` rows, so short runs measure the Python path.

On a machine shared with other work, wall-clock rows/s says more about the neighbours than the code:
compare "per CPU second" figures, measured back to back (``--limit`` takes the first rows only).

    .venv/bin/python -m benchmarks.filter_chain --warehouse /tmp/h20k/warehouse.duckdb \\
        --config /tmp/mix20k/distillery.yaml
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import duckdb
import pyarrow as pa

from curation.core.config import load_project
from curation.core.parallel import map_ordered
from curation.core.schema import COLUMNS
from curation.core.warehouse import quote, read_batches
from curation.filter.base import FilterStats
from curation.filter.runner import BATCH_ROWS, filter_records, start_worker


def _digest(*parts: list[pa.Table]) -> str:
    """A hash of the contents of each list of tables, in order (however they were cut into batches)."""
    digest = hashlib.sha256()
    for tables in parts:
        for column in pa.concat_tables(tables).columns:
            digest.update(repr(column.to_pylist()).encode())
    return digest.hexdigest()[:16]


def run(
    warehouse: Path, config_path: Path, table: str, workers: int, batch_rows: int, limit: int | None = None
) -> dict[str, object]:
    """The chain over ``table`` (its first ``limit`` rows by id) with ``workers`` processes: rows, seconds,
    rows/s, counts and a digest."""
    config = load_project(config_path)
    connection = duckdb.connect(str(warehouse), read_only=True)
    columns = ", ".join(quote(name) for name in COLUMNS)
    sql = f"SELECT {columns} FROM {quote(table)} ORDER BY row_id" + (f" LIMIT {int(limit)}" if limit else "")
    stats = FilterStats()
    kept, rejections, lineage = [], [], []
    start, cpu = time.perf_counter(), time.process_time()
    first = None
    for result in map_ordered(
        filter_records,
        read_batches(connection, sql, batch_rows=batch_rows),
        workers,
        start_worker,
        (config,),
        preload=("curation.filter",),
    ):
        if first is None:
            first = time.perf_counter()
        stats.add(result.stats)
        kept.append(result.kept)
        rejections.append(result.rejections)
        lineage.append(result.lineage)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    connection.close()
    return {
        "workers": workers,
        "rows": stats.rows_in,
        "seconds": seconds,
        "first_s": (first or start) - start,
        "rows_per_s": stats.rows_in / seconds,
        # One worker runs in this process: its CPU time is the chain's, whatever else the machine runs.
        "rows_per_cpu_s": stats.rows_in / cpu if workers <= 1 else None,
        "kept": stats.rows_kept,
        "edited": stats.rows_edited,
        "digest": _digest(kept, rejections, lineage),
        "stats": stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warehouse", type=Path, required=True, help="a warehouse.duckdb with the input table")
    parser.add_argument("--config", type=Path, required=True, help="the project file the warehouse was built from")
    parser.add_argument("--table", default="deduped")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, in one run")
    parser.add_argument("--batch-rows", type=int, default=BATCH_ROWS)
    parser.add_argument("--limit", type=int, default=None, help="only the first rows (by id)")
    args = parser.parse_args()
    results = [
        run(args.warehouse, args.config, args.table, int(workers), args.batch_rows, args.limit)
        for workers in args.workers.split(",")
    ]
    base = results[0]
    print(f"{base['rows']:,} rows of {args.table} in {args.warehouse}")
    print("| workers | seconds | to first batch | rows/s | vs first | kept | edited | output digest |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|")
    for result in results:
        print(
            f"| {result['workers']} | {result['seconds']:.2f} | {result['first_s']:.2f} | "
            f"{result['rows_per_s']:,.0f} | {result['rows_per_s'] / base['rows_per_s']:.2f}x | {result['kept']:,} | "
            f"{result['edited']:,} | `{result['digest']}` |"
        )
    for result in results:
        if result["rows_per_cpu_s"]:
            per_cpu = result["rows_per_cpu_s"]
            assert isinstance(per_cpu, float)
            print(
                f"\none worker, per CPU second of this process: {per_cpu:,.0f} rows/s "
                f"({1000 / per_cpu:.3f} CPU-seconds per 1,000 rows)"
            )
    same = len({result["digest"] for result in results}) == 1
    print(f"\noutput identical for every worker count: {'yes' if same else 'NO'}")
    stats = base["stats"]
    assert isinstance(stats, FilterStats)
    print("\nper-step seconds with one worker (rows seen):")
    for name, seconds in sorted(stats.seconds.items(), key=lambda item: -item[1]):
        print(f"  {name:24s} {seconds:7.2f} s  {stats.seen.get(name, 0):>9,}")
    if not same:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
