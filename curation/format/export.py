"""Exports of the formatted dataset that trainers read directly, with a manifest; one immutable folder
per data version.

Layout (``<exports root>/<data_version>/``), one sub-folder per *config*, one file per split (``train.jsonl``)
or, for a split of more than one shard, one per shard (``train-00000-of-00042.jsonl``), each in JSONL and
Parquet, plus ``manifest.json`` and a ``README.md`` dataset card whose ``configs:`` header lets
``datasets.load_dataset(folder, "<config>")`` read the Parquet files:

========================  ==========================================================================
``sft``                   ``messages`` (list of {role, content, ...}) [+ ``tools``]: TRL SFTTrainer's
                          conversational language-modelling format (the trainer applies the template).
``sft_tokenized``         ``input_ids``, ``assistant_masks``, ``text``: the exact tokens counted here and
                          the assistant-only loss mask; TRL treats a dataset with ``input_ids`` as already
                          processed and reads ``assistant_masks`` for ``assistant_only_loss``.
``preference``            ``prompt`` / ``chosen`` / ``rejected`` message lists: TRL DPOTrainer's
                          conversational preference format (explicit prompt).
``preference_text``       the same three as rendered strings (template already applied, split the way
                          TRL splits them), for trainers that take text.
``prompts``               ``prompt`` message lists (GRPO / online methods), ``reward``: ``messages`` +
                          ``score``, ``text``: ``text`` (language modelling).
========================  ==========================================================================

Column names follow TRL's dataset-format guide (huggingface.co/docs/trl/dataset_formats). Every config
also carries ``id``, ``source``, ``license``, ``origin`` and ``subset`` (the smallest nested fraction
holding the row: filter ``subset <= 0.25`` for the 25% run). Rows cut inside their last assistant turn
(``truncated_last_assistant``) appear only in ``sft_tokenized``: as messages they would re-render with
an end-of-turn token after the cut and teach the model to stop mid-answer.

Arrow-based readers (Parquet, and ``datasets`` reading the JSONL) give every message the union of the
keys seen in the file, missing ones null (``tool_calls: None`` on plain turns). TRL drops those nulls
before templating (``remove_none_values``); other consumers should too, or read the JSONL with ``json``.

The data version is a content hash of the JSONL files and of the manifest's descriptive fields
(licences, teachers, tokenizer, template, project file), so any change gives a new folder. A folder is
written under a temporary name and renamed into place; an existing version is verified and reused,
never overwritten.

Rows are in source order (source, file, record: :data:`~curation.core.warehouse.SOURCE_ORDER`), as they
stood in the sources; trainers shuffle. A split is cut into shards of about :data:`_SHARD_ROWS` rows after
each row whose id's MD5 is a multiple of it, so the cuts move only where rows are added or removed. Each
shard file has a key: a hash of its config and of what it shows of each of its rows, in order (a column
the layout does not write, such as an absorbed copy's licence note, is left out). A file whose key the
previous version (``LATEST``) has, that file matching its manifest, is hard-linked from it instead of
written: records appended to a source rewrite only the shards they land in, and versions share the space
of what they share. Every shard of a split is written in the Parquet schema inferred from the whole split
(the union of the shards' own schemas, kept in the manifest), so the shards read as one dataset.

The rows of the shards to write are read in one scan, spooled into ranges of positions (Arrow IPC files in
the staging folder), and handed on a range at a time, sorted: memory holds one range, and the table is
scanned once however many ranges it takes. Each batch's
JSONL lines are built column by column in worker processes (results in input order: the files are the
same for any number of workers): strings and numbers through ``json``'s own C encoders, JSON columns
decoded and encoded once, token ids copied as stored without their spaces. One thread appends the lines,
hashes them and writes each file's Parquet alongside: a flat layout's rows from the columns themselves
(token ids parsed by DuckDB), a nested layout's as Arrow infers them from the decoded values, a row group
per block of JSONL the way Arrow's JSON reader batches it. That is the file the reader would make of the
JSONL, byte for byte, when the schema inferred from all the rows is the one written, the block the
smallest and the token ids plain ints; a file where any of these fails is converted by the reader instead.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import stat as stat_module
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curation.core.home import write_record
from curation.core.licenses import LicensePolicy
from curation.core.markdown import markdown_table
from curation.core.parallel import map_ordered
from curation.core.progress import Progress
from curation.core.schema import Row
from curation.core.warehouse import (
    SCAN_MEMORY_LIMIT,
    SOURCE_ORDER,
    configured_memory_limit,
    drop_cached_pages,
    fetch_one,
    quote,
    read_batches,
    source_file_sql,
    table_columns,
    table_names,
)
from curation.ingest.readers import file_digest

if TYPE_CHECKING:
    from curation.core.config import ProjectConfig

MANIFEST = "manifest.json"
CARD = "README.md"
SPLITS: tuple[str, ...] = ("train", "eval")
CONFIGS: dict[str, str] = {
    "sft": "conversations as `messages` (TRL SFTTrainer, conversational)",
    "sft_tokenized": "`input_ids` + `assistant_masks` exactly as counted (TRL SFTTrainer, pre-tokenized)",
    "preference": "`prompt`/`chosen`/`rejected` message lists (TRL DPOTrainer, conversational)",
    "preference_text": "`prompt`/`chosen`/`rejected` rendered strings (TRL DPOTrainer, standard)",
    "prompts": "`prompt` message lists (prompt-only: GRPO, online DPO)",
    "reward": "`messages` + `score`",
    "text": "`text` (language modelling)",
}
_CHAT_KINDS = ("sft", "chat", "tool")
_HASH_EXCLUDED = ("data_version", "created_at", "parquet_files")


class ExportError(RuntimeError):
    """An export cannot be written or an existing version folder does not match its manifest."""


@dataclass
class ExportResult:
    data_version: str
    path: Path
    reused: bool
    manifest: dict[str, Any]
    files_taken_over: int = 0
    """JSONL files of this version taken over from the previous one (hard-linked), not written again."""

    def rows_markdown(self) -> str:
        """Rows per config and split, with the config's layout."""
        return markdown_table(
            [
                {"config": config, "split": split, "rows": rows, "layout": CONFIGS.get(config, "")}
                for config, splits in self.manifest["rows"].items()
                for split, rows in splits.items()
            ]
        )

    def files_markdown(self) -> str:
        """Every JSONL and Parquet file with its rows, size and (shortened) hash."""
        files = {**self.manifest["files"], **self.manifest["parquet_files"]}
        return markdown_table(
            [
                {"file": name, "rows": entry["rows"], "bytes": entry["bytes"], "sha256": entry["sha256"][:16]}
                for name, entry in files.items()
            ]
        )


@dataclass
class ExportInfo:
    """What the manifest records beyond the rows (given by the caller: project file, settings)."""

    project: str
    project_file_hash: str
    intended_use: str
    tokenizer: str
    chat_template: str | None
    max_tokens: int
    length_policy: str
    system_prompt: str | None = None
    eval_fraction: float | None = None
    seed: int | None = None
    benchmarks: list[str] = dataclasses.field(default_factory=list)
    formatted_data_version: str | None = None
    license_overrides: Mapping[str, Mapping[str, object]] | None = None

    @classmethod
    def from_config(cls, config: ProjectConfig, formatted_data_version: str) -> ExportInfo:
        """The project file's name, hash, intended use, licence overrides and ``format:`` settings."""
        settings = config.format
        return cls(
            project=config.name,
            project_file_hash=config.file_hash,
            intended_use=config.policy.intended_use,
            tokenizer=settings.tokenizer,
            chat_template=settings.chat_template,
            max_tokens=settings.max_tokens,
            length_policy=settings.length_policy,
            system_prompt=settings.system_prompt,
            eval_fraction=settings.eval_fraction,
            seed=settings.seed,
            benchmarks=[b.name for b in settings.benchmarks],
            formatted_data_version=formatted_data_version,
            license_overrides=config.policy.licenses,
        )


# --------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class _Field:
    """One key of a layout's records: the ``formatted`` column its value comes from and how it is written.

    ``codec``: ``str``, ``int`` or ``float``, the column's value as ``json.dumps`` writes it; ``json``, a JSON
    column, decoded and written compactly; ``ids``, token ids, their stored JSON text without its spaces
    (the compact form, copied without decoding thousands of ints); ``tools``, the ``tools`` of ``extra``,
    a key only rows that have any carry."""

    key: str
    column: str
    codec: str


@dataclass(frozen=True)
class _Layout:
    """One config: which rows it holds and its records' keys, in order."""

    config: str
    kinds: tuple[str, ...]
    fields: tuple[_Field, ...]
    whole_turns_only: bool = False
    """Leave out rows cut inside their last assistant turn (see the module doc)."""

    @property
    def flat(self) -> bool:
        """Every value a plain column or token ids, no nested JSON: its Parquet can be written from the
        columns themselves, in :attr:`schema`."""
        return all(field.codec in _ARROW_TYPES for field in self.fields)

    @property
    def schema(self) -> pa.Schema:
        """A flat layout's Parquet schema when no column is null throughout and some row has token ids."""
        return pa.schema([(field.key, _ARROW_TYPES[field.codec]) for field in self.fields])


