"""Ingestion maps records in worker processes; what lands in the warehouse must not depend on how many."""

from pathlib import Path

from benchmarks.scale_mix import build_mix
from tests.conftest import needs_shared_data
from tests.ingest import ingest_tables

pytestmark = needs_shared_data  # the mix is built from ../shared/data


def _ingested(project_file: Path, home: Path, workers: int) -> dict[str, list[tuple]]:
    tables = ("raw", "quarantine", "ingested_files")
    return ingest_tables(project_file, home, workers=workers, batch_rows=300, tables=tables)  # many chunks per file


def test_two_workers_ingest_exactly_what_one_does(tmp_path: Path) -> None:
    mix = build_mix(tmp_path / "mix", 3_000, seed=1)
    one = _ingested(tmp_path / "mix" / "distillery.yaml", tmp_path / "one", workers=1)
    two = _ingested(tmp_path / "mix" / "distillery.yaml", tmp_path / "two", workers=2)
    assert len(one["raw"]) == mix.rows and len(one["quarantine"]) == mix.malformed
    # Identical records in one file get distinct ids, numbered in file order across chunk boundaries.
    assert len({row[0] for row in one["raw"]}) == mix.rows
    assert one == two
