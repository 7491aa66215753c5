"""Ingest the project's sources into ``raw``: every record read (:mod:`curation.ingest.readers`) becomes
canonical rows through its source's mapping (:mod:`curation.ingest.mappings`) or, with the reason, a
``quarantine`` entry; ``ingested_files`` remembers each file's hash and the fingerprint of the settings it was
read with (:mod:`curation.ingest.settings`), so a file is read again only when one of the two changed.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from curation.core.config import ProjectConfig, SourceConfig
from curation.core.memo import stage_kept_rows
from curation.core.parallel import gc_paused, map_ordered, warm_up, workers_for
from curation.core.schema import ARROW_SCHEMA, COLUMNS, Row, content_key, make_row_id, new_row, utcnow
from curation.core.warehouse import (
    StagedWrite,
    canonical_ddl,
    fetch_one,
    quote,
    source_file_sql,
    table_columns,
    table_names,
)
from curation.ingest.digests import source_digests
from curation.ingest.encoding import COLUMN_JSON, content_json
from curation.ingest.files import project_files
from curation.ingest.mappings import Mapped, RecordError, mapping_spec
from curation.ingest.readers import (
    Record,
    RecordChunk,
    Resume,
    appended_jsonl,
    file_format,
    file_kind,
    format_from_extension,
    parse_record,
    parse_text,
    read_chunks,
    read_records,
)
from curation.ingest.settings import settings_fingerprint

_PRELOAD = ("curation.ingest.sources",)
"""What the parsing workers start with."""
BYTES_PER_RECORD_ESTIMATE = 1_000
"""Files are not counted before they are read: their size over this guesses the rows, to decide whether
worker processes would repay their start."""

APPEND_ROWS = 20_000
"""Rows per insert into the staged ``raw`` table."""

RAW_TEXT_LIMIT = 65_536
"""Quarantined raw text is kept up to this many characters (the rest is marked as cut)."""


def _shown(text: str) -> str:
    """Raw text as stored in quarantine: bad bytes visible as \\xNN, long records cut."""
    shown = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    if len(shown) > RAW_TEXT_LIMIT:
        return shown[:RAW_TEXT_LIMIT] + f"… [cut: {len(shown)} characters in all]"
    return shown


@dataclass(frozen=True)
class Quarantined:
    """A record that could not become rows, with where it is and why (a row of ``quarantine``)."""

    source: str
    source_uri: str
    file: str
    record_no: int
    line_no: int | None
    error: str
    raw_text: str


@dataclass(frozen=True)
class FileTask:
    """What mapping one file's records needs: picklable, so worker processes map chunks of it."""

    source: SourceConfig
    display_path: str
    ingested_at: datetime
    max_bytes: int
    options: Any = None  # the mapping's parsed options (validated when the project file was loaded)

    @classmethod
    def of(cls, source: SourceConfig, display_path: str, ingested_at: datetime, max_bytes: int) -> FileTask:
        options = mapping_spec(source.mapping).parse_options(source.options)
        return cls(source, display_path, ingested_at, max_bytes, options)


def map_record(record: Record, task: FileTask) -> list[Row] | Quarantined:
    """One record's canonical rows (without ``row_id``: see :class:`RowNumbering`) or its quarantine entry."""
    source = task.source
    record = parse_record(record, task.max_bytes)
    uri = f"{task.display_path}#{record.record_no}"
    error = record.error
    mapped = []
    if error is None:
        try:
            mapped = mapping_spec(source.mapping).map(record.value, source.fields, task.options)
            annotator = _annotator(record.value, source)
        except RecordError as exc:
            error = str(exc)
    if error is not None:
        return Quarantined(
            source.name, uri, task.display_path, record.record_no, record.line_no, error, _shown(record.raw_text)
        )
    rows = []
    for item in mapped:
        row = new_row(
            kind=source.kind or item.kind,
            messages=item.messages,
            chosen=item.chosen,
            rejected=item.rejected,
            score=item.score,
            text=item.text,
        )
        extra = dict(item.extra)
        if source.annotator_field:
            extra.pop(source.annotator_field, None)
        row.update(
            source=source.name,
            source_uri=f"{uri}/{item.part}" if item.part else uri,
            license=source.license,
            origin=item.origin or source.origin,
            generator=item.generator or source.generator,
            annotator=annotator,
            extra=extra or None,
            ingested_at=task.ingested_at,
        )
        rows.append(row)
    return rows