_ARROW_TYPES = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "ids": pa.list_(pa.int64())}
_ID = _Field("id", "row_id", "str")
_META_FIELDS = (
    _Field("source", "source", "str"),
    _Field("license", "license", "str"),
    _Field("origin", "origin", "str"),
    _Field("subset", "subset", "float"),
)
_LAYOUTS: tuple[_Layout, ...] = (
    _Layout(
        "sft",
        _CHAT_KINDS,
        (_ID, _Field("messages", "messages", "json"), _Field("tools", "extra", "tools"), *_META_FIELDS),
        whole_turns_only=True,
    ),
    _Layout(
        "sft_tokenized",
        _CHAT_KINDS,
        (
            _ID,
            _Field("input_ids", "input_ids", "ids"),
            _Field("assistant_masks", "assistant_mask", "ids"),
            _Field("n_tokens", "n_tokens", "int"),
            _Field("text", "text", "str"),
            *_META_FIELDS,
        ),
    ),
    _Layout(
        "preference",
        ("preference",),
        (
            _ID,
            _Field("prompt", "messages", "json"),
            _Field("chosen", "chosen", "json"),
            _Field("rejected", "rejected", "json"),
            *_META_FIELDS,
        ),
    ),
    _Layout(
        "preference_text",
        ("preference",),
        (
            _ID,
            _Field("prompt", "prompt_text", "str"),
            _Field("chosen", "chosen_text", "str"),
            _Field("rejected", "rejected_text", "str"),
            *_META_FIELDS,
        ),
    ),
    _Layout("prompts", ("prompt",), (_ID, _Field("prompt", "messages", "json"), *_META_FIELDS)),
    _Layout(
        "reward",
        ("reward",),
        (_ID, _Field("messages", "messages", "json"), _Field("score", "score", "float"), *_META_FIELDS),
    ),
    _Layout("text", ("text",), (_ID, _Field("text", "text", "str"), *_META_FIELDS)),
)
_KINDS = tuple(dict.fromkeys(kind for layout in _LAYOUTS for kind in layout.kinds))
_CUT_IN_REPLY = "truncated_last_assistant"


# --------------------------------------------------------------------------- rows → records


class _Ids(str):
    """A list of token ids as compact JSON text, written into a JSONL line as it is."""


def _ids(value: Any) -> _Ids:
    # Stored as json.dumps of a list of ints: dropping the spaces gives the compact form json.dumps
    # writes with separators (",", ":"), without decoding a list that can hold thousands of ids.
    if isinstance(value, str):
        return _Ids(value.replace(" ", ""))
    return _Ids(json.dumps(list(value or []), separators=(",", ":")))


def _tools(row: Row) -> Any:
    extra = row.get("extra")
    tools = extra.get("tools") if isinstance(extra, dict) else None
    return json.loads(tools) if isinstance(tools, str) else tools


def _unknown_kind(row_id: Any, kind: Any) -> ExportError:
    return ExportError(f"formatted row {row_id}: unknown kind {kind!r}; cannot choose an export layout")


def export_records(row: Row) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(config, record)`` for each layout a decoded ``formatted`` row belongs to (see the module doc).

    The definition of what the files hold, one row at a time: the writer builds the same lines column by
    column (:func:`_encode_batch`), and ``_json_line`` of these records is what it must write, byte for byte."""
    kind = row.get("kind")
    if kind not in _KINDS:
        raise _unknown_kind(row.get("row_id"), kind)
    cut = (row.get("truncation") or "").startswith(_CUT_IN_REPLY)
    for layout in _LAYOUTS:
        if kind not in layout.kinds or (layout.whole_turns_only and cut):
            continue
        record: dict[str, Any] = {}
        for field in layout.fields:
            if field.codec == "ids":
                record[field.key] = _ids(row.get(field.column))
            elif field.codec == "tools":
                tools = _tools(row)
                if tools:
                    record[field.key] = tools
            else:
                record[field.key] = row.get(field.column)
        yield layout.config, record


# --------------------------------------------------------------------------- shards

_SHARD_ROWS = 16_384
"""Rows of ``formatted`` per shard, on average. A split's rows, in source order, are cut after every row whose
id's MD5 is a multiple of this: the cuts depend on the rows themselves, not on
their positions, so rows added to a source (a file that grew) or removed from it change only the shards
they fall in, and every other shard's files are taken over from the previous version as they are."""
_SHARD_FORMAT = "distillery-export-shard/1"
"""Part of every shard's key: change it when the same rows would give other bytes (the writer, a layout)."""

_WORK = "distillery_export_work"
"""An in-memory database attached for the export's own tables: the warehouse connection is read-only, and
a temporary table would be invisible to the cursor :func:`read_batches` reads on."""
_ROWS = f"{_WORK}.export_rows"
_PLAN = f"{_WORK}.export_plan"
_TODO = f"{_WORK}.export_todo"
_SPLIT_SQL = "coalesce(nullif(split, ''), 'train')"  # `split or "train"`, as _selections reads it


def _digest_column(layout: _Layout) -> str:
    return f"digest_{layout.config}"


def _layout_sql(layout: _Layout) -> str:
    """SQL true for the ``formatted`` rows a layout holds (what :func:`_selections` selects)."""
    kinds = ", ".join("'" + kind.replace("'", "''") + "'" for kind in layout.kinds)
    selected = f"kind IN ({kinds})"
    if layout.whole_turns_only:
        selected += f" AND NOT coalesce(starts_with(truncation, '{_CUT_IN_REPLY}'), false)"
    return selected


@dataclass(frozen=True)
class _ShardFile:
    """One export file of one shard: a layout's rows of the shard in one split."""

    config: str
    split: str
    shard: int
    rows: int
    key: str
    """What decides the file's bytes: the shard format, the config and every row's content, in order."""
    relative: str
    """The JSONL file: ``<config>/<split>.jsonl`` when the split is one shard, else
    ``<config>/<split>-00001-of-00012.jsonl``."""

    @property
    def provisional(self) -> str:
        """How the batches name the file before the writer gives it its name (:func:`_selections`)."""
        return _provisional(self.config, self.split, self.shard)


def _provisional(config: str, split: str, shard: int) -> str:
    return f"{config}/{split}#{shard}"


def _content_digest(layout: _Layout, types: Mapping[str, str]) -> str:
    """SQL hashing what a layout writes of a row, and nothing else: a column no file of the layout shows
    (an absorbed copy's licence note in ``extra``, the token ids in a text-only layout) must not change
    its shards' keys, or an unchanged file would be written again."""
    hashed = []
    for field in layout.fields:
        if field.codec == "tools":  # the only part of ``extra`` a layout writes (_tools)
            hashed.append("json_extract(extra, '$.tools')")
        elif types.get(field.column) in ("DOUBLE", "FLOAT", "REAL"):
            # Floats as their text: DuckDB hashes -0.0 as 0.0, which JSON writes differently.
            hashed.append(f"CAST({quote(field.column)} AS VARCHAR)")
        else:
            hashed.append(quote(field.column))
    return f"CASE WHEN {_layout_sql(layout)} THEN hash({', '.join(hashed)}) END"


def _plan(connection: duckdb.DuckDBPyConnection) -> list[_ShardFile]:
    """Every row's place (split, source order) and shard, kept in a temporary table, and the files the
    export is made of. Each row's content is hashed, per layout it belongs to, for the keys."""
    kinds = ", ".join("'" + kind + "'" for kind in _KINDS)
    unknown = connection.execute(
        f"SELECT row_id, kind FROM formatted WHERE kind IS NULL OR kind NOT IN ({kinds}) LIMIT 1"
    )
    for row_id, kind in unknown.fetchall():
        raise _unknown_kind(row_id, kind)
    types = dict(table_columns(connection, "formatted"))
    digests = ", ".join(f"{_content_digest(layout, types)} AS {quote(_digest_column(layout))}" for layout in _LAYOUTS)
    # Two steps: a sort that carries the hashes computes them on the sorted rows, twice the time. Rows are
    # found again by their place in the table (rowid), which stays unique where a row id would not.
    connection.execute(
        f"CREATE OR REPLACE TABLE {_ROWS} AS SELECT rowid AS table_row, row_id, {_SPLIT_SQL} AS split_name, "
        f"kind, truncation, source, source_uri, {digests} FROM formatted WHERE row_id IS NOT NULL"
    )
    connection.execute(
        f"""
        CREATE OR REPLACE TABLE {_PLAN} AS
        SELECT * EXCLUDE (source, source_uri, closes, piece),
               dense_rank() OVER (ORDER BY split_name, piece) - 1 AS shard
        FROM (
            SELECT *, coalesce(sum(closes) OVER (
                PARTITION BY split_name ORDER BY position
                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS piece
            FROM (
                SELECT *, row_number() OVER (ORDER BY split_name, {SOURCE_ORDER}) AS position,
                       CAST(md5_number(row_id) % {_SHARD_ROWS} = 0 AS INTEGER) AS closes
                FROM {_ROWS}))"""
    )
    connection.execute(f"DROP TABLE {_ROWS}")
    files: list[_ShardFile] = []
    for layout in _LAYOUTS:
        shards = connection.execute(
            f"SELECT split_name, shard, count(*), "
            f"md5(string_agg(CAST({quote(_digest_column(layout))} AS VARCHAR), ',' ORDER BY position)) "
            f"FROM {_PLAN} WHERE {_layout_sql(layout)} GROUP BY ALL ORDER BY 1, 2"
        ).fetchall()
        for split, group in itertools.groupby(shards, key=lambda shard: shard[0]):
            members = list(group)
            for number, (_, shard, rows, rows_digest) in enumerate(members):
                key = hashlib.sha256(f"{_SHARD_FORMAT}|{layout.config}|{rows_digest}".encode()).hexdigest()[:32]
                name = split if len(members) == 1 else f"{split}-{number:05d}-of-{len(members):05d}"
                files.append(
                    _ShardFile(layout.config, split, int(shard), int(rows), key, f"{layout.config}/{name}.jsonl")
                )
    # Only what reading needs is kept while the rows are read (the content hashes were the bulk).
    connection.execute(f"CREATE OR REPLACE TABLE {_PLAN} AS SELECT table_row, split_name, shard, position FROM {_PLAN}")
    return files


