"""Incremental ingestion is keyed on each file's content and on its source's settings: a setting that shapes
rows reads that source's files again (and only that source's), a setting that does not reads nothing again,
and ``distillery run`` does not skip a settings change as up to date. The per-setting cases ingest as the
other tests of ``tests/ingest`` do (``ingest_sources`` into a warehouse, a fraction of a second each); the
whole path (project file → freshness decision → Dagster run → raw and every stage after it) is one
``distillery run`` test."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from curation.core.config import SourceConfig
from curation.core.warehouse import Warehouse
from curation.ingest.mappings import MAPPINGS
from curation.ingest.settings import NOT_ROW_SETTINGS, ROW_SETTINGS
from tests.conftest import run_cli
from tests.core.test_warehouse import demo_copy, ingest

TABLES = ("raw", "quarantine", "ingested_files")
Snapshot = dict[tuple[str, str], frozenset[tuple[Any, ...]]]


def edit(config: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the project file with ``change`` applied to its parsed content."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    change(data)
    config.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def source(name: str, **settings: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets (a value) or removes (None) settings of the source ``name``."""

    def change(data: dict[str, Any]) -> None:
        (entry,) = [s for s in data["sources"] if s["name"] == name]
        for key, value in settings.items():
            if value is None:
                entry.pop(key, None)
            else:
                entry[key] = value

    return change


def snapshot(warehouse: Path, times: bool = True) -> Snapshot:
    """Each table's rows per source, with or without the ingestion times."""
    exclude = "" if times else " EXCLUDE (ingested_at)"
    with duckdb.connect(str(warehouse), read_only=True) as db:
        rows: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
        for table in TABLES:
            for row in db.execute(f"SELECT source, *{exclude} FROM {table}").fetchall():
                rows.setdefault((table, row[0]), set()).add(row[1:])
    return {key: frozenset(value) for key, value in rows.items()}


def times(warehouse: Warehouse) -> dict[str, set[Any]]:
    """When each source's files were last read (``ingested_files.ingested_at``)."""
    with warehouse.connect(read_only=True) as connection:
        pairs = connection.execute("SELECT source, ingested_at FROM ingested_files").fetchall()
    read: dict[str, set[Any]] = {}
    for name, at in pairs:
        read.setdefault(name, set()).add(at)
    return read


# setting → (the sources it changes; None: every source, the change). Each change makes different rows
# of the demo's files: a first ingestion with it is not the one before.
SETTINGS: dict[str, tuple[set[str] | None, Callable[[dict[str, Any]], None]]] = {
    "license": ({"demo_sft"}, source("demo_sft", license="MIT")),
    "mapping": ({"demo_preference"}, source("demo_preference", mapping="prompts")),
    "fields": ({"demo_nc_qa"}, source("demo_nc_qa", fields={"instruction": "answer", "output": "question"})),
    "origin": ({"demo_preference"}, source("demo_preference", origin="human")),
    "generator": ({"demo_preference"}, source("demo_preference", generator="demo-writer-v2")),
    "kind": ({"demo_sft"}, source("demo_sft", kind="chat")),
    "annotator_field": ({"demo_nc_qa"}, source("demo_nc_qa", annotator_field=None)),
    "options": ({"demo_chat"}, source("demo_chat", options={"content_key": "text"})),
    "format": ({"demo_nc_qa"}, source("demo_nc_qa", format="jsonl")),
    "ingest.max_record_bytes": (None, lambda data: data["ingest"].update(max_record_bytes=300)),
}


def test_every_source_setting_is_classified() -> None:
    """A new setting of a source must be declared as shaping rows (it is then part of the fingerprint) or
    not; the per-setting test below covers each one that shapes rows (``name`` renames the source, whose
    files are then new files)."""
    assert set(SourceConfig.model_fields) == ROW_SETTINGS | NOT_ROW_SETTINGS
    assert not ROW_SETTINGS & NOT_ROW_SETTINGS
    assert ROW_SETTINGS - {"name"} == {setting for setting in SETTINGS if setting in SourceConfig.model_fields}


