"""synthetic_mixed: real rows plus accepted synthetic rows under the mix policy (quotas, target
weights, synthetic cap); every row left out is in `mix_excluded` with the reason."""

import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.markdown import markdown_table, png_markdown
from curation.core.schema import COLUMNS
from curation.core.warehouse import canonical_ddl, quote
from curation.synth.mix import MixItem, MixPolicy, format_report, mix_plot_png, mix_report, plan_mix
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

EXCLUDED_DDL = "row_id VARCHAR NOT NULL, reason VARCHAR NOT NULL"
_EXCLUDED_SCHEMA = pa.schema([("row_id", pa.string()), ("reason", pa.string())])


@asset(group_name="datasets", pool=POOL, deps=["filtered", "synthetic"], kinds={"duckdb"},
       code_version="synthetic_mixed-2", owners=["team:data"])
def synthetic_mixed(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
                    ) -> MaterializeResult:
    """Filtered (real) rows plus synthetic rows: per-source quotas (`mix.quotas`), target weights over one
    dimension (`mix.weights`), and model-made rows at most `mix.synthetic_cap` of the total."""
    mix = project.load().mix
    policy = MixPolicy.from_config(mix.synthetic_cap, mix.seed, mix.weights, mix.quotas)
    if policy.dimension is None:
        value_sql, params = "NULL", []
    elif policy.dimension in COLUMNS:
        value_sql, params = f"CAST({quote(policy.dimension)} AS VARCHAR)", []
    else:  # an extra field such as task_type or domain
        value_sql, params = "json_extract_string(extra, ?)", [f"$.{policy.dimension}"] * 2
    with warehouse.get().write("synthetic_mixed") as staged:
        connection = staged.connection
        items = [MixItem(*r) for r in connection.execute(
            f"SELECT row_id, source, origin, {value_sql}, false FROM filtered UNION ALL "
            f"SELECT row_id, source, origin, {value_sql}, true FROM synthetic ORDER BY row_id", params).fetchall()]
        plan = plan_mix(items, policy)
        connection.register("_kept", pa.table({"row_id": sorted(plan.kept)}))
        table = staged.create("synthetic_mixed", canonical_ddl())
        for parent in ("filtered", "synthetic"):
            connection.execute(f"INSERT INTO {table} SELECT p.* FROM {quote(parent)} p JOIN _kept k USING (row_id)")
        connection.unregister("_kept")
        excluded = staged.create("mix_excluded", EXCLUDED_DDL)
        staged.append_rows(excluded, [{"row_id": r, "reason": why} for r, why in sorted(plan.excluded.items())],
                           _EXCLUDED_SCHEMA)
        metadata = dataset_metadata(connection, staged.staging_name("synthetic_mixed"),
                                    parents=["filtered", "synthetic"])
    report = mix_report(items, plan, policy)
    reasons: dict[str, int] = {}
    for why in plan.excluded.values():
        reasons[why] = reasons.get(why, 0) + 1
    context.log.info(f"synthetic_mixed: {plan.synthetic_kept}/{plan.synthetic_available} synthetic rows kept "
                     f"(model-made share {plan.synthetic_share:.1%}, cap {plan.cap:.0%})")
    metadata |= {
        "dagster/table_name": "warehouse.main.synthetic_mixed",
        "synthetic_share": plan.synthetic_share,
        "synthetic_cap": plan.cap,
        "synthetic_available": plan.synthetic_available,
        "synthetic_kept": plan.synthetic_kept,
        "mix": MetadataValue.md(f"Target: model-made ≤ {plan.cap:.0%}; actual {plan.synthetic_share:.1%}\n\n"
                                + markdown_table(format_report(report)) + "\n\n"
                                + png_markdown(mix_plot_png(report), "target vs actual mix")),
        "mix_report": MetadataValue.json(report),
        "excluded_by_reason": MetadataValue.md(markdown_table(
            [{"reason": k, "rows": v} for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])])),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
