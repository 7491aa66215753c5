"""The ``formatted`` stage: what the asset runs, from ``synthetic_mixed`` to training-ready rows.

Per row, in order: decontamination against the configured benchmarks, rendering with the target
tokenizer and chat template (length policy applied), verification (control tokens, round trip,
generation prompt). A row failing a step goes to ``format_rejections`` with the step and the reason
(benchmark matches also to ``contamination``); a row passing all of them becomes a ``formatted`` row
with its split and subset, and a lineage edge to its input row.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from curation.core.markdown import counts_table
from curation.core.progress import reported
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.schema import Row
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl, quote, table_names, table_rows
from curation.format.decontam import (
    BenchmarkItem,
    ContaminationIndex,
    FlaggedRow,
    check_row,
    contamination_report,
    load_benchmark,
    render_report_markdown,
)
from curation.format.render import format_row
from curation.format.render_checks import verify_row
from curation.format.split import Split, assign_splits, nested_subsets, split_groups
from curation.format.table import (
    CONTAMINATION_DDL,
    CONTAMINATION_SCHEMA,
    FORMAT_REJECTIONS_DDL,
    FORMAT_REJECTIONS_SCHEMA,
    FORMATTED_COLUMNS,
    formatted_batch,
    formatted_record,
)

if TYPE_CHECKING:
    import duckdb
    from transformers import PreTrainedTokenizerBase

    from curation.core.config import FormatConfig, ProjectConfig
    from curation.core.warehouse import StagedWrite


class FormatRejection(NamedTuple):
    """One row of ``format_rejections``."""

    row_id: str
    stage: str
    """decontamination, render, length, special_tokens or round_trip."""
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
    rejections: list[FormatRejection]
    split_counts: dict[str, int]
    mask_sources: dict[str, int]
    tokens: TokenStats
    contamination: dict[str, dict[str, Any]]
    """Per benchmark: items and rows hit (:func:`curation.format.decontam.contamination_report`);
    empty when no benchmark is configured."""

    @property
    def rows_out(self) -> int:
        return self.rows_in - len(self.rejections)

    @property
    def rejected_by_stage(self) -> dict[str, int]:
        """Rejections per stage, stages in the order they first rejected a row."""
        return dict(Counter(rejection.stage for rejection in self.rejections))

    def summary(self) -> str:
        return f"formatted: {self.rows_out} rows, {len(self.rejections)} rejected {self.rejected_by_stage}"

    def splits_markdown(self) -> str:
        return counts_table(self.split_counts, "split")

    def contamination_markdown(self) -> str:
        return render_report_markdown(self.contamination) if self.contamination else "_no benchmarks configured_"


def load_benchmarks(config: ProjectConfig) -> list[BenchmarkItem]:
    """Every item of the benchmarks listed under ``format.benchmarks`` (paths relative to the project file)."""
    return [
        item
        for benchmark in config.format.benchmarks
        for item in load_benchmark(
            config.resolve(benchmark.path), benchmark.name, benchmark.text_fields, benchmark.id_field
        )
    ]


def split_links(connection: duckdb.DuckDBPyConnection) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """What ties rows together across the split: lineage edges ``(child, parent)`` of every asset before
    ``formatted``, and each row's near-duplicate cluster (none before ``deduped`` has run)."""
    edges = connection.execute("SELECT child_id, parent_id FROM lineage WHERE asset <> 'formatted'").fetchall()
    clusters = (
        dict(connection.execute("SELECT row_id, cluster_id FROM dedup_clusters").fetchall())
        if "dedup_clusters" in table_names(connection)
        else {}
    )
    return edges, clusters


def plan_splits(
    connection: duckdb.DuckDBPyConnection, keys: list[tuple[str, str, str]], settings: FormatConfig
) -> tuple[dict[str, Split], dict[str, float]]:
    """Split and smallest nested subset per input row (``keys``: row_id, kind, source). Rows joined by
    lineage (from any earlier asset) or by a near-duplicate cluster share a split."""
    edges, clusters = split_links(connection)
    groups = split_groups([k[0] for k in keys], edges, clusters)
    splits = assign_splits(
        [{"row_id": r, "kind": k, "source": s} for r, k, s in keys],
        settings.eval_fraction,
        settings.seed,
        group_key=groups,
    )
    subsets = nested_subsets([k[0] for k in keys], seed=settings.seed)
    return splits, subsets


