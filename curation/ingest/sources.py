"""Ingest the project's sources into ``raw``: every record read (:mod:`curation.ingest.readers`) becomes
canonical rows through its source's mapping (:mod:`curation.ingest.mappings`) or, with the reason, a
``quarantine`` entry; ``ingested_files`` remembers each file's hash so unchanged files are not read again.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from curation.core.config import ProjectConfig, SourceConfig
from curation.core.schema import Row, content_key, make_row_id, new_row, rows_to_table, utcnow
from curation.core.warehouse import StagedWrite, canonical_ddl, quote, table_names
from curation.ingest.mappings import RecordError, mapping_spec
from curation.ingest.readers import file_digest, file_format, read_records

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


def ingest_file(
    path: Path,
    display_path: str,
    source: SourceConfig,
    ingested_at: datetime,
    max_bytes: int,
    counter: FileResult | None = None,
) -> Iterator[Row | Quarantined]:
    """Every record of one file becomes rows or a quarantine entry — never nothing. ``counter.records``
    counts the records read, independently of what became of them (the conservation check's input)."""
    fmt = file_format(path, source.format)
    mapping = mapping_spec(source.mapping)
    options = mapping.parse_options(source.options)  # validated when the project file was loaded
    seen_content: dict[str, int] = {}
    for record in read_records(path, fmt, max_bytes):
        if counter is not None:
            counter.records += 1
        uri = f"{display_path}#{record.record_no}"
        error = record.error
        mapped = []
        if error is None:
            try:
                mapped = mapping.map(record.value, source.fields, options)
                annotator = _annotator(record.value, source)
            except RecordError as exc:
                error = str(exc)
        if error is not None:
            yield Quarantined(
                source.name, uri, display_path, record.record_no, record.line_no, error, _shown(record.raw_text)
            )
            continue
        for item in mapped:
            row = new_row(
                kind=source.kind or item.kind,
                messages=item.messages,
                chosen=item.chosen,
                rejected=item.rejected,
                score=item.score,
                text=item.text,
            )
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


QUARANTINE_DDL = (
    "source VARCHAR, source_uri VARCHAR, file VARCHAR, record_no BIGINT, line_no BIGINT, "
    "error VARCHAR, raw_text VARCHAR, ingested_at TIMESTAMP"
)
INGESTED_FILES_DDL = (
    "source VARCHAR, file VARCHAR, sha256 VARCHAR, bytes BIGINT, records BIGINT, rows BIGINT, "
    "quarantined BIGINT, ingested_at TIMESTAMP"
)
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


def ingest_sources(
    project: ProjectConfig, staged: StagedWrite, progress: Callable[[str], None] | None = None
) -> IngestSummary:
    """Write new versions of ``raw``, ``quarantine`` and ``ingested_files`` into ``staged``.

    Files whose content hash was already ingested are carried over without being read again, so
    re-ingesting unchanged files adds nothing; changed files replace their previous rows; files
    that disappeared (or whose source was removed from the project file) leave the tables.
    """
    connection = staged.connection
    existing = table_names(connection)
    previous: dict[tuple[str, str], str] = {}
    if "ingested_files" in existing:
        previous = {
            (s, f): h for s, f, h in connection.execute("SELECT source, file, sha256 FROM ingested_files").fetchall()
        }

    plan: list[tuple[SourceConfig, Path, str, str]] = []
    for source in project.sources:
        files = project.source_files(source)
        if not files:
            raise FileNotFoundError(
                f"source {source.name!r}: no file matches {source.path!r} "
                f"(relative to {project.base_dir}); fix 'path' in the project file"
            )
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
        for table, staging in (("raw", raw_table), ("quarantine", quarantine_table), ("ingested_files", files_table)):
            file_expr = "split_part(t.source_uri, '#', 1)" if table == "raw" else "t.file"
            connection.execute(
                f"INSERT INTO {staging} SELECT t.* FROM {quote(table)} t "
                f"JOIN _kept k ON t.source = k.source AND {file_expr} = k.file"
            )
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
        connection.execute(
            f"INSERT INTO {files_table} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                source.name,
                shown,
                digest,
                path.stat().st_size,
                result.records,
                result.rows,
                result.quarantined,
                ingested_at,
            ],
        )
        results.append(result)
    return IngestSummary(results)


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
