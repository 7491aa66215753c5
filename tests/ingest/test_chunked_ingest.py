"""The stage ingests chunk by chunk in columns (read_chunks, map_chunk, content_json); the row-at-a-time path
(read_records, ingest_file, content_key, rows_to_table) is the reference. They must write the same tables."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from curation.core.config import load_project
from curation.core.schema import content_key, encode_row, new_row, rows_to_table
from curation.ingest.encoding import content_json
from curation.ingest.readers import read_chunks, read_records
from curation.ingest.sources import Quarantined, ingest_file, path_for_uri
from tests.conftest import SHARED_DATA, require_shared_data
from tests.ingest import ingest_tables

TURN = {"role": "user", "content": "Hello"}
REPLY = {"role": "assistant", "content": "Hi there"}


@pytest.mark.parametrize(
    "messages",
    [
        None,
        [],
        [TURN, REPLY],
        [TURN | {"content": 'quote " backslash \\ tab \t newline \n bell \x07 del \x7f'}, REPLY],
        [TURN | {"content": "naïve café 日本語 😀 \u2028 \u00a0"}, REPLY],
        [{"content": "Hello", "role": "user"}, REPLY],  # keys in the other order
        [TURN | {"name": "bob"}, REPLY],
        [TURN, {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"b": 1, "a": [2.5]}}]}],
        [TURN | {"content": 7}, REPLY],
        [TURN, "not a message"],
        ({"role": "user", "content": "a tuple"},),
    ],
)
@pytest.mark.parametrize("score", [None, 0.5, 1e-07, -0.0, math.inf, math.nan, 3])
def test_content_json_writes_what_json_dumps_writes(messages: Any, score: Any) -> None:
    for kind, text, chosen in (("sft", None, None), ("preference", None, [REPLY]), ("text", "A document\n", None)):
        row = new_row(kind=kind, messages=messages, chosen=chosen, rejected=chosen and [REPLY], score=score, text=text)
        encoded = encode_row(row)
        expected = (content_key(row), encoded["messages"], encoded["chosen"], encoded["rejected"])
        assert content_json(kind, messages, chosen, chosen and [REPLY], score, text) == expected


GOOD = {"instruction": "Name a prime number.", "input": "", "output": "Seven is a prime number."}


def _broken_files(folder: Path) -> list[dict[str, Any]]:
    """Files of every format with broken records, exact copies (some in other chunks), extra keys, an
    annotator field and no records at all, with their sources."""
    lines = [json.dumps(GOOD), "", json.dumps(GOOD | {"id": 1}), '{"instruction": "cut', json.dumps(GOOD), "  "]
    lines += [json.dumps({"instruction": "Define café.", "output": "A small restaurant.", "by": "ann"}), "[1, 2]"]
    lines += [json.dumps(GOOD)] * 5 + [json.dumps({"instruction": "x" * 700, "output": "too big"}), json.dumps(GOOD)]
    (folder / "mixed.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + b'{"instruction": "caf\xe9"}\n')
    payload = gzip.compress("\n".join(json.dumps(GOOD | {"n": i}) for i in range(40)).encode())
    (folder / "cut.jsonl.gz").write_bytes(payload[: len(payload) // 2])
    (folder / "empty.jsonl").write_text("")
    (folder / "array.json").write_text(json.dumps([GOOD, 42, GOOD, GOOD | {"input": "ctx"}], indent=2) + "\nrest")
    (folder / "cut_array.json").write_text(json.dumps([GOOD, GOOD])[:-1] + ', {"instruction": "cut')
    (folder / "one.json").write_text(json.dumps(GOOD))
    (folder / "table.csv").write_bytes(b"instruction,output,by\nQ1,A1,ann\nQ1,A1,bob\n,\nQ2,A2\n\xff,x,y\nQ1,A1,ann\n")
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD | {"output": None}, GOOD]), folder / "table.parquet")
    sources = [
        {"name": "mixed", "path": "mixed.jsonl", "mapping": "alpaca", "annotator_field": "by"},
        {"name": "cut", "path": "cut.jsonl.gz", "mapping": "alpaca", "format": "jsonl"},
        {"name": "empty", "path": "empty.jsonl", "mapping": "alpaca"},
        {"name": "arrays", "path": "*array.json", "mapping": "alpaca"},
        {"name": "one", "path": "one.json", "mapping": "alpaca", "origin": "synthetic", "generator": "g"},
        {"name": "csv", "path": "table.csv", "mapping": "alpaca", "annotator_field": "by"},
        {"name": "parquet", "path": "table.parquet", "mapping": "alpaca", "kind": "sft"},
    ]
    return [source | {"license": "MIT"} for source in sources]


_SHARED_SOURCES = [
    ("self-instruct-seed-tasks/seed_tasks.jsonl", "self_instruct", {}),
    ("code-alpaca-2k/code_alpaca_2k.json", "alpaca", {}),
    ("fastchat-dummy-conversation/dummy_conversation.json", "sharegpt", {}),
    ("oasst-en-100-trees/en_100_tree.jsonl", "oasst", {}),
    ("oasst-en-100-trees/en_100_tree.jsonl", "oasst", {"options": {"mode": "preference"}}),
    ("gsm8k-train/train.jsonl", "gsm8k", {}),
    ("vicuna-bench/question.jsonl", "prompts", {"fields": {"prompt": "turns"}}),
    ("llms-from-scratch-preference/instruction-data-with-preference.json", "preference", {}),
]


def _project(folder: Path, sources: list[dict[str, Any]]) -> Path:
    project = folder / "distillery.yaml"
    settings = {"ingest": {"max_record_bytes": 600}, "format": {"tokenizer": "tokenizer"}}
    project.write_text(yaml.safe_dump({"name": "equivalence", "sources": sources, **settings}))
    return project


def _reference_tables(project_file: Path) -> dict[str, list[tuple]]:
    """What ``ingest_file`` makes of every file, row by row, as the stage's tables would hold it."""
    config = load_project(project_file)
    rows, quarantined = [], []
    for source in config.sources:
        for path in config.source_files(source):
            shown = path_for_uri(path, config.base_dir)
            for item in ingest_file(path, shown, source, None, config.ingest.max_record_bytes):  # type: ignore[arg-type]
                if isinstance(item, Quarantined):
                    quarantined.append(tuple(vars(item).values()))
                else:
                    rows.append(item)
    table = rows_to_table(rows).drop_columns(["ingested_at"])
    raw = [tuple(record.values()) for record in table.to_pylist()]
    return {"raw": sorted(raw, key=repr), "quarantine": sorted(quarantined, key=repr)}


