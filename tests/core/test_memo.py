"""A per-row stage's memo: which input rows' previous results a run may copy."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from curation.core.memo import drop_reuse, plan_reuse, rows_missing_from_memo, stage_rows
from curation.core.warehouse import Warehouse, quote

COLUMNS = ("row_id", "text", "source")


def _source(connection: duckdb.DuckDBPyConnection, rows: list[tuple[str, str | None, str]]) -> None:
    connection.execute("CREATE OR REPLACE TABLE source (row_id VARCHAR, text VARCHAR, source VARCHAR)")
    connection.executemany("INSERT INTO source VALUES (?, ?, ?)", rows)


def _run(warehouse: Warehouse, fingerprint: str, outputs: tuple[str, ...] = ("out",)) -> set[str]:
    """One run of a toy stage: returns the ids it may reuse; its output table is written and swapped in."""
    with warehouse.write("toy") as staged:
        reuse = plan_reuse(staged, "toy_memo", quote("source"), COLUMNS, fingerprint, outputs)
        reused = {row_id for (row_id,) in staged.connection.execute(f"SELECT row_id FROM {reuse.table}").fetchall()}
        assert reuse.rows == len(reused)
        staged.create_as("out", "SELECT row_id FROM source")
        drop_reuse(staged.connection, reuse)
    return reused


def test_only_rows_seen_unchanged_under_the_same_fingerprint_are_reused(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.connect() as connection:
        _source(connection, [("a", "one", "s"), ("b", "two", "s"), ("c", None, "s")])
    assert _run(warehouse, "f1") == set()  # no memo yet: everything is computed

    assert _run(warehouse, "f1") == {"a", "b", "c"}

    with warehouse.connect() as connection:  # b's content changes, d is new, c's NULL becomes ""
        _source(connection, [("a", "one", "s"), ("b", "TWO", "s"), ("c", "", "s"), ("d", "four", "s")])
    assert _run(warehouse, "f1") == {"a"}
    assert _run(warehouse, "f1") == {"a", "b", "c", "d"}

    assert _run(warehouse, "f2") == set()  # other code or settings: nothing is reused


def test_rows_missing_from_the_memo_are_the_rows_whose_ids_it_lacks(tmp_path: Path) -> None:
    """What a stage will compute whatever the memo says, before it plans the reuse: every row without a memo,
    then the rows with new ids (a changed row keeps its id, so it is not counted: the count is a lower bound)."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.connect() as connection:
        _source(connection, [("a", "one", "s"), ("b", "two", "s")])
        assert rows_missing_from_memo(connection, "source", "toy_memo") == 2
    _run(warehouse, "f1")
    with warehouse.connect() as connection:
        assert rows_missing_from_memo(connection, "source", "toy_memo") == 0
        _source(connection, [("a", "one", "s"), ("b", "TWO", "s"), ("c", "three", "s"), ("d", "four", "s")])
        assert rows_missing_from_memo(connection, "source", "toy_memo") == 2


def test_nothing_is_reused_without_the_previous_outputs(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.connect() as connection:
        _source(connection, [("a", "one", "s")])
    _run(warehouse, "f1")
    assert _run(warehouse, "f1", outputs=("out", "missing_side_table")) == set()


def test_a_failed_run_leaves_the_previous_memo(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.connect() as connection:
        _source(connection, [("a", "one", "s")])
    _run(warehouse, "f1")
    try:
        with warehouse.write("toy") as staged:
            plan_reuse(staged, "toy_memo", quote("source"), COLUMNS, "other", ("out",))
            raise RuntimeError("the stage crashed")
    except RuntimeError:
        pass
    assert _run(warehouse, "f1") == {"a"}


@pytest.mark.parametrize("change", ["small", "large"])
def test_staged_rows_equal_the_query_whether_the_table_is_patched_or_copied(tmp_path: Path, change: str) -> None:
    """``stage_rows`` keeps the current rows equal to a new row in place and writes only the others: a row
    whose key stays but whose content changed is replaced, a row the query no longer returns goes."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    rows = [(f"r{i:03d}", f"text {i}", "s") for i in range(100)]
    with warehouse.connect() as connection:
        _source(connection, rows)
    ddl = "row_id VARCHAR, text VARCHAR, source VARCHAR"

    def stage(patched: list[str]) -> list[tuple[str, str, str]]:
        with warehouse.write("toy") as staged:
            original = staged.patch

            def recorded(table: str, *args: object) -> object:
                patched.append(table)
                return original(table, *args)

            staged.patch = recorded  # type: ignore[method-assign]
            stage_rows(staged, "out", ddl, "row_id", "SELECT * FROM source", COLUMNS)
        with warehouse.connect(read_only=True) as connection:
            return connection.execute("SELECT * FROM out ORDER BY row_id").fetchall()

    first: list[str] = []
    assert stage(first) == rows and first == []  # no table yet: created whole
    changed = 3 if change == "small" else 60
    new_rows = [(r, f"{t} edited" if i < changed else t, s) for i, (r, t, s) in enumerate(rows[1:])]
    new_rows += [("r100", "text 100", "s"), ("r101", None, "t")]
    with warehouse.connect() as connection:
        _source(connection, new_rows)
    patched: list[str] = []
    assert stage(patched) == sorted(new_rows)
    # Past PATCH_MAX_CHANGE the kept rows are copied into a new table; within it the table is patched.
    assert patched == (["out"] if change == "small" else [])
