"""The readers stream. A JSON array is read through a sliding window, and every record, line number and
error must be exactly what reading the whole text at once gives (``_whole_text_read_json`` below is the
former whole-file reader, kept as the oracle); memory follows the largest record, not the file."""

from __future__ import annotations

import csv
import gzip
import json
import random
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from curation.ingest import readers
from curation.ingest.readers import Record, open_binary, read_csv, read_json, read_jsonl, read_parquet, read_records

GOOD = {"instruction": "Name a prime number.", "input": "", "output": "Seven is a prime number."}


def _whole_text_read_json(path: Path, max_bytes: int | None, skip_bom: bool = False) -> Iterator[Record]:
    with open_binary(path, skip_bom) as handle:
        text = handle.read().decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder()
    position = len(text) - len(text.lstrip())
    if not text.startswith("[", position):
        yield from readers._single_json(text, max_bytes)
        return
    position += 1
    record_no = 0
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ","):
            position += 1
        line_no = text.count("\n", 0, position) + 1
        if position >= len(text):
            error = "truncated JSON: the file ends before the closing ']' (was it cut off?)"
            yield Record(record_no + 1, line_no, "", error=error)
            return
        if text[position] == "]":
            trailing = text[position + 1 :].strip()
            if trailing:
                yield Record(record_no + 1, line_no, trailing, error="unexpected text after the closing ']'")
            return
        record_no += 1
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            yield Record(
                record_no,
                line_no,
                text[position:],
                error=f"invalid or truncated JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
                f"the rest of the file from here could not be read",
            )
            return
        raw = text[position:end]
        error = readers._text_error(raw, max_bytes)
        if error is None and not isinstance(value, dict):
            error = f"expected a JSON object per record, got {type(value).__name__}"
        yield Record(record_no, line_no, raw, value if error is None else None, error)
        position = end


def _outcome(reader: Callable[..., Iterator[Record]], path: Path, max_bytes: int | None, skip_bom: bool) -> list[str]:
    # repr, not ==: a NaN in a value never equals itself.
    try:
        return [repr(record) for record in reader(path, max_bytes, skip_bom)]
    except Exception as exc:  # the same failure (deep nesting, a damaged gzip) is part of the same outcome
        return [type(exc).__name__]


def _assert_reads_like_whole_text(path: Path, max_bytes: int | None = 10_000, skip_bom: bool = False) -> None:
    expected = _outcome(_whole_text_read_json, path, max_bytes, skip_bom)
    assert _outcome(read_json, path, max_bytes, skip_bom) == expected, path.read_bytes()[:500]


