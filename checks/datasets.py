"""Checks every dataset version carries: canonical schema, row conservation, and stage-specific rules."""


from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    MetadataValue,
    asset_check,
)

from curation.accounting import STAGES, raw_conservation, unaccounted
from curation.conformance import column_problems, violations
from curation.markdown import markdown_table
from resources import WarehouseResource
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


DATASET_CHECKS: list[AssetChecksDefinition] = [
    *(conformance_check(asset) for asset in DATASETS),
    *(conservation_check(asset) for asset in STAGES),
    raw_records_conserved,
]

