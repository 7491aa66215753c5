"""A UTF-8 byte-order mark at the start of a file (written by Excel, Notepad and other Windows tools) is not
part of the content: every record of a BOM-prefixed JSONL, JSON or CSV file is read, with the same record and
line numbers as without the mark, by the stage (chunked) and by the row-at-a-time reference path."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import yaml

from curation.core.config import SourceConfig
from curation.core.schema import utcnow
from curation.ingest.readers import UTF8_BOM
from curation.ingest.sources import Quarantined, ingest_file
from tests.ingest import ingest_tables

GOOD = {"instruction": "Name a prime number.", "input": "", "output": "Seven is a prime number."}
BROKEN = {"instruction": " ", "input": "", "output": "Nothing."}  # empty instruction: quarantined
CASES = [("jsonl", False), ("json", False), ("csv", False), ("jsonl", True), ("json", True), ("csv", True)]
BROKEN_LINE = {"jsonl": 2, "json": 7, "csv": 3}  # where the second record starts


def _write(folder: Path, fmt: str, gz: bool, bom: bool) -> Path:
    """Three records, the second one quarantined by the mapping, the first one on line 1 (after the header)."""
    records = [GOOD, BROKEN, GOOD | {"input": "ctx"}]
    if fmt == "jsonl":
        data = "\n".join(json.dumps(r) for r in records).encode() + b"\n"
    elif fmt == "json":
        data = json.dumps(records, indent=2).encode()
    else:
        lines = ["instruction,input,output"] + [",".join(r.values()) for r in records]
        data = "\r\n".join(lines).encode() + b"\r\n"
    folder.mkdir(exist_ok=True)
    path = folder / (f"data.{fmt}" + (".gz" if gz else ""))
    data = (UTF8_BOM if bom else b"") + data
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _reference(path: Path) -> list[tuple]:
    source = SourceConfig(name="bom", path=path.name, mapping="alpaca", license="MIT")
    return [
        (i.record_no, i.line_no, i.error) if isinstance(i, Quarantined) else (i["messages"],)
        for i in ingest_file(path, path.name, source, utcnow(), 10_000)
    ]


@pytest.mark.parametrize(("fmt", "gz"), CASES)
def test_a_bom_costs_no_record_on_the_reference_path(tmp_path: Path, fmt: str, gz: bool) -> None:
    plain = _reference(_write(tmp_path / "plain", fmt, gz, bom=False))
    with_bom = _reference(_write(tmp_path / "bom", fmt, gz, bom=True))
    assert [len(item) for item in plain] == [1, 3, 1]  # row, quarantined, row
    assert plain[1][:2] == (2, BROKEN_LINE[fmt])
    assert with_bom == plain


@pytest.mark.parametrize(("fmt", "gz"), CASES)
def test_a_bom_costs_no_record_in_the_stage(tmp_path: Path, fmt: str, gz: bool) -> None:
    tables = {}
    for bom in (False, True):
        folder = tmp_path / str(bom)
        path = _write(folder, fmt, gz, bom)
        project = folder / "distillery.yaml"
        source = {"name": "bom", "path": path.name, "mapping": "alpaca", "license": "MIT"}
        project.write_text(yaml.safe_dump({"name": "bom", "sources": [source], "format": {"tokenizer": "tokenizer"}}))
        tables[bom] = ingest_tables(project, folder / "home", workers=1, batch_rows=2)
    # records offered = rows + quarantined, at the same record and line numbers as without the mark
    assert len(tables[True]["raw"]) == 2 and len(tables[True]["quarantine"]) == 1
    (entry,) = tables[True]["quarantine"]
    assert entry[1].endswith("#2") and entry[3:5] == (2, BROKEN_LINE[fmt])
    assert tables[True] == tables[False]
