"""A corpus of broken inputs: every record ends up as a row or in quarantine with a useful reason."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from curation.core.config import SourceConfig
from curation.core.schema import utcnow
from curation.ingest.sources import Quarantined, ingest_file


def run(path: Path, mapping: str = "alpaca", max_bytes: int = 10_000, **settings) -> tuple[list, list]:
    source = SourceConfig(name="broken", path=path.name, mapping=mapping, license="MIT", **settings)
    items = list(ingest_file(path, path.name, source, utcnow(), max_bytes))
    return ([i for i in items if not isinstance(i, Quarantined)], [i for i in items if isinstance(i, Quarantined)])


GOOD = {"instruction": "Name a prime number.", "input": "", "output": "Seven is a prime number."}


def write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b'{"instruction": "Name a prime', "invalid JSON"),
        (b'{"instruction": "What is 2+2?", "output": 4}', "must be a string, got int"),
        (b'{"instruction": "Translate hello."}', "missing required field 'output'"),
        (b'{"instruction": "  ", "output": ""}', "empty instruction"),
        (b'["not", "an", "object"]', "expected a JSON object"),
        (b'{"instruction": "Define caf\xe9.", "output": "A small restaurant."}', "undecodable bytes"),
        (json.dumps({"instruction": "Repeat.", "output": "x" * 20_000}).encode(), "oversized record"),
        (b'{"instruction": ["a", "list"], "output": "text"}', "must be a string, got list"),
    ],
)
def test_each_broken_record_is_quarantined_with_its_reason(tmp_path: Path, line: bytes, reason: str) -> None:
    path = write_lines(tmp_path / "data.jsonl", [json.dumps(GOOD).encode(), line, json.dumps(GOOD).encode()])
    rows, quarantined = run(path)
    assert len(rows) == 2, "the good records around the broken one are kept"
    assert len(quarantined) == 1
    entry = quarantined[0]
    assert reason in entry.error
    assert (entry.record_no, entry.line_no) == (2, 2)
    assert entry.source_uri == "data.jsonl#2"
    assert entry.raw_text, "the raw text is kept for inspection"


def test_undecodable_bytes_are_shown_not_lost(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", [b'{"instruction": "caf\xe9", "output": "x"}'])
    _, quarantined = run(path)
    assert "\\xe9" in quarantined[0].raw_text


def test_truncated_json_array_keeps_elements_before_the_damage(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, GOOD | {"instruction": "Name an even prime."}])[:-1] + ', {"instruction": "cut')
    rows, quarantined = run(path)
    assert len(rows) == 2
    assert len(quarantined) == 1 and "truncated" in quarantined[0].error
    assert quarantined[0].record_no == 3


def test_json_array_elements_carry_the_line_they_start_on(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, 42, GOOD, GOOD], indent=2))
    rows, quarantined = run(path)
    assert len(rows) == 3 and [(q.record_no, q.line_no) for q in quarantined] == [(2, 7)]
    path.write_text(json.dumps([GOOD, GOOD], indent=2) + "\n\nnot json")
    _, quarantined = run(path)
    assert [(q.record_no, q.line_no, q.error) for q in quarantined] == [
        (3, 12, "unexpected text after the closing ']'")
    ]


def test_json_array_with_a_bad_element_type(tmp_path: Path) -> None:
    path = tmp_path / "data.json"
    path.write_text(json.dumps([GOOD, 42, GOOD]))
    rows, quarantined = run(path)
    assert len(rows) == 2 and [q.record_no for q in quarantined] == [2]


def test_csv_with_wrong_field_count_and_bad_bytes(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_bytes(
        b'question,answer\n"What is up?","Not much."\n"only one field"\n"caf\xe9?","yes"\n'
        b'"Quoted, with comma","An ""answer"" here"\n'
    )
    rows, quarantined = run(path, fields={"instruction": "question", "output": "answer"})
    assert [r["messages"][1]["content"] for r in rows] == ["Not much.", 'An "answer" here']
    reasons = sorted(q.error.split(":")[0] for q in quarantined)
    assert reasons == ["row has 1 fields but the header has 2 (unbalanced quotes?)", "undecodable bytes"]


def test_truncated_gzip_quarantines_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl.gz"
    lines = (json.dumps(GOOD | {"instruction": f"Is {n * 7919 % 10007} prime? ({n})"}).encode() for n in range(2000))
    payload = gzip.compress(b"\n".join(lines) + b"\n")
    path.write_bytes(payload[: len(payload) // 2])
    rows, quarantined = run(path)
    assert rows, "records before the cut are read"
    assert len(quarantined) == 1 and "could not be read to the end" in quarantined[0].error


def test_unknown_role_in_sharegpt_names_the_turn(tmp_path: Path) -> None:
    path = tmp_path / "chat.json"
    turns = [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]
    path.write_text(json.dumps([{"conversations": turns}]))
    _, quarantined = run(path, mapping="sharegpt")
    assert "conversations[1].from is 'robot'" in quarantined[0].error


def test_every_record_accounted_for_in_a_mixed_corpus(tmp_path: Path) -> None:
    lines = []
    for index in range(50):
        if index % 7 == 3:
            lines.append(b'{"broken": ')
        elif index % 11 == 5:
            lines.append(b'{"instruction": "no output"}')
        else:
            lines.append(json.dumps(GOOD | {"instruction": f"Question {index}?"}).encode())
    path = write_lines(tmp_path / "mixed.jsonl", lines)
    rows, quarantined = run(path)
    record_numbers = sorted([int(r["source_uri"].split("#")[1]) for r in rows] + [q.record_no for q in quarantined])
    assert record_numbers == list(range(1, 51))


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    rows, quarantined = run(path)
    assert not rows and "unreadable Parquet" in quarantined[0].error


def test_parquet_source(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, GOOD | {"output": None}]), path)
    rows, quarantined = run(path)
    assert len(rows) == 1 and "missing required field 'output'" in quarantined[0].error
