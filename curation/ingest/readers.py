"""Read data files record by record: JSONL, JSON, CSV and Parquet, gzip-compressed or not.

The one reader layer of the project: ingestion reads sources through :func:`read_records` and
quarantines the records that come back with an ``error``; files that must be read whole
(decontamination benchmarks, evaluation sets) go through :func:`read_objects`, which stops at the
first such record instead.

Reading is streaming: memory follows the largest record, not the file (a JSON file holding one object
rather than an array is that one record). Bytes that are not UTF-8 are decoded with
``surrogateescape`` so that one bad byte costs one record (reported as undecodable), not the
file. A JSON array that is truncated keeps every element before the damage. Gzip is recognised by
its magic bytes, whatever the file is called. A UTF-8 byte-order mark at the start of a file (Excel,
Notepad) is dropped once, when the file is opened, so it costs no record and shifts no line number.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UTF8_BOM = b"\xef\xbb\xbf"
_GZIP_MAGIC = b"\x1f\x8b"
_CSV_FIELD_LIMIT = 2**31 - 1
"""Characters a CSV field may hold (the csv module's default, 128 KiB, failed whole files). Fields are not
cut at ``ingest.max_record_bytes`` by the csv module itself: after its field-limit error it resumes in the
middle of the row (inside a quoted field, the next lines would read as records), so a large field is read
like a long JSONL line, whole, and its record quarantined as oversized. The largest value a C long holds
on every platform."""
_READ_ERRORS = (OSError, EOFError, gzip.BadGzipFile, csv.Error)
"""What ends reading a file early: the records before it are kept and one record numbered 0 says why."""


@dataclass(frozen=True)
class Record:
    """One record as read from a file, parsed (``value``, a dict) or not (``error``, the reason)."""

    record_no: int  # 1-based position among the file's records (0: the file itself failed)
    line_no: int | None  # 1-based line where the record starts, when the format has lines
    raw_text: str
    value: Any = None
    error: str | None = None


class UnreadableFile(ValueError):
    """A file that must be read whole holds a record that cannot be read (the message says where and why)."""


def format_from_extension(path: Path) -> str | None:
    """``jsonl``, ``json``, ``csv`` or ``parquet`` from the file name (``.gz`` ignored); None if unknown."""
    ext = _last_extension(path)
    if ext in ("jsonl", "ndjson"):
        return "jsonl"
    if ext in ("json", "csv", "parquet"):
        return ext
    return None


def file_format(path: Path, declared: str | None) -> str:
    """A source file's format: the one declared on the source, else the one its extension names."""
    if declared:
        return declared
    fmt = format_from_extension(path)
    if fmt is None:
        ext = _last_extension(path)
        raise ValueError(f"{path}: cannot tell the format from the extension {ext!r}; set 'format' on the source")
    return fmt


def _last_extension(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    return suffixes[-1].lstrip(".") if suffixes else ""


class NotAFile(OSError):
    """What a source's glob matched is not a regular file (a folder named like one, a device, a pipe, a link to
    nothing): reading it would fail, never end (``/dev/zero``) or block (a pipe), so it is not opened."""

    def __init__(self, path: Path, kind: str) -> None:
        hint = f" (to read the files in it, make the source's path match them, e.g. {path.name}/*)"
        super().__init__(f"{path.name} is {kind}, not a file of records" + (hint if kind == "a folder" else ""))
        self.kind = kind


def file_kind(path: Path) -> str | None:
    """None for a regular file (after links) or one that cannot be looked at (reading it says why); otherwise
    what it is, in words."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "a link to nothing" if path.is_symlink() else None
    except OSError:
        return None
    kinds = [
        (stat.S_ISREG, ""),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((kind for test, kind in kinds if test(mode)), "not a regular file") or None


def require_file(path: Path) -> None:
    """Raise :class:`NotAFile` unless ``path`` is a regular file (or cannot be looked at)."""
    kind = file_kind(path)
    if kind is not None:
        raise NotAFile(path, kind)


def file_digest(path: Path) -> str:
    """SHA-256 of the file's bytes (what "this file changed" means everywhere)."""
    require_file(path)
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_or_reason(path: Path) -> str:
    """:func:`file_digest`, or for a file that cannot be read (no permission, an I/O error) why not, as
    ``unreadable: <reason>``: ingestion still plans such a file, and reading it yields one file-level
    quarantine record with the reason instead of failing every source. While the reason stays the same the
    entry is carried over like an unchanged file's; once the file is readable its hash differs and it is read."""
    try:
        return file_digest(path)
    except NotAFile as exc:
        return f"unreadable: {exc.kind}"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"


def open_binary(path: Path, skip_bom: bool = False) -> gzip.GzipFile | io.BufferedReader:
    """The file's bytes, decompressed when it is gzip; with ``skip_bom`` a leading UTF-8 byte-order mark
    (written by some Windows tools) is not part of the content."""
    with path.open("rb") as probe:
        magic = probe.read(2)
    handle = gzip.GzipFile(path, "rb") if magic == _GZIP_MAGIC else path.open("rb")
    if skip_bom and handle.read(len(UTF8_BOM)) != UTF8_BOM:
        handle.seek(0)
    return handle


# --------------------------------------------------------------------------------------------
# Why a record cannot be read (the quarantine reasons)
# --------------------------------------------------------------------------------------------


def _first_undecodable(text: str) -> int | None:
    """Index of the first byte that was not valid UTF-8 (a lone surrogate after surrogateescape)."""
    for index, char in enumerate(text):
        if "\udc80" <= char <= "\udcff":
            return index
    return None


def _text_error(text: str, max_bytes: int | None) -> str | None:
    """Why a record's raw text cannot be used: over the size limit (None: no limit) or not UTF-8."""
    try:
        # Raw text holds surrogates only where bytes were not UTF-8, so a strict encode that succeeds
        # settles both questions at C speed; scanning every character in Python dominated reading. ASCII
        # text (a flag CPython keeps on every string) is valid, one byte a character.
        clean_size: int | None = len(text) if text.isascii() else len(text.encode("utf-8"))
    except UnicodeEncodeError:
        clean_size = None
    if max_bytes is not None:
        size = clean_size if clean_size is not None else len(text.encode("utf-8", "surrogateescape"))
        if size > max_bytes:
            return (
                f"oversized record: {size} bytes, over ingest.max_record_bytes={max_bytes} "
                "(raise the limit in the project file if such records are expected)"
            )
    bad = None if clean_size is not None else _first_undecodable(text)
    if bad is not None:
        return f"undecodable bytes: not valid UTF-8 at character {bad + 1} of the record (re-encode the file as UTF-8)"
    return None


def _parse_json_object(text: str) -> tuple[Any, str | None]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(value, dict):
        return None, f"expected a JSON object per record, got {type(value).__name__}"
    return value, None


# --------------------------------------------------------------------------------------------
# One reader per format
# --------------------------------------------------------------------------------------------


def read_jsonl(path: Path, max_bytes: int | None, skip_bom: bool = True, parse: bool = True) -> Iterator[Record]:
    """One JSON object per line; blank lines are not records. ``parse=False`` leaves each line unparsed
    (``value`` and ``error`` None) for :func:`parse_record` to finish, e.g. in a worker process; a line over
    ``max_bytes`` is an error either way (its text cut, see :func:`_jsonl_lines`)."""
    for record_no, line_no, text, error in _jsonl_lines(path, skip_bom, max_bytes):
        record = Record(record_no, line_no, text, error=error)
        yield parse_record(record, max_bytes) if parse else record


OVERSIZED_TEXT_KEPT = 1 << 20
"""Bytes of a line over ``ingest.max_record_bytes`` kept as its raw text (quarantine shows the beginning of
that): the line itself may be gigabytes without a newline (a sparse or binary file), and is never held
whole."""


@dataclass(frozen=True)
class Resume:
    """Where reading a JSONL file that grew by appending picks up: after its first ``offset`` bytes, which held
    ``records`` records on ``lines`` lines (see :func:`appended_jsonl`)."""

    offset: int
    records: int
    lines: int


def appended_jsonl(path: Path, previous_bytes: int, previous_sha256: str, previous_records: int) -> Resume | None:
    """Where to resume reading ``path`` if it is a plain JSONL file that grew only by appending whole lines to
    what was ingested before (``previous_bytes`` bytes with SHA-256 ``previous_sha256``, holding
    ``previous_records`` records); None when it must be read whole: compressed (a gzip member appended is no
    byte prefix), not longer, another prefix, or a prefix whose last line had no line break yet (the append may
    have continued that record). One pass over the prefix hashes it and counts its lines."""
    try:
        size = path.stat().st_size
        if previous_bytes <= 0 or size <= previous_bytes:
            return None
        digest, lines, last = hashlib.sha256(), 0, b""
        with path.open("rb") as handle:
            if handle.read(len(_GZIP_MAGIC)) == _GZIP_MAGIC:
                return None
            handle.seek(0)
            left = previous_bytes
            while left:
                block = handle.read(min(left, 1 << 20))
                if not block:
                    return None
                digest.update(block)
                lines += block.count(b"\n")
                left -= len(block)
                last = block[-1:]
    except OSError:
        return None
    if last != b"\n" or digest.hexdigest() != previous_sha256:
        return None
    return Resume(previous_bytes, previous_records, lines)


def _jsonl_lines(
    path: Path, skip_bom: bool = True, max_bytes: int | None = None, resume: Resume | None = None
) -> Iterator[tuple[int, int, str, str | None]]:
    """``(record number, line number, text, error)`` of each line of a JSONL file that is a record (not
    blank); with ``resume``, of the lines after its offset, numbered on from the records and lines before it.
    A line longer than ``max_bytes`` is read in pieces and not kept whole: its text is its first
    :data:`OVERSIZED_TEXT_KEPT` bytes and its error says how long it was, so memory stays bounded by the
    limit whatever the file holds."""
    record_no = resume.records if resume else 0
    limit = None if max_bytes is None else max_bytes + 2  # the record, "\r\n", and one byte to know it is over
    with open_binary(path, skip_bom and resume is None) as handle:
        line_no = resume.lines if resume else 0
        if resume:
            handle.seek(resume.offset)
        while True:
            line = handle.readline() if limit is None else handle.readline(limit)
            if not line:
                return
            line_no += 1
            error = None
            if limit is not None and len(line) == limit and not line.endswith(b"\n"):
                line, size = _skip_rest_of_line(handle, line)
                error = (
                    f"oversized record: {size} bytes, over ingest.max_record_bytes={max_bytes} "
                    "(raise the limit in the project file if such records are expected)"
                )
            text = line.decode("utf-8", "surrogateescape").rstrip("\r\n")
            if error is None and not text.strip():
                continue
            record_no += 1
            yield record_no, line_no, text, error


def _skip_rest_of_line(handle: gzip.GzipFile | io.BufferedReader, start: bytes) -> tuple[bytes, int]:
    """Read past the rest of a line begun with ``start``: its first :data:`OVERSIZED_TEXT_KEPT` bytes and its
    length without the line break."""
    kept, size = start[:OVERSIZED_TEXT_KEPT], len(start)
    while not start.endswith(b"\n"):
        start = handle.readline(_CHUNK_BYTES)
        if not start:
            break
        size += len(start)
    return kept, size - (2 if start.endswith(b"\r\n") else 1 if start.endswith(b"\n") else 0)


def parse_record(record: Record, max_bytes: int | None) -> Record:
    """A record read with ``parse=False``, checked (size, encoding) and parsed; any other record as it is."""
    if record.value is not None or record.error is not None:
        return record
    value, error = parse_text(record.raw_text, max_bytes)
    return dataclasses.replace(record, value=value, error=error)


def parse_text(text: str, max_bytes: int | None) -> tuple[Any, str | None]:
    """The object a record's unparsed JSON text holds, or why it cannot be read (see :func:`parse_record`)."""
    error = _text_error(text, max_bytes)
    if error is not None:
        return None, error
    return _parse_json_object(text)


_CHUNK_BYTES = 1 << 20
"""Bytes read at a time from a JSON array (more while one element is larger than what is pending)."""
_LOOKAHEAD = 32
"""Characters past where the JSON decoder stops that it may have looked at (a number's exponent, the
hex digits of ``\\uXXXX``, ``-Infinity``): with fewer than this left in the window the outcome might
still change with the text that follows, so the window is refilled and the element decoded again."""
_TAIL_LIMIT = 1 << 20
"""Characters kept as the raw text of what follows a fatal error or the closing ']' (the text that
follows can be most of a large file)."""
# \s is exactly str.isspace(), the whitespace that str.strip() removes.
_NON_SPACE = re.compile(r"\S")
_NON_SEPARATOR = re.compile(r"[^\s,]")


def read_json(path: Path, max_bytes: int | None, skip_bom: bool = True) -> Iterator[Record]:
    """A JSON array of objects (or one object). Elements are decoded one by one from a window that slides
    over the file, so memory follows the largest element, and a truncated file yields every element
    before the damage and one unreadable record for the rest."""
    with open_binary(path, skip_bom) as handle:
        window = _Window(handle)
        position = window.skip(_NON_SPACE, 0, keep_text=True)
        if not window.text.startswith("[", position):
            yield from _single_json(window.read_to_end(), max_bytes)
            return
        yield from _array_elements(window, position + 1, max_bytes)


def _array_elements(window: _Window, position: int, max_bytes: int | None) -> Iterator[Record]:
    decoder = json.JSONDecoder()
    record_no = 0
    while True:
        position = window.skip(_NON_SEPARATOR, position)
        if position >= len(window.text):
            record_no += 1
            yield Record(
                record_no,
                window.line_at(position),
                "",
                error="truncated JSON: the file ends before the closing ']' (was it cut off?)",
            )
            return
        if window.text[position] == "]":
            line_no = window.line_at(position)
            trailing, cut = window.tail(position + 1, strip=True)
            if trailing:
                record_no += 1
                reason = "unexpected text after the closing ']'" + _cut_note(cut)
                yield Record(record_no, line_no, trailing, error=reason)
            return
        record_no += 1
        line_no = window.line_at(position)
        while True:
            try:
                value, end = decoder.raw_decode(window.text, position)
            except json.JSONDecodeError as exc:
                # The failure is the file's own unless the decoder may have run into the end of the window:
                # near that end, or anywhere for an unterminated string (reported where the string starts).
                settled = exc.pos + _LOOKAHEAD <= len(window.text) and not exc.msg.startswith("Unterminated string")
                if settled or window.eof:
                    where = f"line {window.line_at(exc.pos)} column {window.column(exc.pos)}"
                    rest, cut = window.tail(position, strip=False)
                    yield Record(
                        record_no,
                        line_no,
                        rest,
                        error=f"invalid or truncated JSON at {where}: {exc.msg}; "
                        f"the rest of the file from here could not be read{_cut_note(cut)}",
                    )
                    return
            else:
                if end + _LOOKAHEAD <= len(window.text) or window.eof:
                    break
            # Reading at least as much as is pending keeps a large element linear, not quadratic.
            position = window.refill(position, len(window.text) - position)
        raw = window.text[position:end]
        error = _text_error(raw, max_bytes)
        if error is None and not isinstance(value, dict):
            error = f"expected a JSON object per record, got {type(value).__name__}"
        yield Record(record_no, line_no, raw, value if error is None else None, error)
        position = end


def _cut_note(cut: bool) -> str:
    return f" (the raw text keeps its first {_TAIL_LIMIT} characters)" if cut else ""


class _Window:
    """The decoded text of a file read forward chunk by chunk: ``text`` holds only what has not been let
    go of, and positions are indexes into it. Lines and columns are those of the whole file."""

    def __init__(self, handle: gzip.GzipFile | io.BufferedReader) -> None:
        self._handle = handle
        # Incremental, so that a character split between two chunks decodes as if read whole.
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self.text = ""
        self.eof = False
        self._offset = 0  # where text[0] is in the whole file's text
        self._last_newline = -1  # where, in the whole file's text, the last newline before text[0] is
        self._line = 1  # the line of text[self._counted]
        self._counted = 0

    def refill(self, keep: int, size: int = 0) -> int:
        """Let go of the text before ``keep`` and read more bytes: ``size`` of them when that is more than
        ``_CHUNK_BYTES``, else what one read brings (up to that); returns where ``keep`` is now."""
        if keep > self._counted:
            self.line_at(keep)
        self._counted -= keep
        newline = self.text.rfind("\n", 0, keep)
        if newline >= 0:
            self._last_newline = self._offset + newline
        self._offset += keep
        # One read, not as many as fill the chunk: a truncated gzip raises on the read that meets the cut and
        # what came before it is lost, so small reads let the records before the cut through.
        data = self._handle.read(size) if size > _CHUNK_BYTES else self._handle.read1(_CHUNK_BYTES)
        self.eof = not data
        self.text = self.text[keep:] + self._decoder.decode(data, final=self.eof)
        return 0

    def read_to_end(self) -> str:
        """The text from ``text[0]`` to the end of the file."""
        if not self.eof:
            self.text += self._decoder.decode(self._handle.read(), final=True)
            self.eof = True
        return self.text

    def skip(self, stop: re.Pattern[str], position: int, keep_text: bool = False) -> int:
        """The first position from ``position`` on where ``stop`` matches, or the end of the text at the end
        of the file; ``keep_text``: let go of nothing on the way."""
        while True:
            found = stop.search(self.text, position)
            if found:
                return found.start()
            if self.eof:
                return len(self.text)
            position = len(self.text)
            if keep_text:
                self.refill(0)
            else:
                position = self.refill(position)

    def line_at(self, position: int) -> int:
        """The line of a position; positions asked for only grow, so the file's newlines are counted once."""
        self._line += self.text.count("\n", self._counted, position)
        self._counted = position
        return self._line

    def column(self, position: int) -> int:
        """The 1-based column of a position, as :class:`json.JSONDecodeError` counts it in the whole text."""
        newline = self.text.rfind("\n", 0, position)
        return position - newline if newline >= 0 else self._offset + position - self._last_newline

    def tail(self, position: int, strip: bool) -> tuple[str, bool]:
        """The text from ``position`` to the end of the file (``strip``: without the surrounding whitespace),
        cut to ``_TAIL_LIMIT`` characters, and whether it was cut."""
        if strip:
            position = self.skip(_NON_SPACE, position)
        while len(self.text) - position <= _TAIL_LIMIT and not self.eof:
            position = self.refill(position)
        kept = self.text[position : position + _TAIL_LIMIT]
        if len(self.text) - position > _TAIL_LIMIT and (
            not strip or self.skip(_NON_SPACE, position + _TAIL_LIMIT) < len(self.text)
        ):
            return kept, True
        return (kept.rstrip() if strip else kept), False


def _single_json(text: str, max_bytes: int | None) -> Iterator[Record]:
    error = _text_error(text, max_bytes)
    value = None
    if error is None:
        value, error = _parse_json_object(text)
        if error:
            error += " (a .json source must hold an array of objects or one object)"
    yield Record(1, 1, text, value, error)


def read_csv(path: Path, max_bytes: int | None, skip_bom: bool = True) -> Iterator[Record]:
    """A header row, then one record per row; rows of blank cells only are not records."""
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:  # process-wide; only ever raised
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    with open_binary(path, skip_bom) as binary:
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
            error = _text_error(raw, max_bytes)
            value = None
            if error is None and len(cells) != len(header):
                error = f"row has {len(cells)} fields but the header has {len(header)} (unbalanced quotes?)"
            if error is None:
                value = dict(zip(header, cells, strict=True))
            yield Record(record_no, start_line, raw, value, error)


def read_parquet(path: Path, max_bytes: int | None, skip_bom: bool = True) -> Iterator[Record]:
    """One record per table row (``skip_bom`` is meaningless for a binary format and ignored)."""
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
            error = _text_error(raw, max_bytes)
            yield Record(record_no, None, raw, value if error is None else None, error)


def _read_error(exc: BaseException) -> Record:
    """The file-level record (numbered 0) that says why reading a file stopped: at the start (it cannot be
    opened) or part way (a cut gzip, an I/O error, a CSV field over the csv module's limit)."""
    if isinstance(exc, (PermissionError, FileNotFoundError, IsADirectoryError, NotAFile)):
        return Record(0, None, "", error=f"file could not be read: {exc}")
    return Record(0, None, "", error=f"file could not be read to the end: {exc}")


READERS: dict[str, Callable[[Path, int | None, bool], Iterator[Record]]] = {
    "jsonl": read_jsonl,
    "json": read_json,
    "csv": read_csv,
    "parquet": read_parquet,
}


def read_records(
    path: Path, fmt: str, max_bytes: int | None, skip_bom: bool = True, parse: bool = True
) -> Iterator[Record]:
    """Every record of a file, readable or not; a file that breaks off (truncated gzip, I/O error) ends
    with one record numbered 0 that says so. ``max_bytes``: larger records are errors (None: no limit).
    ``parse=False`` leaves JSONL lines for :func:`parse_record` (the other formats are parsed to find
    where their records end)."""
    try:
        require_file(path)
        if fmt == "jsonl":
            yield from read_jsonl(path, max_bytes, skip_bom, parse)
        else:
            yield from READERS[fmt](path, max_bytes, skip_bom)
    except _READ_ERRORS as exc:
        yield _read_error(exc)


@dataclass
class RecordChunk:
    """Consecutive records of one file as columns, which cost a fraction of as many :class:`Record` objects to
    build and to send to a worker process. A record whose ``value`` and ``error`` are both None is JSON text
    still to be parsed (:func:`parse_text`): a JSONL line, or an element of a JSON array (the reader parsed
    it to find where it ends; parsing the text again in the worker costs less than sending the object)."""

    record_nos: list[int] = field(default_factory=list)
    line_nos: list[int | None] = field(default_factory=list)
    raw_texts: list[str] = field(default_factory=list)
    values: list[Any] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.record_nos)

    def add(self, record: Record, keep_value: bool = True) -> None:
        self.record_nos.append(record.record_no)
        self.line_nos.append(record.line_no)
        self.raw_texts.append(record.raw_text)
        self.values.append(record.value if keep_value or record.error is not None else None)
        self.errors.append(record.error)

    def unparsed(self) -> RecordChunk:
        """The chunk with the records added by number, line and text only marked as still to be parsed."""
        missing = len(self.record_nos) - len(self.values)
        self.values.extend([None] * missing)
        self.errors.extend([None] * missing)
        return self

    def records(self) -> Iterator[Record]:
        """The records of the chunk (those still to be parsed unparsed)."""
        columns = (self.record_nos, self.line_nos, self.raw_texts, self.values, self.errors)
        for record_no, line_no, raw_text, value, error in zip(*columns, strict=True):
            yield Record(record_no, line_no, raw_text, value, error)


def read_chunks(
    path: Path, fmt: str, max_bytes: int | None, rows: int, resume: Resume | None = None
) -> Iterator[RecordChunk]:
    """The records of :func:`read_records` (``parse=False``) in chunks of ``rows``, at least one chunk per file
    (empty for an empty file). JSONL lines go straight into the columns, and JSON elements leave their parsed
    object behind, to be parsed in the worker that maps them. ``resume``: only the records a JSONL file
    gained by appending (:func:`appended_jsonl`)."""
    chunk = RecordChunk()
    try:
        require_file(path)
        if fmt != "jsonl" and resume is not None:
            raise ValueError(f"{path}: only a JSONL file is read from where it grew, not {fmt}")
        if fmt == "jsonl":
            for record_no, line_no, text, error in _jsonl_lines(path, True, max_bytes, resume):
                chunk.record_nos.append(record_no)
                chunk.line_nos.append(line_no)
                chunk.raw_texts.append(text)
                chunk.values.append(None)
                chunk.errors.append(error)
                if len(chunk.record_nos) >= rows:
                    yield chunk.unparsed()
                    chunk = RecordChunk()
        else:
            for record in READERS[fmt](path, max_bytes, True):
                chunk.add(record, keep_value=fmt != "json")
                if len(chunk) >= rows:
                    yield chunk
                    chunk = RecordChunk()
    except _READ_ERRORS as exc:
        chunk.unparsed().add(_read_error(exc))
    yield chunk.unparsed()


def read_objects(path: Path, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(record number, object)`` for every record of a file that must be read whole; raises
    :class:`UnreadableFile` naming the line (or record) of the first one that cannot be read.
    The format comes from the extension unless given; a leading byte-order mark is skipped."""
    fmt = fmt or format_from_extension(path)
    if fmt is None:
        raise UnreadableFile(
            f"{path}: cannot tell the format from the extension {_last_extension(path)!r}; "
            "use .jsonl, .json, .csv or .parquet (optionally .gz)"
        )
    for record in read_records(path, fmt, max_bytes=None, skip_bom=True):
        if record.error is not None:
            where = (
                f"line {record.line_no}"
                if record.line_no is not None
                else f"record {record.record_no}"
                if record.record_no
                else ""
            )
            raise UnreadableFile(f"{path}{', ' + where if where else ''}: {record.error}")
        yield record.record_no, record.value
