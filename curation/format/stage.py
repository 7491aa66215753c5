"""The ``formatted`` stage: what the asset runs, from ``synthetic_mixed`` to training-ready rows.

Per row, in order: decontamination against the configured benchmarks, rendering with the target
tokenizer and chat template (length policy applied), verification (control tokens, round trip,
generation prompt). A row failing a step goes to ``format_rejections`` with the step and the reason
(benchmark matches also to ``contamination``); a row passing all of them becomes a ``formatted`` row
with its split and subset, and a lineage edge to its input row.

Splits are planned in DuckDB first (:func:`~curation.format.split.plan_splits`); then the rows stream
in Arrow batches through ``compute.workers`` processes (:func:`format_records`, every text of a batch
tokenized in one call) and back in input order, so the output is the same for any number of workers,
and each batch's rows, rejections, matches and lineage edges are appended as they come. Then, over the
whole table in SQL, model-made train rows past ``mix.synthetic_cap`` are left out (:func:`cap_model_made`):
the rows formatting removed may have raised their share past what the mix allowed.

A row whose content, split and settings are what they were last run (the stage's memo,
:mod:`curation.core.memo`) is not rendered again: its ``formatted`` row, rejection, matches and lineage
edge are copied from the previous tables in SQL, so appending 1% new rows renders 1% of the rows.
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa

from curation.core.freshness import format_fingerprint
from curation.core.hashing import stable_unit_sql
from curation.core.markdown import counts_table
from curation.core.memo import Reuse, drop_reuse, plan_reuse, rows_missing_from_memo, stage_output
from curation.core.parallel import map_ordered, warm_up, workers_for
from curation.core.progress import reported
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import COLUMNS, Row, decode_row
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl, count_rows, fetch_one, quote, read_batches
from curation.format.decontam import (
    BenchmarkItem,
    ContaminationIndex,
    FlaggedRow,
    Match,
    check_row,
    contamination_report,
    index_for,
    load_benchmark,
    render_report_markdown,
    settings_record,
)
from curation.format.render import RenderedRow, format_batch, reusing_renderings, tokenizer_id
from curation.format.render_checks import verify_row
from curation.format.split import plan_splits, smallest_subset
from curation.format.table import (
    CONTAMINATION_DDL,
    CONTAMINATION_SCHEMA,
    FORMAT_REJECTIONS_DDL,
    FORMAT_REJECTIONS_SCHEMA,
    FORMATTED_COLUMNS,
    formatted_batch,
    formatted_record,
)
from curation.synth.mix import synthetic_budget

if TYPE_CHECKING:
    import duckdb
    from transformers import PreTrainedTokenizerBase

    from curation.core.config import FormatConfig, ProjectConfig
    from curation.core.warehouse import StagedWrite

RENDER_ROWS = 500
"""Rows rendered and verified in one :func:`~curation.format.render.reusing_renderings` block: their texts
are tokenized in one call, and what the block keeps (every text's tokens and offsets) stays small."""
REJECTION_STAGES: tuple[str, ...] = (
    "decontamination",
    "render",
    "length",
    "special_tokens",
    "round_trip",
    "loss_mask",
    "synthetic_cap",
)
"""``format_rejections.stage``, in the order the steps are applied (``synthetic_cap`` last, over the whole
table: :func:`cap_model_made`)."""
CAPPED_SPLIT = "train"
"""The split :func:`cap_model_made` holds to ``mix.synthetic_cap``: the rows a trainer learns from. The eval
split is held out (no row of it shares a cluster or an ancestor with a train row), so its model-made rows
teach the model nothing; capping it too would only shrink a small measurement set by the luck of the split
draw (the demo's 12 eval rows hold 4 model-made ones, 33%, from a 29% mix)."""


class FormatRejection(NamedTuple):
    """One row of ``format_rejections``."""

    row_id: str
    stage: str
    """One of :data:`REJECTION_STAGES`."""
    reason: str
    detail: str | None


@dataclass(frozen=True)
class TokenStats:
    """Token counts over the stored ``formatted`` rows (zeros for an empty table)."""

    total: int
    longest: int
    mean: float
    p50: int
    p90: int
    truncated_rows: int
    template_id: str
    tokenizer_id: str


@dataclass(frozen=True)
class FormatResult:
    """What one run of the stage wrote, for the asset's log and metadata."""

    rows_in: int
    rejected_by_stage: dict[str, int]
    """Rejections per stage, in the order the steps are applied."""
    split_counts: dict[str, int]
    mask_sources: dict[str, int]
    tokens: TokenStats
    contamination: dict[str, dict[str, Any]]
    """Per benchmark: items and rows hit (:func:`curation.format.decontam.contamination_report`);
    empty when no benchmark is configured."""
    rows_reused: int = 0
    """Input rows unchanged since the last run, copied rather than formatted again."""
    decontamination: dict[str, Any] = field(default_factory=dict)
    """What decontamination checked (:func:`curation.format.decontam.settings_record`: fields, n-gram
    settings, n-grams ignored); empty when no benchmark is configured."""

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected_by_stage.values())

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.rows_rejected

    def summary(self) -> str:
        return f"formatted: {self.rows_out} rows, {self.rows_rejected} rejected {self.rejected_by_stage}"

    def splits_markdown(self) -> str:
        return counts_table(self.split_counts, "split")

    def contamination_markdown(self) -> str:
        if not self.contamination:
            return "_no benchmarks configured_"
        return render_report_markdown(self.contamination, self.decontamination or None)


