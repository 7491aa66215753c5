"""raw: every declared source read into canonical rows; unreadable records quarantined with a reason."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.markdown import markdown_table
from curation.ingest.sources import ingest_sources, quarantine_overview
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(group_name="datasets", pool=POOL, kinds={"duckdb"}, code_version="raw-1", owners=["team:data"])
def raw(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource) -> MaterializeResult:
    """Canonical rows from every source in the project file (file + record number in source_uri).
    Writes `raw`, `quarantine` and `ingested_files`; files already ingested unchanged are not re-read."""
    config = project.load()
    with warehouse.get().write("raw") as staged:
        summary = ingest_sources(config, staged, progress=context.log.info)
        metadata = dataset_metadata(staged.connection, staged.staging_name("raw"))
        quarantined, quarantine_sample = quarantine_overview(staged)
    metadata["dagster/table_name"] = "warehouse.main.raw"
    metadata |= {
        "quarantined": quarantined,
        "rows_added": summary.rows_added,
        "files": MetadataValue.md(markdown_table([vars(f) for f in summary.files])),
        "quarantine_sample": MetadataValue.md(markdown_table(quarantine_sample, width=100)),
        "project_file_hash": config.file_hash,
    }
    return MaterializeResult(metadata=metadata)
