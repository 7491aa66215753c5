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
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from curation.core.licenses import permissiveness_rank
from curation.core.parallel import gc_paused
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import ARROW_SCHEMA, COLUMNS, Row, decode_row, derived_id, encode_row
from curation.core.texts import TextField, prompt_text, response_text, text_fields
from curation.dedup.clusters import ORIGIN_RANK, KeepPolicy, default_quality, quality_of, with_license_note
from curation.dedup.conflicts import ConflictConfig
from curation.dedup.exact import ExactConfig, normalised_key, parts_key
from curation.dedup.fields import (
    FieldSet,
    compared_text,
    dedup_text,
    field_parts,
    fold,
    normalized,
    normalizer,
    rejected_text,
)
from curation.dedup.minhash import MinHasher, signature_column
from curation.dedup.near import SIGNATURE_SCHEMA, NearConfig, signature_key, signature_keyer
from curation.dedup.repeats import (
    UNIT_SPLIT,
    BoilerplateConfig,
    RemovedText,
    WithinConfig,
    has_fence,
    paragraph_digest,
    paragraph_keys,
    prose_units,
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
        *((name, pa.float64()) for name in KeepPolicy.CRITERIA),
        ("edited", pa.bool_()),  # repeats or boilerplate removed from its texts
        ("exact_key", pa.string()),  # NULL: nothing to compare
        ("prompt_key", pa.string()),  # NULL: no prompt, or a text/prompt row (no conflicts)
        ("response_key", pa.string()),  # a preference row's chosen answer
        ("rejected_key", pa.string()),  # a preference row's rejected answer (always); NULL for other kinds
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
    """The key of a response among the stage's facts (128 bits; SHA-256 is the cheapest strong hash on CPUs
    with SHA extensions)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def row_facts(row: Row, position: int, plan: DedupPlan, was_edited: bool) -> tuple[dict[str, Any], str | None]:
    """The :data:`FACT_SCHEMA` record of an (already edited) row, and the text near dedup compares."""
    record: dict[str, Any] = {
        "position": position,
        "row_id": row["row_id"],
        "origin": row.get("origin"),
        "license": row.get("license"),
        **dict(zip(KeepPolicy.CRITERIA, plan.policy.criteria(row), strict=True)),
        "edited": was_edited,
        "exact_key": None,
        "prompt_key": None,
        "response_key": None,
        "rejected_key": None,
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
    if row.get("kind") == "preference":
        record["rejected_key"] = _digest(normalized(rejected_text(row), conflicts.normalize))
    if plan.near is None:
        return record, None
    text = compared_text(pieces(plan.near.fields), plan.near.fields)
    record["near_key"] = signature_key(text, plan.near)
    return record, text


_Keys = tuple[str | None, str | None, str | None, str | None, str | None, str | None]
"""A row's exact, prompt, response, rejected and signature keys, and the text near dedup compares."""
_COPIED: tuple[str, ...] = ("position", "row_id", "origin", "license")
"""The fact columns copied from the input as they are."""
_DECIDING: tuple[str, ...] = tuple(name for name in FACT_SCHEMA.names if name not in _COPIED)
"""The fact columns computed from a row's content (the others are copied from the input)."""
_CONTENT_COLUMNS = ("kind", "text", "messages", "chosen", "rejected", "score", "extra", "origin", "license")
"""The input columns the facts are made of."""
FACT_INPUTS: tuple[str, ...] = ("row_id", *_CONTENT_COLUMNS)
"""The input columns :func:`facts_batch` and :func:`texts_batch` read (nothing reads the others)."""


def _loaded(value: Any) -> Any:
    """A JSON column's value as :func:`~curation.core.schema.decode_row` decodes it."""
    return json.loads(value) if isinstance(value, str) else value


class FastFacts:
    """:func:`row_facts` and :func:`paragraph_keys` of a row that :func:`edited` leaves as it is (nearly every
    row), straight from its decoded columns. Each text is split into paragraphs and normalised once for both
    in-row repeats and boilerplate; the normalised prompt and response are assembled from those paragraph
    keys where that is exact (ASCII text without code fences) and computed once otherwise; settings are
    looked at once per process; no row copy, :class:`~curation.core.texts.TextField` or removal record is
    built. A row that in-row repeats would edit gives ``None``, and the batch takes it through
    :func:`edited` and :func:`row_facts` (tests check that both ways agree on every row). Used before
    boilerplate is known (the first pass) and with the default :class:`~curation.dedup.clusters.KeepPolicy`
    criteria only (:meth:`applies`)."""

    def __init__(self, plan: DedupPlan) -> None:
        self.plan = plan
        within, boilerplate = plan.within, plan.boilerplate
        self.within_unit = within.unit if within is not None else None
        self.within_split = UNIT_SPLIT[within.unit] if within is not None else None
        self.within_norm = normalizer(within.normalize) if within is not None else None
        self.within_min = within.min_chars if within is not None else 0
        self.paragraph_norm = normalizer(boilerplate.normalize) if boilerplate is not None else None
        self.paragraph_min = boilerplate.min_chars if boilerplate is not None else 0
        self.roles = frozenset(boilerplate.roles) if boilerplate is not None else frozenset()
        # In-row repeats by paragraph under the same normalisation see the very keys boilerplate counts.
        self.shared = within is not None and within.unit == "paragraph" and self.within_norm is self.paragraph_norm
        self.exact_norm = normalizer(plan.exact.normalize) if plan.exact is not None else None
        self.conflict_norm = normalizer(plan.conflicts.normalize)
        self.near_key = signature_keyer(plan.near) if plan.near is not None else None
        self.license_orders: dict[str | None, float] = {}
        exact, near = plan.exact, plan.near
        # The default field sets under one normalisation (for the keys and for the paragraphs) take a shortcut.
        self.standard = (
            exact is not None
            and exact.fields == "prompt_response"
            and near is not None
            and near.fields == "prompt_response"
            and plan.conflicts.prompt_fields == "prompt"
            and self.exact_norm is self.conflict_norm
            and (self.paragraph_norm is None or self.paragraph_norm is self.exact_norm)
        )

    @staticmethod
    def applies(plan: DedupPlan) -> bool:
        """Whether the plan's keep policy has the default criteria (the ones computed here)."""
        return plan.policy.quality is default_quality and plan.policy.license_rank is permissiveness_rank

    def facts(self, row: Row, count_paragraphs: bool) -> tuple[tuple[Any, ...], str | None, list[str]] | None:
        """The deciding columns (:data:`_DECIDING`), the compared text and the paragraph keys of ``row`` (its
        :data:`_CONTENT_COLUMNS` decoded, ``extra`` still JSON); ``None`` when in-row repeats would edit it."""
        paragraphs: set[str] = set()
        # Normalised texts already at hand, by text: the paragraph normaliser's, the one keys use by default.
        normal: dict[str, str] = {}
        text = row["text"]
        if isinstance(text, str) and text and not self._units(text, True, count_paragraphs, paragraphs, normal):
            return None
        for column in ("messages", "chosen", "rejected"):
            for message in row[column] or []:
                content = message.get("content")
                if isinstance(content, str) and content:
                    eligible = column != "messages" or message.get("role") in self.roles
                    if not self._units(content, eligible, count_paragraphs, paragraphs, normal):
                        return None
        kind = row["kind"]
        prompt, response = prompt_text(row), response_text(row)
        if self.standard and kind != "preference":  # a preference row compares its rejected answer too
            keys = self._standard_keys(kind, prompt, response, normal)
        else:
            keys = self._keys(row, kind, prompt, response, normal)
        license_id = row["license"]
        license_order = self.license_orders.get(license_id)
        if license_order is None:
            license_order = self.license_orders[license_id] = float(-permissiveness_rank(license_id))
        extra = row["extra"]
        # Only extra.quality is read from extra: JSON that cannot hold that key is not parsed.
        extra = _loaded(extra) if isinstance(extra, str) and ("quality" in extra or "\\" in extra) else None
        values = (
            float(ORIGIN_RANK.get(row["origin"] or "", 3)),
            license_order,
            -quality_of(response, kind, extra, row["score"]),
            False,
            *keys[:5],
        )
        return values, keys[5], sorted(paragraphs)

    def _standard_keys(self, kind: str, prompt: str, response: str, normal: dict[str, str]) -> _Keys:
        """:meth:`_keys` for the default field sets (exact and near compare prompt and response, conflicts
        the prompt) under one normalisation: each text normalised once, no field lists built."""
        norm = self.exact_norm
        assert norm is not None
        prompt_norm = normal.get(prompt)
        if prompt_norm is None:
            prompt_norm = norm(prompt)
        response_norm = normal.get(response)
        if response_norm is None:
            response_norm = norm(response)
        compared = f"{prompt}\n{response}" if prompt and response else prompt or response
        exact_key = normalised_key((prompt_norm, response_norm)) if compared.strip() else None
        prompt_key = response_key = None
        if self.plan.conflicts.mode != "off" and kind not in ("text", "prompt") and prompt.strip():
            prompt_key = normalised_key((prompt_norm,))
            response_key = _digest(response_norm)
        assert self.near_key is not None
        return exact_key, prompt_key, response_key, None, self.near_key(compared), compared

    def _keys(self, row: Row, kind: str, prompt: str, response: str, normal: dict[str, str]) -> _Keys:
        """The exact, prompt, response and signature keys of a row, and the text near dedup compares."""
        plan = self.plan
        pieces: dict[str, list[str]] = {}

        def parts(fields: FieldSet) -> list[str]:
            if fields not in pieces:
                pieces[fields] = field_parts(row, fields, prompt, response)
            return pieces[fields]

        def normalised(texts: list[str], norm: Callable[[str], str]) -> list[str]:
            if norm is not self.paragraph_norm:
                return [norm(t) for t in texts]
            return [normal[t] if t in normal else normal.setdefault(t, norm(t)) for t in texts]

        exact_key = prompt_key = response_key = rejected_key = near_key = compared = None
        if plan.exact is not None and self.exact_norm is not None:
            fields = plan.exact.fields
            if compared_text(parts(fields), fields).strip():
                exact_key = normalised_key(normalised(parts(fields), self.exact_norm))
        conflicts = plan.conflicts
        if conflicts.mode != "off" and kind not in ("text", "prompt") and prompt.strip():
            prompt_key = normalised_key(normalised(parts(conflicts.prompt_fields), self.conflict_norm))
            response_key = _digest(normalised([response], self.conflict_norm)[0])
        if kind == "preference":
            rejected_key = _digest(normalised([rejected_text(row)], self.conflict_norm)[0])
        if plan.near is not None and self.near_key is not None:
            compared = compared_text(parts(plan.near.fields), plan.near.fields)
            near_key = self.near_key(compared)
        return exact_key, prompt_key, response_key, rejected_key, near_key, compared

    def _units(
        self, text: str, eligible: bool, count_paragraphs: bool, paragraphs: set[str], normal: dict[str, str]
    ) -> bool:
        """False when ``text`` repeats a unit that in-row repeats would remove. Otherwise adds the keys of its
        paragraphs to ``paragraphs`` (when they are counted and ``eligible``: a text boilerplate is looked for
        in), and its normalised form to ``normal`` when that comes for free: it is its only paragraph, or,
        for ASCII text without code, the non-empty paragraph keys joined by spaces (the words are the same)."""
        keys: list[str] | None = None
        units: list[str] | None = None
        # Without a code fence or a unit separator the text is one unit, which cannot repeat.
        if self.within_split is not None and (has_fence(text) or self.within_split.search(text)):
            assert self.within_norm is not None and self.within_unit is not None
            units = prose_units(text, self.within_unit)
            keys = [self.within_norm(unit) for unit in units]
            long = [k for k in keys if len(k) >= self.within_min]
            if len(set(long)) != len(long):
                return False
        if not (count_paragraphs and eligible):
            return True
        norm = self.paragraph_norm
        assert norm is not None
        if keys is None or not self.shared:
            units = prose_units(text)
            keys = [norm(unit) for unit in units]
        paragraphs.update(paragraph_digest(k) for k in keys if len(k) >= self.paragraph_min)
        if len(keys) == 1 and units is not None and units[0] == text:
            normal[text] = keys[0]
        elif norm is fold and text.isascii() and not has_fence(text):
            normal[text] = " ".join(k for k in keys if k)
        return True


# ---------------------------------------------------------------------------------------------
# Batch functions for the worker processes; their settings arrive once, through `start_worker`.

_WORKER: dict[str, Any] = {}


def start_worker(plan: DedupPlan, boilerplate: Collection[str] = (), known: np.ndarray | None = None) -> None:
    """The settings every batch of this process uses (the ``initializer`` of ``map_ordered``): the plan,
    the boilerplate paragraph keys and the signature keys already stored (:func:`key_bytes`, sorted)."""
    _WORKER["plan"], _WORKER["boilerplate"] = plan, frozenset(boilerplate)
    _WORKER["known"] = key_bytes([]) if known is None else known
    _WORKER["hasher"] = plan.near.hasher() if plan.near is not None else None
    _WORKER["fast"] = FastFacts(plan) if FastFacts.applies(plan) and not boilerplate else None


def key_bytes(keys: Sequence[str]) -> np.ndarray:
    """Hex keys as sortable 16-byte strings (what :func:`start_worker` looks signature keys up in)."""
    return np.array([bytes.fromhex(k) for k in keys], dtype="S16")


def _rows(batch: pa.RecordBatch) -> list[tuple[Row, dict[str, Any]]]:
    """Each record decoded as a canonical row, with the extra columns the query added."""
    extra_columns = [name for name in batch.schema.names if name not in COLUMNS]
    return [(decode_row(record), {c: record[c] for c in extra_columns}) for record in batch.to_pylist()]


def _typed(column: pa.Array, kind: pa.DataType) -> pa.Array:
    """``column`` as ``kind``; cast only when it is another type (pyarrow's first cast in a process imports
    pandas, most of a second, and the query's columns have the types already)."""
    return column if column.type == kind else column.cast(kind)


def _content(batch: pa.RecordBatch) -> list[Row]:
    """The :data:`_CONTENT_COLUMNS` of each row, message columns decoded and ``extra`` left as JSON; read a
    column at a time (no other column is converted)."""
    columns = [batch.column(name).to_pylist() for name in _CONTENT_COLUMNS]
    for name in ("messages", "chosen", "rejected"):
        at = _CONTENT_COLUMNS.index(name)
        columns[at] = [json.loads(v) if isinstance(v, str) else v for v in columns[at]]
    return [dict(zip(_CONTENT_COLUMNS, values, strict=True)) for values in zip(*columns, strict=True)]


@gc_paused
def facts_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch, pa.RecordBatch]:
    """Facts of a batch of input rows (with a ``position`` column); before boilerplate is known (no keys
    given to :func:`start_worker`) their paragraph keys; and the signatures of the compared texts whose
    key is not stored yet (one per key), so near dedup never has to read a text twice. Rows go through
    :class:`FastFacts` where it applies, the others through :func:`edited` and :func:`row_facts`."""
    plan: DedupPlan = _WORKER["plan"]
    boilerplate: frozenset[str] = _WORKER["boilerplate"]
    fast: FastFacts | None = _WORKER["fast"]
    count_paragraphs = plan.boilerplate is not None and not boilerplate
    values: list[tuple[Any, ...]] = []
    positions: list[int] = batch.column("position").to_pylist()
    paragraph_positions: list[int] = []
    paragraphs: list[str] = []
    unsigned: dict[str, str] = {}
    contents = _content(batch) if fast is not None else [None] * batch.num_rows
    for index, (position, content) in enumerate(zip(positions, contents, strict=True)):
        found = fast.facts(content, count_paragraphs) if fast is not None and content is not None else None
        if found is None:
            found = _reference_facts(batch, index, plan, boilerplate, count_paragraphs)
        row_values, text, keys = found
        values.append(row_values)
        if text is not None:
            unsigned.setdefault(row_values[-1], text)
        paragraph_positions.extend([position] * len(keys))
        paragraphs.extend(keys)
    copied = [_typed(batch.column(name), FACT_SCHEMA.field(name).type) for name in _COPIED]
    computed = [
        pa.array(column, FACT_SCHEMA.field(name).type)
        for name, column in zip(_DECIDING, zip(*values, strict=True) if values else [[]] * len(_DECIDING), strict=True)
    ]
    return (
        pa.RecordBatch.from_arrays(copied + computed, schema=FACT_SCHEMA),
        pa.RecordBatch.from_pydict({"position": paragraph_positions, "paragraph": paragraphs}, schema=PARAGRAPH_SCHEMA),
        _new_signatures(unsigned),
    )