TRICKY = {
    "brackets": "a ] b [ c } d { e , f",
    "quotes": 'she said "no", then \\"maybe\\" \\',
    "newlines": "one\ntwo\r\nthree\u2028four",
    "unicode": "café ☃ 😀",
    "numbers": [0, -0.0, 1.5e-7, -2e300, 12345678901234567890],
    "nested": {"a": [[{"b": ["]"]}]]},
}
DOCUMENTS: dict[str, bytes] = {
    "compact": json.dumps([GOOD, TRICKY, GOOD]).encode(),
    "pretty": json.dumps([GOOD, TRICKY, {"deep": [TRICKY, [TRICKY]]}], indent=2).encode(),
    "unescaped unicode": json.dumps([TRICKY, GOOD], ensure_ascii=False, indent=1).encode("utf-8", "surrogatepass"),
    "raw escapes": b'[{"u": "\\u00e9\\ud83d\\ude00\\ud83d", "s": "\\/\\b\\f\\n\\r\\t"}]',
    "scalars": b'[42, -1.5e3, "text", true, null, NaN, -Infinity, [1, 2], {"ok": 1}]',
    "lenient separators": b'[,, {"a": 1} {"b": 2},,\n,{"c": 3},]',
    "bad bytes": b'[{"a": "caf\xe9"}, {"b": "\xe2\x82"}, {"c": "ok"}]\n',
    "bom": b'\xef\xbb\xbf[{"a": 1}]',
    "single object": b'  \n{"instruction": "alone", "output": "yes"}\n',
    "single scalar": b"\n\n 7",
    "empty array": b"[]",
    "spaced empty array": "\n \u3000 [ \n ] \n\t".encode(),
    "empty file": b"",
    "only whitespace": b" \n\n ",
    "trailing garbage": json.dumps([GOOD], indent=2).encode() + b"\n\n not json \n",
    "trailing array": b'[{"a": 1}]\n[{"b": 2}]',
    "truncated": json.dumps([GOOD, GOOD], indent=2).encode()[:-30],
    "missing colon mid array": b'[{"a": 1},\n {"b" 2},\n {"c": 3}]',
    "string eats the rest": b'[{"a": 1}, {"b": "x}, {"c": 3}]',
    "unterminated string": b'[{"a": 1}, {"b": "never closed',
    "bad escape": b'[{"a": "\\x"}, {"b": 1}]',
    "short unicode escape": b'[{"a": "\\u12"}]',
    "control character": b'[{"a": "tab\there"}]',
    "oversized": json.dumps([GOOD, {"output": "x" * 20_000}, GOOD]).encode(),
    "unclosed after records": b'[{"a": 1}\n\n',
}


@pytest.mark.parametrize("chunk_bytes", [1, 3, 32, 1 << 20])
@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_reads_exactly_like_the_whole_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, chunk_bytes: int
) -> None:
    monkeypatch.setattr(readers, "_CHUNK_BYTES", chunk_bytes)
    path = tmp_path / "data.json"
    path.write_bytes(DOCUMENTS[name])
    for skip_bom in (False, True):
        _assert_reads_like_whole_text(path, skip_bom=skip_bom)
    gzipped = tmp_path / "data.json.gz"
    gzipped.write_bytes(gzip.compress(DOCUMENTS[name]))
    _assert_reads_like_whole_text(gzipped)


@pytest.mark.parametrize("chunk_bytes", [1, 7])
def test_every_truncation_reads_like_the_whole_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk_bytes: int
) -> None:
    monkeypatch.setattr(readers, "_CHUNK_BYTES", chunk_bytes)
    document = json.dumps([TRICKY, 1.5e-7, "s", {}], ensure_ascii=False, indent=1).encode("utf-8", "surrogatepass")
    path = tmp_path / "data.json"
    for cut in range(len(document) + 1):
        path.write_bytes(document[:cut])
        _assert_reads_like_whole_text(path, max_bytes=60)


def test_random_damage_reads_like_the_whole_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(20240601)
    pieces = [*'[]{}",:\\ \n\r0123456789eE+-.NInaulrt', "é", "\u2028", "\xa0"]
    path = tmp_path / "data.json"
    for _ in range(300):
        elements = [rng.choice([GOOD, TRICKY, 42, "s", [1, [2]], None]) for _ in range(rng.randint(0, 4))]
        data = bytearray(json.dumps(elements, indent=rng.choice([None, 2])).encode())
        for _ in range(rng.randint(1, 4)):
            at = rng.randint(0, len(data))
            damage = rng.random()
            if damage < 0.3:
                del data[at : at + rng.randint(1, 3)]
            elif damage < 0.85:
                data[at:at] = rng.choice(pieces).encode()
            else:
                data[at:at] = bytes([rng.randint(0x80, 0xFF)])
        path.write_bytes(bytes(data))
        for chunk_bytes in (1, 5, 1 << 20):
            monkeypatch.setattr(readers, "_CHUNK_BYTES", chunk_bytes)
            _assert_reads_like_whole_text(path, max_bytes=rng.choice([None, 40, 10_000]))