class RowNumbering:
    """Row ids of one file, in record order: source, file and content, plus which identical copy in the
    file this is, so the n-th identical record gets its own id, stable under reordering. Holds a 16-byte
    digest per distinct content of the file, not the content. :func:`first_copy` (the hashing, done where
    the rows are mapped) gives the digest and the id of a first copy; :meth:`row_id` numbers the copies."""

    def __init__(self, source: str, display_path: str) -> None:
        self.source = source
        self.display_path = display_path
        self._seen: dict[bytes, int] = {}

    def row_id(self, key: str, digest: bytes, first_id: str) -> str:
        occurrence = self._seen.get(digest, 0)
        self._seen[digest] = occurrence + 1
        return first_id if occurrence == 0 else make_row_id(self.source, self.display_path, key, str(occurrence))

    def count_earlier(
        self, rows: pa.Table, digests: list[bytes], keys: pa.Array, present: Callable[[list[str]], set[str]]
    ) -> None:
        """Before numbering a chunk of the records a file gained by appending: for each content in the chunk
        not seen yet, count its copies among the file's earlier records, which ``raw`` holds under the ids
        :meth:`row_id` gave them (``present``: which of some ids it holds). The first copy's id, then the
        second's, and so on while present: the records added then get the ids a reading of the whole file
        gives them."""
        ids = rows.column("row_id").to_pylist()
        unseen: dict[bytes, int] = {}
        for index, digest in enumerate(digests):
            if digest not in self._seen:
                unseen.setdefault(digest, index)
        probes = {digest: ids[index] for digest, index in unseen.items()}
        copies = 0
        while probes:
            found = present(list(probes.values()))
            copies += 1
            probes = {
                digest: make_row_id(self.source, self.display_path, keys[unseen[digest]].as_py(), str(copies))
                for digest, probe in probes.items()
                if probe in found
            }
            for digest in probes:
                self._seen[digest] = copies

    def number(self, rows: pa.Table, digests: list[bytes], keys: pa.Array) -> pa.Table:
        """:meth:`row_id` over a :class:`MappedChunk`: ``rows`` with the ids of later copies in place of the
        first copy's (most chunks have none, and come back as they are)."""
        seen = self._seen
        later = []
        for index, digest in enumerate(digests):
            occurrence = seen.get(digest, 0)
            seen[digest] = occurrence + 1
            if occurrence:
                later.append((index, occurrence))
        if not later:
            return rows
        ids = rows.column("row_id").to_pylist()
        for index, occurrence in later:
            ids[index] = make_row_id(self.source, self.display_path, keys[index].as_py(), str(occurrence))
        return rows.set_column(0, "row_id", pa.array(ids, pa.string()))


def first_copy(source: str, display_path: str, key: str) -> tuple[bytes, str]:
    """The digest :class:`RowNumbering` counts copies by, and the id of the first copy of ``key``: both cut from
    the one hash that ``make_row_id(source, display_path, key, "0")`` is (its first 16 bytes, and its first
    10 in hex, which is that id)."""
    digest = hashlib.sha256("\x1f".join((source, display_path, key, "0")).encode("utf-8")).digest()
    return digest[:16], digest[:10].hex()


def ingest_file(
    path: Path,
    display_path: str,
    source: SourceConfig,
    ingested_at: datetime,
    max_bytes: int,
    counter: FileResult | None = None,
) -> Iterator[Row | Quarantined]:
    """Every record of one file becomes rows or a quarantine entry — never nothing, in record order.
    ``counter.records`` counts the records read, independently of what became of them (the conservation
    check's input). The stage itself maps chunks in worker processes (:func:`ingest_sources`)."""
    task = FileTask.of(source, display_path, ingested_at, max_bytes)
    numbering = RowNumbering(source.name, display_path)
    for record in read_records(path, file_format(path, source.format), max_bytes):
        if counter is not None:
            counter.records += 1
        item = map_record(record, task)
        if isinstance(item, Quarantined):
            yield item
            continue
        for row in item:
            key = content_key(row)
            row["row_id"] = numbering.row_id(key, *first_copy(source.name, display_path, key))
            yield row