def load_benchmarks(config: ProjectConfig) -> list[BenchmarkItem]:
    """Every item of the benchmarks listed under ``format.benchmarks`` (paths relative to the project file)."""
    return [
        item
        for benchmark in config.format.benchmarks
        for item in load_benchmark(
            config.resolve(benchmark.path), benchmark.name, benchmark.text_fields, benchmark.id_field
        )
    ]


@dataclass
class FormattedRecords:
    """What one batch of input rows became, in input order within each list."""

    records: list[dict[str, Any]]
    """``formatted`` records (:func:`~curation.format.table.formatted_record`, verified)."""
    rejections: list[FormatRejection]
    flagged: list[FlaggedRow]
    """Rows removed for benchmark matches, with the matches."""


def format_and_verify(
    rows: Sequence[Row],
    splits: Sequence[str],
    tokenizer: PreTrainedTokenizerBase,
    settings: FormatConfig,
    index: ContaminationIndex | None,
) -> FormattedRecords:
    """Decontaminate, render and verify a batch of rows (``splits``: each row's split): every row becomes
    a ``formatted`` record or a rejection with its reason. Rendering and verification share a
    :func:`~curation.format.render.reusing_renderings` block (per :data:`RENDER_ROWS` rows), so nothing is
    rendered or tokenized twice."""
    result = FormattedRecords([], [], [])
    clean: list[tuple[Row, str]] = []
    for row, split in zip(rows, splits, strict=True):
        matches = check_row(row, index, settings.decontamination.fields) if index else []
        if not matches:
            clean.append((row, split))
            continue
        result.flagged.append(FlaggedRow(row["row_id"], row["source"], tuple(matches)))
        detail = f"{matches[0].benchmark}:{matches[0].item_id}"
        result.rejections.append(FormatRejection(row["row_id"], "decontamination", "matches a benchmark item", detail))
    for start in range(0, len(clean), RENDER_ROWS):
        chunk = clean[start : start + RENDER_ROWS]
        with reusing_renderings():
            outcomes = format_batch(
                [row for row, _ in chunk],
                tokenizer,
                max_tokens=settings.max_tokens,
                policy=settings.length_policy,
                system_prompt=settings.system_prompt,
            )
            for (row, split), (rendered, reason) in zip(chunk, outcomes, strict=True):
                outcome = _verified(row, split, rendered, reason, tokenizer, settings.seed)
                if isinstance(outcome, FormatRejection):
                    result.rejections.append(outcome)
                else:
                    result.records.append(outcome)
    return result


