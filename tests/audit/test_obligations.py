"""Issue 12: licences as sets of obligations, every licence known, one provenance answer for ingested model-made
rows, every refusal recorded. Each test is one situation the issue reproduced, asserting what a reviewer reads:
the row's licence, the report's sections, the check's verdict, the filter's reason, the CLI's exit code."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest
import yaml

from checks.licenses import raw_licenses_known
from curation.audit.report import CompliancePolicy, build_report
from curation.audit.trace import audit_row
from curation.core.config import ConfigError, load_project
from curation.core.licenses import LicensePolicy, combine, license_ids
from curation.core.provenance import LINEAGE_SCHEMA, PROVENANCE_DDL, Provenance, TeacherInfo, lineage_record
from curation.core.schema import Row, new_row, rows_to_table
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl
from curation.filter.policy import LicenseFilter
from curation.synth.ingested import UNKNOWN_TERMS, insert_ingested_provenance
from curation.synth.methods.base import SynthContext, derived_row
from curation.synth.teachers import ProceduralTeacher
from curation.synth.terms import parse_model_registry
from resources import ProjectResource, WarehouseResource
from tests.conftest import DEMO_CONFIG, REPO, run_cli

WHEN = datetime(2026, 1, 2, 3, 4, 5)


def _row(row_id: str, source: str, uri: str, license_: str, **fields) -> Row:
    return new_row(
        row_id=row_id,
        kind="sft",
        messages=[{"role": "user", "content": f"Question {row_id}?"}, {"role": "assistant", "content": "Answer."}],
        source=source,
        source_uri=uri,
        license=license_,
        origin=fields.pop("origin", "human"),
        ingested_at=WHEN,
        **fields,
    )


def _ctx(teacher_license: str) -> SynthContext:
    teacher = ProceduralTeacher()
    info = TeacherInfo("openai-compatible", "acme/teacher", "r1", teacher_license)
    return SynthContext(teacher, info, LicensePolicy(), {})


def _derived(ctx: SynthContext, parents: list[Row], row_id: str, **kwargs) -> Row:
    return derived_row(
        ctx,
        parents,
        row_id,
        kind="sft",
        messages=[{"role": "user", "content": f"Made {row_id}?"}, {"role": "assistant", "content": "Yes."}],
        **kwargs,
    )


def _warehouse(path: Path, raw: list[Row], synthetic: list[tuple[Row, list[str]]]) -> duckdb.DuckDBPyConnection:
    """raw, synthetic (each row with its parents' ids), their provenance and lineage, as the stages write them."""
    connection = duckdb.connect(str(path))
    for table, rows in (("raw", raw), ("synthetic", [r for r, _ in synthetic])):
        connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
        if rows:
            connection.register("_in", rows_to_table(rows))
            connection.execute(f"INSERT INTO {table} SELECT * FROM _in")
    connection.execute(f"CREATE TABLE provenance ({PROVENANCE_DDL})")
    connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
    teacher = TeacherInfo("openai-compatible", "acme/teacher", "r1", "CC0-1.0")
    records = [
        Provenance(r["row_id"], "responses", teacher, WHEN, parent_ids=tuple(parents)).as_record()
        for r, parents in synthetic
    ]
    edges = [lineage_record(r["row_id"], p, "synthetic", "respond") for r, parents in synthetic for p in parents]
    if records:
        connection.register("_in", pa.Table.from_pylist(records))
        connection.execute("INSERT INTO provenance BY NAME SELECT * FROM _in")
    if edges:
        connection.register("_in", pa.Table.from_pylist(edges, schema=LINEAGE_SCHEMA))
        connection.execute("INSERT INTO lineage SELECT * FROM _in")
    return connection


def _pairs(items: list[dict]) -> set[tuple[str, str]]:
    return {(i["license"], i["source"]) for i in items}


def test_canonical_expression_is_the_same_for_the_same_set() -> None:
    assert combine(["CC-BY-SA-4.0", "CC-BY-NC-4.0"]) == combine(["cc-by-nc-4.0", "CC-BY-SA-4.0", "CC-BY-SA-4.0"])
    assert combine(["CC-BY-NC-4.0 AND CC-BY-SA-4.0", "MIT"]) == "CC-BY-NC-4.0 AND CC-BY-SA-4.0 AND MIT"
    assert combine([None, ""]) is None
    assert license_ids("CC-BY-SA-4.0 AND CC-BY-NC-4.0") == ("CC-BY-NC-4.0", "CC-BY-SA-4.0")
    assert license_ids("Apache-2.0 WITH LLVM-exception AND MIT") == ("Apache-2.0", "MIT")  # an exception is no id
    # One set of terms for a conjunction (what the export manifest reads per licence): both obligations.
    terms = LicensePolicy().lookup("CC-BY-SA-4.0 AND CC-BY-NC-4.0")
    assert terms is not None and (terms.commercial, terms.share_alike, terms.attribution) == (False, True, True)
    assert LicensePolicy().lookup("Apache 2 AND MIT") is None  # an unknown id: unknown as a whole
    # A choice stays a choice: allowed when one option is.
    policy = LicensePolicy()
    assert policy.allows("CC-BY-NC-4.0 OR MIT", "commercial") == (True, "")
    assert not policy.allows("CC-BY-NC-4.0 AND MIT", "commercial")[0]


def test_share_alike_and_non_commercial_parents_both_survive(tmp_path: Path) -> None:
    sa = _row("sa1", "wiki_sa", "data/sa.jsonl#1", "CC-BY-SA-4.0")
    nc = _row("nc1", "nc_qa", "data/nc.csv#1", "CC-BY-NC-4.0")
    child = _derived(_ctx("CC0-1.0"), [sa, nc], "m1")
    assert child["license"] == "CC-BY-NC-4.0 AND CC-BY-SA-4.0 AND CC0-1.0"  # before: CC-BY-NC-4.0 (SA lost)
    connection = _warehouse(tmp_path / "w.duckdb", [sa, nc], [(child, ["sa1", "nc1"])])
    research = build_report(connection, CompliancePolicy("research"), "synthetic")
    assert research.compliant
    assert _pairs(research.share_alike) == {("CC-BY-SA-4.0", "wiki_sa")}
    assert _pairs(research.non_commercial) == {("CC-BY-NC-4.0", "nc_qa")}
    assert _pairs(research.attribution) == {("CC-BY-SA-4.0", "wiki_sa"), ("CC-BY-NC-4.0", "nc_qa")}
    assert "| CC-BY-SA-4.0 | wiki_sa |" in research.to_markdown().split("### Share-alike")[1]
    commercial = build_report(connection, CompliancePolicy("commercial"), "synthetic")
    assert {(v["row_id"], v["rule"], v["reason"]) for v in commercial.violations} == {
        ("m1", "licence", "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build")
    }
    # The policy synthesis and the licence filter apply refuses the row for the same reason.
    assert LicensePolicy().allows(child["license"], "commercial") == (
        False,
        "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build",
    )


def test_mit_and_apache_parents_tie_and_both_are_credited(tmp_path: Path) -> None:
    mit = _row("k1", "forum", "data/b.jsonl#1", "MIT")
    apache = _row("p1", "mail", "data/a.jsonl#2", "Apache-2.0")
    child = _derived(_ctx("CC0-1.0"), [mit, apache], "m1")
    assert child["license"] == "Apache-2.0 AND CC0-1.0 AND MIT"  # before: Apache-2.0 (MIT's credit dropped)
    connection = _warehouse(tmp_path / "w.duckdb", [mit, apache], [(child, ["k1", "p1"])])
    report = build_report(connection, CompliancePolicy("commercial"), "synthetic")
    assert report.compliant and report.by_license == {"Apache-2.0 AND CC0-1.0 AND MIT": 1}
    assert _pairs(report.attribution) == {("MIT", "forum"), ("Apache-2.0", "mail")}


@pytest.mark.parametrize(
    ("problems_license", "expected"),
    [("MIT", "Apache-2.0 AND MIT"), ("CC-BY-SA-4.0", "Apache-2.0 AND CC-BY-SA-4.0")],
)
def test_a_problem_set_with_a_licence_is_an_origin(tmp_path: Path, problems_license: str, expected: str) -> None:
    """The code method's rows: no parent row, the problem set's licence (``base_license``) and the teacher's."""
    row = _derived(
        _ctx("Apache-2.0"),
        [],
        "c1",
        base_license=problems_license,
        source_uri="problems/humaneval.jsonl#HumanEval/0",
    )
    assert row["license"] == expected  # before: Apache-2.0 for MIT problems (MIT lost)
    connection = _warehouse(tmp_path / "w.duckdb", [], [(row, [])])
    report = build_report(connection, CompliancePolicy("research"), "synthetic")
    credited = {(a["license"], a["source"], a["files"]) for a in report.attribution}
    assert (problems_license, "synthetic", "problems/humaneval.jsonl") in credited  # before: not credited
    if problems_license == "CC-BY-SA-4.0":
        assert _pairs(report.share_alike) == {("CC-BY-SA-4.0", "synthetic")}  # before: "(none)"
        assert "(none)" not in report.to_html().split("Share-alike")[1].split("<h3>")[0]
    connection.close()
    with duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True) as read:
        audit = audit_row(read, "c1")
    assert [(r.row_id, r.info["source_uri"]) for r in audit.origins()] == [
        ("c1", "problems/humaneval.jsonl#HumanEval/0")
    ]
    assert "none" not in audit.to_text().split("Origins:")[1].splitlines()[1]


