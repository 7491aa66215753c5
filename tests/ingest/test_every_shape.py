"""Every shape of broken input from issue 14 in one project, through `distillery run`: each record offered is
a row of ``raw`` or a ``quarantine`` entry, each file-level problem is one entry with its reason, a file
reached twice is read once, and nothing ends in a traceback."""

from __future__ import annotations

import glob
import gzip
import json
import os
import resource
import time
from pathlib import Path

import duckdb
import pytest
import yaml

from curation.core.accounting import raw_conservation
from curation.ingest.files import expand_glob
from tests.conftest import run_cli

GOOD = {"instruction": "Name a prime number.", "output": "Seven."}
MAX_RECORD_BYTES = 300_000


def _good(n: int) -> bytes:
    return json.dumps(GOOD | {"instruction": f"Name prime number {n}."}).encode()


def _lines(*lines: bytes) -> bytes:
    return b"\n".join(lines) + b"\n"


def _shown(path: str, base: Path) -> str:
    """How ingestion names a file outside the project's folder."""
    return os.path.relpath(os.path.realpath(path), base.resolve())


def _corpus(data: Path) -> dict[str, tuple[int, int]]:
    """Write the broken files; returns ``file → (rows, quarantined)`` expected of each file that is planned."""
    expected: dict[str, tuple[int, int]] = {}

    def write(name: str, content: bytes, rows: int, quarantined: int) -> Path:
        path = data / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        expected[f"data/{name}"] = (rows, quarantined)
        return path

    write("truncated.jsonl", _lines(_good(1), b'{"instruction": "Name a pri', _good(2)), 2, 1)
    write("bad_utf8.jsonl", _lines(_good(3), b'{"instruction": "caf\xe9", "output": "x"}'), 1, 1)
    write("wrong_types.jsonl", _lines(b'{"instruction": 4, "output": "x"}', b"[1, 2]", _good(4)), 1, 2)
    big = json.dumps(GOOD | {"output": "x" * (MAX_RECORD_BYTES + 1)}).encode()
    write("big.jsonl", _lines(_good(5), big), 1, 1)
    payload = gzip.compress(_lines(*(_good(n) for n in range(100, 2100))))
    write("cut.jsonl.gz", payload[: len(payload) // 2], -1, 1)  # rows: whatever came before the cut
    write("truncated_array.json", json.dumps([GOOD, GOOD | {"output": "Two."}]).encode()[:-1] + b', {"instr', 2, 1)
    write("ragged.csv", b"instruction,output\nQ1,A1\nQ2\nQ3,A3,extra\nQ4,A4\n", 2, 2)
    write("empty.jsonl", b"", 0, 0)
    write("empty.csv", b"", 0, 0)
    write("bom.jsonl", b"\xef\xbb\xbf" + _lines(_good(6), _good(7)), 2, 0)
    write("bom.json", b"\xef\xbb\xbf" + json.dumps([GOOD, GOOD | {"output": "Eleven."}]).encode(), 2, 0)
    write("bom.csv", b"\xef\xbb\xbfinstruction,output\nQ5,A5\n", 1, 0)
    write("big_field.csv", b'instruction,output\nQ6,"' + b"y" * 200_000 + b'"\nQ7,A7\n', 2, 0)
    locked = write("locked.jsonl", _lines(_good(8)), 0, 1)
    if os.geteuid() == 0:  # root reads whatever the mode says: a file whose every read fails instead
        locked.unlink()
        locked.symlink_to("/proc/self/mem")  # named by what it resolves to in the run: /proc/<its pid>/mem
        del expected["data/locked.jsonl"]
    else:
        locked.chmod(0)
    write("v3.jsonl", _lines(_good(9), _good(10)), 2, 0)
    (data / "latest.jsonl").symlink_to("v3.jsonl")  # the same file: read once, as v3.jsonl
    (data / "nested").mkdir()
    (data / "nested" / "loop").symlink_to("..")  # a ** over it would walk the tree again and again
    (data / "nested" / "top").symlink_to(data)  # and with two such links, 2**40 times (never ending)
    (data / "folder.jsonl").mkdir()  # a folder named like a data file: one entry
    (data / "folder.jsonl" / "notes.txt").write_text("not data")
    expected["data/folder.jsonl"] = (0, 1)
    os.mkfifo(data / "pipe.jsonl")  # opening it would block for ever: one entry
    expected["data/pipe.jsonl"] = (0, 1)
    (data / "zero.jsonl").symlink_to("/dev/zero")  # reading it never ends: one entry
    expected[_shown("/dev/zero", data.parent)] = (0, 1)
    # A gibibyte without a newline (a sparse file: no disk used): one oversized record, read in pieces.
    _sparse(data / "sparse.jsonl", _good(11) + b"\n", _good(12) + b"\n")
    expected["data/sparse.jsonl"] = (1, 1)
    _sparse(data / "sparse.json", b"[" + json.dumps(GOOD).encode() + b",", json.dumps(GOOD).encode() + b"]")
    expected["data/sparse.json"] = (1, 1)
    return expected


SPARSE_BYTES = 1 << 30


def _sparse(path: Path, head: bytes, tail: bytes) -> None:
    """``head``, a hole of zero bytes up to :data:`SPARSE_BYTES`, then ``tail``."""
    with path.open("wb") as handle:
        handle.write(head)
        handle.truncate(SPARSE_BYTES)
        handle.seek(0, os.SEEK_END)
        handle.write(tail)


@pytest.mark.slow
def test_every_broken_shape_is_accounted_for_without_a_traceback(tmp_path: Path) -> None:
    expected = _corpus(tmp_path / "data")
    alpaca = {"mapping": "alpaca", "license": "MIT"}
    sources = [
        {"name": "lines", "path": "data/**/*.jsonl", **alpaca},
        {"name": "gzipped", "path": "data/*.jsonl.gz", "format": "jsonl", **alpaca},
        {"name": "arrays", "path": "data/*.json", **alpaca},
        {"name": "tables", "path": "data/*.csv", **alpaca},
        {"name": "overlap", "path": "data/v*.jsonl", **alpaca},  # the same files as `lines`, read the same way
    ]
    settings = {"ingest": {"max_record_bytes": MAX_RECORD_BYTES}, "format": {"tokenizer": "tokenizer"}}
    project = tmp_path / "distillery.yaml"
    project.write_text(yaml.safe_dump({"name": "every-shape", "sources": sources, **settings}))

    started = time.monotonic()
    result = run_cli("run", "--config", str(project), "--select", "raw", home=tmp_path / "home", timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    assert time.monotonic() - started < 100, "the symlink loop or /dev/zero held the run up"
    # No process of the run held a sparse file's gibibyte line (each was over 3 GiB when lines were read whole).
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert peak_kib < 2 * SPARSE_BYTES // 1024, f"a process of the run reached {peak_kib // 1024} MiB"

    with duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True) as connection:
        files = connection.execute(
            "SELECT source, file, records, rows, quarantined FROM ingested_files ORDER BY 1, 2"
        ).fetchall()
        assert raw_conservation(connection) == [], "records offered != rows + quarantined"
        (duplicates,) = connection.execute("SELECT count(*) - count(DISTINCT row_id) FROM raw").fetchone()
        file_level = dict(
            connection.execute("SELECT source || ':' || file, error FROM quarantine WHERE record_no = 0").fetchall()
        )
    assert duplicates == 0
    read = {file: (rows, quarantined) for source, file, _, rows, quarantined in files if source != "overlap"}
    if os.geteuid() == 0:
        (memory,) = [file for file in read if file.endswith("/mem")]
        assert read.pop(memory) == (0, 1)
        assert "Input/output error" in file_level[f"lines:{memory}"]
    else:
        assert "Permission denied" in file_level["lines:data/locked.jsonl"]
    cut_rows = read["data/cut.jsonl.gz"][0]
    assert 0 < cut_rows < 2000, "the records before the cut are kept"
    assert read == expected | {"data/cut.jsonl.gz": (cut_rows, 1)}, "each file once, with its rows and entries"
    # Every record offered is a row or an entry: what each file was expected to hold.
    for _, _, records, rows, quarantined in files:
        assert records == rows + quarantined
    # The overlapping source does not read v3.jsonl again: one entry saying which source reads it.
    assert [(f, r, q) for s, f, _, r, q in files if s == "overlap"] == [("data/v3.jsonl", 0, 1)]
    assert "source 'lines' reads this file" in file_level["overlap:data/v3.jsonl"]
    reasons = {
        "lines:data/folder.jsonl": "folder.jsonl is a folder, not a file of records",
        "lines:data/pipe.jsonl": "pipe.jsonl is a named pipe",
        f"lines:{_shown('/dev/zero', tmp_path)}": "zero.jsonl is a device",
        "gzipped:data/cut.jsonl.gz": "could not be read to the end",
    }
    for file, reason in reasons.items():
        assert reason in file_level[file], (file, file_level[file])
        assert "\n" not in file_level[file], "one line"


def test_a_double_symlink_loop_is_walked_once(tmp_path: Path) -> None:
    """Two links back to the top make glob's walk grow as 2**depth (until ELOOP): never ending in practice."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_text("{}\n")
    (tmp_path / "sub" / "up").symlink_to("..")
    (tmp_path / "sub" / "top").symlink_to(tmp_path)
    (tmp_path / "link.jsonl").symlink_to("sub/a.jsonl")
    started = time.monotonic()
    found = expand_glob(str(tmp_path / "**" / "*.jsonl"))
    assert time.monotonic() - started < 5
    assert {os.path.realpath(p) for p in found} == {os.path.realpath(tmp_path / "sub" / "a.jsonl")}
    assert tmp_path / "link.jsonl" in found  # glob's names: the link is matched, then read once by identity


@pytest.mark.parametrize(
    "pattern", ["*.jsonl", "**/*.jsonl", "a/*/*.json*", "**", "[ab]*/**/*.csv", "a/**.jsonl", ".h*/*", "a/b/c.csv"]
)
def test_expand_glob_matches_what_glob_matches_without_loops(tmp_path: Path, pattern: str) -> None:
    for name in ("x.jsonl", "a/y.jsonl", "a/b/c.csv", "a/b/d.json.gz", "a/.hidden.jsonl", ".h/z.jsonl", "b/e.csv"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("{}\n")
    (tmp_path / "a" / "link").symlink_to("b")  # the folder a/b again: walked once, under one of its names
    expected = {Path(p) for p in glob.glob(str(tmp_path / pattern), recursive=True)} - {tmp_path}
    found = expand_glob(str(tmp_path / pattern))
    assert set(found) <= expected and len(found) == len(set(found))
    assert {os.path.realpath(p) for p in found} == {os.path.realpath(p) for p in expected}
