"""Row conservation: every row that enters a stage is in its output or in a side table with a reason.

Each stage declares where its input rows can end up. :func:`unaccounted` lists input rows found
nowhere, output rows with no known input, and rows counted twice (kept and rejected). These are
the queries behind the conservation asset checks, and a reviewer can run them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb

from curation.core.warehouse import fetch_one, quote, source_file_sql, source_record_sql


@dataclass(frozen=True)
class Accounting:
    """Where the input rows of ``asset`` go."""

    asset: str
    inputs: tuple[str, ...]
    side_tables: tuple[tuple[str, str], ...] = ()  # (table, SQL condition selecting removed rows)
    parent_column: str | None = None  # output column naming the input row, when ids change
    lineage_edges: bool = False  # kept rows may carry new ids linked to their input by lineage edges
    generated: tuple[str, ...] = field(default=())  # input tables whose rows may be new (teacher output)


STAGES: dict[str, Accounting] = {
    "deduped": Accounting("deduped", ("raw",), (("dedup_clusters", "removed"),), lineage_edges=True),
    "filtered": Accounting("filtered", ("deduped",), (("filter_rejections", "TRUE"),), lineage_edges=True),
    "synthetic_mixed": Accounting("synthetic_mixed", ("filtered", "synthetic"), (("mix_excluded", "TRUE"),)),
    "formatted": Accounting(
        "formatted", ("synthetic_mixed",), (("format_rejections", "TRUE"),), parent_column="parent_id"
    ),
}


@dataclass(frozen=True)
class ConservationReport:
    rows_in: int
    rows_out: int
    removed_with_reason: int
    missing: int  # input rows in neither the output nor a side table
    unexplained_output: int  # output rows that come from no input row
    double_counted: int  # input rows both kept and removed
    missing_sample: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.missing == 0 and self.unexplained_output == 0 and self.double_counted == 0


def unaccounted(connection: duckdb.DuckDBPyConnection, stage: Accounting) -> ConservationReport:
    out = quote(stage.asset)
    inputs = " UNION ALL ".join(f"SELECT row_id FROM {quote(t)}" for t in stage.inputs)
    if stage.parent_column:
        kept = f"SELECT {quote(stage.parent_column)} AS row_id FROM {out}"
    else:
        kept = f"SELECT row_id FROM {out}"
        if stage.lineage_edges:  # an edited row carries a new id; its edge names the input row
            kept = (
                f"SELECT coalesce(l.parent_id, o.row_id) AS row_id FROM {out} o LEFT JOIN lineage l "
                f"ON l.child_id = o.row_id AND l.asset = '{stage.asset}'"
            )
    removed = " UNION ".join(f"SELECT row_id FROM {quote(t)} WHERE {cond}" for t, cond in stage.side_tables)
    sql = f"""
        WITH input AS ({inputs}), kept AS ({kept}), removed AS ({removed})
        SELECT
          (SELECT count(*) FROM input),
          (SELECT count(*) FROM {out}),
          (SELECT count(*) FROM removed),
          (SELECT count(*) FROM input WHERE row_id NOT IN (SELECT row_id FROM kept)
                                        AND row_id NOT IN (SELECT row_id FROM removed)),
          (SELECT count(*) FROM kept WHERE row_id NOT IN (SELECT row_id FROM input)),
          (SELECT count(*) FROM input WHERE row_id IN (SELECT row_id FROM kept)
                                        AND row_id IN (SELECT row_id FROM removed)),
          (SELECT min(row_id, 5) FROM input WHERE row_id NOT IN (SELECT row_id FROM kept)
                                        AND row_id NOT IN (SELECT row_id FROM removed))
    """
    rows_in, rows_out, removed_n, missing, unexplained, double, sample = fetch_one(connection, sql)
    return ConservationReport(rows_in, rows_out, removed_n, missing, unexplained, double, tuple(sample or ()))


def raw_conservation(connection: duckdb.DuckDBPyConnection) -> list[dict[str, object]]:
    """Files where records read != records that became rows + records quarantined."""
    sql = f"""
        WITH produced AS (
            SELECT source, {source_file_sql()} AS file, count(DISTINCT {source_record_sql()}) AS records
            FROM raw GROUP BY 1, 2),
        quarantined AS (SELECT source, file, count(DISTINCT record_no) AS records FROM quarantine GROUP BY 1, 2)
        SELECT f.source, f.file, f.records AS read,
               coalesce(p.records, 0) AS became_rows, coalesce(q.records, 0) AS quarantined
        FROM ingested_files f
        LEFT JOIN produced p USING (source, file)
        LEFT JOIN quarantined q USING (source, file)
        WHERE f.records <> coalesce(p.records, 0) + coalesce(q.records, 0)
        ORDER BY 1, 2
    """
    cursor = connection.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]
