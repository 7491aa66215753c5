"""synthetic_mixed: real rows plus accepted synthetic rows, with the synthetic share capped."""

import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.markdown import markdown_table
from curation.mix import choose_synthetic
from curation.warehouse import canonical_ddl, quote
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

EXCLUDED_DDL = "row_id VARCHAR NOT NULL, reason VARCHAR NOT NULL"


@asset(group_name="datasets", pool=POOL, deps=["filtered", "synthetic"], kinds={"duckdb"},
       code_version="synthetic_mixed-1", owners=["team:data"])
def synthetic_mixed(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
                    ) -> MaterializeResult:
    """All filtered (real) rows plus synthetic rows up to `mix.synthetic_cap` of the total; synthetic
    rows left out are listed in `mix_excluded` with the reason."""
    config = project.load()
    with warehouse.get().write("synthetic_mixed") as staged:
        connection = staged.connection
        human, model_made = connection.execute(
            "SELECT count(*) FILTER (origin = 'human'), count(*) FILTER (origin <> 'human') FROM filtered").fetchone()
        synthetic_ids = [r[0] for r in connection.execute("SELECT row_id FROM synthetic ORDER BY row_id").fetchall()]
        kept, plan = choose_synthetic(synthetic_ids, int(human), int(model_made), config.mix.synthetic_cap,
                                      config.mix.seed)
        connection.register("_kept_synthetic", pa.table({"row_id": sorted(kept)}))
        table = staged.create("synthetic_mixed", canonical_ddl())
        connection.execute(f"INSERT INTO {table} SELECT * FROM filtered")
        connection.execute(f"INSERT INTO {table} SELECT s.* FROM synthetic s JOIN _kept_synthetic k USING (row_id)")
        excluded = staged.create("mix_excluded", EXCLUDED_DDL)
        connection.execute(
            f"INSERT INTO {excluded} SELECT row_id, ? FROM synthetic WHERE row_id NOT IN (SELECT row_id FROM "
            "_kept_synthetic)", [f"over the synthetic cap of {plan.cap:.0%} (mix.synthetic_cap)"])
        connection.unregister("_kept_synthetic")
        metadata = dataset_metadata(connection, staged.staging_name("synthetic_mixed"),
                                    parents=["filtered", "synthetic"])
        by_origin = connection.execute(
            f"SELECT origin, count(*) FROM {quote(staged.staging_name('synthetic_mixed'))} GROUP BY 1 ORDER BY 1"
        ).fetchall()
    total = plan.total
    mix_rows = [{"origin": origin, "rows": n, "share": f"{n / total:.1%}" if total else "-"} for origin, n in by_origin]
    context.log.info(f"synthetic_mixed: {plan.synthetic_kept}/{plan.synthetic_available} synthetic rows kept "
                     f"(share {plan.synthetic_share:.1%}, cap {plan.cap:.0%})")
    metadata |= {
        "dagster/table_name": "warehouse.main.synthetic_mixed",
        "synthetic_share": plan.synthetic_share,
        "synthetic_cap": plan.cap,
        "synthetic_available": plan.synthetic_available,
        "synthetic_kept": plan.synthetic_kept,
        "mix": MetadataValue.md(f"Target: synthetic ≤ {plan.cap:.0%}; actual {plan.synthetic_share:.1%}\n\n"
                                + markdown_table(mix_rows)),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
