"""`distillery audit` and `distillery report` on a big warehouse, against a baseline in the same run.

A finished warehouse (e.g. the 20k-row mix, /tmp/h20k) is copied ``--copies`` times into a new file:
every table, with each copy's ids rewritten (the last four hex digits of a 20-digit id replaced by
the copy number; copy 0 keeps the originals), so lineage, clusters, provenance and side tables stay
consistent and a 20k warehouse copied 50 times has the shape of a 1M-row one. No stage runs: this
times the audit and the report only.

Reported in one run:

* ms per audit (median, p95, max) of rows of every fate (formatted, removed as duplicates,
  rejected by a filter, plain raw), in-process on one read-only connection: on the source
  warehouse, on the big one as written (no indexes: every lookup scans) and on the big one with the
  lookup indexes every asset write creates (:func:`curation.core.warehouse.index_lookup_columns`);
* seconds to index the big warehouse;
* seconds of the compliance report (``build_report`` + ``write_report``, the work of
  ``distillery report``) on the source and on the big warehouse.

    .venv/bin/python -m benchmarks.audit_scale --source /tmp/h20k/warehouse.duckdb --copies 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import duckdb

from curation.audit.report import CompliancePolicy, build_report, write_report
from curation.audit.trace import audit_row
from curation.core.licenses import LicensePolicy
from curation.core.warehouse import content_hash, index_lookup_columns, quote, table_columns, table_names

ID_COLUMNS = ("row_id", "child_id", "parent_id", "kept_row_id", "matched_row_id", "candidate_id")


def _copied_id(column: str) -> str:
    return f"CASE WHEN k = 0 THEN {column} ELSE substr({column}, 1, 16) || printf('%04x', k) END"


def synthesize(source: Path, target: Path, copies: int) -> int:
    """``target``: every table of ``source`` ``copies`` times over, ids rewritten per copy (tables
    without ids once). Returns the rows of ``raw``."""
    target.unlink(missing_ok=True)
    connection = duckdb.connect(str(target))
    connection.execute(f"ATTACH {quote(str(source))} AS src (READ_ONLY)")
    try:
        tables = sorted(
            t
            for (t,) in connection.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src' "
                "AND table_schema = 'main' AND NOT starts_with(table_name, '_')"
            ).fetchall()
        )
        for table in tables:
            columns = [
                (name, sql_type)
                for name, sql_type in connection.execute(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = 'src' "
                    "AND table_name = ? ORDER BY ordinal_position",
                    [table],
                ).fetchall()
            ]
            names = [name for name, _ in columns]
            if not set(names) & {*ID_COLUMNS, "parent_ids"}:
                connection.execute(f"CREATE TABLE {quote(table)} AS SELECT * FROM src.{quote(table)}")
                continue
            select = []
            for name, sql_type in columns:
                if name in ID_COLUMNS:
                    select.append(f"{_copied_id(quote(name))} AS {quote(name)}")
                elif name == "parent_ids":
                    ids = f"CAST(json_extract_string({quote(name)}, '$[*]') AS VARCHAR[])"
                    rewritten = f"to_json(list_transform({ids}, lambda p: {_copied_id('p')}))"
                    select.append(
                        f"CAST(CASE WHEN k = 0 THEN {quote(name)} ELSE {rewritten} END AS {sql_type}) AS parent_ids"
                    )
                else:
                    select.append(quote(name))
            connection.execute(
                f"CREATE TABLE {quote(table)} AS SELECT {', '.join(select)} "
                f"FROM src.{quote(table)}, range({int(copies)}) c(k) ORDER BY k"
            )
        (rows,) = connection.execute("SELECT count(*) FROM raw").fetchone()
    finally:
        connection.close()
    return int(rows)


def audit_keys(path: Path, copy: int | None, per_fate: int = 8) -> list[str]:
    """Row ids of every fate: formatted, removed as a duplicate, rejected by a filter, edited by a
    cleaner, raw; from copy ``copy`` (all of them when None)."""
    queries = (
        ("formatted", "row_id", ""),
        ("dedup_clusters", "row_id", "removed AND row_id <> kept_row_id"),
        ("filter_rejections", "row_id", ""),
        ("lineage", "parent_id", "asset = 'filtered'"),
        ("raw", "row_id", ""),
    )
    keys: list[str] = []
    with duckdb.connect(str(path), read_only=True) as connection:
        present = table_names(connection)
        for table, column, condition in queries:
            if table not in present:
                continue
            where = [condition] if condition else []
            if copy is not None:
                where.append(f"right({column}, 4) = printf('%04x', {int(copy)})")
            keys += [
                r[0]
                for r in connection.execute(
                    f"SELECT {column} FROM {table} {'WHERE ' + ' AND '.join(where) if where else ''} "
                    f"ORDER BY hash({column}) LIMIT {int(per_fate)}"
                ).fetchall()
            ]
    return keys


def time_audits(path: Path, keys: Sequence[str]) -> dict[str, float]:
    """ms per audit of each key (after one warm-up audit), on one read-only connection."""
    timings = []
    with duckdb.connect(str(path), read_only=True) as connection:
        audit_row(connection, keys[0])
        for key in keys:
            start = time.perf_counter()
            audit_row(connection, key)
            timings.append((time.perf_counter() - start) * 1000)
    timings.sort()
    return {
        "median": statistics.median(timings),
        "p95": timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))],
        "max": timings[-1],
    }


def index_warehouse(path: Path) -> float:
    """Seconds to create the lookup indexes an asset write creates, on every table."""
    start = time.perf_counter()
    with duckdb.connect(str(path)) as connection:
        for table in sorted(table_names(connection)):
            if table_columns(connection, table):
                index_lookup_columns(connection, table)
        connection.execute("CHECKPOINT")
    return time.perf_counter() - start


def time_report(path: Path, out: Path, intended_use: str) -> tuple[float, float, int, int]:
    """Seconds of ``distillery report``'s work on ``path`` (the data version's hash, then the report);
    rows and violating rows."""
    policy = CompliancePolicy(intended_use, LicensePolicy())
    with duckdb.connect(str(path), read_only=True) as connection:
        start = time.perf_counter()
        content_hash(connection, "formatted")
        hashed = time.perf_counter()
        report = build_report(connection, policy, "formatted")
        write_report(connection, report, out)
        done = time.perf_counter()
    return hashed - start, done - hashed, report.rows, report.violating_rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("/tmp/h20k/warehouse.duckdb"))
    parser.add_argument("--copies", type=int, default=50)
    parser.add_argument("--work", type=Path, help="folder for the big warehouse (default: a temporary one)")
    parser.add_argument("--intended-use", default="commercial")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as folder:
        work = Path(folder)
        big = work / "warehouse.duckdb"
        start = time.perf_counter()
        rows = synthesize(args.source, big, args.copies)
        print(f"synthesized {rows:,} raw rows ({args.copies} copies) in {time.perf_counter() - start:.1f} s")
        keys = audit_keys(big, args.copies - 1)
        lines = [("source warehouse", time_audits(args.source, audit_keys(args.source, None)))]
        lines.append(("big, no indexes (scans)", time_audits(big, keys)))
        print(f"indexed the big warehouse in {index_warehouse(big):.1f} s")
        lines.append(("big, lookup indexes", time_audits(big, keys)))
        print(f"\naudit of one row ({len(keys)} rows of every fate), ms:")
        print(f"{'warehouse':28s} {'median':>8s} {'p95':>8s} {'max':>8s}")
        for label, t in lines:
            print(f"{label:28s} {t['median']:8.1f} {t['p95']:8.1f} {t['max']:8.1f}")
        print("\ncompliance report: data version (hash of every row), report (build + write, violations.csv streamed)")
        for label, path in (("source warehouse", args.source), ("big warehouse", big)):
            hashing, seconds, report_rows, violating = time_report(
                path, work / label.replace(" ", "_"), args.intended_use
            )
            print(
                f"{label:28s} hash {hashing:6.2f} s  report {seconds:6.2f} s  "
                f"({report_rows:,} rows, {violating:,} violating)"
            )


if __name__ == "__main__":
    main()
