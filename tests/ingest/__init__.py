"""Tests of ingestion."""

from __future__ import annotations

from pathlib import Path

from curation.core.config import load_project
from curation.core.warehouse import Warehouse
from curation.ingest.sources import ingest_sources


def ingest_tables(
    project_file: Path, home: Path, *, workers: int, batch_rows: int, tables: tuple[str, ...] = ("raw", "quarantine")
) -> dict[str, list[tuple]]:
    """Run ingestion of ``project_file`` into a warehouse under ``home`` with ``workers`` processes and chunks of
    ``batch_rows`` records, and return the rows of ``tables`` (without ``ingested_at``) in a fixed order."""
    config = load_project(project_file)
    config = config.model_copy(
        update={
            "compute": config.compute.model_copy(update={"workers": workers}),
            "ingest": config.ingest.model_copy(update={"batch_rows": batch_rows}),
        }
    )
    warehouse = Warehouse(home / "warehouse.duckdb")
    with warehouse.write("raw") as staged:
        ingest_sources(config, staged)
    with warehouse.connect(read_only=True) as connection:
        return {
            table: sorted(connection.execute(f"SELECT * EXCLUDE (ingested_at) FROM {table}").fetchall(), key=repr)
            for table in tables
        }
