"""Blocking checks that keep what training reads, and what leaves the warehouse, within the project's policy:
the synthetic cap on `formatted` and on each export, and the compliance report for the intended use. `exports`
depends on `compliance_report`, so a version whose report fails these checks is never exported in that run.

The cap is checked on the train split: the rows a trainer learns from (see
:data:`curation.format.stage.CAPPED_SPLIT` for why not every split). The compliance checks judge the report a
reviewer reads (the asset's own files for this data version) and judge the rows again with the licence
filter's rules, so the report and the filter must agree."""

import json
from pathlib import Path
from typing import Any

import duckdb
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetKey,
    DagsterInstance,
    MetadataValue,
    asset_check,
)

from assets.metadata import latest_data_version, reported_data_version
from curation.audit.report import report_mismatches
from curation.core.home import exports_dir
from curation.core.licenses import LicensePolicy, license_ids
from curation.core.markdown import markdown_table
from curation.core.warehouse import quote
from curation.format.export import MANIFEST, split_of
from curation.format.stage import CAPPED_SPLIT, model_made_share_sql
from curation.synth.terms import parse_model_registry, terms_violations
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

SAMPLE = 20
"""Rows or problems listed in a check's metadata."""


def _shares(counts: list[tuple[str, int, int]]) -> dict[str, dict[str, Any]]:
    return {
        split: {"model_made": int(m), "rows": int(n), "share": round(m / n, 4) if n else 0.0} for split, m, n in counts
    }


def _within(cap: float, model_made: int, rows: int) -> bool:
    return rows == 0 or model_made / rows <= cap + 1e-9


