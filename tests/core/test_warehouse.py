"""The warehouse: staged writes swapped in one transaction, idempotent ingestion, quoting."""

from __future__ import annotations

import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from curation.core import warehouse as warehouse_module
from curation.core.config import load_project
from curation.core.warehouse import LINEAGE_DDL, Warehouse, content_hash, quote
from curation.ingest.sources import ingest_sources
from tests.conftest import DEMO_CONFIG


def demo_copy(tmp_path: Path) -> Path:
    """The demo project copied to a temp dir so tests can change its files."""
    target = tmp_path / "project"
    shutil.copytree(DEMO_CONFIG.parent, target, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    return target / "distillery.yaml"


def ingest(warehouse: Warehouse, config: Path):
    with warehouse.write("raw") as staged:
        return ingest_sources(load_project(config), staged)


def count(warehouse: Warehouse, table: str) -> int:
    with warehouse.connect(read_only=True) as connection:
        return connection.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]


def test_reingesting_unchanged_files_adds_nothing_and_reads_nothing(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    first = ingest(warehouse, config)
    rows, quarantined = count(warehouse, "raw"), count(warehouse, "quarantine")
    assert first.rows_added == rows > 0 and first.quarantined_added == quarantined > 0
    second = ingest(warehouse, config)
    assert second.rows_added == 0 and {f.status for f in second.files} == {"unchanged"}
    assert (count(warehouse, "raw"), count(warehouse, "quarantine")) == (rows, quarantined)
    with warehouse.connect(read_only=True) as connection:
        ids = connection.execute("SELECT count(DISTINCT row_id) FROM raw").fetchone()[0]
    assert ids == rows


def test_changed_file_replaces_its_rows_only(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ingest(warehouse, config)
    before = count(warehouse, "raw")
    preference = config.parent / "data" / "preference.jsonl"
    preference.write_text(
        preference.read_text() + '{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "No."}\n'
    )
    summary = ingest(warehouse, config)
    statuses = {f.file: f.status for f in summary.files}
    assert statuses["data/preference.jsonl"] == "ingested"
    assert [s for f, s in statuses.items() if f != "data/preference.jsonl"] == ["unchanged"] * 3
    assert count(warehouse, "raw") == before + 1


def test_crash_mid_write_leaves_previous_tables_intact(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("demo") as staged:
        table = staged.create("things", "id INTEGER")
        staged.connection.execute(f"INSERT INTO {table} VALUES (1), (2)")
    with pytest.raises(RuntimeError, match="power cut"), warehouse.write("demo") as staged:
        table = staged.create("things", "id INTEGER")
        staged.connection.execute(f"INSERT INTO {table} VALUES (3)")
        raise RuntimeError("power cut")
    with warehouse.connect(read_only=True) as connection:
        assert connection.execute("SELECT list(id ORDER BY id) FROM things").fetchone()[0] == [1, 2]
        names = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not any(name.startswith("_stage_") for name in names), "staging tables are cleaned up"


def test_failure_during_swap_rolls_back_every_table(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("demo") as staged:
        staged.connection.execute(f"INSERT INTO {staged.create('a', 'x INTEGER')} VALUES (1)")
        staged.connection.execute(f"INSERT INTO {staged.create('b', 'x INTEGER')} VALUES (1)")
    with pytest.raises(duckdb.Error), warehouse.write("demo") as staged:
        staged.connection.execute(f"INSERT INTO {staged.create('a', 'x INTEGER')} VALUES (2)")
        staged.create("b", "x INTEGER")
        # Sabotage: the staging table of b disappears, so the swap fails after a was swapped.
        staged.connection.execute(f"DROP TABLE {quote(staged.staging_name('b'))}")
    with warehouse.connect(read_only=True) as connection:
        assert connection.execute("SELECT x FROM a").fetchall() == [(1,)]
        assert connection.execute("SELECT x FROM b").fetchall() == [(1,)]


def test_appends_in_one_transaction_arrive_together_or_not_at_all(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    batch = pa.table({"id": list(range(1_000))})
    with warehouse.write("demo") as staged:
        table = staged.create("things", "id INTEGER")
        with staged.appending():
            for _ in range(3):
                staged.append(table, batch)
            # The block's transaction is its own: the stage's connection sees the rows once it ends.
            assert staged.connection.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
        assert staged.connection.execute(f"SELECT count(*) FROM {table}").fetchone() == (3_000,)
        with pytest.raises(RuntimeError, match="do not nest"), staged.appending(), staged.appending():
            pass
    with pytest.raises(RuntimeError, match="worker died"), warehouse.write("demo") as staged:
        table = staged.create("things", "id INTEGER")
        with staged.appending():
            staged.append(table, batch)
            raise RuntimeError("worker died")
    assert count(warehouse, "things") == 3_000


def test_a_transaction_of_appends_does_not_keep_the_appended_batches(tmp_path: Path) -> None:
    """Memory stays bounded by DuckDB's limit, not the data: the Arrow batches appended inside one transaction
    are freed as they go. (Registering each batch as a view, as appends once did, kept every batch alive until
    COMMIT, so a stage's whole output stayed in memory.)"""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    batch_bytes = 4 << 20
    with warehouse.write("demo") as staged:
        table = staged.create("blobs", "data VARCHAR")
        with staged.appending():
            before = pa.total_allocated_bytes()
            for number in range(40):
                staged.append(table, pa.table({"data": [f"{number:08d}" * (batch_bytes // 8 // 64)] * 64}))
            held = pa.total_allocated_bytes() - before
        assert held < 4 * batch_bytes, f"{held >> 20} MiB of appended Arrow data still held"
    assert count(warehouse, "blobs") == 40 * 64


def test_a_patched_table_changes_in_place_and_reads_whole_while_staged(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ddl = "row_id VARCHAR, parent_id VARCHAR, n INTEGER"
    with warehouse.write("demo") as staged:
        table = staged.create("things", ddl)
        staged.connection.execute(f"INSERT INTO {table} SELECT 'r' || i, 'p' || i, i FROM range(6) t(i)")
        staged.connection.execute(f"INSERT INTO {table} VALUES ('rn', NULL, 99)")  # a key no list can keep

    def contents(connection: duckdb.DuckDBPyConnection, table: str) -> list[tuple[str, int]]:
        return connection.execute(f"SELECT row_id, n FROM {quote(table)} ORDER BY row_id").fetchall()

    with warehouse.write("demo") as staged:
        assert staged.patch("missing", ddl, "parent_id", "SELECT 'p1'") is None
        assert staged.patch("things", "row_id VARCHAR, n INTEGER", "parent_id", "SELECT 'p1'") is None
        patch = staged.patch("things", ddl, "parent_id", "SELECT 'p' || i FROM range(4) t(i)")  # p4, p5 go
        assert patch is not None
        staged.connection.execute(f"INSERT INTO {patch.added} VALUES ('n1', 'q1', 10), ('n2', 'q2', 20)")
        # While staged, the new version reads whole under the staging name; deleting reaches both halves.
        staged.delete("things", "n IN (0, 20)")
        view = staged.staging_name("things")
        assert contents(staged.connection, view) == [("n1", 10), ("r1", 1), ("r2", 2), ("r3", 3)]
        with staged.connection.cursor() as reader:  # the committed table is untouched until the swap
            assert len(contents(reader, "things")) == 7
    with warehouse.connect(read_only=True) as connection:
        assert contents(connection, "things") == [("n1", 10), ("r1", 1), ("r2", 2), ("r3", 3)]
        # The rows kept never moved: the new one comes after them.
        assert connection.execute("SELECT list(row_id ORDER BY rowid) FROM things").fetchone()[0][-1] == "n1"
        assert connection.execute("SELECT count(*) FROM things WHERE row_id = 'r2'").fetchone() == (1,)
        names = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        indexes = {r[0] for r in connection.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    assert not any(name.startswith("_stage_") for name in names)
    assert "things__row_id" in indexes

    # A row dropped and added back under the same key (its input changed, not its id) is replaced.
    with warehouse.write("demo") as staged:
        patch = staged.patch("things", ddl, "row_id", "SELECT row_id FROM things WHERE row_id <> 'r2'")
        assert patch is not None
        staged.connection.execute(f"INSERT INTO {patch.added} VALUES ('r2', 'p2', 22)")
    with warehouse.connect(read_only=True) as connection:
        assert contents(connection, "things") == [("n1", 10), ("r1", 1), ("r2", 22), ("r3", 3)]
        assert connection.execute("SELECT n FROM things WHERE row_id = 'r2'").fetchall() == [(22,)]

    with pytest.raises(RuntimeError, match="power cut"), warehouse.write("demo") as staged:
        patch = staged.patch("things", ddl, "parent_id", "SELECT 'p1'")
        assert patch is not None
        staged.connection.execute(f"INSERT INTO {patch.added} VALUES ('n3', 'q3', 30)")
        raise RuntimeError("power cut")
    with warehouse.connect(read_only=True) as connection:
        assert contents(connection, "things") == [("n1", 10), ("r1", 1), ("r2", 22), ("r3", 3)]
        names = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not any(name.startswith("_stage_") for name in names), "staging tables and views are cleaned up"


def test_a_patched_tables_data_version_is_updated_from_the_rows_it_drops_and_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ddl = "row_id VARCHAR, text VARCHAR, n DOUBLE"
    with warehouse.write("demo") as staged:
        table = staged.create("things", ddl)
        staged.connection.execute(f"INSERT INTO {table} SELECT 'r' || i, repeat('x', i), i / 3 FROM range(50) t(i)")
        staged.connection.execute(f"INSERT INTO {table} VALUES (NULL, 'no key', 0), ('r7', 'a copy', 7)")
        first = staged.data_version("things")

    hashed: list[str] = []

    def hashing_every_row(connection: duckdb.DuckDBPyConnection, table: str) -> str:
        hashed.append(table)
        return content_hash(connection, table)

    monkeypatch.setattr(warehouse_module, "content_hash", hashing_every_row)

    def patched(kept: str, added: str, delete: str = "") -> tuple[str, str]:
        """The staged version's data version and, committed, the table's content hash."""
        with warehouse.write("demo") as staged:
            patch = staged.patch("things", ddl, "row_id", kept)
            assert patch is not None
            staged.connection.execute(f"INSERT INTO {patch.added} {added}")
            if delete:
                staged.delete("things", delete)
            version = staged.data_version("things")
        with warehouse.connect(read_only=True) as connection:
            return version, content_hash(connection, "things")

    with warehouse.connect(read_only=True) as connection:
        assert first == content_hash(connection, "things")
    # Rows dropped (both copies of r7, the NULL key), replaced (r3) and added, some twice.
    version, committed = patched(
        "SELECT row_id FROM things WHERE row_id NOT IN ('r3', 'r7')",
        "VALUES ('r3', 'changed', 3), ('n1', 'new', 1), ('n1', 'new', 1), ('n2', NULL, NULL)",
    )
    assert version == committed != first and hashed == []  # no row hashed but the changed ones
    # Deleting after the version was taken leaves no stored version: the next patch hashes every row.
    with warehouse.write("demo") as staged:
        patch = staged.patch("things", ddl, "row_id", "SELECT row_id FROM things")
        assert patch is not None
        staged.data_version("things")
        staged.delete("things", "row_id = 'r1'")
    version, committed = patched("SELECT row_id FROM things", "VALUES ('n3', 'more', 3)")
    assert version == committed and len(hashed) == 1
    # A table changed by other means (another row count than stored) is hashed whole, not trusted.
    with warehouse.connect() as connection:
        connection.execute("DELETE FROM things WHERE row_id = 'r2'")
    version, committed = patched("SELECT row_id FROM things", "VALUES ('n4', 'more', 4)", delete="row_id = 'n3'")
    assert version == committed and len(hashed) == 2


def test_partitions_of_shared_tables_are_replaced_per_asset(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    ddl = "child_id VARCHAR, parent_id VARCHAR, asset VARCHAR, operation VARCHAR, detail VARCHAR"
    for asset, rows in (("one", 2), ("two", 3), ("one", 1)):
        with warehouse.write(asset) as staged:
            table = staged.partition("lineage", ddl)
            for i in range(rows):
                staged.connection.execute(f"INSERT INTO {table} VALUES (?, 'p', ?, 'op', NULL)", [f"c{i}", asset])
    with warehouse.connect(read_only=True) as connection:
        counts = dict(connection.execute("SELECT asset, count(*) FROM lineage GROUP BY 1").fetchall())
    assert counts == {"one": 1, "two": 3}


@pytest.mark.parametrize("change", ["small", "large", "identical rows"])
def test_a_partition_that_changed_little_is_changed_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A small change of an asset's partition is applied to the shared table in place (rows matched whole); a
    large one, or one of a partition holding identical rows, writes the table anew. Either way the table holds
    the other assets' rows and exactly the new partition, indexed, and no work table is left."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    applied: list[str] = []
    apply = warehouse_module._PartitionChange.apply

    def recorded(self: object, connection: duckdb.DuckDBPyConnection, table: str) -> None:
        applied.append(table)
        apply(self, connection, table)  # type: ignore[arg-type]

    monkeypatch.setattr(warehouse_module._PartitionChange, "apply", recorded)

    def write(asset: str, rows: list[tuple[str, str, str, str, str | None]]) -> None:
        with warehouse.write(asset) as staged:
            table = staged.partition("lineage", LINEAGE_DDL)
            if rows:
                staged.connection.executemany(f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?)", rows)

    other = [(f"o{i}", "p", "other", "op", None) for i in range(100)]
    mine = [(f"c{i}", "p", "mine", "op", f"d{i}") for i in range(100)]
    if change == "identical rows":
        mine += [("dup", "p", "mine", "op", None)] * 2
    write("other", other)
    write("mine", mine)
    if change == "large":
        new = [(f"n{i}", "p", "mine", "op", None) for i in range(60)]
    else:  # one row goes (and one of two identical ones), one comes: at most 3 of 200-202 rows
        new = [*mine[1:-1], ("c100", "p", "mine", "op", "d100")]
    applied.clear()
    write("mine", new)
    with warehouse.connect(read_only=True) as connection:
        rows = connection.execute("SELECT * FROM lineage").fetchall()
        indexes = {name for (name,) in connection.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
        work = connection.execute("SELECT table_name FROM duckdb_tables() WHERE table_name LIKE '_stage_%'").fetchall()
    assert sorted(rows, key=repr) == sorted(other + new, key=repr)
    assert applied == (["lineage"] if change == "small" else [])
    assert len(rows) == len(other) + len(new)
    assert {"lineage__child_id", "lineage__parent_id"} <= indexes and work == []


@pytest.mark.slow
def test_replacing_a_large_partition_stays_within_duckdbs_memory_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # At 1M rows a re-run of `formatted` failed at COMMIT: replacing its lineage partition in place (DELETE,
    # INSERT, index rebuild in the transaction) held more than the 512 MB limit, and DuckDB invalidated the
    # database. The same shape at 200k rows under a 128 MB limit failed the same way on the second write.
    monkeypatch.setattr(warehouse_module, "DUCKDB_MEMORY_LIMIT", "128MB")
    warehouse = Warehouse(tmp_path / "w.duckdb")
    rows = 200_000
    with warehouse.write("other") as staged:
        other = staged.partition("lineage", LINEAGE_DDL)
        staged.connection.execute(
            f"INSERT INTO {other} SELECT 'o' || i, 'p' || i, 'other', 'op', NULL FROM range(1000) r(i)"
        )
    for run in ("first", "second"):
        with warehouse.write("big") as staged:
            table = staged.create("things", "row_id VARCHAR, text VARCHAR")
            lineage = staged.partition("lineage", LINEAGE_DDL)
            staged.connection.execute(
                f"INSERT INTO {table} SELECT sha256(i || ?), repeat('x', 200) FROM range(?) r(i)", [run, rows]
            )
            staged.connection.execute(
                f"INSERT INTO {lineage} SELECT sha256(i || ?), sha256(i::VARCHAR), 'big', 'op', 'detail' "
                "FROM range(?) r(i)",
                [run, rows],
            )
    with warehouse.connect(read_only=True) as connection:
        counts = dict(connection.execute("SELECT asset, count(*) FROM lineage GROUP BY 1").fetchall())
        indexes = {name for (name,) in connection.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
        (current,) = connection.execute(
            "SELECT count(*) FROM lineage WHERE child_id = sha256(7 || 'second')"
        ).fetchone()
    assert counts == {"other": 1000, "big": rows}
    assert current == 1
    assert {"things__row_id", "lineage__child_id", "lineage__parent_id"} <= indexes


def test_a_commit_that_outgrows_its_buffer_says_what_to_do_and_the_next_run_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Changed in place, a partition's rows go but its table's indexes must be updated, and DuckDB holds an
    index in memory whole: its size follows the table, not the change. A +1% re-run at 2M rows ran out of the
    256 MB buffer committing `filtered`, the rollback failed too and DuckDB invalidated the connection; a fixed
    1 GB buffer fails the same way at 10M. The failure (reproduced under a 24 MB commit buffer) names the
    setting to raise and leaves the previous version; under the default commit buffer (DuckDB's own, 80% of
    the machine's memory) the change commits, and the writer's buffer is set back after it."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    rows = 300_000

    def write(run: str) -> None:
        with warehouse.write("big") as staged:
            lineage = staged.partition("lineage", LINEAGE_DDL)
            staged.connection.execute(
                f"INSERT INTO {lineage} SELECT sha256(i::VARCHAR || (CASE WHEN i < 3000 THEN ? ELSE '' END)), "
                "sha256('p' || i), 'big', 'op', NULL FROM range(?) r(i)",
                [run, rows],
            )

    def count(child: str) -> int:
        with warehouse.connect(read_only=True) as connection:
            (found,) = connection.execute("SELECT count(*) FROM lineage WHERE child_id = sha256(?)", [child]).fetchone()
            (total,) = connection.execute("SELECT count(*) FROM lineage").fetchone()
        assert total == rows
        return int(found)

    write("first")  # indexed under the default buffer
    monkeypatch.setattr(warehouse_module, "DUCKDB_MEMORY_LIMIT", "24MB")
    monkeypatch.setattr(warehouse_module, "COMMIT_MEMORY_LIMIT", "24MB")
    with pytest.raises(duckdb.OutOfMemoryException, match="DISTILLERY_DUCKDB_MEMORY_LIMIT"):
        write("second")
    assert (count("7first"), count("7second")) == (1, 0)  # the previous version, whole
    monkeypatch.setattr(warehouse_module, "COMMIT_MEMORY_LIMIT", None)
    write("third")
    assert (count("7first"), count("7third")) == (0, 1)
    with warehouse.write("big") as staged:  # a writer's buffer is the configured one again
        (limit,) = staged.connection.execute("SELECT current_setting('memory_limit')").fetchone()
    assert limit == "22.8 MiB"


def test_tables_a_killed_writer_left_unindexed_are_indexed_by_the_next_write(tmp_path: Path) -> None:
    # A writer that dies after COMMIT and before building its indexes leaves committed tables without them.
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("demo") as staged:
        staged.connection.execute(f"INSERT INTO {staged.create('things', 'row_id VARCHAR')} VALUES ('a')")
    with warehouse.connect() as connection:
        connection.execute('DROP INDEX "things__row_id"')
    with warehouse.write("other") as staged:
        staged.create("unrelated", "x INTEGER")
    with warehouse.connect(read_only=True) as connection:
        indexes = {name for (name,) in connection.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    assert "things__row_id" in indexes


def test_an_index_that_does_not_fit_in_memory_is_a_warning_and_the_next_write_builds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def out_of_memory(connection: duckdb.DuckDBPyConnection, table: str) -> None:
        raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block of size 256.0 KiB")

    warehouse = Warehouse(tmp_path / "w.duckdb")
    with monkeypatch.context() as patched:
        patched.setattr(warehouse_module, "index_lookup_columns", out_of_memory)
        with warehouse.write("demo") as staged:
            staged.connection.execute(f"INSERT INTO {staged.create('things', 'row_id VARCHAR')} VALUES ('a')")
    assert "things: its lookup index was not built" in caplog.text
    assert "$DISTILLERY_DUCKDB_MEMORY_LIMIT" in caplog.text
    assert count(warehouse, "things") == 1  # committed all the same
    with warehouse.write("other") as staged:
        staged.create("unrelated", "x INTEGER")
    with warehouse.connect(read_only=True) as connection:
        indexes = {name for (name,) in connection.execute("SELECT index_name FROM duckdb_indexes()").fetchall()}
    assert "things__row_id" in indexes


def test_duckdbs_buffer_is_set_from_the_environment_and_running_out_says_what_to_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def limit(connection: duckdb.DuckDBPyConnection) -> str:
        return connection.execute("SELECT current_setting('memory_limit')").fetchone()[0]

    with duckdb.connect(config={"memory_limit": warehouse_module.DUCKDB_MEMORY_LIMIT}) as default:
        expected_default = limit(default)
    with duckdb.connect(config={"memory_limit": "1GB"}) as raised:
        expected_raised = limit(raised)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.connect() as connection:
        assert limit(connection) == expected_default
    monkeypatch.setenv(warehouse_module.MEMORY_LIMIT_ENV, "1GB")
    with warehouse.connect() as connection, warehouse.connect(read_only=False) as again:
        assert limit(connection) == limit(again) == expected_raised != expected_default
    with warehouse.write("demo") as staged:
        staged.connection.execute(f"INSERT INTO {staged.create('things', 'id INTEGER')} VALUES (1)")

    monkeypatch.setenv(warehouse_module.MEMORY_LIMIT_ENV, "lots")
    with (
        pytest.raises(ValueError, match="DISTILLERY_DUCKDB_MEMORY_LIMIT='lots' is not a memory size"),
        warehouse.connect(),
    ):
        pass
    monkeypatch.delenv(warehouse_module.MEMORY_LIMIT_ENV)

    # DuckDB's own message names no setting of ours; the write's says which one to raise, and commits nothing.
    with (
        pytest.raises(duckdb.OutOfMemoryException, match="Set \\$DISTILLERY_DUCKDB_MEMORY_LIMIT"),
        warehouse.write("demo") as staged,
    ):
        staged.connection.execute(f"INSERT INTO {staged.create('things', 'id INTEGER')} VALUES (2)")
        raise duckdb.OutOfMemoryException("Out of Memory Error: could not allocate block of size 256.0 KiB")
    assert count(warehouse, "things") == 1


def test_a_failed_swap_leaves_the_shared_tables_as_they_were(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("demo") as staged:
        staged.connection.execute(
            f"INSERT INTO {staged.partition('lineage', LINEAGE_DDL)} VALUES ('c', 'p', 'demo', 'op', NULL)"
        )
    with pytest.raises(duckdb.Error), warehouse.write("demo") as staged:
        staged.connection.execute(
            f"INSERT INTO {staged.partition('lineage', LINEAGE_DDL)} VALUES ('d', 'p', 'demo', 'op', NULL)"
        )
        staged.create("b", "x INTEGER")
        staged.connection.execute(f"DROP TABLE {quote(staged.staging_name('b'))}")  # the swap fails
    with warehouse.connect(read_only=True) as connection:
        assert connection.execute("SELECT child_id FROM lineage").fetchall() == [("c",)]
        names = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert not any(name.startswith("_stage_") for name in names), "staging tables are cleaned up"


def test_names_are_quoted(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "w.duckdb")
    hostile = 'x"; DROP TABLE lineage; --'
    with warehouse.write("demo") as staged:
        staged.connection.execute(f"INSERT INTO {staged.create(hostile, 'v INTEGER')} VALUES (7)")
    assert hostile in warehouse.tables() and "lineage" in warehouse.tables()
    assert quote('a"b') == '"a""b"'


def test_read_only_open_of_missing_warehouse_says_what_to_do(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="distillery run"),
        Warehouse(tmp_path / "none.duckdb").connect(read_only=True),
    ):
        pass


def test_drop_cached_pages_evicts_a_scanned_tables_pages_and_restores_the_limit(tmp_path: Path) -> None:
    """After a one-pass scan (exports), the pages DuckDB cached for reuse are handed back and the
    connection keeps the memory limit it was opened with."""
    path = tmp_path / "w.duckdb"
    with duckdb.connect(str(path)) as connection:
        connection.execute("CREATE TABLE t AS SELECT md5(range::VARCHAR) || repeat('x', 400) AS s FROM range(600000)")
    cached = "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory() WHERE tag = 'BASE_TABLE'"
    setting = "SELECT current_setting('memory_limit')"
    with duckdb.connect(str(path), read_only=True, config={"memory_limit": "256MB"}) as connection:
        limit = connection.execute(setting).fetchall()
        for _ in connection.sql("SELECT * FROM t").to_arrow_reader(8192):
            pass
        (before,) = connection.execute(cached).fetchall()[0]
        assert before > 32 << 20  # the scan left more than the 16 MB eviction target cached
        warehouse_module.drop_cached_pages(connection, "256MB")
        (after,) = connection.execute(cached).fetchall()[0]
        assert after <= 16 << 20
        assert connection.execute(setting).fetchall() == limit
