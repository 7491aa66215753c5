"""The runner of the filtering stage: every cleaner over a batch of rows, then the filters in order over
the rows no earlier filter rejected (the first rejection wins); a preview of the same on a sample; and the
stage itself, which streams a warehouse table through the chain in worker processes and writes the kept
rows, the rejections and the lineage edges in batches.

The steps keep their own counts (:class:`curation.filter.base.Filter.run`), so the runner only
decides what happens to each row. A worker returns its batch's counts with its results and the stage
adds them up (:meth:`curation.filter.base.FilterStats.add`).
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

import duckdb
import pyarrow as pa

from curation.core.config import ProjectConfig
from curation.core.freshness import stage_fingerprint
from curation.core.markdown import table_cell
from curation.core.memo import Reuse, drop_reuse, plan_reuse, rows_missing_from_memo, stage_output
from curation.core.parallel import map_ordered, warm_up, workers_for
from curation.core.progress import reported
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import ARROW_SCHEMA, COLUMNS, JSON_COLUMNS, Row, derived_id, rows_to_table
from curation.core.texts import all_text
from curation.core.warehouse import (
    LINEAGE_DDL,
    StagedWrite,
    canonical_ddl,
    count_rows,
    fetch_one,
    quote,
    read_batches,
)
from curation.filter.base import Cleaner, Edit, Filter, FilterStats, Rejection
from curation.filter.batch import BatchTexts
from curation.filter.chain import filter_settings, project_chain

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

    def lineage(self) -> dict[str, str | None]:
        return lineage_record(self.child_id, self.parent_id, "filtered", self.operation, self.detail)


@dataclass
class FilterBatch:
    """What became of one batch of input rows, each list in input order. ``positions`` are the kept
    rows' places in the input batch, ``edited_positions`` those of the kept rows that cleaners changed;
    ``edit_counts`` has ``(input row id, cleaner, edits)`` for every row a cleaner changed, rejected or
    kept (what ``FilterStats.edits`` counts)."""

    kept: list[Row] = field(default_factory=list)
    rejected: list[RejectedRow] = field(default_factory=list)
    edited: list[EditedRow] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    edited_positions: list[int] = field(default_factory=list)
    edit_counts: list[tuple[str, str, int]] = field(default_factory=list)

    def kept_table(self) -> pa.Table:
        return rows_to_table(self.kept)


def filter_batch(
    rows: Sequence[Row],
    cleaners: Sequence[Cleaner],
    filters: Sequence[Filter],
    stats: FilterStats,
    *,
    reid: bool = True,
    timed: bool = False,
) -> FilterBatch:
    """One batch through the chain: each cleaner over every row, then each filter over the rows that
    every earlier filter kept, so a filter sees exactly the rows it would see one row at a time."""
    stats.rows_in += len(rows)
    parents = [row["row_id"] for row in rows]
    # Each row's texts are walked once and shared by every step (with their screens and derived values),
    # again only for a row a cleaner changed.
    texts = BatchTexts(rows)
    steps: list[Cleaner | Filter] = [*cleaners, *filters]
    texts.prefetch(key for step in steps for key in step.screens())
    edits: dict[int, list[Edit]] = {}
    for cleaner in cleaners:
        changes = cleaner.run(texts.rows, texts, stats, timed=timed)
        if changes:
            for position, (_, new_edits) in changes.items():
                edits.setdefault(position, []).extend(new_edits)
            texts = texts.replaced({position: new for position, (new, _) in changes.items()})
    rows = texts.rows
    rejections: list[Rejection | None] = [None] * len(rows)
    alive, alive_texts = list(range(len(rows))), texts
    for flt in filters:
        if not alive:
            break
        verdicts = flt.run(alive_texts.rows, alive_texts, stats, timed=timed)
        if not any(verdicts):
            continue
        for position, rejection in zip(alive, verdicts, strict=True):
            rejections[position] = rejection
        passed = [k for k, rejection in enumerate(verdicts) if rejection is None]
        alive, alive_texts = [alive[k] for k in passed], alive_texts.subset(passed)
    batch = FilterBatch()
    for position, (row, parent_id, rejection) in enumerate(zip(rows, parents, rejections, strict=True)):
        if position in edits:
            per_cleaner = Counter(edit.cleaner for edit in edits[position])
            batch.edit_counts += [(parent_id, cleaner, count) for cleaner, count in per_cleaner.items()]
        if rejection is not None:
            batch.rejected.append(RejectedRow(parent_id, rejection))
            continue
        row_edits = edits.get(position)
        if row_edits:
            stats.rows_edited += 1
            child_id = derived_id(row, parent_id) if reid else parent_id
            if reid:
                row = {**row, "row_id": child_id}
            batch.edited.append(EditedRow(child_id, parent_id, tuple(row_edits)))
            batch.edited_positions.append(position)
        stats.rows_kept += 1
        batch.kept.append(row)
        batch.positions.append(position)
    return batch


def _zero_counts(stats: FilterStats, cleaners: Sequence[Cleaner], filters: Sequence[Filter]) -> None:
    """Every step listed in ``stats``, so one that never fires still shows with zero counts."""
    steps: list[Cleaner | Filter] = [*cleaners, *filters]
    for step in steps:
        step.zero_counts(stats)


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
    Pass ``stats`` to read counts afterwards; ``timed`` adds per-step seconds.
    For Arrow input use ``run_filters(curation.core.schema.iter_rows(batches), ...)``.
    """
    stats = stats if stats is not None else FilterStats()
    _zero_counts(stats, cleaners, filters)
    iterator = iter(rows)
    while chunk := list(islice(iterator, batch_size)):
        yield filter_batch(chunk, cleaners, filters, stats, reid=reid, timed=timed)