@dataclass
class MappedChunk:
    """A chunk of a file's records mapped in a worker: rows in Arrow (``row_id`` holds the id of a first copy,
    :func:`first_copy`), each row's content digest and content key (:class:`RowNumbering` needs the key of a
    later copy only), and the quarantine entries."""

    file: tuple[str, str]  # source name, display path
    rows: pa.Table
    digests: list[bytes]
    keys: pa.Array
    quarantined: list[dict[str, Any]]
    records: int


class _ChunkRows:
    """The rows of one chunk of a file, built column by column: what :func:`map_record` and
    :func:`~curation.core.schema.rows_to_table` make of the same records, without a row dict per row
    (tests check the two agree on every mapping and on broken input)."""

    def __init__(self, task: FileTask) -> None:
        self.task = task
        self.kinds: list[str] = []
        self.json: dict[str, list[str | None]] = {"messages": [], "chosen": [], "rejected": [], "extra": []}
        self.scores: list[float | None] = []
        self.texts: list[str | None] = []
        self.uris: list[str] = []
        self.origins: list[str | None] = []
        self.generators: list[str | None] = []
        self.annotators: list[str | None] = []
        self.keys: list[str] = []

    def add(self, item: Mapped, uri: str, annotator: str | None) -> None:
        source = self.task.source
        kind = source.kind or item.kind
        key, messages, chosen, rejected = content_json(
            kind, item.messages, item.chosen, item.rejected, item.score, item.text
        )
        self.keys.append(key)
        self.kinds.append(kind)
        self.json["messages"].append(messages)
        self.json["chosen"].append(chosen)
        self.json["rejected"].append(rejected)
        extra = dict(item.extra)
        if source.annotator_field:
            extra.pop(source.annotator_field, None)
        self.json["extra"].append(COLUMN_JSON(extra) if extra else None)
        self.scores.append(item.score)
        self.texts.append(item.text)
        self.uris.append(f"{uri}/{item.part}" if item.part else uri)
        self.origins.append(item.origin or source.origin)
        self.generators.append(item.generator or source.generator)
        self.annotators.append(annotator)

    def table(self) -> tuple[pa.Table, list[bytes]]:
        """The rows in :data:`~curation.core.schema.ARROW_SCHEMA` (ids of first copies) and their digests."""
        task, count = self.task, len(self.keys)
        digests, first_ids = _first_copies(task.source.name, task.display_path, self.keys)
        columns: dict[str, Any] = {
            "row_id": first_ids,
            "kind": self.kinds,
            **self.json,
            "score": self.scores,
            "text": self.texts,
            "source": [task.source.name] * count,
            "source_uri": self.uris,
            "license": [task.source.license] * count,
            "origin": self.origins,
            "generator": self.generators,
            "annotator": self.annotators,
            "ingested_at": [task.ingested_at] * count,
        }
        arrays = [pa.array(columns[field.name], field.type) for field in ARROW_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=ARROW_SCHEMA), digests


def _first_copies(source: str, display_path: str, keys: list[str]) -> tuple[list[bytes], list[str]]:
    """:func:`first_copy` of each key: the part of the hashed text before the key is hashed once, and the hash
    state copied for each key."""
    prefix = hashlib.sha256(f"{source}\x1f{display_path}\x1f".encode())
    digests, ids = [], []
    for key in keys:
        state = prefix.copy()
        state.update(key.encode("utf-8"))
        state.update(b"\x1f0")
        digest = state.digest()
        digests.append(digest[:16])
        ids.append(digest[:10].hex())
    return digests, ids


@gc_paused
def map_chunk(work: tuple[FileTask, RecordChunk]) -> MappedChunk:
    """A chunk of records (:func:`~curation.ingest.readers.read_chunks`) parsed and mapped: what
    :func:`map_record` does record by record, for the whole chunk in the columns of its table."""
    task, chunk = work
    source = task.source
    spec = mapping_spec(source.mapping)
    rows = _ChunkRows(task)
    quarantined: list[dict[str, Any]] = []
    columns = (chunk.record_nos, chunk.line_nos, chunk.raw_texts, chunk.values, chunk.errors)
    for record_no, line_no, raw_text, value, error in zip(*columns, strict=True):
        if value is None and error is None:
            value, error = parse_text(raw_text, task.max_bytes)
        uri = f"{task.display_path}#{record_no}"
        if error is None:
            try:
                mapped = spec.map(value, source.fields, task.options)
                annotator = _annotator(value, source)
            except RecordError as exc:
                error = str(exc)
        if error is not None:
            entry = Quarantined(source.name, uri, task.display_path, record_no, line_no, error, _shown(raw_text))
            quarantined.append(vars(entry) | {"ingested_at": task.ingested_at})
            continue
        for item in mapped:
            rows.add(item, uri, annotator)
    table, digests = rows.table()
    keys = pa.array(rows.keys, pa.large_string())
    return MappedChunk((source.name, task.display_path), table, digests, keys, quarantined, len(chunk))


