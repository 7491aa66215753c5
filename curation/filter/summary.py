"""What the `filtered` asset reports about a run: per-step counts, a plot of rejections, rejections by
source, a few examples of each filter's calls, and the language policy in force."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb

from curation.core.markdown import figure_png, markdown_table, png_markdown, pyplot
from curation.filter.base import Cleaner, Filter, FilterStats
from curation.filter.language import LanguageFilter

EXAMPLES_PER_FILTER = 3


def per_filter_rows(stats: FilterStats, cleaners: Sequence[Cleaner], filters: Sequence[Filter]) -> list[dict[str, Any]]:
    """One row per step in the order run: what reached it, what it removed, what it cost."""
    rows = []
    steps: list[Cleaner | Filter] = [*cleaners, *filters]
    for step in steps:
        name = step.name
        seen = stats.seen.get(name, 0)
        rejected = stats.rejected.get(name)
        rows.append(
            {
                "step": name,
                "type": "cleaner" if isinstance(step, Cleaner) else "filter",
                "cost": step.cost if isinstance(step, Filter) else None,
                "seen": seen,
                "rejected": rejected,
                "edits": stats.edits.get(name),
                "rejected_of_seen": f"{rejected / seen:.1%}" if rejected is not None and seen else None,
                "rejected_of_input": f"{rejected / stats.rows_in:.1%}"
                if rejected is not None and stats.rows_in
                else None,
                "seconds": round(stats.seconds.get(name, 0.0), 3),
            }
        )
    return rows


def per_filter_markdown(stats: FilterStats, cleaners: Sequence[Cleaner], filters: Sequence[Filter]) -> str:
    """The totals, then :func:`per_filter_rows` as a table."""
    return (
        f"**{stats.rows_in}** rows in, **{stats.rows_kept}** kept, **{stats.rows_edited}** edited. Steps in "
        "the order they ran; a row is counted by the first filter that rejects it.\n\n"
        + markdown_table(per_filter_rows(stats, cleaners, filters))
    )


def rejections_plot(counts: Mapping[str, int]) -> str:
    """A horizontal bar chart of rejections per filter as Markdown (a base64 PNG the UI renders)."""
    shown = {k: v for k, v in counts.items() if v}
    if not shown:
        return "_(no rejections)_"
    plt = pyplot()

    names = list(shown)[::-1]  # first filter at the top
    figure, axes = plt.subplots(figsize=(6, 0.35 * len(names) + 0.9), dpi=80)
    axes.barh(names, [shown[n] for n in names], color="#4c72b0")
    for y, name in enumerate(names):
        axes.annotate(
            str(shown[name]), (shown[name], y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8
        )
    axes.set_xlabel("rows rejected (first filter to reject wins)")
    axes.spines[["top", "right"]].set_visible(False)
    return png_markdown(figure_png(figure), "rejections per filter")


def rejection_examples(
    connection: duckdb.DuckDBPyConnection, rejections: str, source_table: str, per_filter: int = EXAMPLES_PER_FILTER
) -> list[dict[str, Any]]:
    """A few rejections of every filter (not just the first filter alphabetically), with the source and
    the start of the row's text so a reviewer can judge the call."""
    return [
        dict(zip(("filter", "reason", "value", "source", "row_id", "text"), r, strict=True))
        for r in connection.execute(
            f"""
        SELECT r.filter, r.reason, r.value, d.source, r.row_id,
               left(coalesce(d.text, CAST(d.messages AS VARCHAR)), 160)
        FROM {rejections} r LEFT JOIN {source_table} d USING (row_id)
        QUALIFY row_number() OVER (PARTITION BY r.filter ORDER BY r.row_id) <= ?
        ORDER BY r.filter, r.row_id""",
            [per_filter],
        ).fetchall()
    ]


def rejections_by_source(
    connection: duckdb.DuckDBPyConnection, rejections: str, source_table: str
) -> list[dict[str, Any]]:
    """Rows rejected per source and filter."""
    return [
        {"source": source, "filter": name, "rows": rows}
        for source, name, rows in connection.execute(
            f"SELECT d.source, r.filter, count(*) FROM {rejections} r JOIN {source_table} d USING (row_id) "
            "GROUP BY ALL ORDER BY 1, 2"
        ).fetchall()
    ]


def language_policy(filters: Sequence[Filter]) -> dict[str, Any] | None:
    """The languages the chain's `language` filter allows, globally and per source (None: no filter)."""
    language = next((f for f in filters if isinstance(f, LanguageFilter)), None)
    if language is None:
        return None
    return {
        "allowed": language.allowed and list(language.allowed),
        "by_source": {source: list(langs) for source, langs in language.by_source.items()},
    }


@dataclass(frozen=True)
class FilterSummary:
    """The Markdown and JSON the `filtered` asset reports, computed while its staged tables exist."""

    per_filter: str
    rejections_plot: str
    rejected_by_source: str
    rejection_sample: str
    language_policy: dict[str, Any] | None


def summarize(
    connection: duckdb.DuckDBPyConnection,
    rejections: str,
    source_table: str,
    stats: FilterStats,
    cleaners: Sequence[Cleaner],
    filters: Sequence[Filter],
) -> FilterSummary:
    """Everything :class:`FilterSummary` holds; ``rejections`` is the (staged) rejections table."""
    return FilterSummary(
        per_filter=per_filter_markdown(stats, cleaners, filters),
        rejections_plot=rejections_plot(stats.rejected),
        rejected_by_source=markdown_table(rejections_by_source(connection, rejections, source_table)),
        rejection_sample=markdown_table(rejection_examples(connection, rejections, source_table), width=70),
        language_policy=language_policy(filters),
    )