# ---------------------------------------------------------------------------------------------
# The stage: a warehouse table in, the filtered table, its rejections and lineage out
# ---------------------------------------------------------------------------------------------

_PRELOAD = ("curation.filter",)
"""What the filter chain's workers start with."""
BATCH_ROWS = 5_000
"""Rows per batch of the stage: enough that each step's screen (an RE2 pattern compiled per call, up to
a few milliseconds) costs little per row, few enough that the batches in flight (two per worker) take a
few MB."""

REJECTIONS_DDL = "row_id VARCHAR NOT NULL, filter VARCHAR NOT NULL, reason VARCHAR NOT NULL, value VARCHAR"
REJECTIONS_SCHEMA = pa.schema([(name, pa.string()) for name in ("row_id", "filter", "reason", "value")])


EDITS_DDL = "row_id VARCHAR NOT NULL, cleaner VARCHAR NOT NULL, edits INTEGER NOT NULL"
EDITS_SCHEMA = pa.schema([("row_id", pa.string()), ("cleaner", pa.string()), ("edits", pa.int32())])
FILTER_OUTPUTS = ("filtered", "filter_rejections", "filter_edits", "lineage")
"""The tables a re-run copies unchanged rows' results from (``lineage``: this asset's edges)."""


@dataclass(frozen=True)
class FilteredTables:
    """What :func:`filter_table` staged (quoted names to query before the commit) and its counts."""

    kept: str
    rejections: str
    stats: FilterStats
    rows_reused: int = 0
    """Input rows unchanged since the last run under the same chain, copied rather than filtered again."""


@dataclass(frozen=True)
class FilteredRecords:
    """One input batch's results as Arrow tables, and its counts (what a worker sends back)."""

    kept: pa.Table
    rejections: pa.Table
    lineage: pa.Table
    edits: pa.Table
    stats: FilterStats


_WORKER: dict[str, tuple[list[Cleaner], list[Filter]]] = {}


def start_worker(config: ProjectConfig) -> None:
    """Build the project's chain once per process (the ``initializer`` of ``map_ordered``)."""
    _WORKER["chain"] = project_chain(config)


