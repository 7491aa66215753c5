"""What each row brings to the whole-table decisions of :mod:`curation.dedup.stage`, computed a batch at
a time (in worker processes, :func:`curation.core.parallel.map_ordered`): the row's texts with repeats
and boilerplate removed (:func:`edited`), and the narrow per-row columns the SQL decides on
(:data:`FACT_SCHEMA`: exact key, prompt and response keys, the keep policy's criteria, the signature key
of the text near dedup compares), the paragraph keys boilerplate is counted from, and the MinHash
signatures of compared texts not stored yet. The same batch functions give near dedup the texts of its
candidate rows (:func:`texts_batch`) and write the published rows (:func:`published_batch`), so a row is
edited one way only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import ARROW_SCHEMA, COLUMNS, Row, decode_row, derived_id, encode_row
from curation.core.texts import TextField, prompt_text, response_text, text_fields
from curation.dedup.clusters import KeepPolicy, with_license_note
from curation.dedup.conflicts import ConflictConfig
from curation.dedup.exact import ExactConfig, parts_key
from curation.dedup.fields import FieldSet, compared_text, dedup_text, field_parts, normalized
from curation.dedup.minhash import MinHasher, signature_column
from curation.dedup.near import SIGNATURE_SCHEMA, NearConfig, signature_key
from curation.dedup.repeats import (
    BoilerplateConfig,
    RemovedText,
    WithinConfig,
    paragraph_keys,
    remove_repeats_in_row,
    strip_boilerplate,
)


@dataclass(frozen=True)
class DedupPlan:
    """Which dedup steps run, in order, and how; ``None`` switches a step off."""

    within: WithinConfig | None = field(default_factory=WithinConfig)
    boilerplate: BoilerplateConfig | None = field(default_factory=BoilerplateConfig)
    exact: ExactConfig | None = field(default_factory=ExactConfig)
    near: NearConfig | None = field(default_factory=NearConfig)
    conflicts: ConflictConfig = field(default_factory=ConflictConfig)
    policy: KeepPolicy = field(default_factory=KeepPolicy)


FACT_SCHEMA = pa.schema(
    [
        ("position", pa.int64()),  # the row's place in the input (SOURCE_ORDER): the last tie-break
        ("row_id", pa.string()),
        ("origin", pa.string()),
        ("license", pa.string()),
        ("ingested_at", pa.timestamp("us")),
        *((name, pa.float64()) for name in KeepPolicy.CRITERIA),
        ("edited", pa.bool_()),  # repeats or boilerplate removed from its texts
        ("exact_key", pa.string()),  # NULL: nothing to compare
        ("prompt_key", pa.string()),  # NULL: no prompt, or a text/prompt row (no conflicts)
        ("response_key", pa.string()),
        ("near_key", pa.string()),  # curation.dedup.near.signature_key of the compared text
    ]
)
"""One row per input row: the columns every whole-table step decides on in SQL."""

PARAGRAPH_SCHEMA = pa.schema([("position", pa.int64()), ("paragraph", pa.string())])
"""The distinct boilerplate-candidate paragraph keys of each row (counted across rows in SQL)."""


def edited(
    row: Row, plan: DedupPlan, boilerplate: Collection[str], fields: list[TextField] | None = None
) -> tuple[Row, list[RemovedText]]:
    """The row with repeated paragraphs, then the ``boilerplate`` paragraphs (their keys), removed.
    ``fields`` are the row's :func:`~curation.core.texts.text_fields` when the caller has them already."""
    original = row
    removals: list[RemovedText] = []
    if plan.within is not None:
        row, found = remove_repeats_in_row(row, plan.within, fields)
        removals.extend(found)
    if plan.boilerplate is not None and boilerplate:
        row, found = strip_boilerplate(row, boilerplate, plan.boilerplate, fields if row is original else None)
        removals.extend(found)
    return row, removals


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def row_facts(row: Row, position: int, plan: DedupPlan, was_edited: bool) -> tuple[dict[str, Any], str | None]:
    """The :data:`FACT_SCHEMA` record of an (already edited) row, and the text near dedup compares."""
    record: dict[str, Any] = {
        "position": position,
        "row_id": row["row_id"],
        "origin": row.get("origin"),
        "license": row.get("license"),
        "ingested_at": row.get("ingested_at"),
        **dict(zip(KeepPolicy.CRITERIA, plan.policy.criteria(row), strict=True)),
        "edited": was_edited,
        "exact_key": None,
        "prompt_key": None,
        "response_key": None,
        "near_key": None,
    }
    prompt, response = prompt_text(row), response_text(row)  # what most field sets are made of
    parts: dict[str, list[str]] = {}

    def pieces(fields: FieldSet) -> list[str]:
        if fields not in parts:
            parts[fields] = field_parts(row, fields, prompt, response)
        return parts[fields]

    if plan.exact is not None and compared_text(pieces(plan.exact.fields), plan.exact.fields).strip():
        record["exact_key"] = parts_key(pieces(plan.exact.fields), plan.exact.normalize)
    conflicts = plan.conflicts
    if conflicts.mode != "off" and row.get("kind") not in ("text", "prompt") and prompt.strip():
        record["prompt_key"] = parts_key(pieces(conflicts.prompt_fields), conflicts.normalize)
        record["response_key"] = _digest(normalized(response, conflicts.normalize))
    if plan.near is None:
        return record, None
    text = compared_text(pieces(plan.near.fields), plan.near.fields)
    record["near_key"] = signature_key(text, plan.near)
    return record, text