def _annotator(value: Any, source: SourceConfig) -> str | None:
    if not source.annotator_field:
        return None
    annotator = value.get(source.annotator_field)
    return None if annotator is None else str(annotator)


QUARANTINE_DDL = (
    "source VARCHAR, source_uri VARCHAR, file VARCHAR, record_no BIGINT, line_no BIGINT, "
    "error VARCHAR, raw_text VARCHAR, ingested_at TIMESTAMP"
)
INGESTED_FILES_DDL = (
    "source VARCHAR, file VARCHAR, sha256 VARCHAR, bytes BIGINT, records BIGINT, rows BIGINT, "
    "quarantined BIGINT, ingested_at TIMESTAMP, settings VARCHAR"
)
INGESTED_FILES_COLUMNS = "source, file, sha256, bytes, records, rows, quarantined, ingested_at, settings"
"""``settings``: the :func:`~curation.ingest.settings.settings_fingerprint` the file was read with (NULL in
warehouses written before it was kept: their files are read again once)."""
_QUARANTINE_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("source_uri", pa.string()),
        ("file", pa.string()),
        ("record_no", pa.int64()),
        ("line_no", pa.int64()),
        ("error", pa.string()),
        ("raw_text", pa.string()),
        ("ingested_at", pa.timestamp("us")),
    ]
)


@dataclass
class FileResult:
    source: str
    file: str
    status: str  # "ingested", "unchanged" or "removed"
    records: int = 0
    rows: int = 0
    quarantined: int = 0
    reason: str = ""  # why an ingested file was read: new file, file changed, settings or mapping code changed


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


@dataclass(frozen=True)
class _Previous:
    """A file's ``ingested_files`` entry: what its last ingestion read."""

    sha256: str
    settings: str | None
    bytes: int
    records: int
    rows: int
    quarantined: int


