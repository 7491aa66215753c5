"""filtered: cleaned rows that pass every quality, language and policy filter; each rejection kept with
its reason in `filter_rejections`, each edit as a lineage edge."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.freshness import module_code_version
from curation.core.parallel import use_engine
from curation.filter.chain import project_chain
from curation.filter.runner import filter_table
from curation.filter.summary import summarize
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(
    group_name="datasets",
    pool=POOL,
    deps=["deduped"],
    kinds={"duckdb"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def filtered(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Deduplicated rows cleaned (encoding, HTML residue, PII, whitespace) and filtered (quality, language
    per source, policy, licence for the intended use), cheapest filter first unless `filters.order` says
    otherwise. Rejected rows → `filter_rejections` (filter, reason, value)."""
    config = project.load()
    cleaners, filters = project_chain(config)
    context.log.info("filter order: " + ", ".join(f.name for f in filters))
    with use_engine(config.compute), warehouse.get().write("filtered") as staged:
        tables = filter_table(staged, "deduped", config, log=context.log.info)
        metadata = dataset_metadata(staged, "filtered", parents=["deduped"])
        summary = summarize(staged.connection, tables.rejections, "deduped", tables.stats, cleaners, filters)
    stats = tables.stats
    context.log.info(f"filtered: kept {stats.rows_kept} of {stats.rows_in}, edited {stats.rows_edited}")
    metadata |= {
        "dagster/table_name": "warehouse.main.filtered",
        "rows_in": stats.rows_in,
        "rows_rejected": stats.rows_in - stats.rows_kept,
        "rows_edited": stats.rows_edited,
        "rows_reused": tables.rows_reused,
        "per_filter": MetadataValue.md(summary.per_filter),
        "rejections_plot": MetadataValue.md(summary.rejections_plot),
        "rejected_by_filter": MetadataValue.json(dict(stats.rejected)),
        "rejected_by_source": MetadataValue.md(summary.rejected_by_source),
        "filter_order": MetadataValue.json([f.name for f in filters]),
        "language_policy": MetadataValue.json(summary.language_policy),
        "rejection_sample": MetadataValue.md(summary.rejection_sample),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