@contextlib.contextmanager
def _no_collections() -> Iterator[None]:
    """The cyclic garbage collector paused: a batch allocates millions of short-lived objects, all
    freed by reference counting, and each collection would walk the batch's rows again (a quarter of
    the chain's time). It runs as usual between batches."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


_SCAN = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # set in __init__, not declared


def _loads(text: str) -> Any:
    """``json.loads(text)``, calling the C scanner directly: the three Python calls ``loads`` makes around
    it cost as much as parsing a short message list. Anything but one value filling the whole text
    (surrounding white space, an error) is left to ``json.loads`` itself."""
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def decode_batch(batch: pa.RecordBatch) -> list[Row]:
    """The batch's rows, exactly as :func:`curation.core.schema.iter_rows` decodes them, a column at a
    time: each column converted in one call, and a timestamp column through its few distinct values
    (every row of a source file has the same ``ingested_at``; converting each is a tenth of decoding)."""
    columns: list[list[Any]] = []
    for name in COLUMNS:
        index = batch.schema.get_field_index(name)
        if index < 0:
            columns.append([None] * batch.num_rows)
            continue
        column = batch.column(index)
        if pa.types.is_timestamp(column.type) and not column.null_count:
            encoded = column.dictionary_encode()
            distinct = encoded.dictionary.to_pylist()
            columns.append([distinct[i] for i in encoded.indices.to_numpy().tolist()])
            continue
        values = column.to_pylist()
        if name in JSON_COLUMNS:
            values = [_loads(value) if isinstance(value, str) else value for value in values]
        columns.append(values)
    return [dict(zip(COLUMNS, values, strict=True)) for values in zip(*columns, strict=True)]


def filter_records(batch: pa.RecordBatch) -> FilteredRecords:
    """A batch of canonical records through the chain of :func:`start_worker`. A kept row that no
    cleaner changed is its input record as it was (no JSON re-encoded); kept rows stay in input order."""
    cleaners, filters = _WORKER["chain"]
    stats = FilterStats()
    _zero_counts(stats, cleaners, filters)
    with _no_collections():
        return _filter_records(batch, cleaners, filters, stats)


def _filter_records(
    batch: pa.RecordBatch, cleaners: Sequence[Cleaner], filters: Sequence[Filter], stats: FilterStats
) -> FilteredRecords:
    result = filter_batch(decode_batch(batch), cleaners, filters, stats, timed=True)
    # The input records and, after them, the edited rows; each kept row is taken from one of the two.
    edited_at = {position: len(batch) + k for k, position in enumerate(result.edited_positions)}
    edited_rows = [row for row, position in zip(result.kept, result.positions, strict=True) if position in edited_at]
    both = pa.concat_tables([pa.Table.from_batches([batch], ARROW_SCHEMA), rows_to_table(edited_rows)])
    kept = both.take(pa.array([edited_at.get(p, p) for p in result.positions], pa.int64()))
    return FilteredRecords(
        kept,
        pa.Table.from_pylist([rejected.as_record() for rejected in result.rejected], REJECTIONS_SCHEMA),
        pa.Table.from_pylist([edited.lineage() for edited in result.edited], LINEAGE_SCHEMA),
        pa.Table.from_pylist(
            [{"row_id": row_id, "cleaner": cleaner, "edits": n} for row_id, cleaner, n in result.edit_counts],
            EDITS_SCHEMA,
        ),
        stats,
    )


def filter_table(
    staged: StagedWrite,
    source: str,
    config: ProjectConfig,
    *,
    log: Callable[[str], None],
    batch_rows: int = BATCH_ROWS,
) -> FilteredTables:
    """Clean and filter the warehouse table ``source`` with the project's chain into the staged
    ``filtered`` table, one ``filter_rejections`` record per dropped row, one lineage edge per edited
    row (its edits as the detail) and the edit counts per row and cleaner (``filter_edits``). Batches
    stream from DuckDB (in the table's order) through ``compute.workers`` processes and back in input
    order, so the output is the same for any number of workers; ``log`` gets progress.

    Rows the stage's memo (:mod:`curation.core.memo`) says went through the same chain unchanged last
    time are not filtered again: their results are copied from the previous tables in SQL and their
    counts read from them (:func:`_reused_stats`)."""
    connection = staged.connection
    cleaners, filters = project_chain(config)
    stats = FilterStats()
    _zero_counts(stats, cleaners, filters)
    rejections = staged.create("filter_rejections", REJECTIONS_DDL)
    edits = staged.create("filter_edits", EDITS_DDL)
    lineage = staged.partition("lineage", LINEAGE_DDL)
    total = count_rows(connection, source)
    # The rows the memo has no id for are filtered whatever it holds: enough of them, and the workers' server
    # starts now, while the memo is planned.
    certain = rows_missing_from_memo(connection, source, "filter_memo")
    warm_up(_PRELOAD, certain, workers_for(certain, config.compute.workers))
    reuse: Reuse | None = None
    try:
        reuse = plan_reuse(staged, "filter_memo", quote(source), COLUMNS, chain_fingerprint(config), FILTER_OUTPUTS)
        to_filter = total - reuse.rows
        workers = workers_for(to_filter, config.compute.workers)
        warm_up(_PRELOAD, to_filter, workers)  # while the reused rows are copied
        _copy_reused(staged, reuse, rejections, edits, lineage)
        # A reused row was kept under its input id, or under its new id when cleaners changed it (the
        # lineage edge from its input row, copied above, says which).
        kept_ids = f"SELECT row_id FROM {reuse.table} UNION ALL SELECT child_id FROM {lineage}"
        kept = stage_output(staged, "filtered", canonical_ddl(), reuse, "row_id", kept_ids, total - reuse.rows, COLUMNS)
        stats.add(_reused_stats(connection, reuse, (rejections, edits, lineage), cleaners, filters))
        columns = ", ".join(quote(name) for name in COLUMNS)
        # In the table's own order: no row depends on another, and sorting first would hold the whole table.
        batches = read_batches(
            connection,
            f"SELECT {columns} FROM {quote(source)} WHERE {reuse.excluding('row_id')}",
            batch_rows=batch_rows,
        )
        if reuse.rows:
            log(f"filtering: {reuse.rows:,} unchanged rows reused from the last run")
        results = map_ordered(
            filter_records,
            batches,
            workers,
            start_worker,
            (config,),
            preload=_PRELOAD,
            parts=True,  # only appended below
        )
        with staged.appending():
            for result in reported(results, log, "filtering", to_filter, size=lambda result: result.stats.rows_in):
                stats.add(result.stats)
                staged.append(kept, result.kept)
                staged.append(rejections, result.rejections)
                staged.append(edits, result.edits)
                staged.append(lineage, result.lineage)
    finally:
        drop_reuse(connection, reuse)
    return FilteredTables(quote(staged.staging_name("filtered")), rejections, stats, reuse.rows)


def chain_fingerprint(config: ProjectConfig) -> str:
    """What every row's result depends on besides the row: the code and the chain's settings (cleaners,
    filters, and the intended use, licences and per-source languages they are bound to)."""
    settings = {
        "cleaners": config.filters.get("cleaners"),
        "filters": filter_settings(
            config.filters, config.policy.intended_use, config.policy.licenses, config.sources, config.policy.teachers
        ),
    }
    return stage_fingerprint(config, json.dumps(settings, sort_keys=True, default=repr))


def _copy_reused(staged: StagedWrite, reuse: Reuse, rejections: str, edits: str, lineage: str) -> None:
    """Copy the reused rows' lineage edges, rejections and edit counts from the previous tables into the
    staged ones, by input id (their kept rows are staged by :func:`~curation.core.memo.stage_output`)."""
    if not reuse.rows:
        return
    connection = staged.connection
    reused = f"(SELECT row_id FROM {reuse.table})"
    edges = "(SELECT child_id, parent_id, asset, operation, detail FROM lineage WHERE asset = 'filtered')"
    connection.execute(f"INSERT INTO {lineage} SELECT * FROM {edges} WHERE parent_id IN {reused}")
    connection.execute(f"INSERT INTO {rejections} SELECT * FROM filter_rejections WHERE row_id IN {reused}")
    connection.execute(f"INSERT INTO {edits} SELECT * FROM filter_edits WHERE row_id IN {reused}")


def _reused_stats(
    connection: duckdb.DuckDBPyConnection,
    reuse: Reuse,
    staged_tables: tuple[str, str, str],
    cleaners: Sequence[Cleaner],
    filters: Sequence[Filter],
) -> FilterStats:
    """The counts the chain made for the reused rows, from their results copied into ``staged_tables``
    (rejections, edit counts, lineage edges): every cleaner saw every row; each filter saw the rows no
    earlier filter rejected (the chain's order, which the memo's fingerprint fixes). Their seconds were
    spent by an earlier run and are not counted again."""
    stats = FilterStats(rows_in=reuse.rows)
    if not reuse.rows:
        return stats
    reused = f"(SELECT row_id FROM {reuse.table})"
    rejections, edits, lineage = staged_tables
    rejected = dict(
        connection.execute(f"SELECT filter, count(*) FROM {rejections} WHERE row_id IN {reused} GROUP BY 1").fetchall()
    )
    edit_counts = dict(
        connection.execute(f"SELECT cleaner, sum(edits) FROM {edits} WHERE row_id IN {reused} GROUP BY 1").fetchall()
    )
    (edited,) = fetch_one(connection, f"SELECT count(*) FROM {lineage} WHERE parent_id IN {reused}")
    for cleaner in cleaners:
        stats.seen[cleaner.name] = reuse.rows
        stats.edits[cleaner.name] = int(edit_counts.get(cleaner.name, 0))
    alive = reuse.rows
    for flt in filters:
        stats.seen[flt.name] = alive
        stats.rejected[flt.name] = int(rejected.get(flt.name, 0))
        alive -= stats.rejected[flt.name]
    stats.rows_kept, stats.rows_edited = alive, int(edited)
    return stats


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
