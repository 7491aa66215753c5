"""`distillery report` / the `compliance_report` asset: counts, obligations and the violation list
for the intended use, on a warehouse with known answers (tests/test_audit.py builds it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from curation.audit.report import CompliancePolicy, build_report, write_report
from curation.core.config import load_project
from tests.audit.test_audit import build_warehouse
from tests.conftest import DEMO_CONFIG, run_cli

PROJECT = """\
name: acme <sft>
sources:
  - {name: wiki, path: data/a.jsonl, mapping: alpaca, license: CC-BY-4.0}
  - {name: nc_qa, path: data/nc.csv, mapping: alpaca, license: CC-BY-NC-4.0}
format: {tokenizer: tokenizer}
policy:
  intended_use: commercial
  teachers:
    teacher-x: {license: Apache-2.0, terms: no-competing-models, forbids: [commercial]}
    teacher-z: {license: Apache-2.0, terms: open}
    unused-model: {license: MIT}
"""


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("report") / "warehouse.duckdb"
    build_warehouse(path)
    connection = duckdb.connect(str(path), read_only=True)
    yield connection
    connection.close()


@pytest.fixture
def policy(tmp_path: Path) -> CompliancePolicy:
    (tmp_path / "distillery.yaml").write_text(PROJECT)
    return CompliancePolicy.from_config(load_project(tmp_path / "distillery.yaml").policy)


def _violations(report) -> set[tuple[str, str]]:
    return {(v["row_id"], v["rule"]) for v in report.violations}


def test_commercial_build_lists_every_violating_row_and_why(db, policy) -> None:
    report = build_report(db, policy, data_version="v1", project_file_hash="h1")
    assert _violations(report) == {
        ("f_nc1", "licence"),  # non-commercial source
        ("f_s1", "teacher-terms"),  # teacher-x's terms forbid commercial use
        ("f_r1", "unknown-licence"),
        ("f_r1", "teacher-undeclared"),  # teacher-y: no licence, not declared
        ("f_r1", "recorded-terms"),  # synthesis recorded teacher-y's terms in the row (f_s1's are listed once)
        ("f_z1", "inherited-licence"),  # labelled Apache-2.0, but paraphrased from the non-commercial row
    }
    assert report.violating_rows == 4 and report.violations_total == 6 and not report.compliant
    reasons = {(v["row_id"], v["rule"]): v["reason"] for v in report.violations}
    assert reasons[("f_nc1", "licence")] == "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build"
    assert (
        "teacher-x" in reasons[("f_s1", "teacher-terms")]
        and "no-competing-models" in reasons[("f_s1", "teacher-terms")]
    )
    assert reasons[("f_z1", "inherited-licence")].startswith("derived from 1 row(s) under CC-BY-NC-4.0 (e.g. nc1")
    assert reasons[("f_r1", "recorded-terms")] == "the row records terms of teacher-y that forbid commercial use"
    assert report.unknown_licenses == ["LicenseRef-teacher-y"]
    # A kept row whose absorbed duplicate is share-alike is not a violation: its own licence grants the use.
    assert not any(v["row_id"] == "f_k1" for v in report.violations)


def test_research_build_flags_only_the_unknown_licence(db, policy) -> None:
    research = CompliancePolicy("research", policy.licenses, policy.teachers)
    report = build_report(db, research)
    assert _violations(report) == {("f_r1", "unknown-licence")}


def test_counts_and_obligations(db, policy) -> None:
    report = build_report(db, policy)
    assert report.rows == 8
    assert report.by_license == {
        "CC-BY-4.0": 3,
        "Apache-2.0": 2,
        "MIT": 1,
        "CC-BY-NC-4.0": 1,
        "LicenseRef-teacher-y": 1,
    }
    assert report.by_origin == {"human": 5, "synthetic": 1, "augmented": 2}
    assert report.by_teacher == {"(none: human-written)": 5, "teacher-x": 1, "teacher-y": 1, "teacher-z": 1}
    attribution = {(a["license"], a["source"], a["files"], a["source_rows"]) for a in report.attribution}
    # The absorbed near-duplicate's source is credited too; the filtered-out row (x1) is not.
    assert attribution == {
        ("CC-BY-4.0", "wiki", "data/a.jsonl", 1),
        ("CC-BY-4.0", "docs", "data/docs.jsonl", 1),
        ("Apache-2.0", "mail", "data/a.jsonl", 1),
        ("MIT", "forum", "data/b.jsonl", 1),
        ("CC-BY-SA-4.0", "scrape", "data/c.jsonl", 1),
        ("CC-BY-NC-4.0", "nc_qa", "data/nc.csv", 1),
    }
    assert [(s["license"], s["source"]) for s in report.share_alike] == [("CC-BY-SA-4.0", "scrape")]
    assert [(s["license"], s["source"]) for s in report.non_commercial] == [("CC-BY-NC-4.0", "nc_qa")]
    teachers = {t["teacher"]: t for t in report.teachers}
    assert set(teachers) == {"teacher-x", "teacher-y", "teacher-z", "unused-model"}
    assert (teachers["teacher-x"]["declared"], teachers["teacher-x"]["forbids"]) == (True, "commercial")
    assert teachers["teacher-y"]["declared"] is False
    assert teachers["unused-model"]["verdict"] == "not used in this version"
    assert teachers["teacher-z"]["verdict"] == "ok"


def test_a_cycle_in_lineage_ends_the_walk_and_changes_no_count(db, policy, tmp_path: Path) -> None:
    # The ancestry walk is a UNION ALL bounded in depth (it spills where a recursive UNION cannot), so a
    # damaged lineage table with a cycle must still end, and give the counts of the same rows.
    path = tmp_path / "warehouse.duckdb"
    build_warehouse(path)
    with duckdb.connect(str(path)) as connection:
        child, parent = connection.execute("SELECT child_id, parent_id FROM lineage ORDER BY ALL LIMIT 1").fetchone()
        connection.execute("INSERT INTO lineage VALUES (?, ?, 'deduped', 'cycle', NULL)", [parent, child])
        damaged = build_report(connection, policy)
    expected = build_report(db, policy)
    assert (damaged.rows, damaged.by_license, damaged.by_teacher) == (
        expected.rows,
        expected.by_license,
        expected.by_teacher,
    )
    assert _violations(damaged) == _violations(expected)


def test_files_carry_the_version_hash_and_the_full_violation_list(db, policy, tmp_path: Path) -> None:
    project = load_project(tmp_path / "distillery.yaml")
    report = build_report(
        db, policy, data_version="0123abcd", project=project.name, project_file_hash=project.file_hash, sample=2
    )
    paths = write_report(db, report, tmp_path / "out")
    markdown, html = paths["markdown"].read_text(), paths["html"].read_text()
    for text in (markdown, html):
        assert "0123abcd" in text and project.file_hash in text and "commercial" in text
        assert "teacher-x" in text and "no-competing-models" in text and "violations.csv" in text
    assert "acme &lt;sft&gt;" in html and "acme <sft>" not in html  # escaped
    assert "<script" not in html and "http" not in html.split("</style>")[0]  # self-contained
    with paths["violations"].open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(report.violations) == 2 and len(rows) == 6  # the report samples, the CSV has every one
    assert {(r["row_id"], r["rule"]) for r in rows} == _violations(build_report(db, policy))
    assert json.loads(paths["json"].read_text())["violating_rows"] == 4


def test_missing_table_says_to_run_first(db, policy) -> None:
    with pytest.raises(LookupError, match=r"no dataset table 'exports'.*distillery run"):
        build_report(db, policy, "exports")


@pytest.mark.slow
def test_demo_run_writes_the_report_and_the_cli_audits_and_reports(tmp_path: Path) -> None:
    from assets.compliance import compliance_report
    from definitions import ASSETS, RESOURCES
    from resources import ProjectResource, WarehouseResource

    # The demo project with a teacher registry: the procedural teacher's terms forbid commercial use.
    project = yaml.safe_load(DEMO_CONFIG.read_text())
    for source in project["sources"]:
        source["path"] = str(DEMO_CONFIG.parent / source["path"])
    project["format"]["tokenizer"] = str(DEMO_CONFIG.parent / project["format"]["tokenizer"])
    for benchmark in project["format"].get("benchmarks", []):
        benchmark["path"] = str(DEMO_CONFIG.parent / benchmark["path"])
    project["policy"]["teachers"] = {
        "distillery-procedural": {"license": "CC0-1.0", "terms": "no-competing-models", "forbids": ["commercial"]}
    }
    config = tmp_path / "distillery.yaml"
    config.write_text(yaml.safe_dump(project))
    home = tmp_path / "home"
    resources = {
        **RESOURCES,
        "project": ProjectResource(config_path=str(config)),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
    }
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        patch.setenv("DISTILLERY_HOME", str(home))
        result = dg.materialize(
            [*[a for a in ASSETS if a.key != compliance_report.key], compliance_report],
            instance=instance,
            resources=resources,
        )
        metadata = instance.get_latest_materialization_event(
            dg.AssetKey("compliance_report")
        ).asset_materialization.metadata
    assert result.success
    version = metadata["data_version"].value
    html = Path(metadata["report_html"].value)
    assert html == home / "reports" / version / "compliance.html" and html.is_file()
    assert metadata["dagster/uri"].value == html.as_uri()
    assert metadata["compliant"].value is True and metadata["violating_rows"].value == 0  # research build

    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        nc_rows = connection.execute(
            "SELECT count(*) FROM formatted WHERE list_contains(string_split(license, ' AND '), 'CC-BY-NC-4.0')"
        ).fetchall()[0][0]
        taught = connection.execute(
            "SELECT count(*) FROM formatted WHERE generator = 'distillery-procedural'"
        ).fetchall()[0][0]
        redacted = connection.execute(
            "SELECT f.row_id, l.parent_id FROM lineage l JOIN formatted f ON f.parent_id = l.child_id "
            "WHERE l.operation = 'clean:pii' ORDER BY 1 LIMIT 1"
        ).fetchall()[0]
    assert nc_rows > 0 and taught > 0

    commercial = run_cli("report", "--config", str(config), "--intended-use", "commercial", "--check", home=home)
    assert commercial.returncode == 1, commercial.stderr[-2000:]
    # Another use than the project's (research) is written beside the asset's report, which stays its own.
    written = json.loads((home / "reports" / version / "commercial" / "compliance.json").read_text())
    assert json.loads((home / "reports" / version / "compliance.json").read_text())["intended_use"] == "research"
    by_rule = {}
    for item in written["violations_by_rule"]:
        by_rule[item["rule"]] = by_rule.get(item["rule"], 0) + item["rows"]
    assert by_rule["licence"] == nc_rows and by_rule["teacher-terms"] == taught

    audit = run_cli("audit", redacted[0], "--json", home=home)
    assert audit.returncode == 0, audit.stderr[-2000:]
    chain = json.loads(audit.stdout)
    assert chain["status"].startswith("in formatted")
    assert redacted[1] in [o["row_id"] for o in chain["origins"]]
    assert any(e["operation"] == "clean:pii" for e in chain["upstream"])
    missing = run_cli("audit", "no-such-row", home=home)
    assert missing.returncode == 1 and "no row 'no-such-row'" in missing.stderr
