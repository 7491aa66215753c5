"""Read source files into canonical rows; quarantine, with a reason, every record that cannot be read.

Reading is streaming for JSONL, CSV and Parquet. Bytes that are not UTF-8 are decoded with
``surrogateescape`` so that one bad byte costs one record (quarantined as undecodable), not the
file. A JSON array that is truncated keeps every element before the damage.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import pyarrow as pa

from curation.core.config import ProjectConfig, SourceConfig
from curation.core.schema import Row, content_key, make_row_id, new_row, rows_to_table, utcnow
from curation.core.warehouse import StagedWrite, canonical_ddl, quote, table_names
from curation.ingest.mappings import MAPPING_FUNCTIONS, RecordError

RAW_TEXT_LIMIT = 65_536
"""Quarantined raw text is kept up to this many characters (the rest is marked as cut)."""


@dataclass(frozen=True)
class Record:
    """One record as read from a file, parsed or not."""

    record_no: int  # 1-based position among the file's records
    line_no: int | None  # 1-based line where the record starts, when the format has lines
    raw_text: str
    value: Any = None
    error: str | None = None


@dataclass(frozen=True)
class Quarantined:
    source: str
    source_uri: str
    file: str
    record_no: int
    line_no: int | None
    error: str
    raw_text: str


def file_format(path: Path, declared: str | None) -> str:
    if declared:
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    if ext in ("json", "csv", "parquet"):
        return ext
    raise ValueError(f"{path}: cannot tell the format from the extension {ext!r}; set 'format' on the source")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_binary(path: Path) -> IO[bytes]:
    with path.open("rb") as probe:
        magic = probe.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")


def _has_undecodable(text: str) -> int | None:
    """Index of the first byte that was not valid UTF-8 (a lone surrogate after surrogateescape)."""
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return index
    return None


def _shown(text: str) -> str:
    """Raw text as stored in quarantine: bad bytes visible as \\xNN, long records cut."""
    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if len(shown) > RAW_TEXT_LIMIT:
        return shown[:RAW_TEXT_LIMIT] + f"… [cut: {len(shown)} characters in all]"
    return shown


def _check_text(text: str, max_bytes: int) -> str | None:
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > max_bytes:
        return (f"oversized record: {size} bytes, over ingest.max_record_bytes={max_bytes} "
                "(raise the limit in the project file if such records are expected)")
    bad = _has_undecodable(text)
    if bad is not None:
        return (f"undecodable bytes: not valid UTF-8 at character {bad + 1} of the record "
                "(re-encode the file as UTF-8)")
    return None


def _parse_json_record(text: str) -> tuple[Any, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"expected a JSON object per record, got {type(value).__name__}"
    return value, None


def read_jsonl(path: Path, max_bytes: int) -> Iterator[Record]:
    record_no = 0
    with _open_binary(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            text = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if not text.strip():
                continue
            record_no += 1
            error = _check_text(text, max_bytes)
            value = None
            if error is None:
                value, error = _parse_json_record(text)
            yield Record(record_no, line_no, text, value, error)


def read_json(path: Path, max_bytes: int) -> Iterator[Record]:
    """A JSON array of objects (or one object). Elements are decoded one by one, so a truncated
    file yields every element before the damage and one quarantined record for the rest."""
    with _open_binary(path) as handle:
        text = handle.read().decode("utf-8", "surrogateescape")
    decoder = json.JSONDecoder()
    position = len(text) - len(text.lstrip())
    if not text.startswith("[", position):
        yield from _single_json(text, max_bytes)
        return
    position += 1
    record_no = 0
    while True:
        position = _skip_separators(text, position)
        if position >= len(text):
            record_no += 1
            yield Record(record_no, text.count("\n", 0, position) + 1, "",
                         error="truncated JSON: the file ends before the closing ']' (was it cut off?)")
            return
        if text[position] == "]":
            trailing = text[position + 1:].strip()
            if trailing:
                record_no += 1
                yield Record(record_no, text.count("\n", 0, position) + 1, trailing,
                             error="unexpected text after the closing ']'")
            return
        record_no += 1
        line_no = text.count("\n", 0, position) + 1
        try:
            value, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            rest = text[position:]
            yield Record(record_no, line_no, rest,
                         error=f"invalid or truncated JSON at line {exc.lineno} column {exc.colno}: {exc.msg}; "
                               f"the rest of the file from here could not be read")
            return
        raw = text[position:end]
        error = _check_text(raw, max_bytes)
        if error is None and not isinstance(value, dict):
            error = f"expected a JSON object per record, got {type(value).__name__}"
        yield Record(record_no, line_no, raw, value if error is None else None, error)
        position = end


def _skip_separators(text: str, position: int) -> int:
    while position < len(text) and (text[position].isspace() or text[position] == ","):
        position += 1
    return position


def _single_json(text: str, max_bytes: int) -> Iterator[Record]:
    error = _check_text(text, max_bytes)
    value = None
    if error is None:
        value, error = _parse_json_record(text)
        if error:
            error += " (a .json source must hold an array of objects or one object)"
    yield Record(1, 1, text, value, error)


def read_csv(path: Path, max_bytes: int) -> Iterator[Record]:
    with _open_binary(path) as binary:
        stream = io.TextIOWrapper(binary, encoding="utf-8", errors="surrogateescape", newline="")
        reader = csv.reader(stream)
        try:
            header = next(reader)
        except StopIteration:
            return
        record_no = 0
        line_no = reader.line_num + 1
        for cells in reader:
            start_line, line_no = line_no, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue
            record_no += 1
            raw = ",".join(cells)
            error = _check_text(raw, max_bytes)
            value = None
            if error is None and len(cells) != len(header):
                error = f"row has {len(cells)} fields but the header has {len(header)} (unbalanced quotes?)"
            if error is None:
                value = dict(zip(header, cells, strict=True))
            yield Record(record_no, start_line, raw, value, error)


def read_parquet(path: Path, max_bytes: int) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for damaged files
        yield Record(1, None, "", error=f"unreadable Parquet file: {exc}")
        return
    record_no = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for value in batch.to_pylist():
            record_no += 1
            raw = json.dumps(value, ensure_ascii=False, default=str)
            error = _check_text(raw, max_bytes)
            yield Record(record_no, None, raw, value if error is None else None, error)


READERS = {"jsonl": read_jsonl, "json": read_json, "csv": read_csv, "parquet": read_parquet}


def read_records(path: Path, fmt: str, max_bytes: int) -> Iterator[Record]:
    try:
        yield from READERS[fmt](path, max_bytes)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield Record(0, None, "", error=f"file could not be read to the end: {exc}")


def ingest_file(path: Path, display_path: str, source: SourceConfig, ingested_at: datetime,
                max_bytes: int, counter: FileResult | None = None) -> Iterator[Row | Quarantined]:
    """Every record of one file becomes rows or a quarantine entry — never nothing. ``counter.records``
    counts the records read, independently of what became of them (the conservation check's input)."""
    fmt = file_format(path, source.format)
    mapping = MAPPING_FUNCTIONS[source.mapping]
    seen_content: dict[str, int] = {}
    for record in read_records(path, fmt, max_bytes):
        if counter is not None:
            counter.records += 1
        uri = f"{display_path}#{record.record_no}"
        error = record.error
        mapped = []
        if error is None:
            try:
                mapped = mapping(record.value, source.fields, source.options)
                annotator = _annotator(record.value, source)
            except RecordError as exc:
                error = str(exc)
        if error is not None:
            yield Quarantined(source.name, uri, display_path, record.record_no, record.line_no, error,
                              _shown(record.raw_text))
            continue
        for item in mapped:
            row = new_row(kind=source.kind or item.kind, messages=item.messages, chosen=item.chosen,
                          rejected=item.rejected, score=item.score, text=item.text)
            key = content_key(row)
            # The n-th identical record in a file gets its own id, stable under reordering.
            occurrence = seen_content.get(key, 0)
            seen_content[key] = occurrence + 1
            extra = dict(item.extra)
            if source.annotator_field:
                extra.pop(source.annotator_field, None)
            row.update(
                row_id=make_row_id(source.name, display_path, key, str(occurrence)),
                source=source.name,
                source_uri=f"{uri}/{item.part}" if item.part else uri,
                license=source.license,
                origin=item.origin or source.origin,
                generator=item.generator or source.generator,
                annotator=annotator,
                extra=extra or None,
                ingested_at=ingested_at,
            )
            yield row


def _annotator(value: Any, source: SourceConfig) -> str | None:
    if not source.annotator_field:
        return None
    annotator = value.get(source.annotator_field)
    return None if annotator is None else str(annotator)


QUARANTINE_DDL = ("source VARCHAR, source_uri VARCHAR, file VARCHAR, record_no BIGINT, line_no BIGINT, "
                  "error VARCHAR, raw_text VARCHAR, ingested_at TIMESTAMP")
INGESTED_FILES_DDL = ("source VARCHAR, file VARCHAR, sha256 VARCHAR, bytes BIGINT, records BIGINT, rows BIGINT, "
                      "quarantined BIGINT, ingested_at TIMESTAMP")
_QUARANTINE_SCHEMA = pa.schema([("source", pa.string()), ("source_uri", pa.string()), ("file", pa.string()),
                                ("record_no", pa.int64()), ("line_no", pa.int64()), ("error", pa.string()),
                                ("raw_text", pa.string()), ("ingested_at", pa.timestamp("us"))])


@dataclass
class FileResult:
    source: str
    file: str
    status: str  # "ingested", "unchanged" or "removed"
    records: int = 0
    rows: int = 0
    quarantined: int = 0


@dataclass
class IngestSummary:
    files: list[FileResult]

    @property
    def rows_added(self) -> int:
        return sum(f.rows for f in self.files if f.status == "ingested")

    @property
    def quarantined_added(self) -> int:
        return sum(f.quarantined for f in self.files if f.status == "ingested")


def path_for_uri(path: Path, base_dir: Path) -> str:
    """How a file is named in source_uri: relative to the project file when possible."""
    try:
        return path.resolve().relative_to(base_dir.resolve()).as_posix()
    except ValueError:
        return os.path.relpath(path.resolve(), base_dir.resolve()).replace(os.sep, "/")


def ingest_sources(project: ProjectConfig, staged: StagedWrite,
                   progress: Callable[[str], None] | None = None) -> IngestSummary:
    """Write new versions of ``raw``, ``quarantine`` and ``ingested_files`` into ``staged``.

    Files whose content hash was already ingested are carried over without being read again, so
    re-ingesting unchanged files adds nothing; changed files replace their previous rows; files
    that disappeared (or whose source was removed from the project file) leave the tables.
    """
    connection = staged.connection
    existing = table_names(connection)
    previous: dict[tuple[str, str], str] = {}
    if "ingested_files" in existing:
        previous = {(s, f): h for s, f, h in connection.execute(
            "SELECT source, file, sha256 FROM ingested_files").fetchall()}

    plan: list[tuple[SourceConfig, Path, str, str]] = []
    for source in project.sources:
        files = project.source_files(source)
        if not files:
            raise FileNotFoundError(f"source {source.name!r}: no file matches {source.path!r} "
                                    f"(relative to {project.base_dir}); fix 'path' in the project file")
        for path in files:
            plan.append((source, path, path_for_uri(path, project.base_dir), file_digest(path)))
    kept = [(s.name, shown) for s, _, shown, digest in plan if previous.get((s.name, shown)) == digest]
    current = {(s.name, shown) for s, _, shown, _ in plan}

    raw_table = staged.create("raw", canonical_ddl())
    quarantine_table = staged.create("quarantine", QUARANTINE_DDL)
    files_table = staged.create("ingested_files", INGESTED_FILES_DDL)
    results = [FileResult(s, f, "removed") for (s, f) in previous if (s, f) not in current]
    if kept:
        connection.register("_kept", pa.table({"source": [k[0] for k in kept], "file": [k[1] for k in kept]}))
        for table, staging in (("raw", raw_table), ("quarantine", quarantine_table),
                               ("ingested_files", files_table)):
            file_expr = "split_part(t.source_uri, '#', 1)" if table == "raw" else "t.file"
            connection.execute(f"INSERT INTO {staging} SELECT t.* FROM {quote(table)} t "
                               f"JOIN _kept k ON t.source = k.source AND {file_expr} = k.file")
        connection.unregister("_kept")
        results += [FileResult(s, f, "unchanged") for s, f in kept]

    ingested_at = utcnow()
    kept_set = set(kept)
    for source, path, shown, digest in plan:
        if (source.name, shown) in kept_set:
            continue
        if progress:
            progress(f"ingesting {source.name}: {shown}")
        result = FileResult(source.name, shown, "ingested")
        rows: list[Row] = []
        quarantined: list[dict[str, Any]] = []
        for item in ingest_file(path, shown, source, ingested_at, project.ingest.max_record_bytes, result):
            if isinstance(item, Quarantined):
                quarantined.append(vars(item) | {"ingested_at": ingested_at})
                result.quarantined += 1
            else:
                rows.append(item)
                result.rows += 1
            if len(rows) >= project.ingest.batch_rows:
                staged.append(raw_table, rows_to_table(rows))
                rows.clear()
        staged.append(raw_table, rows_to_table(rows))
        staged.append_rows(quarantine_table, quarantined, _QUARANTINE_SCHEMA)
        connection.execute(f"INSERT INTO {files_table} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [source.name, shown, digest, path.stat().st_size, result.records, result.rows,
                            result.quarantined, ingested_at])
        results.append(result)
    return IngestSummary(results)