def _project(tmp_path: Path, sources: str, policy: str = "") -> Path:
    project = tmp_path / "distillery.yaml"
    project.write_text(
        f"sources:\n{sources}format: {{tokenizer: {REPO / 'demo' / 'tokenizer'}}}\n{policy}", encoding="utf-8"
    )
    return project


def test_a_licence_neither_spdx_nor_declared_is_refused_at_load_and_at_raw(tmp_path: Path) -> None:
    """Before: `Apache 2` and `my-company-internal` passed every check and the run exported its rows. The
    project file is now refused when it is loaded, naming each source and how to declare the licence; the
    blocking check at `raw` stops a warehouse whose rows carry such a licence (written before this rule)."""
    sources = (
        "- {name: vendor, path: a.jsonl, mapping: alpaca, license: Apache 2}\n"
        "- {name: internal, path: b.jsonl, mapping: alpaca, license: my-company-internal}\n"
        "- {name: partner, path: c.jsonl, mapping: alpaca, license: LicenseRef-partner}\n"
        "- {name: wiki, path: d.jsonl, mapping: alpaca, license: CC-BY-SA-4.0}\n"
    )
    declared = "policy: {licenses: {LicenseRef-partner: {commercial: true, attribution: true}}}\n"
    with pytest.raises(ConfigError) as refused:
        load_project(_project(tmp_path, sources, declared))
    message = str(refused.value)
    assert "source 'vendor': licence 'Apache 2' is not an SPDX id" in message
    assert "declare it" in message and "policy: {licenses: {'Apache 2':" in message
    assert "source 'internal': licence 'my-company-internal'" in message
    assert "partner" not in message.replace("LicenseRef-partner", "") and "wiki" not in message

    valid = "".join(line for line in sources.splitlines(keepends=True) if "partner" in line or "wiki" in line)
    project = _project(tmp_path, valid, declared)
    rows = [
        _row("v1", "vendor", "a.jsonl#1", "Apache 2"),
        _row("i1", "internal", "b.jsonl#1", "my-company-internal"),
        _row("p1", "partner", "c.jsonl#1", "LicenseRef-partner"),
        _row("w1", "wiki", "d.jsonl#1", "CC-BY-SA-4.0"),
    ]
    _warehouse(tmp_path / "w.duckdb", rows, []).close()
    result = raw_licenses_known(
        dg.build_op_context(),
        project=ProjectResource(config_path=str(project)),
        warehouse=WarehouseResource(path=str(tmp_path / "w.duckdb")),
    )
    assert not result.passed and result.metadata["rows_with_unknown_licence"].value == 2
    table = result.metadata["unknown_licenses"].value
    assert "| internal | my-company-internal |" in table and "| vendor | Apache 2 |" in table
    assert "partner" not in table and "wiki" not in table


