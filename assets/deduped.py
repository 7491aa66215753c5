"""deduped: one row per group of duplicates (exact, near, same prompt); every removed row points to the row
it duplicates in `dedup_clusters`, with the verified similarity and why that row was kept."""

from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.freshness import module_code_version
from curation.core.parallel import use_engine
from curation.dedup.stage import run_dedup
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(
    group_name="datasets",
    pool=POOL,
    deps=["raw"],
    kinds={"duckdb"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def deduped(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Raw rows without repeated paragraphs and boilerplate (edits → lineage), exact duplicates (normalised
    field set), near duplicates (MinHash LSH, verified by exact Jaccard) and conflicting answers to one prompt.
    Signatures persist in `dedup_signatures`, so unchanged rows are never MinHashed again."""
    config = project.load()
    with use_engine(config.compute), warehouse.get().write("deduped") as staged:
        run = run_dedup(staged, config.dedup, workers=config.compute.workers, log=context.log.info)
        context.log.info(run.log_line)
        metadata = dataset_metadata(staged, "deduped", parents=["raw"])
    metadata |= {
        "dagster/table_name": "warehouse.main.deduped",
        **run.counts,
        **{name: MetadataValue.md(text) for name, text in run.markdown.items()},
        "parameters": MetadataValue.json(run.parameters()),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
