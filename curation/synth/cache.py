"""A DuckDB cache of generations keyed by (model, revision, weights fingerprint, prompt, parameters).

A re-run sends nothing already generated, and because each generation is written (and
committed) the moment its teacher reports it, a crash mid-run keeps everything done so far.
What the backend reported with each generation (served model id, system fingerprint, the sampling it
applied) is stored beside it, so a cached generation keeps the provenance of the call that made it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.core.provenance import TeacherInfo
from curation.core.schema import utcnow
from curation.synth.teachers import ChatRequest, Generation, ResultCallback

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_ARROW = pa.schema(
    [
        ("cache_key", pa.string()),
        ("model", pa.string()),
        ("revision", pa.string()),
        ("prompt_json", pa.string()),
        ("params_json", pa.string()),
        ("text", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("created_at", pa.timestamp("us")),
        ("weights", pa.string()),
        ("served_model", pa.string()),
        ("system_fingerprint", pa.string()),
        ("effective_params", pa.string()),
    ]
)
# Added after the first layout: a cache file written before them gains them (NULL in old entries, which
# provenance then reports as not confirmed) when it is opened.
_ADDED_COLUMNS = (
    ("weights", "VARCHAR"),
    ("served_model", "VARCHAR"),
    ("system_fingerprint", "VARCHAR"),
    ("effective_params", "JSON"),
)
_COLUMNS = tuple(_ARROW.names)
_LOOKUP_CHUNK = 10_000  # keys per IN-list query: keeps one bound list parameter small


def _canonical(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def prompt_json(request: ChatRequest) -> str:
    return _canonical(request.messages_list())


def params_json(request: ChatRequest) -> str:
    return _canonical(asdict(request.params))


def cache_key(info: TeacherInfo, request: ChatRequest, extra: str = "") -> str:
    """sha256 of (model, revision, prompt, params) as canonical JSON; the backend is deliberately left out
    so the same weights served locally or over HTTP share entries. ``extra``: backend settings that
    change outputs (a teacher's ``cache_extra``, e.g. an OpenAI ``extra_body``); empty by default.

    A local model's weights fingerprint (``info.weights``) is in the key too, so replaced weights never get
    the old weights' generations back, whatever revision the project file names. When the revision is the
    fingerprint itself (no revision configured) it is not repeated, so those keys are what they were."""
    parts: list[Any] = [info.model, info.revision, request.messages_list(), asdict(request.params)]
    if extra:  # appended only when set, so keys without extras stay the same
        parts.append(extra)
    if info.weights and info.weights != info.revision:
        parts.append({"weights": info.weights})  # an object: never equal to an ``extra`` string
    return hashlib.sha256(_canonical(parts).encode("utf-8")).hexdigest()


class GenerationCache:
    """The ``generation_cache`` table in a DuckDB database (a path or an open connection)."""

    def __init__(self, database: str | Path | duckdb.DuckDBPyConnection, table: str = "generation_cache") -> None:
        if not _IDENTIFIER.match(table):
            raise ValueError(f"cache table name {table!r} must be a plain SQL identifier (letters, digits, _)")
        if isinstance(database, duckdb.DuckDBPyConnection):
            self.con = database
            self._owns = False
        else:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.con = duckdb.connect(str(database))
            self._owns = True
        self._table = f'"{table}"'
        self.con.execute(f"""
            CREATE TABLE IF NOT EXISTS {self._table} (
                cache_key VARCHAR PRIMARY KEY,
                model VARCHAR NOT NULL,
                revision VARCHAR NOT NULL,
                prompt_json JSON NOT NULL,
                params_json JSON NOT NULL,
                text VARCHAR NOT NULL,
                finish_reason VARCHAR,
                prompt_tokens INTEGER,
                completion_tokens INTEGER,
                created_at TIMESTAMP NOT NULL
            )""")
        for name, sql_type in _ADDED_COLUMNS:
            self.con.execute(f"ALTER TABLE {self._table} ADD COLUMN IF NOT EXISTS {name} {sql_type}")

    def close(self) -> None:
        if self._owns:
            self.con.close()

    def __enter__(self) -> GenerationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        row = self.con.execute(f"SELECT count(*) FROM {self._table}").fetchone()
        return int(row[0]) if row else 0

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        """Cached generations for the given keys (missing keys are absent), marked ``cached=True``."""
        found: dict[str, Generation] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), _LOOKUP_CHUNK):
            chunk = unique[start : start + _LOOKUP_CHUNK]
            rows = self.con.execute(
                "SELECT cache_key, text, finish_reason, prompt_tokens, completion_tokens, served_model, "
                f"system_fingerprint, effective_params FROM {self._table} "
                "WHERE cache_key IN (SELECT unnest($keys::VARCHAR[]))",
                {"keys": chunk},
            ).fetchall()
            for key, text, finish, p_tok, c_tok, served, fingerprint, effective in rows:
                found[key] = Generation(
                    text=text,
                    finish_reason=finish,
                    cached=True,
                    prompt_tokens=p_tok,
                    completion_tokens=c_tok,
                    served_model=served,
                    system_fingerprint=fingerprint,
                    effective_params=json.loads(effective) if effective is not None else None,
                )
        return found

    def put(self, info: TeacherInfo, request: ChatRequest, generation: Generation, extra: str = "") -> str:
        """Store one generation (autocommitted at once); an existing key is kept, not overwritten."""
        return self.put_many([(info, request, generation, extra)])[0]

    def put_many(self, entries: Sequence[tuple[TeacherInfo, ChatRequest, Generation, str]]) -> list[str]:
        """Store (info, request, generation, extra) entries in one transaction; returns their keys."""
        now = utcnow()
        records: list[list[Any]] = [
            [
                cache_key(info, request, extra),
                info.model,
                info.revision,
                prompt_json(request),
                params_json(request),
                gen.text,
                gen.finish_reason,
                gen.prompt_tokens,
                gen.completion_tokens,
                now,
                info.weights or None,
                gen.served_model,
                gen.system_fingerprint,
                None if gen.effective_params is None else _canonical(dict(gen.effective_params)),
            ]
            for info, request, gen, extra in entries
        ]
        if not records:
            return []
        # By name: a file created with the first layout has the added columns at its end, in the same order.
        columns = ", ".join(_COLUMNS)
        if len(records) == 1:
            slots = ", ".join(f"${i}" for i in range(1, len(_COLUMNS) + 1))
            self.con.execute(f"INSERT OR IGNORE INTO {self._table} ({columns}) VALUES ({slots})", records[0])
        else:  # one Arrow scan is ~50x faster than executemany, which DuckDB runs row by row
            batch = pa.Table.from_pylist([dict(zip(_COLUMNS, r, strict=True)) for r in records], schema=_ARROW)
            self.con.register("_distillery_cache_batch", batch)
            try:
                self.con.execute(
                    f"INSERT OR IGNORE INTO {self._table} ({columns}) SELECT {columns} FROM _distillery_cache_batch"
                )
            finally:
                self.con.unregister("_distillery_cache_batch")
        return [r[0] for r in records]


class CachedTeacher:
    """Wraps any teacher: hits come from the cache, only misses are sent, each miss stored as it lands.

    Duplicate requests within one call are sent once. With ``cache_unsupported=False`` (default)
    procedural "unsupported" replies are not stored, so a later rule can still answer them.
    ``write_batch`` > 1 groups that many generations per transaction (one commit costs a few ms
    on a file); they are flushed when ``generate`` ends or raises, so only a hard kill of the
    process can lose them — at most ``write_batch - 1``.
    """

    def __init__(
        self, teacher: Any, cache: GenerationCache, *, cache_unsupported: bool = False, write_batch: int = 1
    ) -> None:
        if write_batch < 1:
            raise ValueError(f"write_batch must be >= 1, got {write_batch}")
        self.teacher = teacher
        self.cache = cache
        self.cache_unsupported = cache_unsupported
        self.write_batch = write_batch
        self.info: TeacherInfo = teacher.info
        self.extra: str = getattr(teacher, "cache_extra", "")
        self.last_hits = 0
        self.last_misses = 0

    def __repr__(self) -> str:
        return f"CachedTeacher({self.teacher!r})"

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        keys = [cache_key(self.info, r, self.extra) for r in requests]
        hits = self.cache.get_many(keys)
        scrub = getattr(self.teacher, "scrub_secrets", None)
        if scrub is not None:
            # Entries stored before replies were scrubbed of the API key must not carry it into rows.
            hits = {
                k: replace(g, text=scrub(g.text), finish_reason=scrub(g.finish_reason or "") or g.finish_reason)
                for k, g in hits.items()
            }
        results: list[Generation | None] = [hits.get(k) for k in keys]
        for i, gen in enumerate(results):
            if gen is not None and on_result is not None:
                on_result(i, gen)
        # First index of each missing key: duplicates are sent once and copied afterwards.
        first_of: dict[str, int] = {}
        for i, key in enumerate(keys):
            if results[i] is None:
                first_of.setdefault(key, i)
        todo = list(first_of.values())
        self.last_hits, self.last_misses = len(requests) - sum(r is None for r in results), len(todo)

        pending: list[tuple[TeacherInfo, ChatRequest, Generation, str]] = []

        def store(j: int, gen: Generation) -> None:
            i = todo[j]
            if gen.finish_reason != "unsupported" or self.cache_unsupported:
                pending.append((self.info, requests[i], gen, self.extra))
                if len(pending) >= self.write_batch:
                    self.cache.put_many(pending)
                    pending.clear()
            results[i] = gen
            if on_result is not None:
                on_result(i, gen)

        if todo:
            try:
                returned = self.teacher.generate([requests[i] for i in todo], on_result=store)
                for j, gen in enumerate(returned):  # a backend that ignores on_result is still cached
                    if results[todo[j]] is None:
                        store(j, gen)
            finally:
                self.cache.put_many(pending)
        for i, key in enumerate(keys):
            if results[i] is None:
                source = results[first_of[key]]
                if source is None:
                    raise RuntimeError(f"teacher {self.teacher!r} returned no generation for request {i}")
                results[i] = replace(source, cached=True)
                if on_result is not None:
                    on_result(i, results[i])  # type: ignore[arg-type]
        return [g for g in results if g is not None]
