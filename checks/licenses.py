"""Every licence in the data is known: a blocking check at `raw`, so a licence that is neither an SPDX id nor
declared under `policy.licenses` (e.g. `Apache 2`, `my-company-internal`) stops the build at its first asset
instead of passing every check as "unknown" while the compliance report counts each row as a violation."""

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetChecksDefinition, MetadataValue, asset_check

from curation.core.licenses import LicensePolicy, license_ids
from curation.core.markdown import markdown_table
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL


@asset_check(
    asset="raw",
    name="licenses_known",
    blocking=True,
    pool=POOL,
    description="Every id of every raw row's licence expression is an SPDX id or declared under policy.licenses "
    "(the project file's licence table): an unknown licence cannot be judged for any intended use.",
)
def raw_licenses_known(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    policy = LicensePolicy.with_overrides(project.load().policy.licenses)
    with warehouse.get().connect() as connection:
        # A table holds a few distinct (licence, source) pairs: judged in Python, counted in DuckDB.
        pairs = connection.execute("SELECT license, source, count(*) FROM raw GROUP BY 1, 2 ORDER BY 2, 1").fetchall()
    unknown = []
    for license_, source, rows in pairs:
        ids = license_ids(license_) or ("(missing)",)
        bad = [i for i in ids if i == "(missing)" or not policy.is_known(i)]
        if bad:
            unknown.append({"source": source, "license": license_, "unknown_ids": ", ".join(bad), "rows": int(rows)})
    how = (
        "Use the licence's SPDX id (https://spdx.org/licenses/) in the source's `license`, or declare its terms "
        "in the project file: `policy: {licenses: {ID: {commercial: false, attribution: true}}}`."
    )
    if unknown:
        context.log.error(
            "raw: unknown licence(s) "
            + "; ".join(f"{u['unknown_ids']} (source {u['source']}, {u['rows']} rows)" for u in unknown)
            + ". "
            + how
        )
    return AssetCheckResult(
        passed=not unknown,
        metadata={
            "unknown_licenses": MetadataValue.md(markdown_table(unknown) if unknown else "_(none)_"),
            "rows_with_unknown_licence": sum(u["rows"] for u in unknown),
            "how_to_fix": how,
        },
    )


LICENSE_CHECKS: list[AssetChecksDefinition] = [raw_licenses_known]