def _verified(
    row: Row, split: str, rendered: RenderedRow | None, reason: str, tokenizer: PreTrainedTokenizerBase, seed: int
) -> dict[str, Any] | FormatRejection:
    """A rendered row's verified ``formatted`` record, or why it is rejected."""
    if rendered is None:
        return FormatRejection(row["row_id"], "length" if reason.startswith("dropped") else "render", reason, None)
    record = formatted_record(row, rendered, split, smallest_subset(row["row_id"], seed=seed))
    # Verified with the token lists still in hand: parsing the record's JSON text back costs as much as
    # the mask check itself.
    verification = verify_row(
        {**record, "input_ids": rendered.input_ids, "assistant_mask": rendered.assistant_mask}, tokenizer
    )
    if verification.problem:
        stage, why = verification.problem
        return FormatRejection(row["row_id"], stage, why, ", ".join(verification.leaked_tokens) or None)
    record.update(round_trip=verification.round_trip, generation_prompt_ok=verification.generation_prompt_ok)
    return record


def _lineage_detail(record: dict[str, Any]) -> str:
    detail = f"template {record['template_id']}, {record['n_tokens']} tokens"
    return detail + (f"; {record['truncation']}" if record["truncation"] else "")


# --------------------------------------------------------------------------- one batch in a worker


@dataclass(frozen=True)
class _Worker:
    tokenizer: PreTrainedTokenizerBase
    settings: FormatConfig
    index: ContaminationIndex | None


_WORKER: dict[str, _Worker] = {}


def start_worker(tokenizer: PreTrainedTokenizerBase, settings: FormatConfig, index: ContaminationIndex | None) -> None:
    """Keep the tokenizer (pickled whole, so an overridden template or tokenizer comes along), the
    ``format:`` settings and the benchmark index once per process (the ``initializer`` of ``map_ordered``)."""
    _WORKER["state"] = _Worker(tokenizer, settings, index)


@dataclass(frozen=True)
class FormattedBatch:
    """One batch's tables, ready to append."""

    rows_in: int
    formatted: pa.Table
    rejections: pa.Table
    contamination: pa.Table
    lineage: pa.Table


