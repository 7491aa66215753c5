"""Checks every dataset version carries: canonical schema, row conservation, and stage-specific rules."""

from collections.abc import Iterable

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    MetadataValue,
    asset_check,
)

from checks.expectations import coverage
from curation.core.accounting import STAGES, raw_conservation, unaccounted
from curation.core.conformance import column_problems, violations
from curation.core.markdown import markdown_table
from curation.core.schema import Row, iter_rows
from curation.core.warehouse import count_rows, read_batches, sample_sql
from curation.dedup.exact import ExactConfig, exact_key
from curation.dedup.fields import dedup_text
from curation.dedup.stage import plan_from_project
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

DATASETS = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")


STRUCTURE_SAMPLE_ROWS = 100_000
"""Rows whose messages canonical_schema parses (roles, non-empty list, turn order, role markers; a seeded sample
beyond): parsing costs ~5 s per million rows, every other rule ~0.5 s for all of them."""


def conformance_check(asset: str) -> AssetChecksDefinition:
    @asset_check(
        asset=asset,
        name="canonical_schema",
        blocking=True,
        pool=POOL,
        description=f"Every {asset} row is a canonical row: unique ids, known kind/origin, licence and source "
        f"present, columns typed (JSON columns hold valid JSON); messages a non-empty list with known roles, "
        f"no two assistant turns in a row (unless named as different speakers) and no transcript role marker "
        f"('Human:', 'Assistant:', '### Instruction:') inside assistant text (on a sample of "
        f"{STRUCTURE_SAMPLE_ROWS:,} rows).",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        with warehouse.get().connect() as connection:
            problems = column_problems(connection, asset)
            rows = count_rows(connection, asset)
            broken = {} if problems else violations(connection, asset, STRUCTURE_SAMPLE_ROWS)
        parsed = min(rows, STRUCTURE_SAMPLE_ROWS)
        return AssetCheckResult(
            passed=not problems and not broken,
            metadata={
                "column_problems": MetadataValue.json(problems),
                "violations": MetadataValue.json(broken),
                "rows": rows,
                "sampled": parsed < rows,
                "coverage": f"messages parsed: {coverage(parsed, rows)}; every other rule: all rows",
            },
        )

    return _check


def conservation_check(asset: str) -> AssetChecksDefinition:
    stage = STAGES[asset]

    @asset_check(
        asset=asset,
        name="rows_conserved",
        blocking=True,
        pool=POOL,
        description=f"Each input row of {asset} ({', '.join(stage.inputs)}) is in the output or in "
        f"{', '.join(t for t, _ in stage.side_tables)} with a reason, and no output row "
        "comes from nowhere.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        with warehouse.get().connect() as connection:
            report = unaccounted(connection, stage)
        return AssetCheckResult(
            passed=report.ok,
            metadata={
                "rows_in": report.rows_in,
                "rows_out": report.rows_out,
                "removed_with_reason": report.removed_with_reason,
                "missing": report.missing,
                "unexplained_output": report.unexplained_output,
                "double_counted": report.double_counted,
                "missing_sample": MetadataValue.json(list(report.missing_sample)),
            },
        )

    return _check


_ROW_HASH = "hash(kind, messages, text, chosen, rejected)"
"""One hash over the columns that make two rows the same content. Groups of it are listed only once known to
hold more than one row (listing every group's ids before filtering took 1.0 s instead of 0.6 s at 1M rows)."""


@asset_check(
    asset="raw",
    name="records_conserved",
    blocking=True,
    pool=POOL,
    description="For every file, records read = records that became rows + records quarantined.",
)
def raw_records_conserved(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        broken = raw_conservation(connection)
        read, quarantined = connection.execute("SELECT sum(records), sum(quarantined) FROM ingested_files").fetchone()
    return AssetCheckResult(
        passed=not broken,
        metadata={
            "records_read": int(read or 0),
            "quarantined": int(quarantined or 0),
            "files_out_of_balance": MetadataValue.md(markdown_table(broken)),
        },
    )


EXACT_SAMPLE_ROWS = 20_000
"""Rows of ``deduped`` whose exact key no_exact_duplicates recomputes (a seeded sample beyond): the key is
Python (NFKC, casefold), ~100 µs a row, too slow for every row of a million-row table."""
_COMPARED_COLUMNS = ("row_id", "kind", "messages", "text", "chosen", "rejected")
"""All that :func:`curation.dedup.fields.field_parts` reads, whatever the field set."""


def _duplicate_pairs(rows: Iterable[Row], exact: ExactConfig) -> tuple[int, list[tuple[str, str]]]:
    """(rows keyed, pairs of rows with the same exact key). Rows with nothing in the compared fields
    have no key, as in the stage: empty is not a duplicate of empty."""
    seen: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    for row in rows:
        if not dedup_text(row, exact.fields).strip():
            continue
        key = exact_key(row, exact.fields, exact.normalize)
        if key in seen:
            pairs.append((seen[key], row["row_id"]))
        else:
            seen[key] = row["row_id"]
    return len(seen) + len(pairs), pairs


@asset_check(
    asset="deduped",
    name="no_exact_duplicates",
    blocking=True,
    pool=POOL,
    description="No two deduped rows share the normalised field set exact dedup compares: identical rows "
    f"over the whole table (SQL), the normalised key recomputed on a sample of {EXACT_SAMPLE_ROWS:,} rows.",
)
def deduped_no_exact_duplicates(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    exact = plan_from_project(project.load().dedup).exact
    columns = ", ".join(_COMPARED_COLUMNS)
    with warehouse.get().connect() as connection:
        rows = count_rows(connection, "deduped")
        # Rows identical in every compared column have the same key whatever the field set: grouped by a hash
        # over the whole table, and the first groups confirmed by their keys (a hash collision is no duplicate).
        identical = (
            f"SELECT {columns} FROM deduped WHERE row_id IN (SELECT unnest(ids) FROM ("
            f"SELECT list(row_id ORDER BY row_id) AS ids FROM deduped WHERE {_ROW_HASH} IN ("
            f"SELECT {_ROW_HASH} FROM deduped GROUP BY ALL HAVING count(*) > 1) "
            f"GROUP BY {_ROW_HASH} ORDER BY ids LIMIT 100)) ORDER BY {_ROW_HASH}, row_id"
        )
        _, identical_pairs = _duplicate_pairs(iter_rows(read_batches(connection, identical)), exact)
        sample = sample_sql("deduped", EXACT_SAMPLE_ROWS, columns=_COMPARED_COLUMNS) + " ORDER BY row_id"
        keyed, sampled_pairs = _duplicate_pairs(iter_rows(read_batches(connection, sample)), exact)
    measured = min(rows, EXACT_SAMPLE_ROWS)
    duplicates = sorted(set(identical_pairs) | set(sampled_pairs))
    return AssetCheckResult(
        passed=not duplicates,
        metadata={
            "rows": rows,
            "rows_keyed": keyed,
            "sampled": measured < rows,
            "coverage": f"identical rows: all {rows:,} rows; normalised key: {coverage(measured, rows)}",
            "duplicate_pairs": len(duplicates),
            "sample": MetadataValue.json(duplicates[:10]),
            "fields": exact.fields,
        },
    )


@asset_check(
    asset="deduped",
    name="removed_rows_point_to_kept_rows",
    blocking=True,
    pool=POOL,
    description="Every row removed as a duplicate names a kept row that is in deduped (or whose "
    "cleaned copy is, through lineage), so each removal is explained by one query; and the clustering is one: "
    "no removed row is published, and none is removed twice.",
)
def deduped_removed_point_to_kept(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        dangling, removed, published, twice = connection.execute(
            "WITH kept AS (SELECT row_id FROM deduped UNION SELECT parent_id FROM lineage WHERE asset = 'deduped') "
            "SELECT count(*) FILTER (kept_row_id NOT IN (SELECT row_id FROM kept)), count(*), "
            "count(*) FILTER (row_id IN (SELECT row_id FROM kept)), count(*) - count(DISTINCT row_id) "
            "FROM dedup_clusters WHERE removed"
        ).fetchone()
        (wrong_similarity,) = connection.execute(
            "SELECT count(*) FROM dedup_clusters WHERE removed AND (jaccard IS NULL OR jaccard <= 0 OR jaccard > 1)"
        ).fetchone()
    return AssetCheckResult(
        passed=dangling == 0 and wrong_similarity == 0 and published == 0 and twice == 0,
        metadata={
            "removed_rows": int(removed),
            "pointing_to_missing_rows": int(dangling),
            "without_valid_similarity": int(wrong_similarity),
            "removed_but_published": int(published),
            "removed_more_than_once": int(twice),
        },
    )


DATASET_CHECKS: list[AssetChecksDefinition] = [
    *(conformance_check(asset) for asset in DATASETS),
    *(conservation_check(asset) for asset in STAGES),
    raw_records_conserved,
    deduped_no_exact_duplicates,
    deduped_removed_point_to_kept,
]
