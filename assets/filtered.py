"""filtered: cleaned rows that pass every quality, language and policy filter; each rejection kept with
its reason in `filter_rejections`, each edit as a lineage edge."""

from collections.abc import Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
from dagster import AssetExecutionContext, DataVersion, MaterializeResult, MetadataValue, asset

from assets.metadata import dataset_metadata
from curation.core.config import ProjectConfig, SourceConfig
from curation.core.markdown import figure_png, markdown_table, png_markdown
from curation.core.progress import reported
from curation.core.provenance import LINEAGE_SCHEMA, lineage_record
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl, count_rows, table_rows
from curation.filter.runner import Cleaner, Filter, FilterStats, build_cleaners, build_filters, run_filters
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

REJECTIONS_DDL = "row_id VARCHAR NOT NULL, filter VARCHAR NOT NULL, reason VARCHAR NOT NULL, value VARCHAR"
REJECTIONS_SCHEMA = pa.schema([(name, pa.string()) for name in ("row_id", "filter", "reason", "value")])
EXAMPLES_PER_FILTER = 3


def _language_settings(language: Any, sources: Sequence[SourceConfig]) -> Any:
    """The ``language`` filter's settings with each source's ``allowed_languages`` folded into
    ``by_source``, so a per-source policy in the project file takes effect without also writing a
    ``filters.language`` section (``allowed_languages: []`` exempts a source from a global list).
    Contradictions are errors, never silent choices."""
    per_source = {s.name: list(s.allowed_languages) for s in sources if s.allowed_languages is not None}
    names = {s.name for s in sources}
    if isinstance(language, Mapping):
        unknown = sorted(set(language.get("by_source") or {}) - names)
        if unknown and names:
            raise ValueError(f"filters.language.by_source names {unknown}, which are not sources in the project "
                             f"file (sources: {sorted(names)}); fix the spelling or remove them")
    if not per_source:
        return language
    if language is False:
        raise ValueError(f"sources {sorted(per_source)} set allowed_languages but filters.language is false; "
                         "remove one of the two")
    if language is None:
        # Only the sources that ask for it are restricted; the rest keep every language.
        settings: dict[str, Any] = {"allowed": None}
    else:
        settings = {} if language is True else dict(language)
    by_source = {name: list(langs) for name, langs in dict(settings.get("by_source") or {}).items()}
    for name, langs in per_source.items():
        if name in by_source and sorted(by_source[name]) != sorted(langs):
            raise ValueError(f"source {name!r}: allowed_languages {langs} disagrees with "
                             f"filters.language.by_source[{name!r}] = {by_source[name]}; keep one of the two")
        by_source[name] = langs
    settings["by_source"] = by_source
    return settings


def filter_settings(filters: dict, intended_use: str, licenses: dict, sources: Sequence[SourceConfig] = ()) -> dict:
    """The project's filter settings, with the licence filter bound to the build's intended use and the
    language filter to each source's ``allowed_languages``."""
    settings = dict(filters)
    if settings.get("license") is not False:
        settings["license"] = {"intended_use": intended_use, "licenses": licenses} | dict(settings.get("license") or {})
    language = _language_settings(settings.get("language"), sources)
    if language is not None:
        settings["language"] = language
    return settings


def project_chain(config: ProjectConfig) -> tuple[list[Cleaner], list[Filter]]:
    """The cleaners and filters a project file asks for, exactly as the `filtered` asset runs them
    (the preview and the checks use this too, so they judge the same chain)."""
    cleaners = build_cleaners(config.filters.get("cleaners"))
    filters = build_filters(filter_settings(config.filters, config.policy.intended_use, config.policy.licenses,
                                            config.sources))
    return cleaners, filters


def per_filter_rows(stats: FilterStats, filters: Sequence[Filter], cleaners: Sequence[Cleaner]) -> list[dict]:
    """One row per step in the order run: what reached it, what it removed, what it cost."""
    rows = []
    for step in [*cleaners, *filters]:
        name = step.name
        seen = stats.seen.get(name, 0)
        rejected = stats.rejected.get(name)
        rows.append({
            "step": name, "type": "cleaner" if step in cleaners else "filter",
            "cost": getattr(step, "cost", None), "seen": seen,
            "rejected": rejected, "edits": stats.edits.get(name),
            "rejected_of_seen": f"{rejected / seen:.1%}" if rejected is not None and seen else None,
            "rejected_of_input": f"{rejected / stats.rows_in:.1%}" if rejected is not None and stats.rows_in else None,
            "seconds": round(stats.seconds.get(name, 0.0), 3)})
    return rows