# ---------------------------------------------------------------------------------------------
# Batch functions for the worker processes; their settings arrive once, through `start_worker`.

_WORKER: dict[str, Any] = {}


def start_worker(plan: DedupPlan, boilerplate: Collection[str] = (), known: np.ndarray | None = None) -> None:
    """The settings every batch of this process uses (the ``initializer`` of ``map_ordered``): the plan,
    the boilerplate paragraph keys and the signature keys already stored (:func:`key_bytes`, sorted)."""
    _WORKER["plan"], _WORKER["boilerplate"] = plan, frozenset(boilerplate)
    _WORKER["known"] = key_bytes([]) if known is None else known
    _WORKER["hasher"] = plan.near.hasher() if plan.near is not None else None


def key_bytes(keys: Sequence[str]) -> np.ndarray:
    """Hex keys as sortable 16-byte strings (what :func:`start_worker` looks signature keys up in)."""
    return np.array([bytes.fromhex(k) for k in keys], dtype="S16")


def _rows(batch: pa.RecordBatch) -> list[tuple[Row, dict[str, Any]]]:
    """Each record decoded as a canonical row, with the extra columns the query added."""
    extra_columns = [name for name in batch.schema.names if name not in COLUMNS]
    return [(decode_row(record), {c: record[c] for c in extra_columns}) for record in batch.to_pylist()]


def facts_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]:
    """Facts of a batch of input rows (with a ``position`` column); before boilerplate is known (no keys
    given to :func:`start_worker`) their paragraph keys; and the signatures of the compared texts whose
    key is not stored yet (one per key), so near dedup never has to read a text twice."""
    plan: DedupPlan = _WORKER["plan"]
    boilerplate: frozenset[str] = _WORKER["boilerplate"]
    count_paragraphs = plan.boilerplate is not None and not boilerplate
    facts = []
    positions: list[int] = []
    paragraphs: list[str] = []
    unsigned: dict[str, str] = {}
    for raw, columns in _rows(batch):
        fields = list(text_fields(raw))
        row, removals = edited(raw, plan, boilerplate, fields)
        record, text = row_facts(row, columns["position"], plan, bool(removals))
        facts.append(record)
        if text is not None:
            unsigned.setdefault(record["near_key"], text)
        if count_paragraphs:
            assert plan.boilerplate is not None
            keys = paragraph_keys(row, plan.boilerplate, fields if row is raw else None)
            positions.extend([columns["position"]] * len(keys))
            paragraphs.extend(keys)
    return (
        pa.RecordBatch.from_pylist(facts, schema=FACT_SCHEMA),
        pa.RecordBatch.from_pydict({"position": positions, "paragraph": paragraphs}, schema=PARAGRAPH_SCHEMA),
        _new_signatures(unsigned),
    )