def _generated_record(index: int) -> dict[str, object]:
    return {
        "id": index,
        "instruction": f'Question {index}: what is in [brackets] and {{braces}}, or a "quote"?',
        "output": f"Answer {index * 7919 % 10007}.\nA second line ] with a bracket. " * 2,
    }


@pytest.mark.slow
def test_a_large_array_streams_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "large.json"
    count = 200_000
    sampled = {1, 2, 10, 11, 99_999, 100_000, 150_001, count}
    expected_lines: dict[int, int] = {}
    line = 1
    with path.open("w", encoding="utf-8") as handle:
        handle.write("[\n")
        line += 1
        for index in range(1, count + 1):
            # Every tenth record pretty-printed, so that records span different numbers of lines.
            text = json.dumps(_generated_record(index), indent=2 if index % 10 == 0 else None)
            if index in sampled:
                expected_lines[index] = line
            handle.write(text + (",\n" if index < count else "\n]\n"))
            line += text.count("\n") + 1
    size = path.stat().st_size
    assert size > 30_000_000

    tracemalloc.start()
    try:
        seen = 0
        for record in read_json(path, max_bytes=10_000):
            seen += 1
            assert record.error is None
            if record.record_no in sampled:
                assert record.line_no == expected_lines[record.record_no]
                assert record.value == _generated_record(record.record_no)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == count
    assert peak < size / 5, f"peak {peak} bytes while reading a {size}-byte file"


def test_pretty_printed_records_carry_the_line_they_start_on(tmp_path: Path) -> None:
    elements = [GOOD, {"nested": {"list": [1, 2, {"deep": "]"}]}}, TRICKY, GOOD]
    path = tmp_path / "pretty.json"
    path.write_text(json.dumps(elements, indent=2), encoding="utf-8")
    lines = path.read_text(encoding="utf-8").split("\n")
    # With indent=2 every element starts on a line of its own that begins with two spaces and a brace.
    starts = [number for number, text in enumerate(lines, start=1) if text.startswith("  {")]
    records = list(read_json(path, max_bytes=None))
    assert [(r.record_no, r.line_no) for r in records] == list(enumerate(starts, start=1))
    assert [r.value for r in records] == elements
    assert [r.raw_text for r in records] == [json.dumps(e, indent=2).replace("\n", "\n  ") for e in elements]


def test_strings_with_brackets_quotes_and_newlines_are_one_record_each(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(readers, "_CHUNK_BYTES", 4)
    elements = [
        {"a": "[", "b": "]]]", "c": "{{"},
        {"quote": 'a "quoted" ] word', "backslash": "C:\\dir\\", "escaped": '\\"'},
        {"text": "line one\nline two\n]\n}", "tab": "\t"},
    ]
    path = tmp_path / "strings.json"
    path.write_text(json.dumps(elements), encoding="utf-8")
    records = list(read_json(path, max_bytes=None))
    assert [(r.record_no, r.line_no, r.error) for r in records] == [(1, 1, None), (2, 1, None), (3, 1, None)]
    assert [r.value for r in records] == elements
    assert [r.raw_text for r in records] == [json.dumps(e) for e in elements]


def test_a_malformed_record_mid_array_stops_the_file_where_it_is(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"a": 1},\n  {"b": 2 "c": 3},\n  {"d": 4}\n]\n', encoding="utf-8")
    records = list(read_json(path, max_bytes=None))
    assert records[0] == Record(1, 2, '{"a": 1}', {"a": 1})
    # Where the decoder gave up, nothing after it can be trusted: the rest of the file is one record.
    assert records[1:] == [
        Record(
            2,
            3,
            '{"b": 2 "c": 3},\n  {"d": 4}\n]\n',
            error="invalid or truncated JSON at line 3 column 11: Expecting ',' delimiter; "
            "the rest of the file from here could not be read",
        )
    ]