def test_an_ingested_generator_with_restrictive_terms_is_dropped_and_reported_alike(tmp_path: Path) -> None:
    teachers = {
        "acme-writer": {"license": "Apache-2.0", "terms": "no-competing-models", "forbids": ["commercial"]},
        "open-writer": {"license": "Apache-2.0", "terms": "open"},
    }
    rows = [
        _row("a1", "acme", "acme.jsonl#1", "CC-BY-NC-4.0", origin="synthetic", generator="acme-writer"),
        _row("a2", "acme", "acme.jsonl#2", "MIT", origin="synthetic", generator="acme-writer"),
        _row("m1", "mystery", "m.jsonl#1", "MIT", origin="synthetic", generator="mystery-model"),
        _row("o1", "open", "o.jsonl#1", "MIT", origin="augmented", generator="open-writer"),
        _row("h1", "wiki", "w.jsonl#1", "MIT"),
    ]
    # The licence filter applies the terms to every row and names every reason.
    license_filter = LicenseFilter(intended_use="commercial", teachers=teachers)
    verdicts = {r["row_id"]: license_filter.decide(r) for r in rows}
    assert verdicts["a1"] == (
        "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build; "
        "terms of acme-writer (no-competing-models) forbid commercial use",
        "CC-BY-NC-4.0",
    )
    assert verdicts["a2"] == ("terms of acme-writer (no-competing-models) forbid commercial use", "MIT")
    unknown_terms = "generator mystery-model is not declared under policy.teachers: its terms are unknown"
    assert verdicts["m1"] == (unknown_terms, "MIT")
    assert verdicts["o1"] is None and verdicts["h1"] is None
    batch = license_filter.decide_batch(rows, None)  # type: ignore[arg-type]
    assert batch == list(verdicts.values())
    assert LicenseFilter(intended_use="research", teachers=teachers).decide(rows[2]) is None

    # Provenance: one record per model-made row, the generator as teacher with its declared terms.
    connection = _warehouse(tmp_path / "w.duckdb", rows, [])
    connection.execute(f"CREATE TABLE filtered ({canonical_ddl()})")
    connection.execute("INSERT INTO filtered SELECT * FROM raw")
    registry = parse_model_registry(teachers)
    assert insert_ingested_provenance(connection, "provenance", "filtered", registry, WHEN) == 4
    assert insert_ingested_provenance(connection, "provenance", "filtered", registry, WHEN) == 0  # once per row
    records = {
        r[0]: r[1:]
        for r in connection.execute(
            "SELECT row_id, method, teacher_backend, teacher_model, teacher_license, teacher_terms, "
            "json_extract_string(verification, '$.source_license') FROM provenance"
        ).fetchall()
    }
    assert records == {
        "a1": (
            "ingested",
            "source:acme",
            "acme-writer",
            "Apache-2.0",
            "no-competing-models; forbids commercial use",
            "CC-BY-NC-4.0",
        ),
        "a2": (
            "ingested",
            "source:acme",
            "acme-writer",
            "Apache-2.0",
            "no-competing-models; forbids commercial use",
            "MIT",
        ),
        "m1": ("ingested", "source:mystery", "mystery-model", None, UNKNOWN_TERMS, "MIT"),
        "o1": ("ingested", "source:open", "open-writer", "Apache-2.0", "open", "MIT"),
    }
    # The compliance report refuses exactly the rows the filter drops.
    policy = CompliancePolicy("commercial", LicensePolicy(), registry)
    report = build_report(connection, policy, "filtered")
    refused = {r["row_id"] for r in rows if verdicts[r["row_id"]] is not None}
    assert {v["row_id"] for v in report.violations} == refused == {"a1", "a2", "m1"}
    assert {(v["row_id"], v["rule"]) for v in report.violations} == {
        ("a1", "licence"),
        ("a1", "teacher-terms"),
        ("a2", "teacher-terms"),
        ("m1", "teacher-undeclared"),
    }