_SHARD_NAME = re.compile(r"-\d{5}-of-\d{5}$")


def split_of(relative: str) -> str:
    """The split an export file holds, from its path (``sft/train.jsonl``, ``sft/train-00001-of-00012.parquet``)."""
    stem = relative.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return _SHARD_NAME.sub("", stem)


# --------------------------------------------------------------------------- reading ``formatted``


_RANGE_ROWS = 5_000
"""Rows per range of positions: what is sorted in memory at once. In source order a range holds one
source's rows, the longest ones together (in row-id order every range held the average mix): at 10k rows
the 1M benchmark's export peaked ~140 MiB higher."""
_MAX_RANGES = 256
"""At most this many ranges (files spooled at once); past it ranges grow instead."""
_SCAN_ROWS = 8_192
"""Rows per batch of the one scan that spools ``formatted`` into its ranges."""
_BATCH_BYTES = 8 << 20
"""Bytes of a batch handed on from a range at most (``batch_rows`` rows at most either way): about what
``batch_rows`` rows of an average mix take."""
_POSITION = "#position"
_SHARD = "#shard"


def _todo_sql() -> str:
    return f"{_PLAN} p SEMI JOIN {_TODO} t ON t.split_name = p.split_name AND t.shard = p.shard"


def _bounds(connection: duckdb.DuckDBPyConnection, rows: int) -> list[int]:
    """Positions cutting the rows to write into ranges of about :data:`_RANGE_ROWS` rows (none for one range)."""
    ranges = min(math.ceil(rows / _RANGE_ROWS), _MAX_RANGES)
    if ranges <= 1:
        return []
    (bounds,) = fetch_one(
        connection,
        f"SELECT list_distinct(quantile_disc(position, ?)) FROM {_todo_sql()}",
        [[k / ranges for k in range(1, ranges)]],
    )
    return sorted(bounds)


_PARSED = "#parsed"


def _read_formatted(
    connection: duckdb.DuckDBPyConnection, batch_rows: int, spool: Path, rows: int
) -> Iterator[pa.RecordBatch]:
    """The columns the layouts use of the rows of the shards to write (``rows`` of them, in the temporary
    tables of :func:`_plan` and :func:`write_export`), with their position and shard, range by range of
    positions, each range sorted: every file gets its rows in source order, and the whole wide table is
    never sorted at once.

    ``formatted`` is read in one scan, each row appended to its range's file in ``spool`` (Arrow IPC), then
    each range is read back, sorted and handed on (and its file deleted). A query per range would cost a
    scan of the whole table per range. ``extra`` only where it may hold a ``tools`` key (the word, or a
    ``\\u`` escape that could spell it), else NULL: most rows skip decoding it. A flat layout's token ids are
    also parsed (``<column>#parsed``; DuckDB parses JSON fastest) for the Parquet files written alongside."""
    columns = {"row_id": "f.row_id", "kind": "f.kind", "split": "f.split", "truncation": "f.truncation"}
    for layout in _LAYOUTS:
        for field in layout.fields:
            name = "f." + quote(field.column)
            columns[field.column] = (
                f"CASE WHEN contains({name}, 'tools') OR contains({name}, '\\u') THEN {name} END"
                if field.codec == "tools"
                else name
            )
    ids = [f.column for layout in _LAYOUTS if layout.flat for f in layout.fields if f.codec == "ids"]
    bounds = np.array(_bounds(connection, rows), dtype=np.int64)
    select = ", ".join(f"{sql} AS {quote(name)}" for name, sql in columns.items())
    select += f", p.position AS {quote(_POSITION)}, p.shard AS {quote(_SHARD)}"
    spool.mkdir()
    try:
        ranges: set[int] = set()
        with contextlib.ExitStack() as files:
            writers: dict[int, Any] = {}
            scan = f"SELECT {select} FROM formatted f JOIN (SELECT * FROM {_todo_sql()}) p ON p.table_row = f.rowid"
            for batch in read_batches(connection, scan, batch_rows=_SCAN_ROWS):
                positions = batch.column(_POSITION).to_numpy()
                found = np.searchsorted(bounds, positions, side="right")
                order = np.argsort(found, kind="stable")  # one copy of the batch, then a slice per range
                grouped, found = batch.take(pa.array(order)), found[order]
                starts = np.flatnonzero(np.diff(found, prepend=-1))
                for start, stop in itertools.pairwise([*starts.tolist(), len(found)]):
                    index = int(found[start])
                    if index not in writers:
                        path = spool / f"{index}.arrows"
                        writers[index] = files.enter_context(pa.ipc.new_stream(path, batch.schema))
                    writers[index].write_batch(grouped.slice(start, stop - start))
            ranges = set(writers)
        # The scan was the last read of the table's rows, and the last use of the plan (its memory is not
        # DuckDB's cache: only detaching the work database hands it back).
        connection.execute(f"DETACH DATABASE IF EXISTS {_WORK}")
        drop_cached_pages(connection, configured_memory_limit(SCAN_MEMORY_LIMIT))
        with duckdb.connect() as parser:
            for index in sorted(ranges):
                path = spool / f"{index}.arrows"
                with pa.ipc.open_stream(path) as reader:
                    ranged = reader.read_all()
                path.unlink()
                ranged = ranged.sort_by([(_POSITION, "ascending")]).drop_columns([_POSITION])
                if ids:
                    ranged = _with_parsed_ids(parser, ranged, ids)
                # Rows in source order come a source at a time, some far longer than others: batches are
                # bounded in bytes too, so the long ones do not multiply what the writer holds in flight.
                rows_per_batch = int(_BATCH_BYTES * ranged.num_rows / max(ranged.nbytes, 1))
                yield from ranged.to_batches(max_chunksize=max(1, min(batch_rows, rows_per_batch)))
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _with_parsed_ids(parser: duckdb.DuckDBPyConnection, rows: pa.Table, columns: list[str]) -> pa.Table:
    """``rows`` with each token-id column also parsed, as ``<column>#parsed`` (a list of ints, [] for NULL)."""
    parser.register("spooled", rows.select(columns).append_column("_position", pa.array(np.arange(rows.num_rows))))
    try:
        parsed = parser.sql(
            "SELECT "
            + ", ".join(
                f"""coalesce(json_transform_strict({quote(c)}, '["BIGINT"]'), []) AS {quote(c + _PARSED)}"""
                for c in columns
            )
            + " FROM spooled ORDER BY _position"
        ).to_arrow_table()
    except duckdb.Error as error:
        raise ExportError(f"token ids ({', '.join(columns)}) that are not lists of 64-bit ints: {error}") from error
    finally:
        parser.unregister("spooled")
    if parsed.num_rows != rows.num_rows:
        raise ExportError(f"parsing token ids gave {parsed.num_rows} rows for {rows.num_rows}")
    for name in parsed.column_names:
        rows = rows.append_column(name, parsed.column(name))
    return rows


# --------------------------------------------------------------------------- one batch → lines


# Fixed key order and separators: the same rows always give the same bytes, hence the same version.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_encode_json = _ENCODER.encode
_encode_str = json.encoder.encode_basestring  # what _ENCODER writes for a str (ensure_ascii=False)


def _json_line(record: Mapping[str, Any]) -> bytes:
    """What ``json.dumps`` writes for the record, with token ids copied in as they are."""
    if not any(isinstance(value, _Ids) for value in record.values()):
        return (_ENCODER.encode(record) + "\n").encode("utf-8")
    fields = (
        _ENCODER.encode(key) + ":" + (value if isinstance(value, _Ids) else _ENCODER.encode(value))
        for key, value in record.items()
    )
    return ("{" + ",".join(fields) + "}\n").encode("utf-8")


def _plain_json(values: list[Any], codec: str) -> list[str]:
    """Strings, ints or floats (or None) as ``_ENCODER`` writes each: strings one C call each; numbers by
    encoding the list at once and splitting it at its commas (a number's JSON text has none)."""
    if codec == "str":
        if None in values:
            return ["null" if value is None else _encode_str(value) for value in values]
        return list(map(_encode_str, values))
    return _encode_json(values)[1:-1].split(",") if values else []


@dataclass
class _Chunk:
    """One batch's lines of one export file: UTF-8 text, each line's length in bytes (newline included),
    the Parquet schema of its records as :class:`_ParquetSchema` would infer it and, for a nested layout,
    its rows for the Parquet file (plain columns in their column's type, JSON ones as Arrow infers them; a
    flat layout's come from :func:`_flat_tables`)."""

    relative: str
    data: Any  # a buffer: bytes or pa.Buffer
    lengths: np.ndarray
    schema: pa.Schema
    table: pa.Table | None = None
    plain_ids: bool = True
    """Token ids written only as ints: DuckDB's parse (for the Parquet written alongside) is then the JSON
    reader's; a float it would round, the reader refuses."""