def _reference_facts(
    batch: pa.RecordBatch, index: int, plan: DedupPlan, boilerplate: frozenset[str], count_paragraphs: bool
) -> tuple[tuple[Any, ...], str | None, list[str]]:
    """:meth:`FastFacts.facts` of one row of ``batch`` the long way: the row edited, then its facts."""
    ((raw, columns),) = _rows(batch.slice(index, 1))
    fields = list(text_fields(raw))
    row, removals = edited(raw, plan, boilerplate, fields)
    record, text = row_facts(row, columns["position"], plan, bool(removals))
    keys: list[str] = []
    if count_paragraphs:
        assert plan.boilerplate is not None
        keys = paragraph_keys(row, plan.boilerplate, fields if row is raw else None)
    return tuple(record[name] for name in _DECIDING), text, keys


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


@gc_paused
def texts_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch]:
    """The compared texts of a batch of input rows (with ``slot`` and ``edited`` columns, the latter from
    the facts), for verifying near-duplicate candidates. :func:`edited` leaves a row whose facts say it
    was not edited as it is, so only the edited rows go through it again."""
    plan: DedupPlan = _WORKER["plan"]
    assert plan.near is not None
    fields = plan.near.fields
    texts, chosen, rejected = [], [], []
    for index, (content, was_edited) in enumerate(
        zip(_content(batch), batch.column("edited").to_pylist(), strict=True)
    ):
        if was_edited:
            ((raw, _),) = _rows(batch.slice(index, 1))
            content, _ = edited(raw, plan, _WORKER["boilerplate"])
        texts.append(dedup_text(content, fields))
        preference = content["kind"] == "preference"
        chosen.append(response_text(content) if preference else None)
        rejected.append(rejected_text(content) if preference else None)
    arrays = [
        _typed(batch.column("slot"), pa.int64()),
        *(pa.array(column, pa.string()) for column in (texts, chosen, rejected)),
    ]
    return (pa.RecordBatch.from_arrays(arrays, schema=TEXT_SCHEMA),)


