"""The dedup stage's passes run in worker processes; what it writes must not depend on how many."""

import shutil
from pathlib import Path

import pytest

import curation.dedup.stage
from benchmarks.scale_mix import build_mix
from curation.core.config import load_project
from curation.core.warehouse import Warehouse
from curation.dedup.stage import run_dedup
from curation.ingest.sources import ingest_sources
from tests.conftest import needs_shared_data

pytestmark = needs_shared_data  # the mix is built from ../shared/data

TABLES = ("deduped", "dedup_clusters", "dedup_signatures")


def deduped(warehouse_file: Path, project_file: Path, workers: int) -> dict[str, list[tuple]]:
    config = load_project(project_file)
    warehouse = Warehouse(warehouse_file)
    with warehouse.write("deduped") as staged:
        run = run_dedup(staged, config.dedup, workers=workers)
    assert run.counts["removed"] > 0 and run.counts["minhash_computed"] > 0
    with warehouse.connect(read_only=True) as connection:
        tables = {table: connection.execute(f"SELECT * FROM {table}").fetchall() for table in TABLES}
        tables["lineage"] = connection.execute("SELECT * FROM lineage WHERE asset = 'deduped'").fetchall()
    return {table: sorted(rows, key=repr) for table, rows in tables.items()}


def test_two_workers_dedup_exactly_what_one_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(curation.dedup.stage, "BATCH_ROWS", 250)  # many batches, some in flight at once
    mix = build_mix(tmp_path / "mix", 3_000, seed=2)
    project = tmp_path / "mix" / "distillery.yaml"
    with Warehouse(tmp_path / "one.duckdb").write("raw") as staged:
        ingest_sources(load_project(project), staged)
    shutil.copy(tmp_path / "one.duckdb", tmp_path / "two.duckdb")  # the same raw rows, to the ingestion time
    one = deduped(tmp_path / "one.duckdb", project, workers=1)
    two = deduped(tmp_path / "two.duckdb", project, workers=2)
    assert len(one["deduped"]) < mix.rows
    assert one == two