@pytest.mark.slow
def test_a_run_with_a_non_spdx_source_is_never_green(tmp_path: Path) -> None:
    """The demo with one source under ``Apache 2``: the build stops (a clear error at load, or the blocking
    check at raw), exits non-zero, names the licence, and writes no training data."""
    demo = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    base = DEMO_CONFIG.parent
    for source in demo["sources"]:
        source["path"] = str(base / source["path"])
    demo["sources"][0]["license"] = "Apache 2"
    demo["format"]["tokenizer"] = str(base / demo["format"]["tokenizer"])
    for bench in demo["format"].get("benchmarks", []):
        bench["path"] = str(base / bench["path"])
    config = tmp_path / "distillery.yaml"
    config.write_text(yaml.safe_dump(demo), encoding="utf-8")
    home = tmp_path / "home"
    result = run_cli("run", "--config", str(config), home=home)
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Apache 2" in result.stdout + result.stderr
    if (home / "warehouse.duckdb").exists():
        with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
            tables = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert "formatted" not in tables and "exports" not in tables
    assert json.dumps(demo)  # the project file was the demo's but for the licence


def test_the_filtered_licence_recheck_applies_the_generators_terms_too(tmp_path: Path) -> None:
    """``filtered:licenses_allowed`` re-judges the table as the filter does, so a bypassed filter is caught."""
    from curation.filter.rechecks import license_breakdown

    project = _project(
        tmp_path,
        "- {name: acme, path: a.jsonl, mapping: alpaca, license: CC-BY-NC-4.0, origin: synthetic, "
        "generator: acme-writer}\n- {name: wiki, path: b.jsonl, mapping: alpaca, license: MIT}\n",
        "policy:\n  intended_use: commercial\n  teachers:\n"
        "    acme-writer: {license: Apache-2.0, terms: no-competing-models, forbids: [commercial]}\n",
    )
    rows = [
        _row("a1", "acme", "a.jsonl#1", "CC-BY-NC-4.0", origin="synthetic", generator="acme-writer"),
        _row("w1", "wiki", "b.jsonl#1", "MIT"),
    ]
    connection = _warehouse(tmp_path / "w.duckdb", rows, [])
    breakdown = {(b["license"], b["generator"]): b for b in license_breakdown(connection, "raw", load_project(project))}
    assert breakdown[("MIT", None)]["allowed"]
    assert breakdown[("CC-BY-NC-4.0", "acme-writer")]["why_not"] == (
        "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build; "
        "terms of acme-writer (no-competing-models) forbid commercial use"
    )