TEXT_SCHEMA = pa.schema(
    [("slot", pa.int64()), ("text", pa.string()), ("chosen", pa.string()), ("rejected", pa.string())]
)
"""Compared texts of near-duplicate candidates, by their place in verification order; for preference rows
also each answer on its own (two pairs are near copies only when each side is: see
:func:`curation.dedup.stage.run_dedup`)."""


@gc_paused
def published_batch(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.RecordBatch]:
    """Kept rows as ``deduped`` stores them, with their lineage edges. The batch's ``sources`` column
    lists the copies each row absorbed (:func:`~curation.dedup.clusters.with_license_note`); a row
    whose text changed (``edited``) gets a derived id, and its edge says what was removed and where.
    The other rows only gain the note: their other columns are passed on as they are, in Arrow."""
    plan: DedupPlan = _WORKER["plan"]
    extras = batch.column("extra").to_pylist()
    edges = []
    rewritten: dict[int, dict[str, Any]] = {}
    flags, absorbed = batch.column("edited").to_pylist(), batch.column("sources").to_pylist()
    for index, (was_edited, sources) in enumerate(zip(flags, absorbed, strict=True)):
        if not was_edited:
            extra = json.loads(extras[index]) if isinstance(extras[index], str) else None
            extras[index] = encode_row(with_license_note({"extra": extra}, sources or ()))["extra"]
            continue
        ((raw, _),) = _rows(batch.slice(index, 1))
        row, removals = edited(raw, plan, _WORKER["boilerplate"])
        row = with_license_note(row, sources or ())
        if removals:
            row = {**row, "row_id": derived_id(row, raw["row_id"])}
            edges.append(lineage_edge(row["row_id"], raw["row_id"], removals))
        rewritten[index] = encode_row(row)
    columns = []
    for name, kind in zip(ARROW_SCHEMA.names, ARROW_SCHEMA.types, strict=True):
        column = pa.array(extras, kind) if name == "extra" else _typed(batch.column(name), kind)
        if rewritten:
            values = column.to_pylist()
            for index, record in rewritten.items():
                values[index] = record[name]
            column = pa.array(values, kind)
        columns.append(column)
    return (
        pa.RecordBatch.from_arrays(columns, schema=ARROW_SCHEMA),
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