def _encode_batch(batch: pa.RecordBatch) -> list[_Chunk]:
    """The JSONL lines a batch of ``formatted`` rows (as :func:`_read_formatted` reads them) adds to each
    file, built column by column with ``json``'s own C encoders: JSON columns decoded and encoded once,
    token ids copied without their spaces. Runs in worker processes (module level, picklable)."""
    kinds = batch.column("kind")
    known = pc.fill_null(pc.is_in(kinds, value_set=pa.array(_KINDS)), False)
    if not pc.all(known).as_py():
        position = pc.index(known, False).as_py()
        raise _unknown_kind(batch.column("row_id")[position].as_py(), kinds[position].as_py())
    columns = _Columns(batch)
    chunks = []
    for layout, relative, rows in _selections(batch, _LAYOUTS):
        try:
            chunks.append(_encode_rows(layout, relative, columns, rows))
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise _incompatible(relative, error) from error
    return chunks


def _selections(batch: pa.RecordBatch, layouts: Iterable[_Layout]) -> Iterator[tuple[_Layout, str, np.ndarray]]:
    """``(layout, JSONL file, positions of its rows in the batch)`` for each file the batch adds rows to."""
    kinds = batch.column("kind")
    split = batch.column("split")
    split = pc.if_else(pc.fill_null(pc.equal(split, ""), True), "train", split)  # `split or "train"`
    cut = pc.fill_null(pc.starts_with(batch.column("truncation"), _CUT_IN_REPLY), False)
    shards = batch.column(_SHARD)
    for layout in layouts:
        rows = pc.fill_null(pc.is_in(kinds, value_set=pa.array(layout.kinds)), False)
        if layout.whole_turns_only:
            rows = pc.and_(rows, pc.invert(cut))
        if not pc.any(rows).as_py():
            continue
        for name in pc.unique(pc.filter(split, rows)).to_pylist():
            in_split = pc.and_(rows, pc.equal(split, name))
            for shard in pc.unique(pc.filter(shards, in_split)).to_pylist():
                selected = pc.and_(in_split, pc.equal(shards, shard))
                yield (
                    layout,
                    _provisional(layout.config, name, shard),
                    np.flatnonzero(selected.to_numpy(zero_copy_only=False)),
                )


class _Columns:
    """A batch's columns as Python lists, each converted once when first needed, and the JSON text of
    the fields every layout has (id, meta data), encoded once for the whole batch."""

    def __init__(self, batch: pa.RecordBatch) -> None:
        self.batch = batch
        self.lists: dict[str, list[Any]] = {}
        self.encoded: dict[_Field, list[str]] = {}

    def take(self, name: str, rows: np.ndarray) -> list[Any]:
        values = self.lists.get(name)
        if values is None:
            values = self.lists[name] = self.batch.column(name).to_pylist()
        return values if len(rows) == len(values) else [values[i] for i in rows.tolist()]

    def fragments(self, field: _Field, rows: np.ndarray) -> list[str]:
        """A ``str``, ``int`` or ``float`` field's values as ``_ENCODER`` writes them."""
        if field not in _SHARED_FIELDS:
            return _plain_json(self.take(field.column, rows), field.codec)
        encoded = self.encoded.get(field)
        if encoded is None:
            everything = np.arange(self.batch.num_rows)
            encoded = self.encoded[field] = _plain_json(self.take(field.column, everything), field.codec)
        return encoded if len(rows) == len(encoded) else [encoded[i] for i in rows.tolist()]


_SHARED_FIELDS = frozenset((_ID, *_META_FIELDS))
_SPACES = str.maketrans("", "", " ")
_INT_LIST = str.maketrans("", "", "0123456789,[]-")  # what is left of a list of ints: nothing


def _encode_rows(layout: _Layout, relative: str, columns: _Columns, rows: np.ndarray) -> _Chunk:
    """One layout's lines for these rows (positions in the batch) and their Parquet schema: keys in
    first-seen order, each typed as Arrow infers it from the values (what :class:`_ParquetSchema` does).
    For a nested layout also the rows as that inference reads them, to write its Parquet file alongside."""
    template = "{"
    fragments: list[list[str]] = []
    fields: list[pa.Field] = []
    trailing: list[pa.Field] = []  # an optional key the first row lacks is first seen after every other key
    arrays: dict[str, pa.Array] = {}
    plain_ids = True
    for field in layout.fields:
        key = _encode_str(field.key) + ":"
        if field.codec == "tools":
            extras = columns.take(field.column, rows)
            tools = [_tools({"extra": json.loads(extra)}) if extra is not None else None for extra in extras]
            if not any(tools):
                continue
            template += "%s"
            fragments.append(["," + key + _encode_json(value) if value else "" for value in tools])
            arrays[field.key] = pa.array([value if value else None for value in tools])
            (fields if tools[0] else trailing).append(pa.field(field.key, arrays[field.key].type))
            continue
        template += ("," if fields or trailing else "") + key.replace("%", "%%") + "%s"
        if field.codec == "json":
            decoded = [
                json.loads(value) if isinstance(value, str) else value for value in columns.take(field.column, rows)
            ]
            fragments.append([_encode_json(value) for value in decoded])
            arrays[field.key] = pa.array(decoded)
            typed = arrays[field.key].type
        elif field.codec == "ids":
            compact = [
                "[]" if value is None else value.translate(_SPACES) for value in columns.take(field.column, rows)
            ]
            fragments.append(compact)
            plain_ids = plain_ids and not any(value.translate(_INT_LIST) for value in compact)
            typed = pa.list_(pa.null()) if compact.count("[]") == len(compact) else pa.list_(pa.int64())
        else:
            encoded = columns.fragments(field, rows)
            fragments.append(encoded)
            nulls = encoded.count("null") == len(encoded)  # a string "null" is written with its quotes
            typed = pa.null() if nulls else _ARROW_TYPES[field.codec]
            if not layout.flat:  # in the type of the column, like a flat layout's (see _RowGroups.add)
                arrays[field.key] = pa.array(columns.take(field.column, rows), _ARROW_TYPES[field.codec])
        fields.append(pa.field(field.key, typed))
    template += "}\n"
    lines = pa.array([template % values for values in zip(*fragments, strict=True)], pa.large_string())
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1)
    schema = pa.schema(fields + trailing)
    return _Chunk(
        relative,
        lines.buffers()[2].slice(0, int(offsets[-1])),
        np.diff(offsets),
        schema,
        None if layout.flat else pa.table({name: arrays[name] for name in schema.names}),
        plain_ids,
    )


_FLAT_LAYOUTS = tuple(layout for layout in _LAYOUTS if layout.flat)


def _flat_tables(batch: pa.RecordBatch) -> dict[str, pa.Table]:
    """The batch's rows of each flat layout's file (by JSONL path) as the JSON reader would read them back
    from their lines, in the layout's full schema: the columns themselves, token ids as DuckDB parsed them."""
    tables = {}
    for layout, relative, rows in _selections(batch, _FLAT_LAYOUTS):
        positions = pa.array(rows, pa.int64())
        arrays = [
            batch.column(field.column + (_PARSED if field.codec == "ids" else "")).take(positions).cast(typed)
            for field, typed in zip(layout.fields, layout.schema.types, strict=True)
        ]
        tables[relative] = pa.Table.from_arrays(arrays, schema=layout.schema)
    return tables


# --------------------------------------------------------------------------- writing


