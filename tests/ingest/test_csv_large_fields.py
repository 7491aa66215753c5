"""CSV fields larger than the csv module's default limit (128 KiB) are read: a record up to
``ingest.max_record_bytes`` becomes a row, a larger one is quarantined as oversized, and the records after it
(and the other sources) are ingested with their own record and line numbers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import yaml

from curation.core.schema import COLUMNS
from tests.ingest import ingest_tables

LIMIT = 400_000
BIG = ("A long answer.\n" * 14_000)[:210_000]  # over 128 KiB, under the limit; lines inside a quoted field
HUGE = "y" * (LIMIT + 1)  # over the limit


def _csv(rows: list[tuple[str, str]]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["instruction", "output"])
    writer.writerows(rows)
    return buffer.getvalue().encode()


def test_large_csv_fields_are_read_and_oversized_ones_quarantined(tmp_path: Path) -> None:
    rows = [("Q1", "A1"), ("Q2", BIG), ("Q3", "A3"), ("Q4", HUGE), ("Q5", "A5")]
    (tmp_path / "big.csv").write_bytes(_csv(rows))
    (tmp_path / "other.jsonl").write_text(json.dumps({"instruction": "Q", "output": "A"}) + "\n")
    sources = [
        {"name": "big", "path": "big.csv", "mapping": "alpaca", "license": "MIT"},
        {"name": "other", "path": "other.jsonl", "mapping": "alpaca", "license": "MIT"},
    ]
    project = tmp_path / "distillery.yaml"
    settings = {"ingest": {"max_record_bytes": LIMIT}, "format": {"tokenizer": "tokenizer"}}
    project.write_text(yaml.safe_dump({"name": "csv", "sources": sources, **settings}))

    tables = ingest_tables(project, tmp_path / "home", workers=1, batch_rows=2)

    # records offered (5 + 1) = rows + quarantined
    uri_at = [name for name in COLUMNS if name != "ingested_at"].index("source_uri")
    uris = sorted(row[uri_at] for row in tables["raw"])
    assert uris == ["big.csv#1", "big.csv#2", "big.csv#3", "big.csv#5", "other.jsonl#1"]
    (entry,) = tables["quarantine"]
    _, uri, _, record_no, line_no, error, _ = entry
    assert (uri, record_no) == ("big.csv#4", 4)
    assert line_no == 5 + BIG.count("\n")  # the header, Q1, Q2's lines, Q3
    assert f"over ingest.max_record_bytes={LIMIT}" in error