def format_records(batch: pa.RecordBatch) -> FormattedBatch:
    """A batch of ``synthetic_mixed`` records with their ``split`` (and the ``split_row_id`` it was planned
    for) through :func:`format_and_verify` with the state of :func:`start_worker`, as Arrow tables.

    The cyclic garbage collector is paused for the batch: the batch makes hundreds of thousands of small
    containers (token offsets, messages, records) that reference counting frees, and the collector would
    otherwise scan them again and again while they live; anything left in a cycle waits for its next run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _format_records(batch, _WORKER["state"])
    finally:
        if enabled:
            gc.enable()


def _format_records(batch: pa.RecordBatch, worker: _Worker) -> FormattedBatch:
    records = batch.to_pylist()
    for record in records:
        if record["split_row_id"] != record["row_id"]:
            raise RuntimeError(f"row {record['row_id']} was lined up with the split of {record['split_row_id']}")
    outcome = format_and_verify(
        [decode_row(record) for record in records],
        [record["split"] for record in records],
        worker.tokenizer,
        worker.settings,
        worker.index,
    )
    edges = [
        lineage_record(record["row_id"], record["parent_id"], "formatted", "format", _lineage_detail(record))
        for record in outcome.records
    ]
    matches = [match for item in outcome.flagged for match in item.records()]
    return FormattedBatch(
        rows_in=len(records),
        formatted=formatted_batch(outcome.records),
        rejections=pa.Table.from_pylist([r._asdict() for r in outcome.rejections], schema=FORMAT_REJECTIONS_SCHEMA),
        contamination=pa.Table.from_pylist(matches, schema=CONTAMINATION_SCHEMA),
        lineage=pa.Table.from_pylist(edges, schema=LINEAGE_SCHEMA),
    )


# --------------------------------------------------------------------------- the stage


def _quiet(_: str) -> None:
    pass


_PRELOAD = ("transformers", "curation.format.stage")
"""What the rendering workers start with (transformers: ~1 s to import)."""
RENDER_ROWS_PER_WORKER = 2_000
"""Rows to render per worker at least (:func:`~curation.core.parallel.workers_for`): a row takes ~0.5 ms, so
2,000 are a second of work, about what a worker costs to start from a server already running."""


def format_rows(
    staged: StagedWrite,
    config: ProjectConfig,
    tokenizer: PreTrainedTokenizerBase,
    report: Callable[[str], None] = _quiet,
) -> FormatResult:
    """Format ``synthetic_mixed`` into the staged ``formatted``, ``format_rejections`` and ``contamination``
    tables and this asset's lineage partition; ``report`` receives progress lines. Rows the memo says were
    formatted last time under the same settings are copied (:func:`_copy_reused`), the others rendered."""
    settings = config.format
    connection = staged.connection
    rows_in = count_rows(connection, "synthetic_mixed")
    # The rows the memo has no id for are rendered whatever it holds: enough of them, and the workers' server
    # starts now and imports transformers while the splits are planned.
    certain = rows_missing_from_memo(connection, "synthetic_mixed", "format_memo")
    warm_up(_PRELOAD, certain, workers_for(certain, config.compute.workers, RENDER_ROWS_PER_WORKER))
    benchmarks = load_benchmarks(config)
    index = index_for(benchmarks, settings.decontamination) if benchmarks else None

    rejections = staged.create("format_rejections", FORMAT_REJECTIONS_DDL)
    contamination = staged.create("contamination", CONTAMINATION_DDL)
    lineage = staged.partition("lineage", LINEAGE_DDL)
    splits = staged.staging_name("format_splits")  # work tables, never swapped in
    reuse: Reuse | None = None
    try:
        plan_splits(connection, "synthetic_mixed", splits, settings.eval_fraction, settings.seed)
        columns = ", ".join(f"m.{quote(name)}" for name in COLUMNS)
        # In the table's own order, split by position: sorting would hold every row in DuckDB at once.
        planned = (
            f"(SELECT {columns}, s.row_id AS split_row_id, s.split "
            f"FROM synthetic_mixed m POSITIONAL JOIN {quote(splits)} s)"
        )
        fingerprint = format_fingerprint(config, f"{tokenizer_id(tokenizer)}:{tokenizer.chat_template}")
        reuse = plan_reuse(
            staged, "format_memo", planned, [*COLUMNS, "split"], fingerprint, (*FORMAT_OUTPUTS, "lineage")
        )
        to_render = rows_in - reuse.rows
        workers = workers_for(to_render, config.compute.workers, RENDER_ROWS_PER_WORKER)
        warm_up(_PRELOAD, to_render, workers)  # while the reused rows are copied, if it did not start above
        table = stage_output(
            staged,
            "formatted",
            canonical_ddl(FORMATTED_COLUMNS),
            reuse,
            "parent_id",
            f"SELECT row_id FROM {reuse.table}",
            to_render,
            (*COLUMNS, *(name for name, _ in FORMATTED_COLUMNS)),
        )
        _copy_reused(staged, reuse, rejections, contamination, lineage)
        batches = read_batches(
            connection,
            f"SELECT * FROM {planned} WHERE {reuse.excluding('row_id')}",
            batch_rows=config.ingest.batch_rows,
        )
        report(
            f"formatting: {to_render:,} rows, {workers} worker process(es); "
            f"{reuse.rows:,} unchanged rows reused from the last run"
        )
        results = map_ordered(
            format_records,
            batches,
            workers,
            start_worker,
            (tokenizer, settings, index),
            preload=_PRELOAD,
            parts=True,  # only appended below
        )
        with staged.appending():
            for result in reported(results, report, "formatting", to_render, size=lambda result: result.rows_in):
                staged.append(table, result.formatted)
                staged.append(rejections, result.rejections)
                staged.append(contamination, result.contamination)
                staged.append(lineage, result.lineage)
        capped = cap_model_made(staged, config.mix.synthetic_cap, settings.seed)
        if capped:
            report(
                f"formatting: {capped:,} model-made {CAPPED_SPLIT} row(s) left out to keep the "
                f"{config.mix.synthetic_cap:.0%} synthetic cap after the rows formatting removed"
            )
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {quote(splits)}")
        drop_reuse(connection, reuse)

    staging = quote(staged.staging_name("formatted"))
    by_stage = connection.execute(
        f"SELECT stage, count(*) FROM {rejections} GROUP BY stage ORDER BY list_position(?, stage), stage",
        [list(REJECTION_STAGES)],
    ).fetchall()
    return FormatResult(
        rows_in=rows_in,
        rejected_by_stage={stage: int(count) for stage, count in by_stage},
        split_counts=dict(connection.execute(f"SELECT split, count(*) FROM {staging} GROUP BY 1").fetchall()),
        mask_sources=dict(connection.execute(f"SELECT mask_source, count(*) FROM {staging} GROUP BY 1").fetchall()),
        tokens=token_stats(connection, staging),
        contamination=contamination_report(flagged_rows(connection, contamination), index) if index else {},
        rows_reused=reuse.rows,
        decontamination=settings_record(index, settings.decontamination.fields) if index else {},
    )


def model_made_share_sql(table: str) -> str:
    """Per split of a ``formatted`` table (quoted name): ``split, model_made, rows``. Model-made is any
    origin but ``human``, as the mix counts it (:mod:`curation.synth.mix`)."""
    return (
        f"SELECT split, count(*) FILTER (origin IS DISTINCT FROM 'human') AS model_made, count(*) AS rows "
        f"FROM {table} GROUP BY split ORDER BY split"
    )


def cap_model_made(staged: StagedWrite, cap: float, seed: int) -> int:
    """Hold the staged ``formatted`` table's :data:`CAPPED_SPLIT` split to ``cap`` (``mix.synthetic_cap``),
    returning how many rows were left out.

    The mix meets the cap over ``synthetic_mixed``, but formatting then removes rows (over-long,
    contaminated, unrenderable), and when those are mostly human the model-made share of what training reads
    can rise past the cap. So, after every row is formatted, the model-made rows of the split past the budget
    (:func:`curation.synth.mix.synthetic_budget`, the mix's own rule) are left out in a seeded order of their
    input ids: decided in SQL over the whole table, the same for any worker count or batch size and for a
    re-run that copied rows from its memo. Each goes to ``format_rejections`` (stage ``synthetic_cap``, so
    row conservation holds) with its edge removed from the staged lineage, and its memo entry is dropped:
    whether a row fits under the cap depends on the other rows, so the next run must render it again
    rather than copy a rejection that may no longer hold."""
    connection = staged.connection
    table = quote(staged.staging_name("formatted"))
    counts = {split: (int(m), int(n)) for split, m, n in connection.execute(model_made_share_sql(table)).fetchall()}
    model_made, rows = counts.get(CAPPED_SPLIT, (0, 0))
    human = rows - model_made
    keep = synthetic_budget(human, 0, model_made, cap)
    if keep >= model_made:
        return 0
    dropped = quote(staged.staging_name("format_cap_drops"))
    reason = (
        f"over the synthetic cap of {cap:.0%} (mix.synthetic_cap) in the {CAPPED_SPLIT} split once formatting "
        "had removed other rows"
    )
    detail = f"{keep} of {model_made} model-made rows kept beside {human} human rows"
    try:
        with stable_unit_sql(connection, seed) as unit:
            connection.execute(
                f"""CREATE TABLE {dropped} AS SELECT row_id, parent_id FROM (
                    SELECT row_id, parent_id,
                           row_number() OVER (ORDER BY {unit}('synthetic_cap', parent_id), parent_id) AS rank
                    FROM {table} WHERE split = ? AND origin IS DISTINCT FROM 'human')
                WHERE rank > ?""",
                [CAPPED_SPLIT, keep],
            )
        connection.execute(
            f"INSERT INTO {quote(staged.staging_name('format_rejections'))} "
            f"SELECT parent_id, 'synthetic_cap', ?, ? FROM {dropped} ORDER BY parent_id",
            [reason, detail],
        )
        staged.delete("formatted", f"row_id IN (SELECT row_id FROM {dropped})")
        staged.delete("lineage", f"child_id IN (SELECT row_id FROM {dropped})")
        staged.delete("format_memo", f"row_id IN (SELECT parent_id FROM {dropped})")
        (left_out,) = fetch_one(connection, f"SELECT count(*) FROM {dropped}")
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {dropped}")
    return int(left_out)


FORMAT_OUTPUTS = ("formatted", "format_rejections", "contamination")
"""The stage's own tables (besides its lineage partition), from which a re-run copies unchanged rows."""


def _copy_reused(staged: StagedWrite, reuse: Reuse, rejections: str, contamination: str, lineage: str) -> None:
    """Copy the reused rows' rejections, matches and lineage edges from the previous tables into the staged
    ones (their ``formatted`` records are staged by :func:`~curation.core.memo.stage_output`). Each is keyed
    by its input row: rejections and matches by ``row_id``, the lineage edge by its parent. Matches keep their
    order (a row's matches are listed as they were found)."""
    if not reuse.rows:
        return
    connection = staged.connection
    reused = f"(SELECT row_id FROM {reuse.table})"
    for staged_table, previous in ((rejections, "format_rejections"), (contamination, "contamination")):
        connection.execute(
            f"INSERT INTO {staged_table} SELECT * FROM {quote(previous)} WHERE row_id IN {reused} ORDER BY rowid"
        )
    connection.execute(
        f"INSERT INTO {lineage} SELECT child_id, parent_id, asset, operation, detail FROM lineage "
        f"WHERE asset = 'formatted' AND parent_id IN {reused}"
    )


def flagged_rows(connection: duckdb.DuckDBPyConnection, contamination: str) -> list[FlaggedRow]:
    """The rows of a (staged) ``contamination`` table with their matches, in ``synthetic_mixed`` order
    and each row's matches in the order they were found: what the report's examples are chosen from."""
    records = connection.execute(
        f"SELECT c.row_id, c.source, c.benchmark, c.item_id, c.kind, c.overlap, c.ratio, c.n "
        f"FROM {contamination} c JOIN (SELECT row_id, rowid AS position FROM synthetic_mixed) m USING (row_id) "
        f"ORDER BY m.position, c.rowid"
    ).fetchall()
    return [
        FlaggedRow(row_id, source, tuple(Match(*match) for _, _, *match in matches))
        for (row_id, source), matches in itertools.groupby(records, key=lambda record: (record[0], record[1]))
    ]


def token_stats(connection: duckdb.DuckDBPyConnection, quoted_table: str) -> TokenStats:
    """Token counts, truncated rows and the template and tokenizer ids of a ``formatted`` table."""
    row = connection.execute(
        f"SELECT sum(n_tokens), max(n_tokens), avg(n_tokens), quantile_disc(n_tokens, 0.5), "
        f"quantile_disc(n_tokens, 0.9), count(*) FILTER (truncation IS NOT NULL), "
        f"any_value(template_id), any_value(tokenizer_id) FROM {quoted_table}"
    ).fetchone()
    assert row is not None  # an aggregate without GROUP BY always returns one row
    total, longest, mean, p50, p90, truncated, template, tokenizer = row
    return TokenStats(
        total=int(total or 0),
        longest=int(longest or 0),
        mean=float(mean or 0),
        p50=int(p50 or 0),
        p90=int(p90 or 0),
        truncated_rows=int(truncated or 0),
        template_id=template or "",
        tokenizer_id=tokenizer or "",
    )