class _ParquetSchema:
    """The Parquet schema of one file's records: each chunk's columns typed as Arrow infers them from
    the values (``pa.Table.from_pydict``: nested keys unioned, missing ones null), unified over chunks."""

    def __init__(self, name: str, chunk_rows: int) -> None:
        self.name = name
        self.chunk_rows = chunk_rows
        self.schema: pa.Schema | None = None
        self.chunk: list[Mapping[str, Any]] = []

    def add(self, record: Mapping[str, Any]) -> None:
        self.chunk.append(record)
        if len(self.chunk) >= self.chunk_rows:
            self._infer()

    def result(self) -> pa.Schema | None:
        self._infer()
        return self.schema

    def _infer(self) -> None:
        if not self.chunk:
            return
        try:
            # from_pylist would take the columns of the first row only; union them over the chunk.
            columns = list(dict.fromkeys(key for record in self.chunk for key in record))
            values = {c: [_typed_like(record.get(c)) for record in self.chunk] for c in columns}
            chunk_schema = pa.Table.from_pydict(values).schema
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise _incompatible(self.name, error) from error
        self.chunk = []
        self.unify(chunk_schema)

    def unify(self, chunk_schema: pa.Schema) -> None:
        """Fold in one chunk's schema. Per-chunk schemas unified give what one inference over all the rows
        gives: fields in first-seen order, null-typed ones widened, ints promoted to floats."""
        try:
            self.schema = (
                chunk_schema
                if self.schema is None
                else pa.unify_schemas([self.schema, chunk_schema], promote_options="permissive")
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise _incompatible(self.name, error) from error


def _incompatible(name: str, error: Exception) -> ExportError:
    return ExportError(
        f"{name}: rows have incompatible value types for Parquet ({error}); "
        "a field holds different JSON types across rows"
    )


def _typed_like(value: Any) -> Any:
    # Token ids are typed as a list of ints (list<null> when empty, as Arrow types an empty list).
    if isinstance(value, _Ids):
        return [] if value == "[]" else [0]
    return value


_MIN_BLOCK = 1 << 20
"""The smallest block of JSONL Arrow's JSON reader parses at a time, in bytes (a block also holds two
longest lines)."""


def _block_size(longest_line: int) -> int:
    return max(_MIN_BLOCK, 2 * longest_line)


class _RowGroups:
    """A Parquet file written while its JSONL file is, in the schema of the first rows: the rows of each
    block of :data:`_MIN_BLOCK` bytes of JSONL form one row group, as they form one batch of Arrow's
    streaming JSON reader (a line goes to the block its newline falls in). That is the file
    :func:`jsonl_to_parquet` makes of the JSONL if the block stays that size and the schema inferred from
    all the rows is the one written (:func:`_same_file`). Rows in another schema end it (``abandoned``)."""

    def __init__(self, target: Path, schema: pa.Schema) -> None:
        self.writer = pq.ParquetWriter(target, schema)
        self.schema = schema
        self.written = 0  # bytes of JSONL before the pending rows
        self.pending: list[pa.Table] = []
        self.blocks: list[np.ndarray] = []  # the block of each pending row
        self.rows = 0
        self.abandoned = False

    def add(self, table: pa.Table, lengths: np.ndarray) -> None:
        """Rows and their JSONL lines' lengths. Their columns are written in the file's types: a key these
        rows lack as nulls (the reader reads a missing key as null); a column in another type ends the file."""
        if self.abandoned or not set(table.column_names) <= set(self.schema.names):
            self.abandon()
            return
        columns = []
        for field in self.schema:
            if field.name not in table.column_names:
                columns.append(pa.nulls(table.num_rows, field.type))
            elif (column := _widened(table.column(field.name), field.type)) is not None:
                columns.append(column)
            else:
                self.abandon()
                return
        table = pa.Table.from_arrays(columns, schema=self.schema)
        ends = self.written + np.cumsum(lengths, dtype=np.int64)
        self.written = int(ends[-1])
        self.pending.append(table)
        self.blocks.append((ends - 1) // _MIN_BLOCK)
        if self.blocks[0][0] < self.blocks[-1][-1]:  # the last row is past a block: that one is complete
            self._flush(complete_only=True)

    def _flush(self, complete_only: bool) -> None:
        rows, blocks = pa.concat_tables(self.pending), np.concatenate(self.blocks)
        done = int(np.searchsorted(blocks, blocks[-1])) if complete_only else len(blocks)
        starts = [0, *(np.flatnonzero(np.diff(blocks[:done])) + 1).tolist(), done]
        for start, stop in itertools.pairwise(starts):
            self.writer.write_table(rows.slice(start, stop - start).combine_chunks())
        self.rows += done
        self.pending, self.blocks = [rows.slice(done)], [blocks[done:]]

    def close(self) -> None:
        if not self.abandoned and sum(table.num_rows for table in self.pending):
            self._flush(complete_only=False)
        self.pending, self.blocks = [], []  # an empty slice still holds the last row group's buffers
        self.writer.close()

    def abandon(self) -> None:
        self.abandoned = True
        self.pending, self.blocks = [], []
        self.writer.close()


def _widened(column: pa.ChunkedArray, typed: pa.DataType) -> pa.ChunkedArray | None:
    """The column in ``typed`` when that is its type or a wider one Arrow's inference would give all the rows
    (a struct with more keys, missing ones null; ints as floats), as the JSON reader reads them; else None."""
    if column.type.equals(typed):
        return column
    try:
        unified = pa.unify_schemas(
            [pa.schema([("c", typed)]), pa.schema([("c", column.type)])], promote_options="permissive"
        )
        return column.cast(typed) if unified.field("c").type.equals(typed) else None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None


@dataclass
class _ExportFile:
    handle: IO[bytes]
    digest: Any
    schema: _ParquetSchema
    parquet: _RowGroups | None = None
    rows: int = 0
    longest_line: int = 0


class _ExportFiles:
    """One open JSONL file per shard file to write, hashed while written, its Parquet schema unified chunk by
    chunk and its Parquet file written alongside (:class:`_RowGroups`) while the rows allow. ``names``: the
    files to write, by the name the batches give them (:attr:`_ShardFile.provisional`); chunks of other files
    (taken over from the previous version) are skipped."""

    def __init__(self, folder: Path, names: Mapping[str, str]) -> None:
        self.folder = folder
        self.names = names
        self.files: dict[str, _ExportFile] = {}
        self.open: dict[str, _ExportFile] = {}
        """The file being written of each config and split: rows come in source order, shard after shard,
        so a shard's files are complete once the next shard's rows arrive, and are closed then (their
        Parquet rows pending a block flushed), not held open to the end."""

    def write_all(self, chunks: list[_Chunk], flat: Mapping[str, pa.Table]) -> None:
        """Add one batch's chunks; ``flat``: the batch's rows of flat layouts, by provisional name."""
        for chunk in chunks:
            if chunk.relative not in self.names:
                continue
            table = chunk.table if chunk.table is not None else flat.get(chunk.relative)
            self.write(chunk, table if chunk.plain_ids else None)

    def write(self, chunk: _Chunk, table: pa.Table | None) -> None:
        """Add a chunk's lines; ``table``: its rows for the Parquet file."""
        relative = self.names[chunk.relative]
        file = self.files.get(relative)
        if file is None:
            split = chunk.relative.rsplit("#", 1)[0]  # the provisional name's config and split
            if (finished := self.open.pop(split, None)) is not None:
                finished.handle.close()
                if finished.parquet is not None:
                    finished.parquet.close()
            (self.folder / relative).parent.mkdir(parents=True, exist_ok=True)
            handle = (self.folder / relative).open("wb")
            file = self.files[relative] = _ExportFile(handle, hashlib.sha256(), _ParquetSchema(relative, 0))
            self.open[split] = file
            if table is not None:
                file.parquet = _RowGroups(self.parquet_path(relative), table.schema)
        file.handle.write(chunk.data)
        file.digest.update(chunk.data)
        file.schema.unify(chunk.schema)
        file.rows += len(chunk.lengths)
        file.longest_line = max(file.longest_line, int(chunk.lengths.max()))
        if file.parquet is not None:
            if table is None:
                file.parquet.abandon()
            else:
                file.parquet.add(table, chunk.lengths)

    def parquet_path(self, relative: str) -> Path:
        return self.folder / _parquet_name(relative)

    def close(self) -> None:
        for file in self.files.values():
            file.handle.close()
            if file.parquet is not None:
                file.parquet.abandon()

    def summary(self, plan: Iterable[_ShardFile]) -> dict[str, dict[str, Any]]:
        """Per JSONL file written (relative path; all written, now closed): sha256, rows, bytes and shard key."""
        for file in self.files.values():
            file.handle.close()
        return {
            shard.relative: {
                "sha256": self.files[shard.relative].digest.hexdigest(),
                "rows": self.files[shard.relative].rows,
                "bytes": (self.folder / shard.relative).stat().st_size,
                "key": shard.key,
            }
            for shard in plan
            if shard.relative in self.files
        }

    def parquet(
        self, plan: list[_ShardFile], taken: Mapping[str, _TakenOver], linked: dict[FileStat, FileStat]
    ) -> dict[str, dict[str, Any]]:
        """A Parquet file beside each JSONL file, every shard of a split in the schema inferred from all the
        split's records (so a reader that reads the shards as one dataset finds one schema): the one written
        alongside if it is the file Arrow's JSON reader makes of the JSONL in that schema (:func:`_same_file`),
        the previous version's if it was in that schema, else converted by the reader (:func:`jsonl_to_parquet`).
        Returns the manifest's ``parquet_files``; each entry keeps its own rows' schema and longest line, what
        a later version taking the shard over needs."""
        result = {}
        for _, group in itertools.groupby(plan, key=lambda shard: (shard.config, shard.split)):
            members = list(group)
            own: list[pa.Schema | None] = []
            for shard in members:
                previous = taken.get(shard.relative)
                own.append(previous.row_schema if previous else self.files[shard.relative].schema.result())
            merged = _ParquetSchema(members[0].relative, 0)
            for schema in own:
                if schema is not None:
                    merged.unify(schema)
            split_schema = merged.schema
            for shard, row_schema in zip(members, own, strict=True):
                target = self.parquet_path(shard.relative)
                previous = taken.get(shard.relative)
                if previous is not None and split_schema is not None and previous.parquet_schema.equals(split_schema):
                    _take_over(previous, previous.parquet, target, linked)
                    result[_parquet_name(shard.relative)] = previous.parquet_entry
                    continue
                if previous is not None:  # the split's schema changed: the shard's Parquet is written anew
                    longest_line = previous.longest_line
                    rows = jsonl_to_parquet(
                        self.folder / shard.relative, target, schema=split_schema, longest_line=longest_line
                    )
                else:
                    file = self.files[shard.relative]
                    if file.parquet is not None:
                        file.parquet.close()
                    longest_line, rows = file.longest_line, file.rows
                    if not _same_file(file, split_schema):
                        rows = jsonl_to_parquet(
                            self.folder / shard.relative, target, schema=split_schema, longest_line=longest_line
                        )
                result[_parquet_name(shard.relative)] = {
                    "sha256": file_digest(target),
                    "rows": rows,
                    "bytes": target.stat().st_size,
                    "row_schema": None if row_schema is None else _schema_text(row_schema),
                    "longest_line": longest_line,
                }
        return dict(sorted(result.items()))


def _parquet_name(relative: str) -> str:
    return relative.removesuffix(".jsonl") + ".parquet"


def _schema_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode("ascii")


def _schema_of(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


def _link(source: Path, target: Path) -> None:
    """``target`` as a hard link to ``source`` (a file of an immutable version: sharing it costs no space),
    or a copy where the file system has no hard links."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


@dataclass(frozen=True)
class _TakenOver:
    """A file of the previous version with the key of one of this version's: its rows, bytes and order."""

    jsonl: Path
    entry: dict[str, Any]
    parquet: Path
    parquet_entry: dict[str, Any]
    parquet_schema: pa.Schema
    row_schema: pa.Schema | None
    longest_line: int
    seen: dict[Path, os.stat_result]
    """Each of the two files' stat when it was found to match its manifest."""


def _taken_over(root: Path, plan: list[_ShardFile]) -> dict[str, _TakenOver]:
    """The files of the plan (by relative path) that the latest version under ``root`` holds with the same key,
    JSONL and Parquet each matching its manifest: hashed again unless its stat is the one
    :func:`verify_published` recorded when it last matched. Anything unreadable is simply written anew."""
    try:
        version = (root / "LATEST").read_text(encoding="utf-8").strip()
        folder = root / version
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files, parquet_files = dict(manifest["files"]), dict(manifest["parquet_files"])
        if not version or manifest.get("data_version") != version or data_version(manifest) != version:
            return {}  # an edited manifest describes nothing for sure
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    by_key = {
        entry["key"]: name
        for name, entry in files.items()
        if isinstance(entry, dict) and isinstance(entry.get("key"), str)
    }
    trusted = _verified_so_far(verified_record(root))[1].get(version, _NEVER_HASHED).files
    found: dict[str, _TakenOver] = {}
    for shard in plan:
        name = by_key.get(shard.key)
        if name is None or files[name].get("rows") != shard.rows:
            continue
        parquet_entry = parquet_files.get(_parquet_name(name))
        if not isinstance(parquet_entry, dict) or "longest_line" not in parquet_entry:
            continue
        try:
            seen = {
                folder / name: (folder / name).stat(),
                folder / _parquet_name(name): (folder / _parquet_name(name)).stat(),
            }
            if not all(
                _matches(folder / relative, entry, seen[folder / relative], trusted.get(relative))
                for relative, entry in ((name, files[name]), (_parquet_name(name), parquet_entry))
            ):
                continue
            row_schema = parquet_entry.get("row_schema")
            found[shard.relative] = _TakenOver(
                folder / name,
                files[name],
                folder / _parquet_name(name),
                dict(parquet_entry),
                pq.read_schema(folder / _parquet_name(name)),
                None if row_schema is None else _schema_of(row_schema),
                int(parquet_entry["longest_line"]),
                seen,
            )
        except (OSError, ValueError, TypeError, AttributeError, pa.ArrowException):
            continue
    return found


def _take_over(previous: _TakenOver, source: Path, target: Path, linked: dict[FileStat, FileStat]) -> None:
    """Link ``target`` to ``source`` (a file of ``previous``) and make sure it is still the file that matched
    its manifest: the same inode, size and modification time as then (a copy, where links fail: hashed
    again). ``linked``: the source's stat before and after, for :func:`_restat_taken_over`."""
    seen = previous.seen[source]
    _link(source, target)
    now = target.stat()
    if (now.st_ino, now.st_size, now.st_mtime_ns) != (seen.st_ino, seen.st_size, seen.st_mtime_ns):
        expected = previous.entry if source == previous.jsonl else previous.parquet_entry
        if now.st_ino == seen.st_ino or file_digest(target) != expected.get("sha256"):
            raise ExportError(
                f"{source} changed while this export was taking it over (a published version is immutable): "
                "restore it or move that version away, then export again"
            )
    linked[_as_file_stat(seen)] = _file_stat(source)


def _restat_taken_over(root: Path, linked: Mapping[FileStat, FileStat]) -> None:
    """Record the new stat of the files that were just linked (a link changes a file's status-change time)
    wherever the record had their stat from before (the previous version, and older ones sharing the file):
    they matched their manifest a moment ago, and :func:`verify_published` would otherwise hash them all
    again at its next check for a change of nothing but their link count."""
    path = verified_record(root)
    checks, known = _verified_so_far(path)
    if not linked or not known:
        return
    for version in known.values():
        for relative, stat in version.files.items():
            if stat in linked:
                version.files[relative] = linked[stat]
    _write_verified(path, checks, known)


def _matches(path: Path, entry: Mapping[str, Any], now: os.stat_result, recorded: FileStat | None) -> bool:
    """Does the file match its manifest entry: its stat ``now`` is the one recorded when it last matched, or
    its hash is the entry's."""
    return _as_file_stat(now) == recorded or file_digest(path) == entry.get("sha256")


def _same_file(file: _ExportFile, schema: pa.Schema | None) -> bool:
    """Whether the Parquet written alongside is the file the JSON reader makes of the JSONL: every row
    written, in the schema inferred from all of them, in blocks of the smallest size (two longest lines
    fit in one)."""
    return (
        file.parquet is not None
        and not file.parquet.abandoned
        and file.parquet.rows == file.rows
        and schema is not None
        and schema.equals(file.parquet.schema)
        and _block_size(file.longest_line) == _MIN_BLOCK
    )


def jsonl_to_parquet(
    source: Path, target: Path, batch_rows: int = 2_000, schema: pa.Schema | None = None, longest_line: int = 0
) -> int:
    """Convert a JSONL export file to Parquet, batch by batch with Arrow's JSON reader, and return the row
    count. ``schema``: the file's Parquet schema when the writer inferred it (else inferred here in a first
    pass over the file, ``batch_rows`` lines at a time); ``longest_line`` in bytes, if known."""
    if schema is None:
        inferred = _ParquetSchema(str(source), batch_rows)
        with source.open("rb") as handle:
            for line in handle:
                inferred.add(json.loads(line))
                longest_line = max(longest_line, len(line))
        schema = inferred.result()
    if schema is None:
        return 0
    # A block must hold the longest line whole.
    read = pa_json.ReadOptions(block_size=_block_size(longest_line))
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    rows = 0
    try:
        with pq.ParquetWriter(target, schema) as writer:
            for batch in pa_json.open_json(source, read_options=read, parse_options=parse):
                writer.write_batch(batch)
                rows += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise _incompatible(str(source), error) from error
    return rows


# --------------------------------------------------------------------------- manifest


def _query(connection: duckdb.DuckDBPyConnection, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, list(params))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def describe_formatted(connection: duckdb.DuckDBPyConnection, info: ExportInfo) -> dict[str, Any]:
    """Licences (with their obligations), attribution list, teachers, tokenizer/template and what was
    removed at formatting: the manifest's account of the rows in ``formatted``."""
    tables = table_names(connection)
    policy = LicensePolicy.with_overrides(info.license_overrides)
    licenses = []
    for item in _query(connection, "SELECT license, count(*) AS rows FROM formatted GROUP BY 1 ORDER BY 2 DESC, 1"):
        terms = policy.lookup(item["license"])
        licenses.append(
            {
                "license": item["license"],
                "rows": item["rows"],
                "known": terms is not None,
                "commercial": terms.commercial if terms else None,
                "attribution": terms.attribution if terms else None,
                "share_alike": terms.share_alike if terms else None,
                "note": terms.note if terms else "unknown licence: check before use",
            }
        )
    needs_credit = [lic["license"] for lic in licenses if lic["attribution"] or not lic["known"]]
    attribution = _query(
        connection,
        f"""
        SELECT source, license, count(*) AS rows,
               list(DISTINCT {source_file_sql()} ORDER BY {source_file_sql()}) AS files
        FROM formatted WHERE list_contains(?, license) GROUP BY 1, 2 ORDER BY 1, 2""",
        [needs_credit],
    )
    teachers: list[dict[str, Any]] = []
    if "provenance" in tables:
        teachers = _query(
            connection,
            """
            SELECT p.method, p.teacher_backend AS backend, p.teacher_model AS model,
                   p.teacher_revision AS revision, p.teacher_license AS license, p.teacher_terms AS terms,
                   count(*) AS rows
            FROM formatted f JOIN provenance p ON p.row_id = f.parent_id
            GROUP BY ALL ORDER BY model, method, revision""",
        )
    provenance_join = (
        "AND NOT EXISTS (SELECT 1 FROM provenance p WHERE p.row_id = f.parent_id)" if "provenance" in tables else ""
    )
    declared = _query(
        connection,
        f"""
        SELECT generator AS model, source, origin, count(*) AS rows FROM formatted f
        WHERE generator IS NOT NULL {provenance_join} GROUP BY ALL ORDER BY 1, 2""",
    )
    teachers += [{"method": "declared by source", **d} for d in declared]
    [(tokenizer_ids, template_ids, truncated_rows, tokens_total)] = connection.execute(
        "SELECT list(DISTINCT tokenizer_id ORDER BY tokenizer_id), list(DISTINCT template_id ORDER BY template_id), "
        "count(*) FILTER (truncation IS NOT NULL), coalesce(sum(n_tokens), 0) FROM formatted"
    ).fetchall()
    rejected = {}
    if "format_rejections" in tables:
        rejected = dict(
            connection.execute("SELECT stage, count(*) FROM format_rejections GROUP BY 1 ORDER BY 1").fetchall()
        )
    return {
        "licenses": licenses,
        "attribution": attribution,
        "teachers": teachers,
        "tokenizer": {
            "name": info.tokenizer,
            "tokenizer_id": _single(tokenizer_ids),
            "chat_template": info.chat_template,
            "template_id": _single(template_ids),
            "max_tokens": info.max_tokens,
            "length_policy": info.length_policy,
            "system_prompt": info.system_prompt,
        },
        "tokens_total": int(tokens_total),
        "rows_truncated": int(truncated_rows),
        "rows_removed_at_formatting": rejected,
        "decontaminated_against": list(info.benchmarks),
    }


def _single(values: list[str] | None) -> str | list[str] | None:
    values = [v for v in values or [] if v]
    return values[0] if len(values) == 1 else (values or None)


def data_version(manifest: Mapping[str, Any]) -> str:
    """Content hash of a manifest: JSONL file hashes plus every descriptive field (not the Parquet
    hashes, which depend on the writer's version, nor the creation time)."""
    payload = {k: v for k, v in manifest.items() if k not in _HASH_EXCLUDED}
    # A file's shard key is bookkeeping for the next version (DuckDB's row hashes, not the bytes): the
    # version is what the files hold and what the manifest says of them.
    if isinstance(payload.get("files"), dict):
        payload["files"] = {
            name: {k: v for k, v in entry.items() if k != "key"} if isinstance(entry, dict) else entry
            for name, entry in payload["files"].items()
        }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def verify_export(folder: str | Path) -> list[str]:
    """Problems with an export folder: missing or changed files, or a name that is not its data
    version. Empty when the folder is exactly what its manifest describes."""
    return _verify_folder(Path(folder))


FileStat = tuple[int, int, int]
"""A file's size, modification time and status-change time (ns). An edit changes the status-change time
even when it keeps the size and puts the modification time back, and nothing but the system clock sets it."""


def _file_stat(path: Path) -> FileStat:
    return _as_file_stat(path.stat())


def _as_file_stat(stat: os.stat_result) -> FileStat:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def _read_manifest(folder: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """A version folder's manifest (None when unreadable) and what is wrong with it as a whole: fields edited
    (they no longer hash to its data version), or a folder name that is not that version."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return None, [f"{folder / MANIFEST}: unreadable ({error})"]
    problems = []
    if data_version(manifest) != manifest.get("data_version"):
        problems.append("manifest fields were edited: they no longer hash to its data_version")
    if folder.name != manifest.get("data_version"):
        problems.append(f"folder name {folder.name!r} is not the data version {manifest.get('data_version')!r}")
    return manifest, problems


def _manifest_files(manifest: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """(relative path, sha256) of every file a manifest lists, JSONL and Parquet, sorted; and the entries
    that name no hash (an edited manifest), as problems."""
    files = {**manifest.get("files", {}), **manifest.get("parquet_files", {})}
    listed, problems = [], []
    for relative, entry in sorted(files.items()):
        sha256 = entry.get("sha256") if isinstance(entry, dict) else None
        if isinstance(sha256, str):
            listed.append((str(relative), sha256))
        else:
            problems.append(f"{relative}: the manifest's entry has no sha256")
    return listed, problems


def _digest_problem(path: Path, sha256: str) -> str | None:
    """What is wrong with a listed file's content, if anything: another hash, or no way to read it."""
    try:
        digest = file_digest(path)
    except OSError as error:
        return f"unreadable ({error})"
    return None if digest == sha256 else "content differs from the manifest's sha256"


def _verify_folder(folder: Path) -> list[str]:
    """:func:`verify_export`: every file hashed."""
    manifest, problems = _read_manifest(folder)
    if manifest is None:
        return problems
    listed, found = _manifest_files(manifest)
    for relative, sha256 in listed:
        path = folder / relative
        if not path.is_file():
            found.append(f"{relative}: missing")
        elif (problem := _digest_problem(path, sha256)) is not None:
            found.append(f"{relative}: {problem}")
    return found + problems


def verified_record(root: Path) -> Path:
    """Beside the exports folder (which holds versions only): how many checks ran and, per version, the stat
    of each file when it last matched its manifest and the check that last hashed it
    (:func:`verify_published`)."""
    return root.parent / f"{root.name}.verified.json"


@dataclass(frozen=True)
class PublishedCheck:
    """What :func:`verify_published` found and what it cost. Files are counted once however many versions
    share them (hard links)."""

    problems: list[dict[str, str]]
    """``{version, problem}`` for each problem of each version folder."""
    versions: int
    files_hashed: int
    """Files hashed because they are new to the record or their stat changed since they last matched."""
    files_rotated: int
    """Unchanged files hashed again in rotation (those hashed longest ago, up to :data:`ROTATION_BYTES`)."""
    files_trusted: int
    """Files not hashed this time: stat unchanged since they last matched their hash."""
    bytes_hashed: int
    checks_since_oldest_hash: int
    """How many checks ago the file hashed longest ago was last hashed (0: every file hashed by this one)."""


@dataclass(frozen=True)
class _Verified:
    """What the record says of one version: the stat of each file when it last matched its manifest, and the
    check that last hashed it."""

    files: dict[str, FileStat]
    hashed_in: dict[str, int]


_NEVER_HASHED = _Verified({}, {})


def _verified_so_far(path: Path) -> tuple[int, dict[str, _Verified]]:
    """The checks counted so far and each version's :class:`_Verified`, from the record at ``path``. A record
    that is missing, unreadable or not of this shape (edited by hand, cut short) counts as none: every file
    is hashed again and the record written anew. A record of the earlier shape (one ``hashed_in_check`` per
    version) gives that check to each of the version's files."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        versions = {}
        for name, entry in record["versions"].items():
            files = {
                str(file): (int(size), int(mtime), int(ctime)) for file, (size, mtime, ctime) in entry["files"].items()
            }
            whole = int(entry.get("hashed_in_check", 0))
            hashed_in = {str(file): int(check) for file, check in entry.get("hashed_in", {}).items()}
            versions[str(name)] = _Verified(files, {file: hashed_in.get(file, whole) for file in files})
        return int(record.get("checks", 0)), versions
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return 0, {}


def _write_verified(path: Path, checks: int, versions: Mapping[str, _Verified]) -> None:
    """Write the record :func:`_verified_so_far` reads back."""
    record = {
        "checks": checks,
        "versions": {name: {"files": v.files, "hashed_in": v.hashed_in} for name, v in versions.items()},
    }
    write_record(path, json.dumps(record, indent=1))


ROTATION_BYTES = 256 << 20
"""Bytes of unchanged files each check hashes again, those hashed longest ago first (~0.2 s): a change that
kept a file's stat (a restored disk image, the clock set back) is found within (bytes published) / this many
checks. Hashing a whole version in rotation instead took 2.3-2.8 s a check at 1M rows (2.8 GB a version),
and grew with the data."""


@dataclass(frozen=True)
class _PublishedFile:
    """A file of a version as this check finds it."""

    version: str
    relative: str
    path: Path
    sha256: str
    stat: FileStat
    hashed_in: int | None
    """The check that last hashed it, if its stat is still the one it had then (else it must be hashed)."""


def _last_hashed(copies: Sequence[_PublishedFile]) -> int | None:
    """When one file (the copies: its paths in several versions) was last hashed, if its stat says it has not
    changed since."""
    return max((copy.hashed_in for copy in copies if copy.hashed_in is not None), default=None)


def verify_published(root: Path) -> PublishedCheck:
    """Every version folder under ``root`` against its manifest (:func:`verify_export`), at a cost that does
    not grow with the versions kept or their size: a file is hashed when it is new to the record or its stat
    (:data:`FileStat`) differs from when it last matched, and otherwise only in rotation, :data:`ROTATION_BYTES`
    a check, those hashed longest ago first. A file linked into several versions (an export takes unchanged
    shards over from the previous one: the same device and inode) is hashed once, and a version that links
    it trusts it as the others do. Hashing every version each run cost 62 s with two 1M-row versions on disk.
    What was hashed is kept in :func:`verified_record`; a record that is missing or unreadable means hashing
    everything."""
    folders = sorted(p for p in root.iterdir() if (p / MANIFEST).is_file()) if root.is_dir() else []
    record_path = verified_record(root)
    checks, known = _verified_so_far(record_path)
    this_check = checks + 1
    problems: list[dict[str, str]] = []
    same_file: dict[tuple[int, int, str], list[_PublishedFile]] = {}
    for folder in folders:
        manifest, manifest_problems = _read_manifest(folder)
        listed, entry_problems = _manifest_files(manifest or {})
        problems += [{"version": folder.name, "problem": problem} for problem in entry_problems + manifest_problems]
        previous = known.get(folder.name, _NEVER_HASHED)
        for relative, sha256 in listed:
            path = folder / relative
            try:
                now = path.stat()
            except OSError:
                now = None
            if now is None or not stat_module.S_ISREG(now.st_mode):
                problems.append({"version": folder.name, "problem": f"{relative}: missing"})
                continue
            stat = _as_file_stat(now)
            hashed_in = previous.hashed_in.get(relative) if previous.files.get(relative) == stat else None
            found = _PublishedFile(folder.name, relative, path, sha256, stat, hashed_in)
            same_file.setdefault((now.st_dev, now.st_ino, sha256), []).append(found)

    changed = [copies for copies in same_file.values() if _last_hashed(copies) is None]
    unchanged = sorted(
        ((last, copies) for copies in same_file.values() if (last := _last_hashed(copies)) is not None),
        key=lambda item: (item[0], item[1][0].version, item[1][0].relative),
    )
    budget, rotated = ROTATION_BYTES, 0
    for _, copies in unchanged:
        size = copies[0].stat[0]
        if rotated and size > budget:
            break
        budget, rotated = budget - size, rotated + 1
    versions = {folder.name: _Verified({}, {}) for folder in folders}

    def record(copies: Sequence[_PublishedFile], hashed_in: int) -> None:
        for copy in copies:
            versions[copy.version].files[copy.relative] = copy.stat
            versions[copy.version].hashed_in[copy.relative] = hashed_in

    hashed_bytes = 0
    for copies in [*changed, *(copies for _, copies in unchanged[:rotated])]:
        first = copies[0]
        hashed_bytes += first.stat[0]
        problem = _digest_problem(first.path, first.sha256)
        if problem is None:
            record(copies, this_check)
        else:  # not recorded: hashed again at the next check
            problems += [{"version": c.version, "problem": f"{c.relative}: {problem}"} for c in copies]
    for last, copies in unchanged[rotated:]:
        record(copies, last)
    if folders:  # a read-only exports folder: verified all the same, hashed again next time too
        _write_verified(record_path, this_check, versions)
    return PublishedCheck(
        sorted(problems, key=lambda problem: (problem["version"], problem["problem"])),
        len(folders),
        len(changed),
        rotated,
        len(unchanged) - rotated,
        hashed_bytes,
        this_check - min((last for last, _ in unchanged[rotated:]), default=this_check),
    )


# --------------------------------------------------------------------------- dataset card


def dataset_card(manifest: Mapping[str, Any]) -> str:
    """README.md with the Hub's ``configs:`` header (so ``load_dataset(folder, config)`` works; ``sft`` is
    the default config) and a human summary: how to load, rows, licences and attribution, teachers, tokenizer."""
    lines = ["---", "configs:"]
    by_config: dict[str, dict[str, list[str]]] = {}
    for relative in manifest["parquet_files"]:
        by_config.setdefault(relative.split("/")[0], {}).setdefault(split_of(relative), []).append(relative)
    default = "sft" if "sft" in by_config else next(iter(by_config), None)
    for config, splits in by_config.items():
        lines += [f"- config_name: {config}", *(["  default: true"] if config == default else []), "  data_files:"]
        for split in sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
            paths = sorted(splits[split])
            lines += [f"  - split: {split}", f"    path: {paths[0]}" if len(paths) == 1 else "    path:"]
            lines += [f"    - {path}" for path in paths] if len(paths) > 1 else []
    licenses = sorted({lic["license"] for lic in manifest["licenses"] if lic["license"]})
    lines.append(f"license: {licenses[0].lower() if len(licenses) == 1 else 'other'}")
    lines += [
        "---",
        "",
        f"# {manifest['project']} — data version `{manifest['data_version']}`",
        "",
        "Built by Distillery. This folder is immutable: a new data version is written to a new folder.",
        "",
        "```python",
        "from datasets import load_dataset",
        'sft = load_dataset("<this folder>", "sft")  # or: sft_tokenized, preference, ...',
        "```",
        "",
        "## Rows",
        "",
    ]
    rows = [
        {"config": c, "split": s, "rows": n, "layout": CONFIGS.get(c, "")}
        for c, splits in manifest["rows"].items()
        for s, n in splits.items()
    ]
    lines += [
        markdown_table(rows),
        "",
        "## Licences",
        "",
        markdown_table(manifest["licenses"], ["license", "rows", "commercial", "attribution", "share_alike", "note"]),
        "",
        "## Attribution",
        "",
        markdown_table(manifest["attribution"]),
        "",
        "## Teachers",
        "",
        markdown_table(manifest["teachers"]),
        "",
        "## Tokenizer and template",
        "",
        "```json",
        json.dumps(manifest["tokenizer"], indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- the export


def write_export(
    connection: duckdb.DuckDBPyConnection,
    root: str | Path,
    info: ExportInfo,
    batch_rows: int = 2_000,
    workers: int = 1,
    log: Callable[[str], None] = lambda _line: None,
) -> ExportResult:
    """Write (or reuse) the export of ``formatted`` under ``root/<data_version>/``, reporting progress (rows
    written of ``formatted``'s) through ``log``.

    Rows stream from DuckDB to JSONL one batch at a time, the lines built in ``workers`` processes (the
    files are the same for any count); Parquet follows from the JSONL or, for flat layouts, from the columns.
    If the version folder exists it is verified and reused; if it no longer matches its manifest the export
    stops with an error rather than touch it. ``connection`` is read-only, opened with
    :data:`~curation.core.warehouse.SCAN_MEMORY_LIMIT`: its cached pages are dropped after the one scan.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    writers = _ExportFiles(staging, {})
    try:
        connection.execute(f"DETACH DATABASE IF EXISTS {_WORK}")  # left by an export that failed in this process
        connection.execute(f"ATTACH ':memory:' AS {_WORK} (READ_ONLY false)")
        plan = _plan(connection)
        taken = _taken_over(root, plan)
        to_write = [shard for shard in plan if shard.relative not in taken]
        connection.execute(f"CREATE OR REPLACE TABLE {_TODO} (split_name VARCHAR, shard BIGINT)")
        shards = sorted({(shard.split, shard.shard) for shard in to_write})
        if shards:
            connection.executemany(f"INSERT INTO {_TODO} VALUES (?, ?)", shards)
        (rows_to_read,) = fetch_one(connection, f"SELECT count(*) FROM {_todo_sql()}")
        if taken:
            log(
                f"exports: {len(taken):,} of {len(plan):,} files taken over unchanged from the last version; "
                f"{int(rows_to_read):,} rows to write"
            )
        writers = _ExportFiles(staging, {shard.provisional: shard.relative for shard in to_write})
        if to_write:
            _write_files(connection, writers, batch_rows, workers, log, int(rows_to_read))
        files = writers.summary(plan)
        files.update((relative, dict(previous.entry)) for relative, previous in taken.items())
        files = dict(sorted(files.items()))
        rows: dict[str, dict[str, int]] = {}
        for relative, entry in files.items():
            config, split = relative.split("/")[0], split_of(relative)
            rows.setdefault(config, {})[split] = rows.get(config, {}).get(split, 0) + entry["rows"]
        manifest: dict[str, Any] = {
            "format": "distillery-export/2",
            "project": info.project,
            "project_file_hash": info.project_file_hash,
            "intended_use": info.intended_use,
            "formatted_data_version": info.formatted_data_version,
            "splits": {"eval_fraction": info.eval_fraction, "seed": info.seed, "names": list(SPLITS)},
            "subsets": "column `subset`: the smallest nested fraction (0.25, 0.5, 1.0) whose subset holds the row",
            "rows": rows,
            "rows_total": sum(n for splits in rows.values() for n in splits.values()),
            **describe_formatted(connection, info),
            "files": files,
        }
        version = data_version(manifest)
        final = root / version
        if final.exists():
            writers.close()
            return _reuse(final, staging)
        linked: dict[FileStat, FileStat] = {}
        for relative, previous in taken.items():  # only now: a link changes the linked file's status time
            _take_over(previous, previous.jsonl, staging / relative, linked)
        manifest = {
            "data_version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **manifest,
            "parquet_files": writers.parquet(plan, taken, linked),
        }
        _restat_taken_over(root, linked)
        (staging / MANIFEST).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8"
        )
        (staging / CARD).write_text(dataset_card(manifest), encoding="utf-8")
        try:
            os.rename(staging, final)  # atomic on one file system; fails if another writer got there first
        except OSError:
            if final.exists():
                return _reuse(final, staging)
            raise
        _point_latest(root, version)
        return ExportResult(version, final, False, manifest, files_taken_over=len(taken))
    except BaseException:
        writers.close()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        with contextlib.suppress(duckdb.Error):
            connection.execute(f"DETACH DATABASE IF EXISTS {_WORK}")


_WRITES_IN_FLIGHT = 4
"""Batches encoded and waiting for the writing thread, at most (bounds memory)."""


def _write_files(
    connection: duckdb.DuckDBPyConnection,
    writers: _ExportFiles,
    batch_rows: int,
    workers: int,
    log: Callable[[str], None],
    rows: int,
) -> None:
    """The ``rows`` rows of the shards to write into their files: batches read here, their lines encoded in ``workers``
    processes (results in order, so the files are the same for any count), and written, hashed and
    encoded as Parquet by one thread of their own, in order: file writes, hashing and Parquet encoding
    release the GIL, so they overlap reading and dispatching the next batches."""
    flat: deque[dict[str, pa.Table]] = deque()  # each batch's flat-layout tables, until its lines come back
    sizes: deque[int] = deque()  # each batch's rows, until its lines come back
    progress = Progress(log, "exports", rows)

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in _read_formatted(connection, batch_rows, writers.folder / ".spool", rows):
            flat.append(_flat_tables(batch))
            sizes.append(batch.num_rows)
            yield batch.drop_columns([name for name in batch.schema.names if name.endswith(_PARSED)])

    with ThreadPoolExecutor(1, thread_name_prefix="export-writer") as writer:
        pending: deque[Future[None]] = deque()
        for chunks in map_ordered(_encode_batch, batches(), workers, preload=("curation.format.export",)):
            pending.append(writer.submit(writers.write_all, chunks, flat.popleft()))
            progress.advance(sizes.popleft())
            while len(pending) > _WRITES_IN_FLIGHT:
                pending.popleft().result()
        while pending:
            pending.popleft().result()
    progress.finish()


def _reuse(final: Path, staging: Path) -> ExportResult:
    shutil.rmtree(staging, ignore_errors=True)
    problems = verify_export(final)
    if problems:
        raise ExportError(
            f"export folder {final} exists but no longer matches its manifest: {'; '.join(problems)}. "
            "Exports are immutable and this one was modified: move it away, then export again."
        )
    manifest = json.loads((final / MANIFEST).read_text(encoding="utf-8"))
    _point_latest(final.parent, final.name)
    return ExportResult(final.name, final, True, manifest)


def _point_latest(root: Path, version: str) -> None:
    """``root/LATEST`` names the newest version (a pointer, replaced atomically; versions never change)."""
    temporary = root / f".LATEST-{uuid.uuid4().hex[:8]}"
    temporary.write_text(version + "\n", encoding="utf-8")
    with contextlib.suppress(OSError):
        os.replace(temporary, root / "LATEST")
    temporary.unlink(missing_ok=True)
