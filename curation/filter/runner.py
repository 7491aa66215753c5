"""The filtering framework: filters, cleaners, a registry built from config, and one runner.

Modelled on DataTrove's pipeline (each filter answers "keep" or "drop, with this reason"; one
runner owns batching, statistics and the record of what was dropped), so adding a filter is a
few lines and every dropped row is explained for free.

* A **filter** has a ``name``, a ``cost`` (cheapest run first) and ``__call__(row) ->
  Rejection | None``.
* A **cleaner** has a ``name`` and ``__call__(row) -> (row, [Edit, ...])``; it never mutates its
  input and returns the same object when nothing changed.
* :func:`run_filters` cleans each row, then applies the filters in order; the first rejection
  wins. It yields :class:`FilterBatch` objects and fills a :class:`FilterStats`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa

from curation.core.schema import Row, all_text, derived_id, rows_to_table


@dataclass(frozen=True)
class Rejection:
    """Why a filter dropped a row: stored as one ``filter_rejections`` record."""

    filter: str
    reason: str
    value: float | str | None = None


@dataclass(frozen=True)
class Edit:
    """What a cleaner changed in one field (``where`` is e.g. ``messages[1].content``)."""

    cleaner: str
    where: str
    description: str


@runtime_checkable
class Filter(Protocol):
    name: str
    cost: float

    def __call__(self, row: Row) -> Rejection | None: ...


@runtime_checkable
class Cleaner(Protocol):
    name: str

    def __call__(self, row: Row) -> tuple[Row, list[Edit]]: ...


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

FILTERS: dict[str, Callable[..., Filter]] = {}
CLEANERS: dict[str, Callable[..., Cleaner]] = {}

# What runs when the project file says nothing. Language ID and the blocklist are opt-in: which
# languages and which terms are unwanted is a policy choice the user must make explicitly.
DEFAULT_CLEANERS: tuple[str, ...] = ("fix_encoding", "html_to_text", "pii", "whitespace")
DEFAULT_FILTERS: tuple[str, ...] = (
    "empty", "chosen_equals_rejected", "chat_tokens", "length", "encoding", "refusal", "echo",
    "repetition", "gopher_quality",
)


def register_filter(name: str) -> Callable[[Callable[..., Filter]], Callable[..., Filter]]:
    """Class decorator: make a filter buildable from config under ``name``."""
    def decorate(factory: Callable[..., Filter]) -> Callable[..., Filter]:
        FILTERS[name] = factory
        return factory
    return decorate


def register_cleaner(name: str) -> Callable[[Callable[..., Cleaner]], Callable[..., Cleaner]]:
    """Class decorator: make a cleaner buildable from config under ``name``."""
    def decorate(factory: Callable[..., Cleaner]) -> Callable[..., Cleaner]:
        CLEANERS[name] = factory
        return factory
    return decorate


def _load_builtins() -> None:
    # Imported lazily: those modules import Rejection/Edit from here.
    from curation.filter import cleaners, language, policy, quality  # noqa: F401


def _instantiate(kind: str, table: Mapping[str, Callable[..., Any]], name: str, params: Any) -> Any:
    if name not in table:
        raise ValueError(f"unknown {kind} {name!r} in the project file's {kind}s section; "
                         f"known {kind}s: {', '.join(sorted(table))}")
    if params is None or params is True:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"{kind} {name!r}: parameters must be a mapping (or true/false), got {params!r}")
    try:
        return table[name](**params)
    except TypeError as error:
        raise ValueError(f"{kind} {name!r}: bad parameters {dict(params)}: {error}") from error


def _build(kind: str, table: Mapping[str, Callable[..., Any]], defaults: Sequence[str],
           config: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    _load_builtins()
    config = dict(config or {})
    order = config.pop("order", None)
    use_defaults = config.pop("defaults", True)
    names = list(defaults) if use_defaults else []
    for name, params in config.items():
        if params is False:
            if name not in table:
                _instantiate(kind, table, name, {})  # raises the helpful "unknown" error
            names = [n for n in names if n != name]
        elif name not in names:
            names.append(name)
    built = [(name, _instantiate(kind, table, name, config.get(name))) for name in names]
    if order is not None:
        unknown = [n for n in order if n not in names]
        if unknown:
            raise ValueError(f"{kind}s order names {unknown}, which are not enabled; enabled: {names}")
        rank = {n: i for i, n in enumerate(order)}
        built.sort(key=lambda item: rank.get(item[0], len(rank)))
    return built


def build_filters(config: Mapping[str, Any] | None = None) -> list[Filter]:
    """Filters from the project file's ``filters:`` section.

    ``config`` maps a filter name to its parameters (a mapping, ``true`` for defaults, ``false`` to
    switch a default filter off). ``defaults: false`` starts from nothing instead of
    :data:`DEFAULT_FILTERS`. Without ``order`` the filters run cheapest first (by ``cost``);
    ``order: [a, b]`` runs those first, in that order, and the rest by cost after them.
    """
    config = dict(config or {})
    config.pop("cleaners", None)
    explicit = config.get("order")
    built = _build("filter", FILTERS, DEFAULT_FILTERS, config)
    if explicit is None:
        built.sort(key=lambda item: item[1].cost)  # stable: ties keep config order
    else:
        head = [b for b in built if b[0] in explicit]
        tail = sorted((b for b in built if b[0] not in explicit), key=lambda item: item[1].cost)
        built = head + tail
    return [f for _, f in built]


def build_cleaners(config: Mapping[str, Any] | None = None) -> list[Cleaner]:
    """Cleaners from the ``filters: cleaners:`` sub-section (same syntax as :func:`build_filters`).

    Cleaners run in :data:`DEFAULT_CLEANERS` order (encoding repair before HTML), then any extra
    ones in config order, with ``whitespace`` last so it tidies what the others leave behind;
    ``order`` overrides all of this.
    """
    built = _build("cleaner", CLEANERS, DEFAULT_CLEANERS, config)
    if not (config or {}).get("order"):
        built.sort(key=lambda item: item[0] == "whitespace")  # stable: only moves whitespace last
    return [c for _, c in built]


def build_chain(config: Mapping[str, Any] | None = None) -> tuple[list[Cleaner], list[Filter]]:
    """Cleaners and filters from the whole ``filters:`` section, e.g. (YAML)::

        filters:
          cleaners: {markdown: true}            # opt-in cleaner; html_to_text: false turns one off
          length: {min_response_words: 3}
          echo: false
          language: {allowed: [en], by_source: {forum_fr: [fr]}}
          patterns: {preset: unsolicited_suggestions}
          order: [language]                     # optional: these first, the rest cheapest first
    """
    config = dict(config or {})
    return build_cleaners(config.get("cleaners")), build_filters(config)


def describe_registry() -> dict[str, dict[str, str]]:
    """Name → first docstring line of every known filter and cleaner (for docs and the UI)."""
    _load_builtins()

    def first_line(obj: Any) -> str:
        return (obj.__doc__ or "").strip().splitlines()[0] if obj.__doc__ else ""
    return {"filters": {n: first_line(f) for n, f in sorted(FILTERS.items())},
            "cleaners": {n: first_line(c) for n, c in sorted(CLEANERS.items())}}


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RejectedRow:
    """One ``filter_rejections`` record (``row_id`` is the input row's id)."""

    row_id: str
    rejection: Rejection

    def as_record(self) -> dict[str, Any]:
        value = self.rejection.value
        return {"row_id": self.row_id, "filter": self.rejection.filter, "reason": self.rejection.reason,
                "value": None if value is None else str(value)}


@dataclass(frozen=True)
class EditedRow:
    """A kept row that cleaners changed: ``parent_id`` → ``child_id`` is one lineage edge."""

    child_id: str
    parent_id: str
    edits: tuple[Edit, ...]

    @property
    def operation(self) -> str:
        return "clean:" + ",".join(dict.fromkeys(e.cleaner for e in self.edits))


@dataclass
class FilterBatch:
    kept: list[Row] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    edited: list[EditedRow] = field(default_factory=list)

    def kept_table(self) -> pa.Table:
        return rows_to_table(self.kept)


@dataclass
class FilterStats:
    """Per-filter counts: ``seen`` rows reached the filter (earlier filters passed them)."""

    rows_in: int = 0
    rows_kept: int = 0
    rows_edited: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    edits: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"rows_in": self.rows_in, "rows_kept": self.rows_kept, "rows_edited": self.rows_edited,
                "seen": dict(self.seen), "rejected": dict(self.rejected), "edits": dict(self.edits),
                "seconds": {k: round(v, 4) for k, v in self.seconds.items()}}