def test_a_long_tail_is_cut_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(readers, "_TAIL_LIMIT", 10)
    monkeypatch.setattr(readers, "_CHUNK_BYTES", 3)
    note = " (the raw text keeps its first 10 characters)"
    path = tmp_path / "data.json"
    path.write_text('[{"a": 1}] garbage that goes on and on\n', encoding="utf-8")
    assert list(read_json(path, max_bytes=None))[1:] == [
        Record(2, 1, "garbage th", error="unexpected text after the closing ']'" + note)
    ]
    path.write_text('[{"a": 1}]   short   ' + " " * 50 + "\n" * 50, encoding="utf-8")
    assert list(read_json(path, max_bytes=None))[1:] == [
        Record(2, 1, "short", error="unexpected text after the closing ']'")
    ]
    path.write_text('[{"a": 1}, {"b" 2}, {"c": 3}, {"d": 4}]', encoding="utf-8")
    broken = list(read_json(path, max_bytes=None))[1]
    assert (broken.record_no, broken.raw_text) == (2, '{"b" 2}, {')
    assert broken.error is not None and broken.error.endswith("could not be read" + note)


def test_a_truncated_gzip_keeps_the_records_before_the_cut(tmp_path: Path) -> None:
    elements = [GOOD | {"instruction": f"Is {n * 7919 % 10007} prime? ({n})"} for n in range(5000)]
    payload = gzip.compress(json.dumps(elements).encode())
    path = tmp_path / "data.json.gz"
    path.write_bytes(payload[: len(payload) // 2])
    records = list(read_records(path, "json", max_bytes=None))
    assert records[-1].record_no == 0 and "could not be read to the end" in (records[-1].error or "")
    read = records[:-1]
    assert read and [r.record_no for r in read] == list(range(1, len(read) + 1))
    assert [r.value for r in read] == elements[: len(read)]


@pytest.mark.parametrize(
    "text",
    ["", "plain ascii", "café ☃ 😀", "bad \udce9 byte", "\udcff at the start", "x" * 50, "é" * 30],
)
def test_the_quick_text_check_matches_the_character_scan(text: str) -> None:
    size = len(text.encode("utf-8", "surrogateescape"))
    bad = next((i for i, char in enumerate(text) if "\udc80" <= char <= "\udcff"), None)
    for max_bytes in (None, 40):
        error = readers._text_error(text, max_bytes)
        if max_bytes is not None and size > max_bytes:
            assert error is not None and error.startswith(f"oversized record: {size} bytes")
        elif bad is not None:
            assert error == (
                f"undecodable bytes: not valid UTF-8 at character {bad + 1} of the record (re-encode the file as UTF-8)"
            )
        else:
            assert error is None


def _write_jsonl(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for index in range(count):
            handle.write(json.dumps(_generated_record(index)) + "\n")


def _write_csv(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "instruction", "output"])
        for index in range(count):
            writer.writerow(_generated_record(index).values())


@pytest.mark.parametrize(("reader", "write"), [(read_jsonl, _write_jsonl), (read_csv, _write_csv)])
def test_line_formats_stream_in_bounded_memory(
    tmp_path: Path,
    reader: Callable[[Path, int | None], Iterator[Record]],
    write: Callable[[Path, int], None],
) -> None:
    path = tmp_path / "data"
    write(path, 50_000)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        count = sum(1 for record in reader(path, 10_000) if record.error is None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 50_000
    assert peak < size / 5, f"peak {peak} bytes while reading a {size}-byte file"


def test_parquet_is_read_batch_by_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "data.parquet"
    rows = [{"instruction": f"Question {n}?", "output": f"Answer {n}."} for n in range(5000)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=700)

    def whole_table(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole table was read at once")

    monkeypatch.setattr(pq.ParquetFile, "read", whole_table)
    monkeypatch.setattr(pq, "read_table", whole_table)
    records = list(read_parquet(path, None))
    assert [r.record_no for r in records] == list(range(1, 5001))
    assert [r.value for r in records] == rows