def ingest_sources(
    project: ProjectConfig, staged: StagedWrite, progress: Callable[[str], None] | None = None
) -> IngestSummary:
    """Write new versions of ``raw``, ``quarantine`` and ``ingested_files`` into ``staged``.

    Files whose content hash was already ingested with the same settings (the source's
    :func:`~curation.ingest.settings.settings_fingerprint`) are carried over without being read again, so
    re-ingesting unchanged files adds nothing. A JSONL file that only grew by appending lines is read from
    where the last ingestion stopped (:func:`~curation.ingest.readers.appended_jsonl`): its rows and
    quarantine entries are those a reading of the whole file gives, numbered on. Other changed files, and
    every file of a source whose settings changed, replace their previous rows (a record they still hold
    keeps the time it was first ingested); files that disappeared (or whose source was removed from the
    project file) leave the tables. ``raw`` is patched in place when this changes little of it
    (:func:`~curation.core.memo.stage_kept_rows`), else written anew.
    """
    connection = staged.connection
    existing = table_names(connection)
    previous: dict[tuple[str, str], _Previous] = {}
    failed: set[tuple[str, str]] = set()  # files whose last reading ended early (a record numbered 0)
    if "ingested_files" in existing:
        # Warehouses written before the settings were kept have no column: NULL reads their files again once.
        has_settings = "settings" in dict(table_columns(connection, "ingested_files"))
        settings_column = "settings" if has_settings else "NULL"
        previous = {
            (s, f): _Previous(h, fp, b or 0, r or 0, n or 0, q or 0)
            for s, f, h, fp, b, r, n, q in connection.execute(
                f"SELECT source, file, sha256, {settings_column}, bytes, records, rows, quarantined FROM ingested_files"
            ).fetchall()
        }
    if "quarantine" in existing:
        failed = set(connection.execute("SELECT DISTINCT source, file FROM quarantine WHERE record_no = 0").fetchall())
    fingerprints = {source.name: settings_fingerprint(project, source) for source in project.sources}

    planned = project_files(project)
    for source in project.sources:
        if not any(p.source is source for p in planned):
            raise FileNotFoundError(
                f"source {source.name!r}: no file matches {source.path!r} "
                f"(relative to {project.base_dir}); fix 'path' in the project file"
            )
    read_by = {(p.source.name, p.path): p.read_by for p in planned}
    if not previous:  # every file is read: the parsing workers' server starts while the files are hashed
        everything = sum(_size(p.path) for p in planned) // BYTES_PER_RECORD_ESTIMATE
        warm_up(_PRELOAD, everything, workers_for(everything, project.compute.workers))
    digests = source_digests(p.path for p in planned if not p.read_by)
    plan: list[tuple[SourceConfig, Path, str, str]] = [
        (
            p.source,
            p.path,
            path_for_uri(p.path, project.base_dir),
            f"read by source {p.read_by}" if p.read_by else digests[p.path],
        )
        for p in planned
    ]
    kept = [
        (s.name, shown)
        for s, _, shown, digest in plan
        if (before := previous.get((s.name, shown))) is not None
        and (before.sha256, before.settings) == (digest, fingerprints[s.name])
    ]
    current = {(s.name, shown) for s, _, shown, _ in plan}
    kept_set = set(kept)
    todo = [
        (source, path, shown, digest) for source, path, shown, digest in plan if (source.name, shown) not in kept_set
    ]
    resumes: dict[tuple[str, str], Resume] = {}
    for source, path, shown, _ in todo:
        before = previous.get((source.name, shown))
        if (
            before is not None
            and before.settings == fingerprints[source.name]
            and (source.name, shown) not in failed
            and read_by[source.name, path] is None
            and file_format(path, source.format) == "jsonl"
            and (resume := appended_jsonl(path, before.bytes, before.sha256, before.records)) is not None
        ):
            resumes[source.name, shown] = resume
    staying = [*kept, *resumes]  # files whose current rows stay in the new version

    raw_table = _stage_raw(staged, "raw" in existing, staying, previous, todo, resumes)
    quarantine_table = staged.create("quarantine", QUARANTINE_DDL)
    files_table = staged.create("ingested_files", INGESTED_FILES_DDL)
    results = [FileResult(s, f, "removed") for (s, f) in previous if (s, f) not in current]
    if staying:
        connection.register("_staying", _file_table(staying))
        connection.register("_kept", _file_table(kept))
        for table, staging, files in (
            ("quarantine", quarantine_table, "_staying"),
            ("ingested_files", files_table, "_kept"),  # a grown file gets a new entry
        ):
            # A kept file's ingested_files row has the settings column (without it, no file is kept).
            columns = (
                "t.*" if table != "ingested_files" else ", ".join(f"t.{c}" for c in INGESTED_FILES_COLUMNS.split(", "))
            )
            connection.execute(
                f"INSERT INTO {staging} SELECT {columns} FROM {quote(table)} t "
                f"JOIN {files} k ON t.source = k.source AND t.file = k.file"
            )
        connection.unregister("_staying")
        connection.unregister("_kept")
        results += [FileResult(s, f, "unchanged") for s, f in kept]

    ingested_at = utcnow()
    chunk_rows = project.ingest.batch_rows
    reasons = {
        (source.name, shown): _why_read(previous.get((source.name, shown)), digest, resumes.get((source.name, shown)))
        for source, _, shown, digest in todo
    }

    def chunks() -> Iterator[tuple[FileTask, RecordChunk]]:
        for source, path, shown, _ in todo:
            if progress:
                progress(f"ingesting {source.name}: {shown} ({reasons[source.name, shown]})")
            task = FileTask.of(source, shown, ingested_at, project.ingest.max_record_bytes)
            resume = resumes.get((source.name, shown))
            for chunk in _file_chunks(source, path, read_by[source.name, path], task.max_bytes, chunk_rows, resume):
                yield task, chunk

    # Reading is sequential; parsing, mapping and encoding (most of the work) run in the workers.
    total_bytes = sum(_size(path) - _resumed_at(resumes.get((s.name, shown))) for s, path, shown, _ in todo)
    workers = workers_for(total_bytes // BYTES_PER_RECORD_ESTIMATE, project.compute.workers)
    file_digests = {(source.name, shown): (path, digest) for source, path, shown, digest in todo}
    mapped_chunks = map_ordered(map_chunk, chunks(), workers, preload=_PRELOAD)

    with staged.appending():
        for (source_name, shown), file_chunks in itertools.groupby(mapped_chunks, key=lambda m: m.file):
            path, digest = file_digests[source_name, shown]
            result = FileResult(source_name, shown, "ingested", reason=reasons[source_name, shown])
            resume = resumes.get((source_name, shown))
            earlier = None
            if resume is not None:  # the counts go on from what the earlier records gave
                before = previous[source_name, shown]
                result.records, result.rows, result.quarantined = before.records, before.rows, before.quarantined
                earlier = _EarlierIds(connection, source_name, shown)
            numbering = RowNumbering(source_name, shown)
            pending: list[pa.Table] = []  # DuckDB inserts large batches several times faster than small ones
            for mapped in file_chunks:
                if earlier is not None:
                    numbering.count_earlier(mapped.rows, mapped.digests, mapped.keys, earlier.present)
                pending.append(numbering.number(mapped.rows, mapped.digests, mapped.keys))
                if sum(t.num_rows for t in pending) >= APPEND_ROWS:
                    staged.append(raw_table, pa.concat_tables(pending))
                    pending.clear()
                staged.append_rows(quarantine_table, mapped.quarantined, _QUARANTINE_SCHEMA)
                result.records += mapped.records
                result.rows += mapped.rows.num_rows
                result.quarantined += len(mapped.quarantined)
            if pending:
                staged.append(raw_table, pa.concat_tables(pending))
            connection.execute(
                f"INSERT INTO {files_table} ({INGESTED_FILES_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    result.source,
                    result.file,
                    digest,
                    _size(path),
                    result.records,
                    result.rows,
                    result.quarantined,
                    ingested_at,
                    fingerprints[source_name],
                ],
            )
            results.append(result)
    if len(resumes) < len(todo) and "raw" in existing:
        _keep_first_ingestion_times(connection, raw_table, ingested_at)
    return IngestSummary(results)