def rejections_plot(counts: Mapping[str, int]) -> str:
    """A horizontal bar chart of rejections per filter as Markdown (a base64 PNG the UI renders)."""
    shown = {k: v for k, v in counts.items() if v}
    if not shown:
        return "_(no rejections)_"
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    names = list(shown)[::-1]  # first filter at the top
    figure, axes = plt.subplots(figsize=(6, 0.35 * len(names) + 0.9), dpi=80)
    axes.barh(names, [shown[n] for n in names], color="#4c72b0")
    for y, name in enumerate(names):
        axes.annotate(str(shown[name]), (shown[name], y), xytext=(3, 0), textcoords="offset points",
                      va="center", fontsize=8)
    axes.set_xlabel("rows rejected (first filter to reject wins)")
    axes.spines[["top", "right"]].set_visible(False)
    return png_markdown(figure_png(figure), "rejections per filter")


def rejection_examples(connection: duckdb.DuckDBPyConnection, rejections: str, source_table: str,
                       per_filter: int = EXAMPLES_PER_FILTER) -> list[dict]:
    """A few rejections of every filter (not just the first filter alphabetically), with the source and
    the start of the row's text so a reviewer can judge the call."""
    return [dict(zip(("filter", "reason", "value", "source", "row_id", "text"), r, strict=True))
            for r in connection.execute(f"""
        SELECT r.filter, r.reason, r.value, d.source, r.row_id,
               left(coalesce(d.text, CAST(d.messages AS VARCHAR)), 160)
        FROM {rejections} r LEFT JOIN {source_table} d USING (row_id)
        QUALIFY row_number() OVER (PARTITION BY r.filter ORDER BY r.row_id) <= ?
        ORDER BY r.filter, r.row_id""", [per_filter]).fetchall()]


@asset(group_name="datasets", pool=POOL, deps=["deduped"], kinds={"duckdb"}, code_version="filtered-2",
       owners=["team:data"])
def filtered(context: AssetExecutionContext, project: ProjectResource, warehouse: WarehouseResource
             ) -> MaterializeResult:
    """Deduplicated rows cleaned (encoding, HTML residue, PII, whitespace) and filtered (quality, language
    per source, policy, licence for the intended use), cheapest filter first unless `filters.order` says
    otherwise. Rejected rows → `filter_rejections` (filter, reason, value)."""
    config = project.load()
    cleaners, filters = project_chain(config)
    context.log.info("filter order: " + ", ".join(f.name for f in filters))
    stats = FilterStats()
    with warehouse.get().write("filtered") as staged:
        kept = staged.create("filtered", canonical_ddl())
        rejected = staged.create("filter_rejections", REJECTIONS_DDL)
        lineage = staged.partition("lineage", LINEAGE_DDL)
        rows = reported(table_rows(staged.connection, "deduped"), context.log.info, "filtering",
                        count_rows(staged.connection, "deduped"))
        for batch in run_filters(rows, cleaners, filters, stats=stats, batch_size=config.ingest.batch_rows,
                                 timed=True):
            staged.append(kept, batch.kept_table())
            staged.append_rows(rejected, [r.as_record() for r in batch.rejected], REJECTIONS_SCHEMA)
            staged.append_rows(lineage, [
                lineage_record(e.child_id, e.parent_id, "filtered", e.operation,
                               "; ".join(f"{x.where}: {x.description}" for x in e.edits)) for e in batch.edited],
                LINEAGE_SCHEMA)
        metadata = dataset_metadata(staged.connection, staged.staging_name("filtered"), parents=["deduped"])
        examples = rejection_examples(staged.connection, rejected, "deduped")
        by_source = staged.connection.execute(
            f"SELECT d.source, r.filter, count(*) FROM {rejected} r JOIN deduped d USING (row_id) "
            "GROUP BY ALL ORDER BY 1, 2").fetchall()
    context.log.info(f"filtered: kept {stats.rows_kept} of {stats.rows_in}, edited {stats.rows_edited}")
    steps = per_filter_rows(stats, filters, cleaners)
    language = next((f for f in filters if f.name == "language"), None)
    metadata |= {
        "dagster/table_name": "warehouse.main.filtered",
        "rows_in": stats.rows_in, "rows_rejected": stats.rows_in - stats.rows_kept, "rows_edited": stats.rows_edited,
        "per_filter": MetadataValue.md(
            f"**{stats.rows_in}** rows in, **{stats.rows_kept}** kept, **{stats.rows_edited}** edited. Steps in "
            "the order they ran; a row is counted by the first filter that rejects it.\n\n"
            + markdown_table(steps)),
        "rejections_plot": MetadataValue.md(rejections_plot(stats.rejected)),
        "rejected_by_filter": MetadataValue.json({k: v for k, v in stats.rejected.items()}),
        "rejected_by_source": MetadataValue.md(markdown_table(
            [{"source": s, "filter": f, "rows": n} for s, f, n in by_source])),
        "filter_order": MetadataValue.json([f.name for f in filters]),
        "language_policy": MetadataValue.json(
            None if language is None else {"allowed": getattr(language, "allowed", None) and list(language.allowed),
                                           "by_source": {k: list(v) for k, v in language.by_source.items()}}),
        "rejection_sample": MetadataValue.md(markdown_table(examples, width=70)),
    }
    return MaterializeResult(metadata=metadata, data_version=DataVersion(metadata["data_version"]))
