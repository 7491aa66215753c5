"""Staging tables a killed writer leaves behind are removed by the next write, and only those."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from curation.core.warehouse import Warehouse, table_names
from tests.conftest import REPO

KILLED_MID_WRITE = """
import os, signal, sys
from curation.core.warehouse import Warehouse
with Warehouse(sys.argv[1]).write("demo") as staged:
    table = staged.create("things", "id INTEGER")
    staged.connection.execute(f"INSERT INTO {table} VALUES (9)")
    staged.connection.execute("CHECKPOINT")
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 between staging and commit: no cleanup runs
"""


def _tables(warehouse: Warehouse) -> set[str]:
    with warehouse.connect(read_only=True) as connection:
        return table_names(connection)


def test_the_next_write_removes_what_a_killed_writer_staged(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("demo") as staged:
        staged.connection.execute(f"INSERT INTO {staged.create('things', 'id INTEGER')} VALUES (1)")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(warehouse.path)], cwd=REPO, check=False)
    assert killed.returncode == -9
    leftovers = {t for t in _tables(warehouse) if t.startswith("_stage_")}
    assert leftovers, "the kill left a staging table"
    # Each staging name carries its writer's pid: whose debris it is.
    assert all(t.startswith("_stage_things_p") for t in leftovers)
    with warehouse.connect(read_only=True) as connection:  # the previous version is intact
        assert connection.execute("SELECT list(id) FROM things").fetchone()[0] == [1]

    with warehouse.write("other") as staged:
        staged.create("more", "id INTEGER")
    assert warehouse.recovered == sorted(leftovers)
    assert not {t for t in _tables(warehouse) if t.startswith("_stage_")}


def test_a_write_never_drops_the_staging_of_a_live_write(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("outer") as outer:
        table = outer.create("things", "id INTEGER")
        outer.connection.execute(f"INSERT INTO {table} VALUES (1)")
        # A second write in this process while the first is open (same DuckDB file, same process).
        with Warehouse(warehouse.path).write("inner") as inner:
            inner.create("more", "id INTEGER")
        outer.connection.execute(f"INSERT INTO {table} VALUES (2)")
    with warehouse.connect(read_only=True) as connection:
        assert connection.execute("SELECT list(id ORDER BY id) FROM things").fetchone()[0] == [1, 2]
