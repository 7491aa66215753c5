"""Ingestion maps records in worker processes; what lands in the warehouse must not depend on how many."""

from pathlib import Path

import pytest

from benchmarks.scale_mix import build_mix
from curation.core.config import load_project
from curation.core.warehouse import Warehouse
from curation.ingest.sources import ingest_sources
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the mix is built from ../shared/data")


def ingested(project_file: Path, home: Path, workers: int) -> dict[str, list[tuple]]:
    config = load_project(project_file)
    config = config.model_copy(
        update={
            "compute": config.compute.model_copy(update={"workers": workers}),
            "ingest": config.ingest.model_copy(update={"batch_rows": 300}),  # many chunks per file
        }
    )
    warehouse = Warehouse(home / "warehouse.duckdb")
    with warehouse.write("raw") as staged:
        ingest_sources(config, staged)
    with warehouse.connect(read_only=True) as connection:
        return {
            table: connection.execute(f"SELECT * EXCLUDE (ingested_at) FROM {table} ORDER BY ALL").fetchall()
            for table in ("raw", "quarantine", "ingested_files")
        }


def test_two_workers_ingest_exactly_what_one_does(tmp_path: Path) -> None:
    mix = build_mix(tmp_path / "mix", 3_000, seed=1)
    one = ingested(tmp_path / "mix" / "distillery.yaml", tmp_path / "one", workers=1)
    two = ingested(tmp_path / "mix" / "distillery.yaml", tmp_path / "two", workers=2)
    assert len(one["raw"]) == mix.rows and len(one["quarantine"]) == mix.malformed
    # Identical records in one file get distinct ids, numbered in file order across chunk boundaries.
    assert len({row[0] for row in one["raw"]}) == mix.rows
    assert one == two
