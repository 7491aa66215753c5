"""inspection: statistics and plots of every dataset version, in the UI and as an HTML report."""

from typing import Any

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.metadata import latest_data_version
from curation.audit.inspection import (
    VERSIONS,
    inspect_versions,
    markdown_summary,
    overview_markdown,
    overview_plot_markdown,
    write_inspection_report,
)
from curation.core.freshness import module_code_version
from curation.core.home import reports_dir
from resources import WarehouseResource
from resources.warehouse import POOL


@asset(
    group_name="inspection",
    pool=POOL,
    deps=list(VERSIONS),
    kinds={"duckdb", "html"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def inspection(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Per dataset version: prompt/response length (characters, words; tokens in `formatted`), turns,
    kinds, sources, licences, languages (sample), origin and teachers, task types and topics where
    `extra` names them; split by source, ingestion day and annotator; outliers; inter-annotator
    agreement where several annotators labelled one item. Report: `$DISTILLERY_HOME/reports/inspection/`."""
    data_versions = {version: latest_data_version(context.instance, version) for version in VERSIONS}
    with warehouse.get().connect(read_only=True) as connection:
        inspected, missing, drawn = inspect_versions(connection, log=context.log.info)
    if missing:
        context.log.warning(f"inspection: not in the warehouse yet, skipped: {', '.join(missing)}")
    report, pngs = write_inspection_report(reports_dir() / "inspection", inspected, data_versions, drawn)
    context.log.info(f"inspection report: {report}")
    metadata: dict[str, Any] = {
        "report": MetadataValue.path(str(report)),
        "versions_inspected": MetadataValue.json([version.table for version in inspected]),
        "versions_missing": MetadataValue.json(missing),
        "overview": MetadataValue.md(overview_markdown(inspected, data_versions)),
        "overview_plot": MetadataValue.md(overview_plot_markdown(inspected)),
    }
    for version in inspected:
        metadata[version.table] = MetadataValue.md(markdown_summary(version, pngs[version.table]))
        metadata[f"{version.table}_stats"] = MetadataValue.json(version.as_json())
    return MaterializeResult(metadata=metadata)