class _EarlierIds:
    """The ids ``raw`` holds for the earlier records of a file that grew, to tell which ids of its new records are
    already taken without a scan of ``raw`` per chunk: their DuckDB hashes (8 bytes a row, read in one scan)
    sorted in memory, and a hash found confirmed by index lookups of the few ids it names."""

    _PROBE = 32  # ids per lookup: DuckDB probes the row_id index for short lists, and scans for long ones

    def __init__(self, connection: duckdb.DuckDBPyConnection, source: str, file: str) -> None:
        self.connection = connection
        found = connection.execute(
            f"SELECT hash(row_id) AS h FROM raw WHERE source = ? AND {source_file_sql()} = ?", [source, file]
        ).fetchnumpy()["h"]
        self.hashes = np.sort(np.asarray(found, dtype=np.uint64))

    def present(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` ``raw`` holds."""
        if not ids or not self.hashes.size:
            return set()
        (hashed,) = fetch_one(self.connection, "SELECT list_transform(?::VARCHAR[], lambda x: hash(x))", [ids])
        wanted = np.asarray(hashed, dtype=np.uint64)
        places = np.minimum(np.searchsorted(self.hashes, wanted), self.hashes.size - 1)
        candidates = [ids[i] for i in np.flatnonzero(self.hashes[places] == wanted)]
        found: set[str] = set()
        for start in range(0, len(candidates), self._PROBE):
            rows = self.connection.execute(
                "SELECT row_id FROM raw WHERE row_id = ANY($ids)", {"ids": candidates[start : start + self._PROBE]}
            ).fetchall()
            found.update(row_id for (row_id,) in rows)
        return found


def _file_table(files: list[tuple[str, str]]) -> pa.Table:
    return pa.table({"source": [f[0] for f in files], "file": [f[1] for f in files]}, pa.schema(_FILE_FIELDS))


_FILE_FIELDS = [("source", pa.string()), ("file", pa.string())]


def _resumed_at(resume: Resume | None) -> int:
    return resume.offset if resume else 0


def _stage_raw(
    staged: StagedWrite,
    exists: bool,
    staying: list[tuple[str, str]],
    previous: dict[tuple[str, str], _Previous],
    todo: list[tuple[SourceConfig, Path, str, str]],
    resumes: dict[tuple[str, str], Resume],
) -> str:
    """Stage ``raw`` with the current rows of the ``staying`` files in it (:func:`~curation.core.memo.stage_kept_rows`:
    patched in place when the change is small, as after appending to one file, else copied into a new table),
    and return the table to append the rows read to. The rows to read are estimated from the bytes to read at
    the current table's bytes per row."""
    if not (exists and staying):
        return staged.create("raw", canonical_ddl())
    connection = staged.connection
    bytes_per_row = max(1, sum(p.bytes for p in previous.values())) / max(1, sum(p.rows for p in previous.values()))
    to_read = sum(_size(path) - _resumed_at(resumes.get((s.name, shown))) for s, path, shown, _ in todo)
    connection.register("_raw_staying", _file_table(staying))
    try:
        kept_ids = (
            "SELECT t.row_id FROM raw t JOIN _raw_staying k "
            f"ON t.source = k.source AND {source_file_sql('t.source_uri')} = k.file"
        )
        return stage_kept_rows(staged, "raw", canonical_ddl(), "row_id", kept_ids, to_read / bytes_per_row, COLUMNS)
    finally:
        connection.unregister("_raw_staying")


def _why_read(previous: _Previous | None, digest: str, resume: Resume | None) -> str:
    """Why a file is read: what differs from what it was last ingested with."""
    if previous is None:
        return "new file"
    if resume is not None:
        return f"grew by appending: read from byte {resume.offset:,}, record {resume.records + 1:,}"
    return "file changed" if previous.sha256 != digest else "settings or mapping code changed"


def _file_chunks(
    source: SourceConfig, path: Path, read_by: str | None, max_bytes: int, rows: int, resume: Resume | None = None
) -> Iterator[RecordChunk]:
    """:func:`~curation.ingest.readers.read_chunks` of one planned file, or the one file-level record (numbered
    0) that says why it is not read: another source reads it, or its format cannot be told."""
    reason = None
    fmt = source.format or format_from_extension(path)
    if read_by is not None:
        reason = (
            f"not read again: source {read_by!r} reads this file with the same mapping and settings (a file "
            "is read once, whatever the names or globs that reach it); narrow this source's path"
        )
    elif fmt is None and file_kind(path) is None:
        reason = f"cannot tell the format of {path.name}; set 'format' on the source (or give the file its extension)"
    if reason is None:
        # A non-file is reported, never opened.
        yield from read_chunks(path, fmt or "jsonl", max_bytes, rows, resume)
        return
    chunk = RecordChunk()
    chunk.add(Record(0, None, "", error=reason))
    yield chunk


def _size(path: Path) -> int:
    """A planned file's size in bytes (0 for what is not a regular file: it is not read)."""
    try:
        return path.stat().st_size if file_kind(path) is None else 0
    except OSError:
        return 0


def _keep_first_ingestion_times(connection: duckdb.DuckDBPyConnection, staged_raw: str, ingested_at: datetime) -> None:
    """Give the records of files read again (they changed) that ``raw`` already held (the same id: same
    source, file and content) the time they were first ingested. A file that grew is then new rows plus
    rows exactly as they were: stages downstream see those rows unchanged (their memos reuse them), and
    the audit shows when each record first arrived."""
    connection.execute(
        f"UPDATE {staged_raw} AS fresh SET ingested_at = previous.ingested_at FROM raw AS previous "
        "WHERE fresh.row_id = previous.row_id AND fresh.ingested_at = ? "
        "AND previous.ingested_at IS DISTINCT FROM fresh.ingested_at",
        [ingested_at],
    )


def quarantine_overview(staged: StagedWrite, sample_size: int = 20) -> tuple[int, list[dict[str, Any]]]:
    """How many records the new ``quarantine`` holds, and the first ``sample_size`` of them (by source and
    record number) as ``{source, source_uri, line, error}``: what the raw asset shows."""
    connection = staged.connection
    table = quote(staged.staging_name("quarantine"))
    (count,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone() or (0,)
    sample = connection.execute(
        f"SELECT source, source_uri, line_no, error FROM {table} ORDER BY source, record_no LIMIT ?", [sample_size]
    ).fetchall()
    return int(count), [dict(zip(("source", "source_uri", "line", "error"), entry, strict=True)) for entry in sample]
