"""Re-ingesting a file that changed: its records that were already there stay exactly as they were."""

from __future__ import annotations

import shutil
from pathlib import Path

from curation.core.config import load_project
from curation.core.warehouse import Warehouse
from curation.ingest.sources import ingest_sources
from tests.conftest import DEMO_CONFIG


def _ingest(warehouse: Warehouse, config: Path) -> dict[str, tuple]:
    with warehouse.write("raw") as staged:
        ingest_sources(load_project(config), staged)
    with warehouse.connect(read_only=True) as connection:
        return {
            row[0]: row[1:] for row in connection.execute("SELECT row_id, ingested_at, source_uri FROM raw").fetchall()
        }


def test_records_a_grown_file_still_holds_keep_their_first_ingestion_time(tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(DEMO_CONFIG.parent, project, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    config = project / "distillery.yaml"
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    _ingest(warehouse, config)
    with warehouse.connect() as connection:  # as if it had been ingested yesterday
        connection.execute("UPDATE raw SET ingested_at = ingested_at - INTERVAL 1 DAY")
        before = {
            row[0]: row[1:] for row in connection.execute("SELECT row_id, ingested_at, source_uri FROM raw").fetchall()
        }

    preference = project / "data" / "preference.jsonl"
    with preference.open("a", encoding="utf-8") as handle:
        handle.write('{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}\n')
    after = _ingest(warehouse, config)

    (added,) = set(after) - set(before)
    assert set(before) <= set(after)
    assert after[added][0] > max(at for at, _ in before.values())  # the new record: this ingestion's time
    # Every record that was there, in the grown file as in the others, is unchanged: time and place.
    assert {row_id: after[row_id] for row_id in before} == before
