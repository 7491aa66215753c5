"""Checks every dataset version carries: canonical schema, row conservation, and stage-specific rules."""

import hashlib

from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    MetadataValue,
    asset_check,
)

from curation.core.accounting import STAGES, raw_conservation, unaccounted
from curation.core.conformance import column_problems, violations
from curation.core.markdown import markdown_table
from curation.core.warehouse import table_rows
from curation.dedup.exact import exact_key
from curation.dedup.stage import plan_from_project
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

DATASETS = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")


def conformance_check(asset: str) -> AssetChecksDefinition:
    @asset_check(
        asset=asset,
        name="canonical_schema",
        blocking=True,
        pool=POOL,
        description=f"Every {asset} row is a canonical row: unique ids, known kind/origin/roles, "
        "licence and source present, JSON columns well formed.",
    )
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        with warehouse.get().connect() as connection:
            problems = column_problems(connection, asset)
            broken = {} if problems else violations(connection, asset)
        return AssetCheckResult(
            passed=not problems and not broken,
            metadata={"column_problems": MetadataValue.json(problems), "violations": MetadataValue.json(broken)},
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


@asset_check(
    asset="deduped",
    name="no_exact_duplicates",
    blocking=True,
    pool=POOL,
    description="No two deduped rows share the normalised field set exact dedup compares.",
)
def deduped_no_exact_duplicates(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    exact = plan_from_project(project.load().dedup).exact
    seen: dict[str, str] = {}
    duplicates: list[tuple[str, str]] = []
    with warehouse.get().connect() as connection:
        for row in table_rows(connection, "deduped"):
            key = hashlib.sha256(exact_key(row, exact.fields, exact.normalize).encode()).hexdigest()
            if key in seen:
                duplicates.append((seen[key], row["row_id"]))
            else:
                seen[key] = row["row_id"]
    return AssetCheckResult(
        passed=not duplicates,
        metadata={
            "rows_checked": len(seen) + len(duplicates),
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
    "cleaned copy is, through lineage), so each removal is explained by one query.",
)
def deduped_removed_point_to_kept(
    context: AssetCheckExecutionContext, warehouse: WarehouseResource
) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        dangling, removed = connection.execute(
            "WITH kept AS (SELECT row_id FROM deduped UNION SELECT parent_id FROM lineage WHERE asset = 'deduped') "
            "SELECT count(*) FILTER (kept_row_id NOT IN (SELECT row_id FROM kept)), count(*) "
            "FROM dedup_clusters WHERE removed"
        ).fetchone()
        (wrong_similarity,) = connection.execute(
            "SELECT count(*) FROM dedup_clusters WHERE removed AND (jaccard IS NULL OR jaccard <= 0 OR jaccard > 1)"
        ).fetchone()
    return AssetCheckResult(
        passed=dangling == 0 and wrong_similarity == 0,
        metadata={
            "removed_rows": int(removed),
            "pointing_to_missing_rows": int(dangling),
            "without_valid_similarity": int(wrong_similarity),
        },
    )


DATASET_CHECKS: list[AssetChecksDefinition] = [
    *(conformance_check(asset) for asset in DATASETS),
    *(conservation_check(asset) for asset in STAGES),
    raw_records_conserved,
    deduped_no_exact_duplicates,
    deduped_removed_point_to_kept,
]
