"""Exports of the formatted dataset that trainers read directly, with a manifest; one immutable folder
per data version.

Layout (``<exports root>/<data_version>/``), one sub-folder per *config*, one file per split, each in
JSONL and Parquet, plus ``manifest.json`` and a ``README.md`` dataset card whose ``configs:`` header lets
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

Rows stream from DuckDB once: each JSONL line is written as its row arrives (token ids copied as stored,
not decoded and encoded again) while each file's Parquet schema is inferred chunk by chunk; then Arrow's
JSON reader turns each JSONL file into Parquet batch by batch. Memory holds a chunk per file, whatever
the table's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from curation.core.licenses import LicensePolicy
from curation.core.markdown import markdown_table
from curation.core.schema import JSON_COLUMNS, Row
from curation.core.warehouse import count_rows, fetch_one, read_batches, table_names
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
_META = ("source", "license", "origin", "subset")
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
    benchmarks: list[str] = field(default_factory=list)
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


_RANGE_ROWS = 10_000
"""Rows per range of row ids the export reads at a time (what DuckDB sorts at once)."""


def _export_rows(connection: duckdb.DuckDBPyConnection, batch_rows: int) -> Iterator[Row]:
    """The stored ``formatted`` rows, message columns decoded and token ids left as their JSON text, each
    split in row-id order. Read range by range of row ids, each range sorted by ``(split, row_id)``: every
    file still gets its rows in row-id order, and DuckDB never sorts the whole wide table at once."""
    ranges = math.ceil(count_rows(connection, "formatted") / _RANGE_ROWS)
    bounds: list[str] = []
    if ranges > 1:
        (bounds,) = fetch_one(
            connection,
            "SELECT list_distinct(quantile_disc(row_id, ?)) FROM formatted",
            [[k / ranges for k in range(1, ranges)]],
        )
    edges = [None, *sorted(bounds), None]
    for low, high in itertools.pairwise(edges):
        conditions = [c for c, bound in (("row_id >= ?", low), ("row_id < ?", high)) if bound is not None]
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT * EXCLUDE (ingested_at) FROM formatted {where} ORDER BY split, row_id"
        params = [bound for bound in (low, high) if bound is not None]
        for batch in read_batches(connection, sql, params, batch_rows=batch_rows):
            for record in batch.to_pylist():
                for column in JSON_COLUMNS:
                    if isinstance(record[column], str):
                        record[column] = json.loads(record[column])
                yield record


def export_records(row: Row) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(config, record)`` for each layout a decoded ``formatted`` row belongs to (see the module doc)."""
    kind = row.get("kind")
    base = {"id": row["row_id"]}
    meta = {name: row.get(name) for name in _META}
    if kind in _CHAT_KINDS:
        if not (row.get("truncation") or "").startswith("truncated_last_assistant"):
            record = {**base, "messages": row.get("messages")}
            tools = _tools(row)
            if tools:
                record["tools"] = tools
            yield "sft", {**record, **meta}
        yield (
            "sft_tokenized",
            {
                **base,
                "input_ids": _ids(row.get("input_ids")),
                "assistant_masks": _ids(row.get("assistant_mask")),
                "n_tokens": row.get("n_tokens"),
                "text": row.get("text"),
                **meta,
            },
        )
    elif kind == "preference":
        yield (
            "preference",
            {
                **base,
                "prompt": row.get("messages"),
                "chosen": row.get("chosen"),
                "rejected": row.get("rejected"),
                **meta,
            },
        )
        yield (
            "preference_text",
            {
                **base,
                "prompt": row.get("prompt_text"),
                "chosen": row.get("chosen_text"),
                "rejected": row.get("rejected_text"),
                **meta,
            },
        )
    elif kind == "prompt":
        yield "prompts", {**base, "prompt": row.get("messages"), **meta}
    elif kind == "reward":
        yield "reward", {**base, "messages": row.get("messages"), "score": row.get("score"), **meta}
    elif kind == "text":
        yield "text", {**base, "text": row.get("text"), **meta}
    else:
        raise ExportError(f"formatted row {row.get('row_id')}: unknown kind {kind!r}; cannot choose an export layout")


# --------------------------------------------------------------------------- writing


# Fixed key order and separators: the same rows always give the same bytes, hence the same version.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _json_line(record: Mapping[str, Any]) -> bytes:
    """What ``json.dumps`` writes for the record, with token ids copied in as they are."""
    if not any(isinstance(value, _Ids) for value in record.values()):
        return (_ENCODER.encode(record) + "\n").encode("utf-8")
    fields = (
        _ENCODER.encode(key) + ":" + (value if isinstance(value, _Ids) else _ENCODER.encode(value))
        for key, value in record.items()
    )
    return ("{" + ",".join(fields) + "}\n").encode("utf-8")


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
            self.schema = (
                chunk_schema
                if self.schema is None
                else pa.unify_schemas([self.schema, chunk_schema], promote_options="permissive")
            )
        except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
            raise ExportError(
                f"{self.name}: rows have incompatible value types for Parquet ({error}); "
                "a field holds different JSON types across rows"
            ) from error
        self.chunk = []


def _typed_like(value: Any) -> Any:
    # Token ids are typed as a list of ints (list<null> when empty, as Arrow types an empty list).
    if isinstance(value, _Ids):
        return [] if value == "[]" else [0]
    return value


@dataclass
class _ExportFile:
    handle: IO[bytes]
    digest: Any
    schema: _ParquetSchema
    rows: int = 0
    longest_line: int = 0


