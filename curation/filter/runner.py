"""The runner of the filtering stage: cleans each row, then applies the filters in order (the first
rejection wins), in batches; a preview of the same on a sample; and the stage itself, which writes the
kept rows, the rejections and the lineage edges of a warehouse table.

The steps keep their own counts (:class:`curation.filter.base.Filter.run`), so the runner only
decides what happens to each row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from curation.core.markdown import table_cell
from curation.core.progress import reported
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import Row, derived_id, rows_to_table
from curation.core.texts import all_text
from curation.core.warehouse import LINEAGE_DDL, StagedWrite, canonical_ddl, count_rows, table_rows
from curation.filter.base import Cleaner, Edit, Filter, FilterStats, Rejection

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
        return {
            "row_id": self.row_id,
            "filter": self.rejection.filter,
            "reason": self.rejection.reason,
            "value": None if value is None else str(value),
        }


@dataclass(frozen=True)
class EditedRow:
    """A kept row that cleaners changed: ``parent_id`` → ``child_id`` is one lineage edge."""

    child_id: str
    parent_id: str
    edits: tuple[Edit, ...]

    @property
    def operation(self) -> str:
        return "clean:" + ",".join(dict.fromkeys(e.cleaner for e in self.edits))

    @property
    def detail(self) -> str:
        """Every edit as ``where: description``, the lineage edge's detail."""
        return "; ".join(f"{edit.where}: {edit.description}" for edit in self.edits)


@dataclass
class FilterBatch:
    kept: list[Row] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    edited: list[EditedRow] = field(default_factory=list)

    def kept_table(self) -> pa.Table:
        return rows_to_table(self.kept)


def run_filters(
    rows: Iterable[Row],
    cleaners: Sequence[Cleaner] = (),
    filters: Sequence[Filter] = (),
    *,
    batch_size: int = 1024,
    stats: FilterStats | None = None,
    reid: bool = True,
    timed: bool = False,
) -> Iterator[FilterBatch]:
    """Clean then filter ``rows``, yielding one :class:`FilterBatch` per ``batch_size`` input rows.

    Filters see the cleaned row; the first rejection wins, so pass them cheapest first (as
    :func:`curation.filter.chain.build_filters` returns them). With ``reid`` an edited row gets a new id
    (:func:`derived_id`, docs/architecture.md §3: derived rows get new ids) and the edge is in ``edited``.
    Pass ``stats`` to read counts afterwards; ``timed`` adds per-step seconds (small overhead).
    For Arrow input use ``run_filters(curation.core.schema.iter_rows(batches), ...)``.
    """
    stats = stats if stats is not None else FilterStats()
    steps: list[Cleaner | Filter] = [*cleaners, *filters]
    for step in steps:
        step.zero_counts(stats)
    batch = FilterBatch()
    count = 0
    for row in rows:
        stats.rows_in += 1
        parent_id = row["row_id"]
        edits: list[Edit] = []
        for cleaner in cleaners:
            row, made = cleaner.run(row, stats, timed=timed)
            edits.extend(made)
        rejection = None
        for flt in filters:
            rejection = flt.run(row, stats, timed=timed)
            if rejection is not None:
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
# The stage: a warehouse table in, the filtered table, its rejections and lineage out
# ---------------------------------------------------------------------------------------------

REJECTIONS_DDL = "row_id VARCHAR NOT NULL, filter VARCHAR NOT NULL, reason VARCHAR NOT NULL, value VARCHAR"
REJECTIONS_SCHEMA = pa.schema([(name, pa.string()) for name in ("row_id", "filter", "reason", "value")])


@dataclass(frozen=True)
class FilteredTables:
    """What :func:`filter_table` staged (quoted names to query before the commit) and its counts."""

    kept: str
    rejections: str
    stats: FilterStats


def filter_table(
    staged: StagedWrite,
    source: str,
    cleaners: Sequence[Cleaner],
    filters: Sequence[Filter],
    *,
    batch_rows: int,
    log: Callable[[str], None],
) -> FilteredTables:
    """Clean and filter the warehouse table ``source`` into the staged ``filtered`` table, one
    ``filter_rejections`` record per dropped row and one lineage edge per edited row (its edits as the
    detail); ``log`` gets progress lines."""
    stats = FilterStats()
    kept = staged.create("filtered", canonical_ddl())
    rejections = staged.create("filter_rejections", REJECTIONS_DDL)
    lineage = staged.partition("lineage", LINEAGE_DDL)
    rows = reported(table_rows(staged.connection, source), log, "filtering", count_rows(staged.connection, source))
    for batch in run_filters(rows, cleaners, filters, stats=stats, batch_size=batch_rows, timed=True):
        staged.append(kept, batch.kept_table())
        staged.append_rows(rejections, [rejected.as_record() for rejected in batch.rejected], REJECTIONS_SCHEMA)
        staged.append_rows(
            lineage,
            [
                lineage_record(edited.child_id, edited.parent_id, "filtered", edited.operation, edited.detail)
                for edited in batch.edited
            ],
            LINEAGE_SCHEMA,
        )
    return FilteredTables(kept, rejections, stats)


# ---------------------------------------------------------------------------------------------
# Preview
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


def preview(
    rows_sample: Iterable[Row], cleaners: Sequence[Cleaner] = (), filters: Sequence[Filter] = (), *, examples: int = 3
) -> Preview:
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


def stats_markdown(stats: FilterStats) -> str:
    """A Markdown table of per-step counts (asset metadata, reports)."""
    kept_pct = 100.0 * stats.rows_kept / stats.rows_in if stats.rows_in else 0.0
    lines = [
        f"**{stats.rows_in}** rows in, **{stats.rows_kept}** kept ({kept_pct:.1f}%), **{stats.rows_edited}** edited.",
        "",
        "| step | seen | rejected | edits |",
        "|---|---:|---:|---:|",
    ]
    for name, seen in stats.seen.items():
        lines.append(f"| {name} | {seen} | {stats.rejected.get(name, '')} | {stats.edits.get(name, '')} |")
    return "\n".join(lines)


def preview_markdown(result: Preview) -> str:
    """The preview as Markdown: the counts table, then examples of each drop and edit reason."""
    parts = [stats_markdown(result.stats)]
    if result.rejected_examples:
        parts += [
            "",
            "### Would be removed",
            "",
            "| filter | row_id | reason | value | text |",
            "|---|---|---|---|---|",
        ]
        for name, items in result.rejected_examples.items():
            for row_id, rej, text in items:
                value = "" if rej.value is None else _snippet(str(rej.value), 40)
                parts.append(
                    f"| {name} | `{row_id}` | {table_cell(rej.reason)} | {table_cell(value)} | {table_cell(text)} |"
                )
    if result.edit_examples:
        parts += ["", "### Would be edited", "", "| cleaner | row_id | where | change |", "|---|---|---|---|"]
        for name, edits in result.edit_examples.items():
            for row_id, edit in edits:
                parts.append(f"| {name} | `{row_id}` | {edit.where} | {table_cell(edit.description)} |")
    return "\n".join(parts)
