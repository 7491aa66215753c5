"""raw: every declared source read into canonical rows; unreadable records quarantined with a reason."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from assets.sources import SOURCE_FILES, ingested_events
from curation.core.freshness import module_code_version, source_fingerprint
from curation.core.markdown import markdown_table
from curation.core.parallel import use_engine
from curation.ingest.sources import ingest_sources, quarantine_overview
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(
    group_name="datasets",
    pool=POOL,
    deps=[SOURCE_FILES],
    kinds={"duckdb"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def raw(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource) -> MaterializeResult:
    """Canonical rows from every source in the project file (file + record number in source_uri).
    Writes `raw`, `quarantine` and `ingested_files`; files already ingested unchanged are not re-read."""
    config = project.load()
    # Taken before any file is read: a file that changes while it is being read is a new version next time.
    sources_version = source_fingerprint(config)
    with use_engine(config.compute), warehouse.get().write("raw") as staged:
        summary = ingest_sources(config, staged, progress=context.log.info)
        metadata = dataset_metadata(staged, "raw")
        quarantined, quarantine_sample = quarantine_overview(staged)
    metadata["dagster/table_name"] = "warehouse.main.raw"
    metadata |= {
        "quarantined": quarantined,
        "rows_added": summary.rows_added,
        "files": MetadataValue.md(markdown_table([vars(f) for f in summary.files])),
        "quarantine_sample": MetadataValue.md(markdown_table(quarantine_sample, width=100)),
        "project_file_hash": config.file_hash,
    }
    # What was read, for the UI's staleness: an observation of source_files at that version, and the same version
    # as this materialization's input (see assets.sources.ingested_events).
    observation, input_tags = ingested_events(config, sources_version)
    context.log_event(observation)
    # Dagster's data version is the table's content hash, as for every dataset: the UI's staleness and the
    # CLI's printed version then agree, and a new raw row makes everything downstream stale.
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]), tags=input_tags)
