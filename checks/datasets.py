"""Checks every dataset version carries: canonical schema, row conservation, and stage-specific rules."""


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    MetadataValue,
    asset_check,
)

from curation.accounting import STAGES, raw_conservation, unaccounted
from curation.conformance import column_problems, violations
from curation.markdown import markdown_table
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

DATASETS = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")


def conformance_check(asset: str) -> AssetChecksDefinition:
    @asset_check(asset=asset, name="canonical_schema", blocking=True, pool=POOL,
                 description=f"Every {asset} row is a canonical row: unique ids, known kind/origin/roles, "
                             "licence and source present, JSON columns well formed.")
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        with warehouse.get().connect() as connection:
            problems = column_problems(connection, asset)
            broken = {} if problems else violations(connection, asset)
        return AssetCheckResult(
            passed=not problems and not broken,
            metadata={"column_problems": MetadataValue.json(problems), "violations": MetadataValue.json(broken)})
    return _check


def conservation_check(asset: str) -> AssetChecksDefinition:
    stage = STAGES[asset]

    @asset_check(asset=asset, name="rows_conserved", blocking=True, pool=POOL,
                 description=f"Each input row of {asset} ({', '.join(stage.inputs)}) is in the output or in "
                             f"{', '.join(t for t, _ in stage.side_tables)} with a reason, and no output row "
                             "comes from nowhere.")
    def _check(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
        with warehouse.get().connect() as connection:
            report = unaccounted(connection, stage)
        return AssetCheckResult(passed=report.ok, metadata={
            "rows_in": report.rows_in, "rows_out": report.rows_out, "removed_with_reason": report.removed_with_reason,
            "missing": report.missing, "unexplained_output": report.unexplained_output,
            "double_counted": report.double_counted, "missing_sample": MetadataValue.json(list(report.missing_sample))})
    return _check


@asset_check(asset="raw", name="records_conserved", blocking=True, pool=POOL,
             description="For every file, records read = records that became rows + records quarantined.")
def raw_records_conserved(context: AssetCheckExecutionContext, warehouse: WarehouseResource) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        broken = raw_conservation(connection)
        read, quarantined = connection.execute(
            "SELECT sum(records), sum(quarantined) FROM ingested_files").fetchone()
    return AssetCheckResult(passed=not broken, metadata={
        "records_read": int(read or 0), "quarantined": int(quarantined or 0),
        "files_out_of_balance": MetadataValue.md(markdown_table(broken))})


@asset_check(asset="synthetic", name="provenance_complete", blocking=True, pool=POOL,
             description="Every synthetic or augmented row has a provenance record naming its method, teacher "
                         "model, revision and licence, and lineage edges to its parents when it has parents.")
def synthetic_provenance_complete(context: AssetCheckExecutionContext, warehouse: WarehouseResource
                                  ) -> AssetCheckResult:
    with warehouse.get().connect() as connection:
        (missing,) = connection.execute(
            "SELECT count(*) FROM synthetic s LEFT JOIN provenance p USING (row_id) WHERE p.row_id IS NULL "
            "OR p.method IS NULL OR p.teacher_model IS NULL OR p.teacher_revision IS NULL "
            "OR p.teacher_license IS NULL").fetchone()
        (no_edges,) = connection.execute(
            "SELECT count(*) FROM provenance p WHERE json_array_length(p.parent_ids) > 0 AND NOT EXISTS "
            "(SELECT 1 FROM lineage l WHERE l.asset = 'synthetic' AND l.child_id = p.row_id)").fetchone()
        (rows,) = connection.execute("SELECT count(*) FROM synthetic").fetchone()
    return AssetCheckResult(passed=missing == 0 and no_edges == 0, metadata={
        "synthetic_rows": int(rows), "without_complete_provenance": int(missing),
        "parents_without_lineage": int(no_edges)})


@asset_check(asset="synthetic_mixed", name="synthetic_share_within_cap", pool=POOL,
             description="Model-made rows (any origin other than human) are at most mix.synthetic_cap of the mix.")
def synthetic_share_within_cap(context: AssetCheckExecutionContext, project: ProjectResource,
                               warehouse: WarehouseResource) -> AssetCheckResult:
    cap = project.load().mix.synthetic_cap
    with warehouse.get().connect() as connection:
        (share,) = connection.execute(
            "SELECT coalesce(avg(CASE WHEN origin <> 'human' THEN 1.0 ELSE 0.0 END), 0) FROM synthetic_mixed"
        ).fetchone()
    return AssetCheckResult(passed=float(share) <= cap + 1e-9, severity=AssetCheckSeverity.WARN,
                            metadata={"synthetic_share": float(share), "cap": cap})


DATASET_CHECKS: list[AssetChecksDefinition] = [
    *(conformance_check(asset) for asset in DATASETS),
    *(conservation_check(asset) for asset in STAGES),
    raw_records_conserved,
    synthetic_provenance_complete,
    synthetic_share_within_cap,
]