def _new_signatures(texts: Mapping[str, str]) -> pa.RecordBatch:
    """Signatures of the texts (by signature key) whose key is not among the known ones."""
    keys = list(texts)
    known: np.ndarray = _WORKER["known"]
    if keys and known.size:
        wanted = key_bytes(keys)
        at = np.minimum(np.searchsorted(known, wanted), known.size - 1)
        keys = [k for k, found in zip(keys, known[at] == wanted, strict=True) if not found]
    hasher: MinHasher | None = _WORKER["hasher"]
    if not keys or hasher is None:
        return pa.RecordBatch.from_pylist([], schema=SIGNATURE_SCHEMA)
    signatures, shingles = hasher.signatures_and_counts([texts[k] for k in keys])
    return pa.RecordBatch.from_arrays(
        [pa.array(keys, pa.string()), signature_column(signatures), pa.array(shingles, pa.int64())],
        schema=SIGNATURE_SCHEMA,
    )


def texts_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch]:
    """The compared texts of a batch of input rows (with ``near_index`` and ``slot`` columns), for
    verifying near-duplicate candidates."""
    plan: DedupPlan = _WORKER["plan"]
    assert plan.near is not None
    slots, texts = [], []
    for raw, columns in _rows(batch):
        row, _ = edited(raw, plan, _WORKER["boilerplate"])
        slots.append(columns["slot"])
        texts.append(dedup_text(row, plan.near.fields))
    return (pa.RecordBatch.from_pydict({"slot": slots, "text": texts}, schema=TEXT_SCHEMA),)


TEXT_SCHEMA = pa.schema([("slot", pa.int64()), ("text", pa.string())])
"""Compared texts of near-duplicate candidates, by their place in verification order."""


def published_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """Kept rows as ``deduped`` stores them, with their lineage edges. The batch's ``sources`` column
    lists the copies each row absorbed (:func:`~curation.dedup.clusters.with_license_note`); a row
    whose text changed (``edited``) gets a derived id, and its edge says what was removed and where.
    The other rows only gain the note: their stored texts are passed on as they are."""
    plan: DedupPlan = _WORKER["plan"]
    rows = []
    edges = []
    for record in batch.to_pylist():
        sources = record.pop("sources") or ()
        if not record.pop("edited"):
            extra = json.loads(record["extra"]) if isinstance(record["extra"], str) else None
            record["extra"] = encode_row(with_license_note({"extra": extra}, sources))["extra"]
            rows.append({name: record[name] for name in COLUMNS})
            continue
        raw = decode_row(record)
        row, removals = edited(raw, plan, _WORKER["boilerplate"])
        row = with_license_note(row, sources)
        if removals:
            row = {**row, "row_id": derived_id(row, raw["row_id"])}
            edges.append(lineage_edge(row["row_id"], raw["row_id"], removals))
        rows.append(encode_row(row))
    return (
        pa.RecordBatch.from_pylist(rows, schema=ARROW_SCHEMA),
        pa.RecordBatch.from_pylist(edges, schema=LINEAGE_SCHEMA),
    )


def lineage_edge(child_id: str, parent_id: str, removals: Sequence[RemovedText]) -> Mapping[str, Any]:
    """The edge from an edited row to its input row: which texts were removed, and where."""
    return lineage_record(
        child_id,
        parent_id,
        "deduped",
        "dedup:" + ",".join(sorted({e.operation for e in removals})),
        "; ".join(f"{e.location}: removed {e.operation} {e.removed[:60]!r}" for e in removals),
    )