class FilterError(RuntimeError):
    """A filter or cleaner failed on a row; the message names both."""


def _step_error(kind: str, name: str, row_id: str, error: Exception) -> FilterError:
    return FilterError(f"{kind} {name!r} failed on row {row_id}: {type(error).__name__}: {error}. "
                       f"Fix the row upstream or switch the {kind} off in the project file's filters section.")


def run_filters(rows: Iterable[Row], cleaners: Sequence[Cleaner] = (), filters: Sequence[Filter] = (), *,
                batch_size: int = 1024, stats: FilterStats | None = None, reid: bool = True,
                timed: bool = False) -> Iterator[FilterBatch]:
    """Clean then filter ``rows``, yielding one :class:`FilterBatch` per ``batch_size`` input rows.

    Filters see the cleaned row; the first rejection wins, so pass them cheapest first (as
    :func:`build_filters` returns them). With ``reid`` an edited row gets a new id
    (:func:`derived_id`, DESIGN.md §3: derived rows get new ids) and the edge is in ``edited``.
    Pass ``stats`` to read counts afterwards; ``timed`` adds per-step seconds (small overhead).
    For Arrow input use ``run_filters(curation.core.schema.iter_rows(batches), ...)``.
    """
    stats = stats if stats is not None else FilterStats()
    for cleaner in cleaners:
        stats.seen.setdefault(cleaner.name, 0)
        stats.edits.setdefault(cleaner.name, 0)
    for flt in filters:
        stats.seen.setdefault(flt.name, 0)
        stats.rejected.setdefault(flt.name, 0)
    clock = time.perf_counter
    batch = FilterBatch()
    count = 0
    for row in rows:
        stats.rows_in += 1
        parent_id = row["row_id"]
        edits: list[Edit] = []
        for cleaner in cleaners:
            start = clock() if timed else 0.0
            try:
                row, made = cleaner(row)
            except Exception as error:
                raise _step_error("cleaner", cleaner.name, parent_id, error) from error
            if timed:
                stats.seconds[cleaner.name] = stats.seconds.get(cleaner.name, 0.0) + clock() - start
            stats.seen[cleaner.name] += 1
            if made:
                stats.edits[cleaner.name] += len(made)
                edits.extend(made)
        rejection = None
        for flt in filters:
            stats.seen[flt.name] += 1
            start = clock() if timed else 0.0
            try:
                rejection = flt(row)
            except Exception as error:
                raise _step_error("filter", flt.name, parent_id, error) from error
            if timed:
                stats.seconds[flt.name] = stats.seconds.get(flt.name, 0.0) + clock() - start
            if rejection is not None:
                stats.rejected[flt.name] += 1
                break
        if rejection is not None:
            batch.rejected.append(RejectedRow(parent_id, rejection))
        else:
            if edits:
                stats.rows_edited += 1
                child_id = derived_id(row, parent_id) if reid else parent_id
                if reid:
                    row = {**row, "row_id": child_id}
                batch.edited.append(EditedRow(child_id, parent_id, tuple(edits)))
            stats.rows_kept += 1
            batch.kept.append(row)
        count += 1
        if count >= batch_size:
            yield batch
            batch, count = FilterBatch(), 0
    if count:
        yield batch