@asset_check(
    asset="formatted",
    name="synthetic_share_within_cap",
    blocking=True,
    pool=POOL,
    description=f"Model-made rows (any origin but human) are at most mix.synthetic_cap of the {CAPPED_SPLIT} "
    "split, what training reads: formatting removes rows after the mix and then leaves out model-made rows past "
    "the cap (format_rejections, stage synthetic_cap). Every split's share is in the metadata.",
)
def formatted_synthetic_share_within_cap(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    cap = project.load().mix.synthetic_cap
    with warehouse.get().connect() as connection:
        shares = _shares(connection.execute(model_made_share_sql("formatted")).fetchall())
        (capped,) = connection.execute(
            "SELECT count(*) FROM format_rejections WHERE stage = 'synthetic_cap'"
        ).fetchone() or (0,)
    train = shares.get(CAPPED_SPLIT, {"model_made": 0, "rows": 0, "share": 0.0})
    return AssetCheckResult(
        passed=_within(cap, train["model_made"], train["rows"]),
        metadata={
            "cap": cap,
            "split_checked": CAPPED_SPLIT,
            "synthetic_share": train["share"],
            "model_made_rows": train["model_made"],
            "rows": train["rows"],
            "by_split": MetadataValue.json(shares),
            "left_out_for_the_cap": int(capped),
        },
    )


def _exported_folder(instance: DagsterInstance) -> Path | None:
    version = latest_data_version(instance, "exports")
    return exports_dir() / version if version else None


@asset_check(
    asset="exports",
    name="synthetic_share_within_cap",
    blocking=True,
    pool=POOL,
    description=f"In the export folder this materialization wrote, the {CAPPED_SPLIT} files (every config, each "
    "row counted once by id) hold at most mix.synthetic_cap model-made rows: what a trainer reads from disk.",
)
def exports_synthetic_share_within_cap(
    context: AssetCheckExecutionContext, project: ProjectResource
) -> AssetCheckResult:
    cap = project.load().mix.synthetic_cap
    folder = _exported_folder(context.instance)
    if folder is None or not (folder / MANIFEST).is_file():
        return AssetCheckResult(passed=False, metadata={"problem": f"no export folder found ({folder})"})
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    by_split: dict[str, list[str]] = {}
    for relative in sorted(manifest["parquet_files"]):
        by_split.setdefault(split_of(relative), []).append(str(folder / relative))  # a split's shards together
    counts = []
    with duckdb.connect() as connection:
        for split, files in sorted(by_split.items()):
            # A row is written once per layout it fits (sft and sft_tokenized): counted once, by its id.
            (model_made, rows) = connection.execute(
                "SELECT count(DISTINCT id) FILTER (origin IS DISTINCT FROM 'human'), count(DISTINCT id) "
                "FROM read_parquet(?, union_by_name = true)",
                [files],
            ).fetchone() or (0, 0)
            counts.append((split, int(model_made), int(rows)))
    shares = _shares(counts)
    train = shares.get(CAPPED_SPLIT, {"model_made": 0, "rows": 0, "share": 0.0})
    return AssetCheckResult(
        passed=_within(cap, train["model_made"], train["rows"]),
        metadata={
            "export": str(folder),
            "cap": cap,
            "split_checked": CAPPED_SPLIT,
            "synthetic_share": train["share"],
            "by_split": MetadataValue.json(shares),
        },
    )


def _asset_report(instance: DagsterInstance) -> tuple[dict[str, Any] | None, str]:
    """The report the ``compliance_report`` asset last wrote (its ``compliance.json``) and where, from the
    materialization's own metadata: the files a reviewer is pointed at."""
    event = instance.get_latest_materialization_event(AssetKey("compliance_report"))
    metadata = event.asset_materialization.metadata if event and event.asset_materialization else {}
    markdown = metadata.get("report_markdown")
    if markdown is None:
        return None, "compliance_report has no materialization with a report"
    path = Path(str(markdown.value)).with_name("compliance.json")
    if not path.is_file():
        return None, f"{path} is missing"
    return json.loads(path.read_text(encoding="utf-8")), str(path)


@asset_check(
    asset="compliance_report",
    name="no_row_forbidden_for_intended_use",
    blocking=True,
    pool=POOL,
    description="The report written for this version of formatted judges the project's policy.intended_use and "
    "finds no violating row, and judging every formatted row again by the licence filter's rules (licence "
    "expression, generator's registered terms, terms recorded in the row) finds none either.",
)
def compliance_no_row_forbidden(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    config = project.load()
    use = config.policy.intended_use
    policy = LicensePolicy.with_overrides(config.policy.licenses)
    registry = parse_model_registry(config.policy.teachers)
    report, where = _asset_report(context.instance)
    with warehouse.get().connect() as connection:
        version = reported_data_version(context.instance, connection, "formatted")
        # A verdict depends on a row's licence, generator and recorded terms only: each distinct combination is
        # judged once and counts for all its rows. Its first row ids by `min(row_id, n)`, which keeps n of them:
        # a sorted list of all of them is one combination's ids in memory at once.
        combinations = connection.execute(
            "SELECT license, generator, CAST(json_extract(extra, '$.terms') AS VARCHAR), count(*), "
            f"min(row_id, {SAMPLE}) FROM {quote('formatted')} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    rejudged, sample = 0, []
    for license_, generator, terms, rows, row_ids in combinations:
        extra = {} if terms is None else {"terms": json.loads(terms)}
        found, judged = terms_violations(
            [{"row_id": row_ids[0], "license": license_, "generator": generator, "extra": extra}], registry, policy, use
        )
        if found:
            rejudged += int(rows)
            sample += [judged[0] | {"row_id": row_id} for row_id in row_ids]
    problems = [where] if report is None else report_mismatches(report, version, use)
    violating = int(report.get("violating_rows", 0)) if report else 0
    return AssetCheckResult(
        passed=not problems and violating == 0 and rejudged == 0,
        metadata={
            "intended_use": use,
            "report": where,
            "report_problems": MetadataValue.json(problems),
            "violating_rows_in_report": violating,
            "violations_by_rule": MetadataValue.md(markdown_table((report or {}).get("violations_by_rule", []))),
            "violating_rows_rejudged": rejudged,
            "rejudged_sample": MetadataValue.md(markdown_table(sorted(sample, key=lambda r: r["row_id"])[:SAMPLE])),
        },
    )


def _teachers_of_rows(connection: duckdb.DuckDBPyConnection) -> set[str]:
    """Models named as a formatted row's generator or as the teacher of its provenance record."""
    names = {
        r[0] for r in connection.execute("SELECT DISTINCT generator FROM formatted WHERE origin <> 'human'").fetchall()
    }
    tables = {r[0] for r in connection.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    if "provenance" in tables:
        names |= {
            r[0]
            for r in connection.execute(
                "SELECT DISTINCT p.teacher_model FROM formatted f JOIN provenance p ON p.row_id = f.parent_id"
            ).fetchall()
        }
    return {name for name in names if name}


@asset_check(
    asset="compliance_report",
    name="every_obligation_listed",
    blocking=True,
    pool=POOL,
    description="The report lists every obligation the formatted rows carry: each licence id in any row's "
    "licence expression that requires attribution is under Attribution, each share-alike id under Share-alike, "
    "each non-commercial id under Non-commercial, each unknown id among the unknown licences, and each model "
    "that wrote a row among the teachers.",
)
def compliance_every_obligation_listed(
    context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    config = project.load()
    policy = LicensePolicy.with_overrides(config.policy.licenses)
    report, where = _asset_report(context.instance)
    with warehouse.get().connect() as connection:
        version = reported_data_version(context.instance, connection, "formatted")
        expressions = [r[0] for r in connection.execute("SELECT DISTINCT license FROM formatted").fetchall()]
        teachers = _teachers_of_rows(connection)
    if report is None:
        return AssetCheckResult(passed=False, metadata={"report": where})
    ids = sorted({license_id for expression in expressions for license_id in license_ids(expression)})
    listed = {
        section: {item["license"] for item in report.get(section, [])}
        for section in ("attribution", "share_alike", "non_commercial")
    }
    # A teacher's licence is part of the expression of every row it wrote; the report owes it in its teachers
    # table (model, licence, terms), which counts as listing it.
    by_teachers = {license_id for item in report.get("teachers", []) for license_id in license_ids(item.get("license"))}
    missing: list[dict[str, str]] = []
    for license_id in ids:
        terms = policy.lookup(license_id)
        owed = (
            ["unknown_licenses"]
            if terms is None
            else [
                section
                for section, applies in (
                    ("attribution", terms.attribution),
                    ("share_alike", terms.share_alike),
                    ("non_commercial", not terms.commercial),
                )
                if applies
            ]
        )
        for section in owed:
            present = (
                license_id in set(report.get(section, []))
                if section == "unknown_licenses"
                else license_id in listed[section] | by_teachers
            )
            if not present:
                missing.append({"obligation": section, "licence": license_id})
    named = {item["teacher"] for item in report.get("teachers", [])}
    missing += [{"obligation": "teachers", "licence": f"teacher {t} not listed"} for t in sorted(teachers - named)]
    problems = report_mismatches(report, version, config.policy.intended_use)
    return AssetCheckResult(
        passed=not missing and not problems,
        metadata={
            "report": where,
            "report_problems": MetadataValue.json(problems),
            "licence_ids": MetadataValue.json(ids),
            "teachers": MetadataValue.json(sorted(teachers)),
            "obligations_missing": len(missing),
            "missing": MetadataValue.md(markdown_table(missing[:SAMPLE])),
        },
    )


COMPLIANCE_CHECKS: list[AssetChecksDefinition] = [
    formatted_synthetic_share_within_cap,
    exports_synthetic_share_within_cap,
    compliance_no_row_forbidden,
    compliance_every_obligation_listed,
]
