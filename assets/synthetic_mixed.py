"""synthetic_mixed: real rows plus accepted synthetic rows under the mix policy (quotas, target
weights, synthetic cap); every row left out is in `mix_excluded` with the reason."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.freshness import module_code_version
from curation.core.markdown import markdown_table
from curation.core.memo import stage_rows
from curation.core.schema import COLUMNS
from curation.core.warehouse import canonical_ddl
from curation.synth.mix import MIX_EXCLUDED_DDL, MixPolicy, mix_warehouse, mixed_rows_sql
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(
    group_name="datasets",
    pool=POOL,
    deps=["filtered", "synthetic"],
    kinds={"duckdb"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def synthetic_mixed(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Filtered (real) rows plus synthetic rows: per-source quotas (`mix.quotas`), target weights over one
    dimension (`mix.weights`), and model-made rows at most `mix.synthetic_cap` of the total."""
    mix = project.load().mix
    policy = MixPolicy.from_config(mix.synthetic_cap, mix.seed, mix.weights, mix.quotas)
    with warehouse.get().write("synthetic_mixed") as staged:
        excluded = staged.create("mix_excluded", MIX_EXCLUDED_DDL)
        result = mix_warehouse(staged.connection, policy, excluded)
        # After a small change upstream the table is patched: most rows are as the last run copied them.
        stage_rows(staged, "synthetic_mixed", canonical_ddl(), "row_id", mixed_rows_sql(excluded), COLUMNS)
        metadata = dataset_metadata(staged, "synthetic_mixed", parents=["filtered", "synthetic"])
    plan = result.plan
    context.log.info(
        f"synthetic_mixed: {plan.synthetic_kept}/{plan.synthetic_available} synthetic rows kept "
        f"(model-made share {plan.synthetic_share:.1%}, cap {plan.cap:.0%})"
    )
    metadata |= {
        "dagster/table_name": "warehouse.main.synthetic_mixed",
        "synthetic_share": plan.synthetic_share,
        "synthetic_cap": plan.cap,
        "synthetic_available": plan.synthetic_available,
        "synthetic_kept": plan.synthetic_kept,
        "mix": MetadataValue.md(result.summary_markdown()),
        "mix_report": MetadataValue.json(result.report),
        "excluded_by_reason": MetadataValue.md(markdown_table(result.excluded_by_reason)),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
