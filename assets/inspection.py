"""inspection: statistics and plots of every dataset version, in the UI and as an HTML report."""

from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from curation.audit.inspection import (
    VERSIONS,
    inspect_version,
    markdown_summary,
    plot_overview,
    write_report,
)
from curation.core.home import reports_dir
from curation.core.markdown import png_markdown
from curation.core.warehouse import table_names
from resources import WarehouseResource
from resources.warehouse import POOL


@asset(group_name="inspection", pool=POOL, deps=list(VERSIONS), kinds={"duckdb", "html"},
       code_version="inspection-0", owners=["team:data"])
def inspection(context: AssetExecutionContext, warehouse: WarehouseResource) -> MaterializeResult:
    """Per dataset version: prompt/response length (characters, words; tokens in `formatted`), turns,
    kinds, sources, licences, languages (sample), origin and teachers, task types and topics where
    `extra` names them; split by source, ingestion day and annotator; outliers; inter-annotator
    agreement where several annotators labelled one item. Report: `$DISTILLERY_HOME/reports/inspection/`."""
    data_versions: dict[str, str] = {}
    for version in VERSIONS:
        event = context.instance.get_latest_materialization_event(AssetKey(version))
        value = event.asset_materialization.metadata.get("data_version") if event and event.asset_materialization \
            else None
        data_versions[version] = str(value.value) if value is not None else ""
    with warehouse.get().connect(read_only=True) as connection:
        present = [v for v in VERSIONS if v in table_names(connection)]
        inspected = [inspect_version(connection, version) for version in present]
    missing = [v for v in VERSIONS if v not in present]
    if missing:
        context.log.warning(f"inspection: not in the warehouse yet, skipped: {', '.join(missing)}")
    report, pngs = write_report(reports_dir() / "inspection", inspected, data_versions)
    context.log.info(f"inspection report: {report}")
    metadata: dict = {
        "report": MetadataValue.path(str(report)),
        "versions_inspected": MetadataValue.json(present),
        "versions_missing": MetadataValue.json(missing),
        "overview": MetadataValue.md("\n".join(
            ["| version | rows | synthetic share | outliers | data version |", "|---|---|---|---|---|"]
            + [f"| {v.table} | {v.rows} | {v.synthetic_share:.1%} | {len(v.outliers)} | "
               f"{data_versions.get(v.table, '')} |" for v in inspected])),
        "overview_plot": MetadataValue.md(png_markdown(plot_overview(inspected), "rows per version by origin")
                                          if inspected else "_no dataset version in the warehouse yet_"),
    }
    for version in inspected:
        metadata[version.table] = MetadataValue.md(markdown_summary(version, pngs[version.table]))
        metadata[f"{version.table}_stats"] = MetadataValue.json(version.as_json())
    return MaterializeResult(metadata=metadata)
