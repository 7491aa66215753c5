"""filtered: cleaned rows that pass every quality, language and policy filter; each rejection kept with
its reason in `filter_rejections`, each edit as a lineage edge."""

import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.filtering import FilterStats, build_cleaners, build_filters, run_filters, stats_markdown
from curation.markdown import markdown_table
from curation.provenance import LINEAGE_SCHEMA, lineage_record
from curation.warehouse import LINEAGE_DDL, canonical_ddl, table_rows
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

REJECTIONS_DDL = "row_id VARCHAR NOT NULL, filter VARCHAR NOT NULL, reason VARCHAR NOT NULL, value VARCHAR"
REJECTIONS_SCHEMA = pa.schema([(name, pa.string()) for name in ("row_id", "filter", "reason", "value")])


def filter_settings(filters: dict, intended_use: str, licenses: dict) -> dict:
    """The project's filter settings, with the licence filter bound to the build's intended use."""
    settings = dict(filters)
    if settings.get("license") is not False:
        settings["license"] = {"intended_use": intended_use, "licenses": licenses} | dict(settings.get("license") or {})
    return settings


@asset(group_name="datasets", pool=POOL, deps=["deduped"], kinds={"duckdb"}, code_version="filtered-1",
       owners=["team:data"])
def filtered(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
             ) -> MaterializeResult:
    """Deduplicated rows cleaned (encoding, HTML residue, whitespace) and filtered (quality, language,
    policy, licence for the intended use). Rejected rows → `filter_rejections` (filter, reason, value)."""
    config = project.load()
    cleaners = build_cleaners(config.filters.get("cleaners"))
    filters = build_filters(filter_settings(config.filters, config.policy.intended_use, config.policy.licenses))
    stats = FilterStats()
    with warehouse.get().write("filtered") as staged:
        kept = staged.create("filtered", canonical_ddl())
        rejected = staged.create("filter_rejections", REJECTIONS_DDL)
        lineage = staged.partition("lineage", LINEAGE_DDL)
        rows = table_rows(staged.connection, "deduped")
        for batch in run_filters(rows, cleaners, filters, stats=stats, batch_size=config.ingest.batch_rows):
            staged.append(kept, batch.kept_table())
            staged.append_rows(rejected, [r.as_record() for r in batch.rejected], REJECTIONS_SCHEMA)
            staged.append_rows(lineage, [
                lineage_record(e.child_id, e.parent_id, "filtered", e.operation,
                               "; ".join(f"{x.where}: {x.description}" for x in e.edits)) for e in batch.edited],
                LINEAGE_SCHEMA)
        metadata = dataset_metadata(staged.connection, staged.staging_name("filtered"), parents=["deduped"])
        sample = staged.connection.execute(
            f"SELECT filter, reason, value, row_id FROM {rejected} ORDER BY filter, row_id LIMIT 25").fetchall()
    context.log.info(f"filtered: kept {stats.rows_kept} of {stats.rows_in}, edited {stats.rows_edited}")
    metadata |= {
        "dagster/table_name": "warehouse.main.filtered",
        "rows_in": stats.rows_in, "rows_rejected": stats.rows_in - stats.rows_kept, "rows_edited": stats.rows_edited,
        "per_filter": MetadataValue.md(stats_markdown(stats)),
        "filter_order": MetadataValue.json([f.name for f in filters]),
        "rejection_sample": MetadataValue.md(markdown_table(
            [dict(zip(("filter", "reason", "value", "row_id"), r, strict=True)) for r in sample], width=70)),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
