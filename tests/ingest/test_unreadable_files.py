"""A file that cannot be read (no permission) is one file-level quarantine entry with the reason; the other
files and sources are ingested, and once the file can be read its records are."""

from __future__ import annotations

import json
import os
import pathlib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.ingest import ingest_tables

RECORD = {"instruction": "Name a prime number.", "output": "Seven."}


def _lock(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` unreadable: by its mode, and (root reads whatever the mode) by refusing to open it."""
    path.chmod(0)
    real_open = pathlib.Path.open

    def refusing_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        if self.resolve() == path.resolve():
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    if os.geteuid() == 0:
        monkeypatch.setattr(pathlib.Path, "open", refusing_open)


def test_an_unreadable_file_is_quarantined_and_the_rest_ingested(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name, count in (("a.jsonl", 2), ("locked.jsonl", 3), ("other.jsonl", 1)):
        (data / name).write_text("".join(json.dumps(RECORD | {"n": n}) + "\n" for n in range(count)))
    sources = [
        {"name": "many", "path": "data/[al]*.jsonl", "mapping": "alpaca", "license": "MIT"},
        {"name": "other", "path": "data/other.jsonl", "mapping": "alpaca", "license": "MIT"},
    ]
    project = tmp_path / "distillery.yaml"
    project.write_text(yaml.safe_dump({"name": "locked", "sources": sources, "format": {"tokenizer": "tokenizer"}}))
    home = tmp_path / "home"
    tables = ("raw", "quarantine", "ingested_files")

    with monkeypatch.context() as patch:
        _lock(data / "locked.jsonl", patch)
        first = ingest_tables(project, home, workers=1, batch_rows=2, tables=tables)
        again = ingest_tables(project, home, workers=1, batch_rows=2, tables=tables)

    # records offered = rows + quarantined: 2 + 1 rows, and the locked file as one file-level entry
    assert len(first["raw"]) == 3
    (entry,) = first["quarantine"]
    source, uri, file, record_no, line_no, error, _ = entry
    assert (source, uri, file, record_no, line_no) == ("many", "data/locked.jsonl#0", "data/locked.jsonl", 0, None)
    assert error.startswith("file could not be read: ") and "Permission denied" in error
    assert again["raw"] == first["raw"] and again["quarantine"] == first["quarantine"]

    (data / "locked.jsonl").chmod(0o644)
    readable = ingest_tables(project, home, workers=1, batch_rows=2, tables=tables)
    assert len(readable["raw"]) == 6 and readable["quarantine"] == []
