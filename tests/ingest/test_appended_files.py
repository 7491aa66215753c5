"""A JSONL file that grew by appending is read from where the last ingestion stopped, and the tables come out
as a reading of the whole file makes them: the same row ids (copies numbered on), record and line numbers,
quarantine entries and counts. Any other change reads the file whole."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from curation.core.config import load_project
from curation.core.warehouse import Warehouse
from curation.ingest.sources import FileResult, ingest_sources

GOOD = {"instruction": "Name a prime number.", "input": "", "output": "Seven is a prime number."}
TABLES = ("raw", "quarantine", "ingested_files")


def _record(n: int) -> str:
    return json.dumps({"instruction": f"Question {n}?", "input": "", "output": f"Answer {n}."})


# The earlier part: copies of one record, blank lines, a broken line and an oversized one.
PREFIX = [json.dumps(GOOD), _record(1), "", json.dumps(GOOD), '{"instruction": "cut', _record(2)]
PREFIX += [_record(n) for n in range(3, 120)] + [json.dumps({"instruction": "x" * 700, "output": "big"}), "  "]
# What is appended: a third copy of GOOD, a second copy of an earlier record, a new record twice, broken lines.
TAIL = [json.dumps(GOOD), _record(7), _record(100), "", _record(100), "[1, 2]", json.dumps(GOOD), '{"output": 1}']


def _lines(lines: list[str]) -> bytes:
    return "".join(line + "\n" for line in lines).encode()


def _ingest(project: Path, home: Path) -> tuple[dict[str, list[tuple]], dict[str, FileResult]]:
    warehouse = Warehouse(home / "warehouse.duckdb")
    with warehouse.write("raw") as staged:
        summary = ingest_sources(load_project(project), staged)
    with warehouse.connect(read_only=True) as connection:
        tables = {
            table: sorted(connection.execute(f"SELECT * EXCLUDE (ingested_at) FROM {table}").fetchall(), key=repr)
            for table in TABLES
        }
    return tables, {result.file: result for result in summary.files}


def _project(folder: Path, name: str) -> Path:
    """A project reading ``name`` and, unchanged, a file whose name holds a ``#`` as a record address does."""
    project = folder / "distillery.yaml"
    (folder / "other#2.jsonl").write_bytes(_lines([_record(n) for n in range(500, 510)]))
    sources = [
        {"name": "sft", "path": name, "mapping": "alpaca", "license": "MIT", "format": "jsonl"},
        {"name": "other", "path": "other#2.jsonl", "mapping": "alpaca", "license": "MIT"},
    ]
    settings = {"ingest": {"max_record_bytes": 600, "batch_rows": 4}, "format": {"tokenizer": "tokenizer"}}
    project.write_text(yaml.safe_dump({"name": "appended", "sources": sources, **settings}))
    return project


@pytest.mark.parametrize(
    ("name", "tail_copies"),  # a small change patches `raw`, a large one writes it anew
    [("sft.jsonl", 1), ("sft.jsonl", 4), ("sft#1.jsonl", 1)],  # a `#` in a name is no record address
)
def test_a_grown_jsonl_file_is_read_from_where_it_stopped(
    tmp_path: Path, patched_tables: list[str], name: str, tail_copies: int
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    path = data / name
    path.write_bytes(_lines(PREFIX))
    project = _project(data, name)
    before, _ = _ingest(project, tmp_path / "home")
    with Warehouse(tmp_path / "home" / "warehouse.duckdb").connect() as connection:  # as if ingested yesterday
        connection.execute("UPDATE raw SET ingested_at = ingested_at - INTERVAL 1 DAY")
        earlier = dict(connection.execute("SELECT row_id, ingested_at FROM raw").fetchall())

    with path.open("ab") as handle:
        handle.write(_lines(TAIL * tail_copies))
    grown, results = _ingest(project, tmp_path / "home")
    resumed_at = f"byte {len(_lines(PREFIX)):,}, record {len(PREFIX) - 1}"  # after the prefix's 2 blank lines
    assert results[name].reason == f"grew by appending: read from {resumed_at}"
    assert results["other#2.jsonl"].status == "unchanged"
    assert patched_tables == (["raw"] if tail_copies == 1 else [])

    fresh, _ = _ingest(project, tmp_path / "fresh")
    assert grown == fresh
    assert len(grown["raw"]) > len(before["raw"]) and len(grown["quarantine"]) > len(before["quarantine"])
    (entry,) = [e for e in grown["ingested_files"] if e[1] == name]
    records = len(PREFIX) - 2 + (len(TAIL) - 1) * tail_copies  # blank lines are no records
    assert entry[4:7] == (records, len(grown["raw"]) - 10, 2 + 2 * tail_copies)  # the other file: 10 rows
    with Warehouse(tmp_path / "home" / "warehouse.duckdb").connect(read_only=True) as connection:
        now = dict(connection.execute("SELECT row_id, ingested_at FROM raw").fetchall())
    assert {row_id: now[row_id] for row_id in earlier} == earlier  # the earlier records were left as they were


@pytest.mark.parametrize("change", ["edited", "no final line break", "gzip member appended", "settings"])
def test_a_file_that_did_not_only_grow_is_read_whole(tmp_path: Path, change: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    name = "sft.jsonl.gz" if change == "gzip member appended" else "sft.jsonl"
    path = data / name
    prefix = _lines(PREFIX)
    if change == "no final line break":
        prefix = prefix.rstrip(b" \n")  # the last line's record may go on in what is appended
    path.write_bytes(gzip.compress(prefix) if name.endswith(".gz") else prefix)
    project = _project(data, name)
    _ingest(project, tmp_path / "home")

    tail = _lines(TAIL)
    if change == "edited":
        path.write_bytes(prefix.replace(b"Question 5?", b"Question 5!") + tail)
    elif change == "gzip member appended":
        path.write_bytes(path.read_bytes() + gzip.compress(tail))
    else:
        path.write_bytes(prefix + tail)
    if change == "settings":
        settings = yaml.safe_load(project.read_text())
        settings["sources"][0] |= {"origin": "synthetic", "generator": "a-model"}
        project.write_text(yaml.safe_dump(settings))
    grown, results = _ingest(project, tmp_path / "home")
    assert results[name].reason == "file changed"

    fresh, _ = _ingest(project, tmp_path / "fresh")
    assert grown == fresh
