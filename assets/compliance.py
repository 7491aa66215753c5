"""compliance_report: the compliance report of the formatted dataset version for the project's intended use,
written under `$DISTILLERY_HOME/reports/<data_version>/` each time `formatted` changes (`distillery report` for
another use writes beside it, in `<data_version>/<use>/`). `exports` waits for it: its blocking checks
(checks/compliance.py) stop a version that may not be used for the intended use before it is exported."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.metadata import reported_data_version
from curation.audit.report import CompliancePolicy, build_report, write_report
from curation.core.freshness import module_code_version
from curation.core.home import reports_dir
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset(
    group_name="reports",
    pool=POOL,
    deps=["formatted"],
    kinds={"duckdb", "html"},
    code_version=module_code_version(__name__),
    owners=["team:data"],
)
def compliance_report(
    context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> MaterializeResult:
    """Rows of `formatted` by licence, origin, source and teacher; attribution and share-alike obligations;
    the teachers' terms; every row violating the policy for `policy.intended_use`, with the reason.
    Markdown, HTML, JSON and the full `violations.csv`."""
    config = project.load()
    policy = CompliancePolicy.from_config(config.policy)
    with warehouse.get().connect() as connection:
        version = reported_data_version(context.instance, connection, "formatted")
        report = build_report(
            connection,
            policy,
            "formatted",
            data_version=version,
            project=config.name,
            project_file_hash=config.file_hash,
        )
        out = reports_dir() / version
        paths = write_report(connection, report, out)
    context.log.info(
        f"compliance report: {report.violating_rows} of {report.rows} rows violate the "
        f"{policy.intended_use} policy; {paths['html']}"
    )
    return MaterializeResult(
        metadata={
            "dagster/uri": paths["html"].as_uri(),
            "report_html": MetadataValue.path(str(paths["html"])),
            "report_markdown": MetadataValue.path(str(paths["markdown"])),
            "violations_csv": MetadataValue.path(str(paths["violations"])),
            "summary": MetadataValue.md(report.summary_markdown()),
            "data_version": version,
            "project_file_hash": config.file_hash,
            "intended_use": policy.intended_use,
            "rows": report.rows,
            "violating_rows": report.violating_rows,
            "compliant": report.compliant,
            "violations_by_rule": MetadataValue.json(report.violations_by_rule),
            "attribution": MetadataValue.json(report.attribution),
        }
    )
