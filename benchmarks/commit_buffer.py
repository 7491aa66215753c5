"""What buffer a small change to a large indexed warehouse needs to commit.

A re-run after appending rows changes each stage's tables in place (``StagedWrite.patch``, and an asset's
partition of ``lineage``), and DuckDB updates their ART lookup indexes at commit, holding each whole: what
the commit needs follows the tables' rows, not the change's. A commit that does not fit its buffer fails,
and when DuckDB's rollback fails with it the database is invalidated for the process.

For each size: a warehouse written through :class:`~curation.core.warehouse.Warehouse` with a
``formatted``-like table of N rows (``row_id`` indexed, as every dataset table) and N ``lineage`` edges
(child and parent indexed: the 1M benchmark's lineage holds 0.92 edges a row). Then, for each buffer, in a
fresh process on a fresh copy: one write that patches 1% of the table's rows and changes 1% of the asset's
lineage partition, committed under that buffer (``COMMIT_MEMORY_LIMIT``; ``default`` is DuckDB's own, 80%
of the machine's memory): committed or failed, seconds of the write, peak RSS of the process, against the
same write under the default buffer in the same invocation.

    .venv/bin/python -m benchmarks.commit_buffer                                  # 1M and 10M rows
    .venv/bin/python -m benchmarks.commit_buffer --rows 2000000 --buffers 256MB 1GB default
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.scale_mix import REPO

TABLE_DDL = "row_id VARCHAR, parent_id VARCHAR, payload VARCHAR"
CHANGE = 0.01


def _ids(prefix: str, rows: int, changed: int = 0) -> str:
    """SQL for ``rows`` 20-hex-digit ids (as ``make_row_id`` makes them), the first ``changed`` of them new."""
    return (
        f"SELECT substr(md5(CASE WHEN i < {changed} THEN 'new' ELSE '' END || '{prefix}' || i), 1, 20) AS id, i "
        f"FROM range({rows}) r(i)"
    )


def build(path: Path, rows: int) -> None:
    """The warehouse of ``rows`` rows and edges, indexed (under a buffer large enough to build the indexes)."""
    from curation.core.warehouse import LINEAGE_DDL, Warehouse

    with Warehouse(path).write("formatted") as staged:
        table = staged.create("formatted", TABLE_DDL)
        staged.connection.execute(
            f"INSERT INTO {table} SELECT id, 'parent-' || i, repeat('x', 40) FROM ({_ids('row', rows)})"
        )
        lineage = staged.partition("lineage", LINEAGE_DDL)
        staged.connection.execute(
            f"INSERT INTO {lineage} SELECT id, 'parent-' || i, 'formatted', 'format', NULL FROM ({_ids('edge', rows)})"
        )


def trial(path: Path, rows: int, buffer: str) -> dict[str, Any]:
    """Patch 1% of the table and change 1% of the lineage partition in one write, committed under ``buffer``."""
    import duckdb

    import curation.core.warehouse as warehouse_module
    from curation.core.warehouse import LINEAGE_DDL, Warehouse

    warehouse_module.COMMIT_MEMORY_LIMIT = None if buffer == "default" else buffer
    changed = int(rows * CHANGE)
    started = time.perf_counter()
    outcome = "committed"
    try:
        with Warehouse(path).write("formatted") as staged:
            connection = staged.connection
            patch = staged.patch(
                "formatted", TABLE_DDL, "row_id", f"SELECT row_id FROM formatted WHERE rowid >= {changed}"
            )
            assert patch is not None  # the table exists with these columns
            connection.execute(
                f"INSERT INTO {patch.added} SELECT id, 'parent-' || i, repeat('y', 40) "
                f"FROM ({_ids('row', changed, changed)})"
            )
            lineage = staged.partition("lineage", LINEAGE_DDL)
            connection.execute(
                f"INSERT INTO {lineage} SELECT id, 'parent-' || i, 'formatted', 'format', NULL "
                f"FROM ({_ids('edge', rows, changed)})"
            )
    except duckdb.Error as error:
        outcome = f"failed: {type(error).__name__}"
    return {
        "buffer": buffer,
        "outcome": outcome,
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def indexes(path: Path) -> int:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as connection:
        (count,) = connection.execute("SELECT count(*) FROM duckdb_indexes()").fetchone() or (0,)
    return int(count)


def measure(rows: int, buffers: list[str], workdir: Path) -> list[dict[str, Any]]:
    base = workdir / f"base-{rows}.duckdb"
    if not base.exists():
        started = time.perf_counter()
        env = os.environ | {"DISTILLERY_DUCKDB_MEMORY_LIMIT": "8GB"}  # so that every index is built
        subprocess.run(
            [sys.executable, "-m", "benchmarks.commit_buffer", "--build", str(base), str(rows)],
            cwd=REPO,
            env=env,
            check=True,
        )
        print(f"built {rows:,} rows and edges in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if indexes(base) < 3:
        raise SystemExit(f"{base}: the lookup indexes were not built; nothing to measure")
    env = {k: v for k, v in os.environ.items() if k != "DISTILLERY_DUCKDB_MEMORY_LIMIT"}
    results = []
    for buffer in buffers:
        copy = workdir / f"trial-{rows}.duckdb"
        shutil.copyfile(base, copy)
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.commit_buffer", "--trial", str(copy), str(rows), buffer],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
        )
        copy.unlink()
        Path(f"{copy}.wal").unlink(missing_ok=True)
        if out.returncode != 0:
            result = {
                "buffer": buffer,
                "outcome": f"process exited {out.returncode}",
                "seconds": 0.0,
                "peak_rss_mib": 0.0,
            }
            print(out.stderr[-2000:], file=sys.stderr)
        else:
            result = json.loads(out.stdout.strip().splitlines()[-1])
        results.append({"rows": rows, **result})
        print(json.dumps(results[-1]), file=sys.stderr)
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| rows | buffer | outcome | s | × default | peak RSS MiB |", "|---|---|---|---|---|---|"]
    for row in results:
        default = next((r for r in results if r["rows"] == row["rows"] and r["buffer"] == "default"), None)
        ratio = f"{row['seconds'] / default['seconds']:.2f}" if default and default["seconds"] else ""
        lines.append(
            f"| {row['rows']:,} | {row['buffer']} | {row['outcome']} | {row['seconds']:.1f} | {ratio} | "
            f"{row['peak_rss_mib']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--buffers", nargs="+", default=["256MB", "1GB", "default"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/distillery-commit-buffer"))
    parser.add_argument("--build", nargs=2, metavar=("PATH", "ROWS"), help=argparse.SUPPRESS)
    parser.add_argument("--trial", nargs=3, metavar=("PATH", "ROWS", "BUFFER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(Path(args.build[0]), int(args.build[1]))
        return
    if args.trial:
        print(json.dumps(trial(Path(args.trial[0]), int(args.trial[1]), args.trial[2])))
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = [result for rows in args.rows for result in measure(rows, args.buffers, args.workdir)]
    print(markdown(results))


if __name__ == "__main__":
    main()