# ---------------------------------------------------------------------------------------------
# Preview and summaries
# ---------------------------------------------------------------------------------------------

@dataclass
class Preview:
    """What a filter chain would do to a sample: counts and a few examples per filter/cleaner."""

    stats: FilterStats
    rejected_examples: dict[str, list[tuple[str, Rejection, str]]]
    edit_examples: dict[str, list[tuple[str, Edit]]]


def _snippet(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def preview(rows_sample: Iterable[Row], cleaners: Sequence[Cleaner] = (), filters: Sequence[Filter] = (),
            *, examples: int = 3) -> Preview:
    """Run the chain on a sample and keep up to ``examples`` examples of each reason to drop/edit."""
    stats = FilterStats()
    originals: dict[str, Row] = {}

    def remember(rows: Iterable[Row]) -> Iterator[Row]:
        for row in rows:
            originals[row["row_id"]] = row
            yield row

    rejected_examples: dict[str, list[tuple[str, Rejection, str]]] = {}
    edit_examples: dict[str, list[tuple[str, Edit]]] = {}
    for batch in run_filters(remember(rows_sample), cleaners, filters, stats=stats, timed=True):
        for item in batch.rejected:
            bucket = rejected_examples.setdefault(item.rejection.filter, [])
            if len(bucket) < examples:
                bucket.append((item.row_id, item.rejection, _snippet(all_text(originals[item.row_id]))))
        for edited in batch.edited:
            for edit in edited.edits:
                bucket_e = edit_examples.setdefault(edit.cleaner, [])
                if len(bucket_e) < examples:
                    bucket_e.append((edited.parent_id, edit))
        originals.clear()
    return Preview(stats, rejected_examples, edit_examples)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def stats_markdown(stats: FilterStats) -> str:
    """A Markdown table of per-step counts (asset metadata, reports)."""
    kept_pct = 100.0 * stats.rows_kept / stats.rows_in if stats.rows_in else 0.0
    lines = [f"**{stats.rows_in}** rows in, **{stats.rows_kept}** kept ({kept_pct:.1f}%), "
             f"**{stats.rows_edited}** edited.", "", "| step | seen | rejected | edits |",
             "|---|---:|---:|---:|"]
    for name, seen in stats.seen.items():
        lines.append(f"| {name} | {seen} | {stats.rejected.get(name, '')} | {stats.edits.get(name, '')} |")
    return "\n".join(lines)


def preview_markdown(result: Preview) -> str:
    """The preview as Markdown: the counts table, then examples of each drop and edit reason."""
    parts = [stats_markdown(result.stats)]
    if result.rejected_examples:
        parts += ["", "### Would be removed", "", "| filter | row_id | reason | value | text |",
                  "|---|---|---|---|---|"]
        for name, items in result.rejected_examples.items():
            for row_id, rej, text in items:
                value = "" if rej.value is None else _snippet(str(rej.value), 40)
                parts.append(f"| {name} | `{row_id}` | {_md(rej.reason)} | {_md(value)} | {_md(text)} |")
    if result.edit_examples:
        parts += ["", "### Would be edited", "", "| cleaner | row_id | where | change |", "|---|---|---|---|"]
        for name, edits in result.edit_examples.items():
            for row_id, edit in edits:
                parts.append(f"| {name} | `{row_id}` | {edit.where} | {_md(edit.description)} |")
    return "\n".join(parts)