def format_and_verify(
    row: Row, tokenizer: PreTrainedTokenizerBase, settings: FormatConfig, split: str, subset: float
) -> dict[str, Any] | FormatRejection:
    """Render one (decontaminated) row and verify the rendering: its ``formatted`` record, or why not."""
    rendered, reason = format_row(
        row,
        tokenizer,
        max_tokens=settings.max_tokens,
        policy=settings.length_policy,
        system_prompt=settings.system_prompt,
    )
    if rendered is None:
        return FormatRejection(row["row_id"], "length" if reason.startswith("dropped") else "render", reason, None)
    record = formatted_record(row, rendered, split, subset)
    verification = verify_row(record, tokenizer)
    if verification.problem:
        stage, why = verification.problem
        return FormatRejection(row["row_id"], stage, why, ", ".join(verification.leaked_tokens) or None)
    record.update(round_trip=verification.round_trip, generation_prompt_ok=verification.generation_prompt_ok)
    return record


def _lineage_detail(record: dict[str, Any]) -> str:
    detail = f"template {record['template_id']}, {record['n_tokens']} tokens"
    return detail + (f"; {record['truncation']}" if record["truncation"] else "")


def _quiet(_: str) -> None:
    pass


def format_rows(
    staged: StagedWrite,
    config: ProjectConfig,
    tokenizer: PreTrainedTokenizerBase,
    report: Callable[[str], None] = _quiet,
) -> FormatResult:
    """Format ``synthetic_mixed`` into the staged ``formatted``, ``format_rejections`` and ``contamination``
    tables and this asset's lineage partition; ``report`` receives progress lines."""
    settings = config.format
    benchmarks = load_benchmarks(config)
    index = ContaminationIndex(benchmarks) if benchmarks else None
    connection = staged.connection
    keys = connection.execute("SELECT row_id, kind, source FROM synthetic_mixed").fetchall()
    splits, subsets = plan_splits(connection, keys, settings)

    table = staged.create("formatted", canonical_ddl(FORMATTED_COLUMNS))
    rejections_table = staged.create("format_rejections", FORMAT_REJECTIONS_DDL)
    contamination_table = staged.create("contamination", CONTAMINATION_DDL)
    lineage = staged.partition("lineage", LINEAGE_DDL)
    flagged: list[FlaggedRow] = []
    records: list[dict[str, Any]] = []
    edges_out: list[dict[str, str | None]] = []
    rejections: list[FormatRejection] = []
    for row in reported(table_rows(connection, "synthetic_mixed"), report, "formatting", len(keys)):
        matches = check_row(row, index) if index else []
        if matches:
            flagged.append(FlaggedRow(row["row_id"], row["source"], tuple(matches)))
            rejections.append(
                FormatRejection(
                    row["row_id"],
                    "decontamination",
                    "matches a benchmark item",
                    f"{matches[0].benchmark}:{matches[0].item_id}",
                )
            )
            continue
        outcome = format_and_verify(row, tokenizer, settings, splits[row["row_id"]], subsets[row["row_id"]])
        if isinstance(outcome, FormatRejection):
            rejections.append(outcome)
            continue
        records.append(outcome)
        edges_out.append(
            lineage_record(outcome["row_id"], row["row_id"], "formatted", "format", _lineage_detail(outcome))
        )
        if len(records) >= config.ingest.batch_rows:
            staged.append(table, formatted_batch(records))
            records.clear()
    if records:
        staged.append(table, formatted_batch(records))
    staged.append_rows(lineage, edges_out, LINEAGE_SCHEMA)
    staged.append_rows(rejections_table, [r._asdict() for r in rejections], FORMAT_REJECTIONS_SCHEMA)
    staged.append_rows(
        contamination_table, [match for item in flagged for match in item.records()], CONTAMINATION_SCHEMA
    )

    staging = quote(staged.staging_name("formatted"))
    return FormatResult(
        rows_in=len(keys),
        rejections=rejections,
        split_counts=dict(connection.execute(f"SELECT split, count(*) FROM {staging} GROUP BY 1").fetchall()),
        mask_sources=dict(connection.execute(f"SELECT mask_source, count(*) FROM {staging} GROUP BY 1").fetchall()),
        tokens=token_stats(connection, staging),
        contamination=contamination_report(flagged, index) if index else {},
    )


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