@pytest.mark.parametrize("setting", SETTINGS)
def test_a_setting_that_shapes_rows_reads_its_source_again_and_only_it(tmp_path: Path, setting: str) -> None:
    config = demo_copy(tmp_path)
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    ingest(warehouse, config)
    before, untimed_before, read_before = snapshot(warehouse.path), snapshot(warehouse.path, False), times(warehouse)

    changed, change = SETTINGS[setting]
    edit(config, change)
    summary = ingest(warehouse, config)
    ingest(Warehouse(tmp_path / "fresh.duckdb"), config)

    # raw, quarantine and ingested_files are what a first ingestion with the new settings makes (ingestion
    # times aside), and not what the old settings made.
    assert snapshot(warehouse.path, False) == snapshot(tmp_path / "fresh.duckdb", False) != untimed_before
    changed = set(read_before) if changed is None else changed
    assert {(f.source, f.status, f.reason) for f in summary.files} == {
        (name, "ingested", "settings or mapping code changed") if name in changed else (name, "unchanged", "")
        for name in read_before
    }
    # The other sources are untouched: their files not read again, their rows, quarantine entries and file
    # records exactly as they were, ingestion times included.
    after = snapshot(warehouse.path)
    assert {k: v for k, v in after.items() if k[1] not in changed} == {
        k: v for k, v in before.items() if k[1] not in changed
    }
    assert {name: at for name, at in times(warehouse).items() if name not in changed} == {
        name: at for name, at in read_before.items() if name not in changed
    }


def test_settings_that_do_not_shape_rows_read_nothing_again(tmp_path: Path) -> None:
    config = demo_copy(tmp_path)
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    ingest(warehouse, config)
    before = snapshot(warehouse.path)

    def irrelevant(data: dict[str, Any]) -> None:
        source("demo_sft", path="./data/../data/alpaca_sft.jsonl", allowed_languages=["en"])(data)
        source("demo_chat", options={"role_key": "from", "content_key": "value"})(data)  # the defaults, written out
        source("demo_nc_qa", fields={"output": "answer", "instruction": "question", "system": "system"})(data)
        data["ingest"]["batch_rows"] = 3  # how the work is split, not what it makes
        data["compute"] = {"workers": 1}
        data["name"] = "renamed-project"

    edit(config, irrelevant)  # also drops the file's comments and reorders nothing else
    summary = ingest(warehouse, config)
    assert {f.status for f in summary.files} == {"unchanged"} and summary.rows_added == 0
    assert snapshot(warehouse.path) == before


def test_a_new_mapping_version_reads_the_sources_it_maps_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = demo_copy(tmp_path)
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    ingest(warehouse, config)
    monkeypatch.setitem(MAPPINGS, "alpaca", dataclasses.replace(MAPPINGS["alpaca"], version=2))
    summary = ingest(warehouse, config)
    assert {(f.source, f.status) for f in summary.files} == {
        ("demo_sft", "ingested"),  # alpaca
        ("demo_nc_qa", "ingested"),  # alpaca, fields renamed
        ("demo_chat", "unchanged"),
        ("demo_preference", "unchanged"),
    }


def test_a_warehouse_without_settings_fingerprints_reads_its_files_once_more(tmp_path: Path) -> None:
    """Homes ingested before the fingerprint was kept: every file is read once, its records keep their first
    ingestion time, and from then on nothing is read again."""
    config = demo_copy(tmp_path)
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    ingest(warehouse, config)
    with warehouse.connect() as connection:
        connection.execute("ALTER TABLE ingested_files DROP COLUMN settings")
        raw_before = set(connection.execute("SELECT * FROM raw").fetchall())
    assert {f.status for f in ingest(warehouse, config).files} == {"ingested"}
    with warehouse.connect(read_only=True) as connection:
        assert set(connection.execute("SELECT * FROM raw").fetchall()) == raw_before
    assert {f.status for f in ingest(warehouse, config).files} == {"unchanged"}


@pytest.mark.slow
def test_distillery_run_after_a_licence_change_rebuilds_that_source_from_raw_on(tmp_path: Path) -> None:
    """The freshness decision sees the change (raw is not skipped as up to date), raw reads the changed
    source again and only it, and the new licence reaches the stages after raw."""
    config = demo_copy(tmp_path)
    home = tmp_path / "home"
    first = run_cli("run", "--config", str(config), home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    warehouse = Warehouse(home / "warehouse.duckdb")
    before, read_before = snapshot(warehouse.path), times(warehouse)

    edit(config, source("demo_sft", license="MIT"))
    second = run_cli("run", "--config", str(config), home=home)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Every asset is up to date" not in second.stdout
    assert "ingesting demo_sft: data/alpaca_sft.jsonl (settings or mapping code changed)" in second.stderr
    with warehouse.connect(read_only=True) as connection:
        for table in ("raw", "deduped", "filtered"):
            licences = connection.execute(f"SELECT DISTINCT license FROM {table} WHERE source = 'demo_sft'").fetchall()
            assert licences == [("MIT",)], table
    after, read_after = snapshot(warehouse.path), times(warehouse)
    assert read_after["demo_sft"] != read_before["demo_sft"]
    assert {k: v for k, v in after.items() if k[1] != "demo_sft"} == {
        k: v for k, v in before.items() if k[1] != "demo_sft"
    }
    assert {n: t for n, t in read_after.items() if n != "demo_sft"} == {
        n: t for n, t in read_before.items() if n != "demo_sft"
    }
