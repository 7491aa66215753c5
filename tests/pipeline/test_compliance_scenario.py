"""A commercial build of the shared data, as a compliance reviewer would try it (issue 12, "Done when").

The project holds a non-commercial source (WizardLM's test set, CC-BY-NC-4.0 per its README), an Apache-2.0
source (Self-Instruct's user-oriented tasks) first declared with a licence that is not an SPDX id
(``Apache 2``), a share-alike source (the shared data has none: a few records written here under
CC-BY-SA-4.0), and the procedural teacher declared non-commercial under ``policy.teachers``. Through the
``distillery`` command, as a user runs it:

* the project file is refused before anything runs, naming the source and how to declare the licence;
* with the licence fixed, the build passes every check and exports only rows a commercial build may use:
  the non-commercial rows are removed with their reason, the teacher's candidates refused with theirs;
* the compliance report lists every obligation: attribution for each source, share-alike for the SA one,
  the teacher and its terms;
* a report for another intended use is written beside the build's report, which stays as it was;
* a version that fails the compliance checks is not exported, and the run exits 1 naming the check.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from tests.conftest import REPO, SHARED_DATA, needs_shared_data, run_cli

pytestmark = [pytest.mark.slow, needs_shared_data]

SA_RECORDS = [
    {"instruction": f"Summarise note {i} of the field guide.", "output": f"Note {i} says birds {w} at dawn."}
    for i, w in enumerate(["sing", "feed", "migrate", "nest", "call", "gather", "rest", "preen"])
]


def _project(folder: Path, user_oriented_license: str) -> Path:
    (folder / "sa_notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SA_RECORDS))
    project = {
        "name": "commercial-review",
        "sources": [
            {
                "name": "user_oriented",
                "path": str(SHARED_DATA / "self-instruct-user-oriented" / "user_oriented_instructions.jsonl"),
                "mapping": "self_instruct",
                "license": user_oriented_license,
            },
            {
                "name": "wizardlm",
                "path": str(SHARED_DATA / "wizardlm-testset" / "WizardLM_testset.jsonl"),
                "mapping": "prompts",
                "fields": {"prompt": "Instruction"},
                "license": "CC-BY-NC-4.0",
            },
            {"name": "sa_notes", "path": "sa_notes.jsonl", "mapping": "alpaca", "license": "CC-BY-SA-4.0"},
        ],
        "synthesis": {"teacher": {"backend": "procedural"}, "methods": {"perturbation": {"count": 6}}},
        "format": {"tokenizer": str(REPO / "demo" / "tokenizer"), "max_tokens": 512},
        "policy": {
            "intended_use": "commercial",
            "teachers": {
                "distillery-procedural": {
                    "license": "CC-BY-NC-4.0",
                    "terms": "outputs for non-commercial use only",
                    "forbids": ["commercial"],
                }
            },
        },
    }
    path = folder / "distillery.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    return path


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("commercial")
    home = folder / "home"
    refused = run_cli("run", "--config", str(_project(folder, "Apache 2")), home=folder / "refused")
    built = run_cli("run", "--config", str(_project(folder, "Apache-2.0")), home=home)
    return folder, home, refused, built


def test_a_licence_that_is_not_spdx_stops_the_build_before_it_starts(build) -> None:
    folder, _, refused, _ = build
    assert refused.returncode == 2, refused.stdout[-2000:] + refused.stderr[-2000:]
    message = refused.stderr
    assert "source 'user_oriented'" in message and "'Apache 2' is not an SPDX id" in message
    assert "policy.licenses" in message  # how to declare it
    assert not (folder / "refused" / "warehouse.duckdb").exists() and not (folder / "refused" / "exports").exists()


def test_the_commercial_build_exports_only_rows_it_may_use(build) -> None:
    _, home, _, built = build
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "0 failed" in built.stdout
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as db:
        removed = db.execute(
            "SELECT count(*), count(*) FILTER (reason LIKE '%CC-BY-NC-4.0%non-commercial%') FROM filter_rejections "
            "WHERE row_id IN (SELECT row_id FROM deduped WHERE source = 'wizardlm')"
        ).fetchone()
        in_deduped = db.execute("SELECT count(*) FROM deduped WHERE source = 'wizardlm'").fetchone()[0]
        refused = db.execute(
            "SELECT count(*), count(*) FILTER (reason LIKE '%distillery-procedural%forbid commercial%') "
            "FROM synthetic_rejections"
        ).fetchone()
        synthetic = db.execute("SELECT count(*) FROM synthetic").fetchone()[0]
        licences = {r[0] for r in db.execute("SELECT DISTINCT license FROM formatted").fetchall()}
        version = db.execute("SELECT data_version FROM asset_state WHERE asset = 'exports'").fetchone()[0]
    # Every non-commercial row was removed, each with its reason; the teacher's candidates were refused.
    assert in_deduped > 200 and removed == (in_deduped, in_deduped)
    assert refused[0] > 0 and refused[0] == refused[1] and synthetic == 0
    assert licences == {"Apache-2.0", "CC-BY-SA-4.0"}
    exported = duckdb.sql(
        f"SELECT DISTINCT source, license, origin FROM read_parquet('{home}/exports/{version}/*/*.parquet', "
        "union_by_name = true) ORDER BY ALL"
    ).fetchall()
    assert exported == [("sa_notes", "CC-BY-SA-4.0", "human"), ("user_oriented", "Apache-2.0", "human")]


def test_the_report_lists_every_obligation(build) -> None:
    _, home, _, _ = build
    [folder] = [p for p in (home / "reports").iterdir() if p.name != "inspection"]
    report = json.loads((folder / "compliance.json").read_text())
    assert report["intended_use"] == "commercial" and report["compliant"]
    owed = {(item["license"], item["source"]) for item in report["attribution"]}
    assert owed == {("Apache-2.0", "user_oriented"), ("CC-BY-SA-4.0", "sa_notes")}
    assert [(item["license"], item["source"]) for item in report["share_alike"]] == [("CC-BY-SA-4.0", "sa_notes")]
    assert report["non_commercial"] == []  # none left in what is exported
    [teacher] = report["teachers"]
    assert teacher["teacher"] == "distillery-procedural" and teacher["forbids"] == "commercial"
    markdown = (folder / "compliance.md").read_text()
    assert "### Share-alike" in markdown and "sa_notes" in markdown.split("### Share-alike")[1].split("###")[0]


def test_a_report_for_another_use_is_written_beside_the_builds_report(build) -> None:
    folder, home, _, _ = build
    [reports] = [p for p in (home / "reports").iterdir() if p.name != "inspection"]
    before = _digests(reports)
    research = run_cli(
        "report", "--config", str(folder / "distillery.yaml"), "--intended-use", "research", "--check", home=home
    )
    assert research.returncode == 0, research.stderr[-2000:]
    assert _digests(reports) == before  # the compliance_report asset's files, untouched
    beside = json.loads((reports / "research" / "compliance.json").read_text())
    assert beside["intended_use"] == "research" and beside["data_version"] == reports.name
    assert f"json: {reports / 'research' / 'compliance.json'}" in research.stdout
    # The project file now says research (its use changed since the build): its report is not written over
    # the build's commercial one either.
    changed = folder / "research.yaml"
    changed.write_text(
        (folder / "distillery.yaml").read_text().replace("intended_use: commercial", "intended_use: research")
    )
    again = run_cli("report", "--config", str(changed), home=home)
    assert again.returncode == 0, again.stderr[-2000:]
    assert _digests(reports) == before
    assert f"json: {reports / 'research' / 'compliance.json'}" in again.stdout
    # The asset's metadata still points at its own report, which still judges the build's use.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("compliance_report"))
        metadata = event.asset_materialization.metadata
    assert Path(metadata["report_html"].value) == reports / "compliance.html"
    assert metadata["intended_use"].value == "commercial"


def test_a_version_failing_the_compliance_checks_is_not_exported(build, tmp_path) -> None:
    folder, home, _, _ = build
    copy = tmp_path / "home"
    shutil.copytree(home, copy)
    exported = sorted(p.name for p in (copy / "exports").iterdir())
    # A non-commercial row reaching formatted (what the report guards against, whatever let it through).
    with duckdb.connect(str(copy / "warehouse.duckdb")) as db:
        db.execute(
            "INSERT INTO formatted SELECT * REPLACE (row_id || 'nc' AS row_id, 'CC-BY-NC-4.0' AS license) "
            "FROM formatted WHERE split = 'train' ORDER BY row_id LIMIT 1"
        )
    result = run_cli("run", "--config", str(folder / "distillery.yaml"), "--select", "compliance_report+", home=copy)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "no_row_forbidden_for_intended_use" in result.stdout + result.stderr
    assert sorted(p.name for p in (copy / "exports").iterdir()) == exported  # nothing new exported