class _ExportFiles:
    """One open JSONL file per (config, split), hashed while written, its Parquet schema inferred as it grows."""

    def __init__(self, folder: Path, chunk_rows: int) -> None:
        self.folder = folder
        self.chunk_rows = chunk_rows
        self.files: dict[str, _ExportFile] = {}

    def write(self, config: str, split: str, record: Mapping[str, Any]) -> None:
        relative = f"{config}/{split}.jsonl"
        file = self.files.get(relative)
        if file is None:
            (self.folder / config).mkdir(parents=True, exist_ok=True)
            handle = (self.folder / relative).open("wb")
            file = self.files[relative] = _ExportFile(
                handle, hashlib.sha256(), _ParquetSchema(relative, self.chunk_rows)
            )
        line = _json_line(record)
        file.handle.write(line)
        file.digest.update(line)
        file.schema.add(record)
        file.rows += 1
        file.longest_line = max(file.longest_line, len(line))

    def close(self) -> None:
        for file in self.files.values():
            file.handle.close()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per JSONL file (relative path, sorted): sha256, rows and bytes, for the manifest."""
        return {
            relative: {
                "sha256": file.digest.hexdigest(),
                "rows": file.rows,
                "bytes": (self.folder / relative).stat().st_size,
            }
            for relative, file in sorted(self.files.items())
        }


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
    read = pa_json.ReadOptions(block_size=max(1 << 20, 2 * longest_line))
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    rows = 0
    try:
        with pq.ParquetWriter(target, schema) as writer:
            for batch in pa_json.open_json(source, read_options=read, parse_options=parse):
                writer.write_batch(batch)
                rows += batch.num_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise ExportError(
            f"{source}: rows have incompatible value types for Parquet ({error}); "
            "a field holds different JSON types across rows"
        ) from error
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
        """
        SELECT source, license, count(*) AS rows,
               list(DISTINCT split_part(source_uri, '#', 1) ORDER BY split_part(source_uri, '#', 1)) AS files
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
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def verify_export(folder: str | Path) -> list[str]:
    """Problems with an export folder: missing or changed files, or a name that is not its data
    version. Empty when the folder is exactly what its manifest describes."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        return [f"{folder / MANIFEST}: unreadable ({error})"]
    problems = []
    files = {**manifest.get("files", {}), **manifest.get("parquet_files", {})}
    for relative, expected in sorted(files.items()):
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative}: missing")
        elif file_digest(path) != expected["sha256"]:
            problems.append(f"{relative}: content differs from the manifest's sha256")
    if data_version(manifest) != manifest.get("data_version"):
        problems.append("manifest fields were edited: they no longer hash to its data_version")
    if folder.name != manifest.get("data_version"):
        problems.append(f"folder name {folder.name!r} is not the data version {manifest.get('data_version')!r}")
    return problems


# --------------------------------------------------------------------------- dataset card


def dataset_card(manifest: Mapping[str, Any]) -> str:
    """README.md with the Hub's ``configs:`` header (so ``load_dataset(folder, config)`` works; ``sft`` is
    the default config) and a human summary: how to load, rows, licences and attribution, teachers, tokenizer."""
    lines = ["---", "configs:"]
    by_config: dict[str, list[str]] = {}
    for relative in manifest["parquet_files"]:
        config, name = relative.split("/")
        by_config.setdefault(config, []).append(name.removesuffix(".parquet"))
    default = "sft" if "sft" in by_config else next(iter(by_config), None)
    for config, splits in by_config.items():
        lines += [f"- config_name: {config}", *(["  default: true"] if config == default else []), "  data_files:"]
        for split in sorted(splits, key=lambda s: SPLITS.index(s) if s in SPLITS else len(SPLITS)):
            lines += [f"  - split: {split}", f"    path: {config}/{split}.parquet"]
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
    connection: duckdb.DuckDBPyConnection, root: str | Path, info: ExportInfo, batch_rows: int = 2_000
) -> ExportResult:
    """Write (or reuse) the export of ``formatted`` under ``root/<data_version>/``.

    Rows stream from DuckDB to JSONL one batch at a time; Parquet is converted from the JSONL. If the
    version folder exists it is verified and reused; if it no longer matches its manifest the export
    stops with an error rather than touch it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()
    try:
        writers = _ExportFiles(staging, batch_rows)
        try:
            for row in _export_rows(connection, batch_rows):
                split = row.get("split") or "train"
                for config, record in export_records(row):
                    writers.write(config, split, record)
        finally:
            writers.close()
        files = writers.summary()
        rows: dict[str, dict[str, int]] = {}
        for relative, entry in files.items():
            config, name = relative.split("/")
            rows.setdefault(config, {})[name.removesuffix(".jsonl")] = entry["rows"]
        manifest: dict[str, Any] = {
            "format": "distillery-export/1",
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
            return _reuse(final, staging)
        parquet = {}
        for relative, file in sorted(writers.files.items()):
            target = staging / relative.replace(".jsonl", ".parquet")
            count = jsonl_to_parquet(
                staging / relative, target, schema=file.schema.result(), longest_line=file.longest_line
            )
            parquet[str(target.relative_to(staging))] = {
                "sha256": file_digest(target),
                "rows": count,
                "bytes": target.stat().st_size,
            }
        manifest = {
            "data_version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **manifest,
            "parquet_files": parquet,
        }
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
        return ExportResult(version, final, False, manifest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


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
