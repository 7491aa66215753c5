"""Compliance gates the exports (issue 12, deliverable 6): the blocking checks on `compliance_report`, and
`exports` not materialized when they fail. A commercial project whose formatted rows include a
non-commercial one and one written by a teacher whose terms forbid commercial use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import canonical_ddl

PROJECT = """\
name: gate
sources:
  - {name: wiki, path: data/a.jsonl, mapping: alpaca, license: CC-BY-4.0}
  - {name: nc_qa, path: data/nc.csv, mapping: alpaca, license: CC-BY-NC-4.0}
format: {tokenizer: tokenizer}
policy:
  intended_use: commercial
  teachers:
    teacher-x: {license: Apache-2.0, terms: no-competing-models, forbids: [commercial]}
"""


def _sft(row_id: str, source: str, license_: str, **fields) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        source=source,
        source_uri=f"data/{source}.jsonl#{row_id}",
        license=license_,
        origin=fields.pop("origin", "human"),
        messages=[{"role": "user", "content": f"Question {row_id}?"}, {"role": "assistant", "content": "Yes."}],
        **fields,
    )


ROWS = [
    _sft("h1", "wiki", "CC-BY-4.0"),
    _sft("h2", "wiki", "CC-BY-4.0"),
    _sft("nc1", "nc_qa", "CC-BY-NC-4.0"),
    _sft("s1", "wiki", "CC-BY-4.0", origin="synthetic", generator="teacher-x"),
]


def build_warehouse(path: Path) -> None:
    """``raw`` and ``formatted`` holding the same rows: two a commercial build may not use (nc1, s1)."""
    import duckdb

    with duckdb.connect(str(path)) as connection:
        connection.register("incoming", rows_to_table(ROWS))
        for table in ("raw", "formatted"):
            connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
            connection.execute(f"INSERT INTO {table} SELECT * FROM incoming")


def _resources(base: Path, project: str = PROJECT) -> dict:
    from resources import ProjectResource, WarehouseResource

    (base / "distillery.yaml").write_text(project)
    return {
        "project": ProjectResource(config_path=str(base / "distillery.yaml")),
        "warehouse": WarehouseResource(path=str(base / "warehouse.duckdb")),
    }


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory):
    from assets.compliance import compliance_report
    from assets.exports import exports
    from checks.compliance import compliance_every_obligation_listed, compliance_no_row_forbidden

    base = tmp_path_factory.mktemp("gate")
    build_warehouse(base / "warehouse.duckdb")
    resources = _resources(base)
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        patch.setenv("DISTILLERY_HOME", str(base / "home"))
        result = dg.materialize(
            [compliance_report, exports, compliance_no_row_forbidden, compliance_every_obligation_listed],
            instance=instance,
            resources=resources,
            raise_on_error=False,
        )
        yield result, instance, base, resources


def test_exports_depend_on_the_compliance_report() -> None:
    from assets.exports import exports

    assert dg.AssetKey("compliance_report") in exports.dependency_keys


def test_a_non_compliant_version_is_not_exported(gated) -> None:
    result, _, base, _ = gated
    assert not result.success
    assert {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()} == {"compliance_report"}
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    forbidden = checks["no_row_forbidden_for_intended_use"]
    assert not forbidden.passed
    assert forbidden.metadata["violating_rows_in_report"].value == 2
    assert forbidden.metadata["violating_rows_rejudged"].value == 2  # the filter's rules agree
    assert forbidden.metadata["intended_use"].value == "commercial"
    assert checks["every_obligation_listed"].passed
    assert not (base / "home" / "exports").exists() or not any((base / "home" / "exports").iterdir())


def test_exports_selected_alone_refuse_a_version_the_report_forbids(gated) -> None:
    """`distillery run --select exports` runs no compliance check: the asset itself reads the version's
    report and refuses, so a non-compliant version is never exported whatever the selection."""
    from assets.exports import exports

    _, instance, base, resources = gated
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_HOME", str(base / "home"))
        alone = dg.materialize([exports], instance=instance, resources=resources, raise_on_error=False)
    assert not alone.success
    [failure] = [e for e in alone.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message
    assert "may not be exported" in message and "2 rows violate the commercial policy" in message
    assert not (base / "home" / "exports").exists() or not any((base / "home" / "exports").iterdir())


def test_a_report_missing_an_obligation_fails_the_check(gated, tmp_path) -> None:
    from checks.compliance import compliance_every_obligation_listed

    _, instance, _, resources = gated
    metadata = instance.get_latest_materialization_event(
        dg.AssetKey("compliance_report")
    ).asset_materialization.metadata
    path = Path(metadata["report_markdown"].value).with_name("compliance.json")
    original = tmp_path / "compliance.json"
    shutil.copy(path, original)
    report = json.loads(path.read_text())
    assert {"CC-BY-4.0"} <= {item["license"] for item in report["attribution"]}
    # What a lost obligation looks like: the attribution owed under CC-BY-4.0 gone from the report.
    report["attribution"] = [item for item in report["attribution"] if item["license"] != "CC-BY-4.0"]
    path.write_text(json.dumps(report))
    try:
        context = dg.build_asset_check_context(instance=instance)
        result = compliance_every_obligation_listed(context, **resources)
    finally:
        shutil.copy(original, path)
    assert not result.passed
    assert result.metadata["obligations_missing"].value == 1
    assert "| attribution | CC-BY-4.0 |" in result.metadata["missing"].value
    assert compliance_every_obligation_listed(context, **resources).passed


def test_a_report_for_another_use_does_not_pass_for_the_projects(gated, tmp_path) -> None:
    """The asset's report must judge the project's intended use: a research report of the same data does
    not answer a commercial project."""
    from checks.compliance import compliance_no_row_forbidden

    instance, warehouse = gated[1], gated[3]["warehouse"]
    research = _resources(tmp_path, PROJECT.replace("intended_use: commercial", "intended_use: research"))
    research["warehouse"] = warehouse
    result = compliance_no_row_forbidden(dg.build_asset_check_context(instance=instance), **research)
    assert not result.passed
    assert result.metadata["report_problems"].value == ["the report judges commercial use, the project's is research"]