@pytest.mark.parametrize("workers", [1, 2])
def test_the_stage_writes_what_the_row_by_row_reference_makes(tmp_path: Path, workers: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sources = _broken_files(data)
    require_shared_data()  # the counts below hold with the shared files
    for index, (relative, mapping, settings) in enumerate(_SHARED_SOURCES):
        path = str((SHARED_DATA / relative).resolve())
        sources.append({"name": f"shared{index}", "path": path, "mapping": mapping, "license": "MIT", **settings})
    project = _project(data, sources)
    stage = ingest_tables(project, tmp_path / "home", workers=workers, batch_rows=3)  # many chunks per file
    reference = _reference_tables(project)
    assert len(stage["raw"]) > 50 and len(stage["quarantine"]) >= 10
    assert stage == reference


@pytest.mark.parametrize("rows", [1, 2, 5, 1000])
def test_read_chunks_hold_the_records_read_records_reads(tmp_path: Path, rows: int) -> None:
    _broken_files(tmp_path)
    files = ["mixed.jsonl", "cut.jsonl.gz", "empty.jsonl", "array.json", "cut_array.json", "one.json"]
    for name, fmt in [(name, name.split(".")[1]) for name in files] + [
        ("table.csv", "csv"),
        ("table.parquet", "parquet"),
    ]:
        path = tmp_path / name
        chunks = list(read_chunks(path, fmt, 600, rows))
        assert all(len(chunk) <= rows + 1 for chunk in chunks) and chunks
        records = [record for chunk in chunks for record in chunk.records()]
        expected = list(read_records(path, fmt, 600, parse=False))
        if fmt == "json":  # elements are parsed again where they are mapped
            expected = [r if r.error is not None else type(r)(r.record_no, r.line_no, r.raw_text) for r in expected]
        assert records == expected, name
