"""Inspection of dataset versions: length distributions, breakdowns, outliers and annotator agreement.

Everything is computed with DuckDB SQL over the warehouse tables; only aggregates (and a small
reservoir sample for language identification) reach Python, so inspecting a large table costs
memory in proportion to the number of groups, not rows. Counts by kind, source, licence, origin,
teacher, task type, topic, ingestion day and annotator are exact: one ``GROUPING SETS`` scan of
the label columns. Lengths, turns, tokens and outliers need each row's messages parsed, so they
are measured on a seeded reservoir sample of :data:`MEASURE_SAMPLE_ROWS` rows (the whole table
when it is smaller), and the report says how many rows were measured. Plots are matplotlib PNGs
(Agg backend, no display needed), written next to an HTML report and returned as bytes for the
Dagster UI.

Definitions (the report repeats them):

* **prompt / response** text: exactly :func:`curation.core.texts.prompt_text` / ``response_text``
  (user turns joined by newlines; assistant turns, or the chosen completion of preference rows).
* **characters** are Unicode code points; **words** are runs of non-whitespace.
* **tokens** exist only in ``formatted`` (``n_tokens``: the whole rendered example with the
  target tokenizer); earlier versions are measured in characters and words.
* **turns**: user messages in the conversation (``text`` rows have none: NULL).
* **outliers**: Tukey's "far out" fences (Tukey 1977, *Exploratory Data Analysis*: beyond
  Q1 − 3·IQR or Q3 + 3·IQR), taken on ln(1 + length) because lengths are heavy-tailed; on the raw
  scale the lower fence is almost always negative and only long rows would ever be flagged.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

import duckdb

from curation.core.markdown import counts_table, figure_png, markdown_table, png_markdown, pyplot
from curation.core.parallel import available_cores, map_ordered, warm_up
from curation.core.progress import reported
from curation.core.schema import iter_rows
from curation.core.warehouse import count_rows, quote, read_batches, sample_sql, table_names

VERSIONS: tuple[str, ...] = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")
"""Dataset versions inspected, in pipeline order (the five of the spine plus the teacher's output)."""

LENGTH_MEASURES: tuple[str, ...] = (
    "prompt_chars",
    "response_chars",
    "prompt_words",
    "response_words",
    "turns",
    "n_tokens",
)
SPLITS: tuple[str, ...] = ("source", "ingest_day", "annotator")
CATEGORIES: tuple[str, ...] = ("kind", "source", "license", "origin", "teacher", "task_type", "topic")

# Keys of `extra` that hold a task type or a topic in common public datasets (MT-Bench and
# Vicuna-Bench `category`, Dolly `category`, self-instruct variants `task_type`/`type`).
TASK_KEYS: tuple[str, ...] = ("category", "task_type", "task", "type")
TOPIC_KEYS: tuple[str, ...] = ("topic", "domain", "subject")

TUKEY_FAR_OUT = 3.0  # Tukey (1977): k = 1.5 "outside", k = 3 "far out"
LANGUAGE_SAMPLE_ROWS = 500
MEASURE_SAMPLE_ROWS = 10_000
"""Rows measured per version: the quantiles of 10,000 rows are within a fraction of a percentile of the
whole table's (p95: ±0.2 points), and parsing them costs under a second whatever the table's size."""
SAMPLE_SEED = 42
MIN_LETTERS = 20  # same threshold as curation.filter.language.LanguageFilter: fewer letters → undecidable
MEASURES_TABLE = "_inspection_measures"
NONE = "(none)"

MEASURED_COLUMNS: tuple[str, ...] = (
    "row_id",
    "kind",
    "messages",
    "chosen",
    "text",
    "extra",
    "source",
    "license",
    "origin",
    "generator",
    "annotator",
    "ingested_at",
)
"""What measuring a row reads (a sample fetches only these: not ``formatted``'s token ids)."""
_MESSAGES = '[{"role": "VARCHAR", "content": "VARCHAR"}]'


def _columns(connection: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    return {
        r[0]
        for r in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = 'main'", [table]
        ).fetchall()
    }


LABELS: tuple[str, ...] = (
    "kind",
    "source",
    "license",
    "origin",
    "teacher",
    "annotator",
    "ingest_day",
    "task_type",
    "topic",
)
"""Columns a version is counted by (:data:`CATEGORIES` and :data:`SPLITS`)."""


def _extra_keys() -> str:
    """Every task and topic key of ``extra`` in one parse (a list, :data:`TASK_KEYS` then :data:`TOPIC_KEYS`)."""
    paths = ", ".join(f"'$.{key}'" for key in (*TASK_KEYS, *TOPIC_KEYS))
    return f"json_extract_string(extra, [{paths}])"


def _labels() -> str:
    """The :data:`LABELS` of a row whose ``task`` column is :func:`_extra_keys`; ``(none)`` when missing."""
    task = ", ".join(f"task[{i + 1}]" for i in range(len(TASK_KEYS)))
    topic = ", ".join(f"task[{len(TASK_KEYS) + i + 1}]" for i in range(len(TOPIC_KEYS)))
    return f"""coalesce(kind, '{NONE}') AS kind, coalesce(source, '{NONE}') AS source,
               coalesce(license, '{NONE}') AS license, coalesce(origin, '{NONE}') AS origin,
               coalesce(generator, '{NONE}') AS teacher, coalesce(annotator, '{NONE}') AS annotator,
               coalesce(strftime(ingested_at, '%Y-%m-%d'), '{NONE}') AS ingest_day,
               coalesce({task}, '{NONE}') AS task_type, coalesce({topic}, '{NONE}') AS topic"""


def labels_sql(table: str) -> str:
    """The label columns of every row of ``table``."""
    return f"SELECT {_labels()} FROM (SELECT *, {_extra_keys()} AS task FROM {quote(table)})"


def measures_sql(table: str, columns: set[str], sample_rows: int | None = None) -> str:
    """One row of measures and labels per row of ``table`` (or of a sample of ``sample_rows``); no
    text is kept."""
    user = "array_to_string([coalesce(m.content, '') for m in coalesce(msgs, []) if m.role = 'user'], chr(10))"
    assistant = (
        "array_to_string([coalesce(m.content, '') for m in coalesce(msgs, []) if m.role = 'assistant'], chr(10))"
    )
    chosen = "array_to_string([coalesce(m.content, '') for m in coalesce(ch, [])], chr(10))"
    prompt = f"CASE WHEN kind = 'text' THEN coalesce(text, '') ELSE {user} END"
    response = f"CASE WHEN kind = 'preference' THEN {chosen} ELSE {assistant} END"
    tokens = "n_tokens" if "n_tokens" in columns else "NULL::BIGINT"
    read = [*MEASURED_COLUMNS, *(("n_tokens",) if "n_tokens" in columns else ())]
    source = quote(table) if sample_rows is None else f"({sample_sql(table, sample_rows, SAMPLE_SEED, read)})"
    # Each text is built once (texts), then measured; the words of a text are its runs of non-space.
    return f"""
        WITH parsed AS (
            SELECT *, from_json(messages, '{_MESSAGES}') AS msgs, from_json(chosen, '{_MESSAGES}') AS ch,
                   {_extra_keys()} AS task
            FROM {source}),
        texts AS (
            SELECT *, {prompt} AS prompt, {response} AS response,
                   CASE WHEN kind = 'text' THEN NULL
                        ELSE len([1 for m in coalesce(msgs, []) if m.role = 'user']) END AS turns
            FROM parsed)
        SELECT row_id, {_labels()},
               length(prompt) AS prompt_chars, length(response) AS response_chars,
               len(regexp_extract_all(prompt, '\\S+')) AS prompt_words,
               len(regexp_extract_all(response, '\\S+')) AS response_words,
               turns, {tokens} AS n_tokens
        FROM texts"""


@dataclass
class VersionInspection:
    """Everything the report says about one dataset version."""

    table: str
    rows: int
    measured: int = 0  # rows whose lengths were measured: all of them, or a seeded sample
    distributions: dict[str, dict[str, float | int | None]] = field(default_factory=dict)
    histograms: dict[str, list[tuple[float, float, int]]] = field(default_factory=dict)
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    crosstabs: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    lengths_by_source: dict[str, dict[str, dict[str, float | int | None]]] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    language_sample: int = 0
    outliers: list[dict[str, Any]] = field(default_factory=list)
    agreement: dict[str, Any] = field(default_factory=dict)

    @property
    def sampled(self) -> bool:
        return self.measured < self.rows

    @property
    def measured_note(self) -> str:
        """Which rows lengths, turns, tokens and outliers describe."""
        if self.sampled:
            return f"lengths and outliers: sampled {self.measured:,} of {self.rows:,} rows (seeded reservoir)"
        return f"lengths and outliers: all {self.rows:,} rows"

    @property
    def synthetic_share(self) -> float:
        origins = self.categories.get("origin", {})
        total = sum(origins.values())
        return (total - origins.get("human", 0)) / total if total else 0.0

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready summary (no histograms), for machine-readable metadata."""
        return {
            "table": self.table,
            "rows": self.rows,
            "measured_rows": self.measured,
            "synthetic_share": round(self.synthetic_share, 4),
            "distributions": self.distributions,
            "categories": self.categories,
            "splits": self.splits,
            "lengths_by_source": self.lengths_by_source,
            "languages": {"sample_rows": self.language_sample, "counts": self.languages},
            "outliers": len(self.outliers),
            "agreement": self.agreement,
        }


def distribution(
    connection: duckdb.DuckDBPyConnection, measure: str, by: str | None = None, table: str = MEASURES_TABLE
) -> dict[str, dict[str, float | int | None]]:
    """count, mean and quantiles of ``measure`` overall (key ``all``) or per value of ``by``."""
    group = quote(by) if by else "'all'"
    col = quote(measure)
    rows = connection.execute(
        f"SELECT {group} AS g, count({col}), avg({col}), min({col}), quantile_cont({col}, 0.05), "
        f"quantile_cont({col}, 0.25), quantile_cont({col}, 0.5), quantile_cont({col}, 0.75), "
        f"quantile_cont({col}, 0.95), max({col}) FROM {quote(table)} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    names = ("count", "mean", "min", "p05", "p25", "median", "p75", "p95", "max")
    return {
        str(g): {
            n: (None if v is None else round(float(v), 2) if n != "count" else int(v))
            for n, v in zip(names, values, strict=True)
        }
        for g, *values in rows
    }


def histogram(
    connection: duckdb.DuckDBPyConnection, measure: str, bins: int = 30, table: str = MEASURES_TABLE
) -> list[tuple[float, float, int]]:
    """(low, high, count) of ``measure``: ``bins`` equal-width bins of ln(1 + value) between the smallest
    and the largest value; a small integer measure (turns) gets one bin per value instead."""
    col = quote(measure)
    [(low, top, distinct)] = connection.execute(
        f"SELECT min(ln(1 + {col})), max(ln(1 + {col})), count(DISTINCT {col}) FROM {quote(table)} WHERE {col} >= 0"
    ).fetchall()
    if top is None:
        return []
    if measure == "turns" or distinct <= 1:
        return [
            (float(v), float(v) + 1, int(n))
            for v, n in connection.execute(
                f"SELECT {col}, count(*) FROM {quote(table)} WHERE {col} >= 0 GROUP BY 1 ORDER BY 1"
            ).fetchall()
        ]
    width = (float(top) - float(low)) / bins
    counts = dict(
        connection.execute(
            f"SELECT least(CAST(floor((ln(1 + {col}) - ?) / ?) AS INTEGER), ?) AS b, count(*) FROM {quote(table)} "
            f"WHERE {col} >= 0 GROUP BY 1",
            [low, width, bins - 1],
        ).fetchall()
    )
    return [
        (math.expm1(low + i * width), math.expm1(low + (i + 1) * width), int(counts.get(i, 0))) for i in range(bins)
    ]


def label_counts(
    connection: duckdb.DuckDBPyConnection, table: str
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, dict[str, int]]]]:
    """Exact counts of every row of ``table``, in one scan: rows per value of each of :data:`CATEGORIES`
    (most first), and ``{f"{column}_by_{by}": {by value: {column value: rows}}}`` for kind, origin and
    licence by each of :data:`SPLITS`."""
    sets = [(c,) for c in CATEGORIES] + [(by, c) for by in SPLITS for c in ("kind", "origin", "license")]
    used = sorted({c for group in sets for c in group}, key=LABELS.index)
    grouping = ", ".join(f"grouping({quote(c)})" for c in used)
    labels = ", ".join(quote(c) for c in LABELS)
    # Rows per combination of labels first (a few hundred groups), then every grouping set over those.
    rows = connection.execute(
        f"SELECT {', '.join(quote(c) for c in used)}, {grouping}, sum(n) "
        f"FROM (SELECT {labels}, count(*) AS n FROM ({labels_sql(table)}) GROUP BY ALL) "
        f"GROUP BY GROUPING SETS ({', '.join('(' + ', '.join(quote(c) for c in g) + ')' for g in sets)})"
    ).fetchall()
    found: dict[tuple[str, ...], list[tuple[tuple[str, ...], int]]] = defaultdict(list)
    for row in rows:
        values, aggregated, n = row[: len(used)], row[len(used) : -1], row[-1]
        group = tuple(c for c, rolled in zip(used, aggregated, strict=True) if not rolled)
        found[group].append((tuple(str(values[used.index(c)]) for c in group), int(n)))
    categories = {
        column: dict(sorted(((v[0], n) for v, n in found[(column,)]), key=lambda kv: (-kv[1], kv[0])))
        for column in CATEGORIES
    }
    crosstabs: dict[str, dict[str, dict[str, int]]] = {}
    for by in SPLITS:
        for column in ("kind", "origin", "license"):
            key = tuple(sorted((by, column), key=LABELS.index))
            table_ = crosstabs.setdefault(f"{column}_by_{by}", {})
            for values, n in sorted(
                found[key], key=lambda vn: (vn[0][key.index(by)], -vn[1], vn[0][key.index(column)])
            ):
                table_.setdefault(values[key.index(by)], {})[values[key.index(column)]] = n
    return categories, crosstabs


def group_summary(
    connection: duckdb.DuckDBPyConnection,
    by: str,
    origins: Mapping[str, Mapping[str, int]],
    table: str = MEASURES_TABLE,
) -> list[dict[str, Any]]:
    """One line per group: rows and human share (exact, from ``origins``: rows per origin of each group),
    median/p95 lengths, mean turns and tokens (of the measured rows)."""
    measured = {
        str(g): values
        for g, *values in connection.execute(
            f"SELECT {quote(by)}, median(prompt_chars), quantile_cont(prompt_chars, 0.95), "
            "median(response_chars), quantile_cont(response_chars, 0.95), avg(turns), avg(n_tokens) "
            f"FROM {quote(table)} GROUP BY 1"
        ).fetchall()
    }

    def num(value: Any, digits: int = 1) -> float | None:
        return None if value is None else round(float(value), digits)

    lines = []
    for group, counts in sorted(origins.items(), key=lambda gc: (-sum(gc[1].values()), gc[0])):
        rows = sum(counts.values())
        pm, pp, rm, rp, turns, tokens = measured.get(group, [None] * 6)
        lines.append(
            {
                by: group,
                "rows": rows,
                "prompt_chars_median": num(pm),
                "prompt_chars_p95": num(pp),
                "response_chars_median": num(rm),
                "response_chars_p95": num(rp),
                "turns_mean": num(turns, 2),
                "tokens_mean": num(tokens),
                "human_share": num(counts.get("human", 0) / rows, 3),
            }
        )
    return lines


def outliers(
    connection: duckdb.DuckDBPyConnection,
    measures: Sequence[str] = ("prompt_chars", "response_chars", "n_tokens"),
    k: float = TUKEY_FAR_OUT,
    limit: int = 20,
    table: str = MEASURES_TABLE,
) -> list[dict[str, Any]]:
    """Rows beyond Tukey's far-out fences on ln(1 + measure), most extreme first, ``limit`` per measure."""
    found: list[dict[str, Any]] = []
    for measure in measures:
        col = quote(measure)
        [(q1, q3)] = connection.execute(
            f"SELECT quantile_cont(ln(1 + {col}), 0.25), quantile_cont(ln(1 + {col}), 0.75) FROM {quote(table)} "
            f"WHERE {col} IS NOT NULL"
        ).fetchall()
        if q1 is None:
            continue
        low, high = q1 - k * (q3 - q1), q3 + k * (q3 - q1)
        for row_id, source, value, _distance in connection.execute(
            f"SELECT row_id, source, {col}, greatest(? - ln(1 + {col}), ln(1 + {col}) - ?) AS d "
            f"FROM {quote(table)} WHERE {col} IS NOT NULL AND (ln(1 + {col}) < ? OR ln(1 + {col}) > ?) "
            "ORDER BY d DESC, row_id LIMIT ?",
            [low, high, low, high, limit],
        ).fetchall():
            side = "long" if math.log1p(value) > high else "short"
            found.append(
                {
                    "measure": measure,
                    "row_id": row_id,
                    "source": source,
                    "value": int(value),
                    "side": side,
                    "fence": round(math.expm1(high if side == "long" else low), 1),
                }
            )
    return found


def sample_languages(
    connection: duckdb.DuckDBPyConnection, table: str, rows: int = LANGUAGE_SAMPLE_ROWS, seed: int = 42
) -> tuple[dict[str, dict[str, int]], int]:
    """Language of the prompt side of a reservoir sample, per source: ``({source: {lang: n}}, sampled)``.

    ``und`` marks rows with fewer than :data:`MIN_LETTERS` letters outside code (undecidable)."""
    from curation.filter.language import detect_language, language_sample

    by_source: dict[str, Counter[str]] = {}
    sampled = 0
    columns = ("kind", "messages", "text", "source")  # what language_sample reads
    for row in iter_rows(read_batches(connection, sample_sql(table, rows, seed, columns))):
        sampled += 1
        text = language_sample(row, "prompt")
        if sum(ch.isalpha() for ch in text) < MIN_LETTERS:
            lang = "und"
        else:
            ranked = detect_language(text, k=1)
            lang = ranked[0][0] if ranked else "und"
        by_source.setdefault(row.get("source") or NONE, Counter())[lang] += 1
    return {source: dict(counts.most_common()) for source, counts in sorted(by_source.items())}, sampled


# --- inter-annotator agreement ---------------------------------------------------------------


def krippendorff_alpha_nominal(units: Mapping[Any, Sequence[Any]]) -> float | None:
    """Krippendorff's alpha for nominal labels: ``units`` maps an item to the labels its annotators gave
    (one per annotator; items with fewer than two labels are not pairable and are ignored).

    From the coincidence matrix (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability"):
    alpha = 1 − (n − 1) · Σ_c o_cc' / Σ_c≠k n_c·n_k. None when every pairable label is the same
    (no variation: alpha is undefined)."""
    coincidences: defaultdict[tuple[Any, Any], float] = defaultdict(float)  # weights are fractions 1/(m-1)
    for labels in units.values():
        m = len(labels)
        if m < 2:
            continue
        for i, j in ((i, j) for i in range(m) for j in range(m) if i != j):
            coincidences[(labels[i], labels[j])] += 1.0 / (m - 1)
    totals: defaultdict[Any, float] = defaultdict(float)
    for (c, _), weight in coincidences.items():
        totals[c] += weight
    n = sum(totals.values())
    disagree_expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or disagree_expected == 0:
        return None
    disagree_observed = sum(w for (c, k), w in coincidences.items() if c != k)
    return 1.0 - (n - 1) * disagree_observed / disagree_expected


def pairwise_agreement(units: Mapping[Any, Sequence[Any]]) -> float | None:
    """Share of annotator pairs on the same item who gave the same label (raw agreement)."""
    agree = pairs = 0
    for labels in units.values():
        for a, b in combinations(labels, 2):
            pairs += 1
            agree += a == b
    return agree / pairs if pairs else None


def agreement(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, Any]:
    """Inter-annotator agreement where the data holds several annotators' labels for one item.

    Preference rows with an ``annotator``: the item is (prompt, unordered pair of completions), the
    label is which completion the annotator preferred. OASST rows (``extra.ranks``) carry one
    *consensus* rank per message, not the individual rankers' labels, so they allow no agreement
    figure; they are counted and the report says so instead of inventing one."""
    # The label is which completion of the (canonically ordered) pair won, so labels compare across items.
    pair = (
        "CAST(messages AS VARCHAR) || chr(31) || least(CAST(chosen AS VARCHAR), CAST(rejected AS VARCHAR)) "
        "|| chr(31) || greatest(CAST(chosen AS VARCHAR), CAST(rejected AS VARCHAR))"
    )
    labelled = connection.execute(
        f"WITH labels AS (SELECT md5({pair}) AS item, annotator, CASE WHEN CAST(chosen AS VARCHAR) <= "
        "CAST(rejected AS VARCHAR) THEN 'first' ELSE 'second' END AS label "
        f"FROM {quote(table)} WHERE kind = 'preference' AND annotator IS NOT NULL), "
        "multi AS (SELECT item FROM labels GROUP BY item HAVING count(DISTINCT annotator) >= 2) "
        "SELECT item, list(label ORDER BY annotator) FROM (SELECT DISTINCT item, annotator, label FROM labels "
        "JOIN multi USING (item)) GROUP BY item"
    ).fetchall()
    [(ranked,)] = connection.execute(
        f"SELECT count(*) FROM {quote(table)} WHERE json_exists(extra, '$.ranks')"
    ).fetchall()
    units = {item: labels for item, labels in labelled}
    result: dict[str, Any] = {
        "preference_items_with_several_annotators": len(units),
        "krippendorff_alpha_nominal": _round(krippendorff_alpha_nominal(units)),
        "pairwise_agreement": _round(pairwise_agreement(units)),
        "rows_with_consensus_ranks": int(ranked),
    }
    notes = []
    if not units:
        notes.append("no item is labelled by two or more annotators, so no agreement can be computed")
    if ranked:
        notes.append(
            f"{ranked} rows carry OASST ranks (extra.ranks); these are consensus ranks, one per "
            "message, not the individual rankers' labels, so they give no inter-annotator agreement"
        )
    result["note"] = "; ".join(notes) or "Krippendorff's alpha over preference judgements by different annotators"
    return result


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- one version ------------------------------------------------------------------------------


def inspect_version(
    connection: duckdb.DuckDBPyConnection,
    table: str,
    language_rows: int = LANGUAGE_SAMPLE_ROWS,
    sample_rows: int = MEASURE_SAMPLE_ROWS,
) -> VersionInspection:
    """Compute every statistic of one dataset version (a table with the canonical columns): counts over
    every row, lengths and outliers over at most ``sample_rows`` of them."""
    columns = _columns(connection, table)
    if "row_id" not in columns:
        raise ValueError(
            f"table {table!r} is not in the warehouse or is not a dataset version "
            "(no row_id column); materialize it first"
        )
    [(rows,)] = connection.execute(f"SELECT count(*) FROM {quote(table)}").fetchall()
    result = VersionInspection(table=table, rows=int(rows))
    result.categories, result.crosstabs = label_counts(connection, table)
    measured_sql = measures_sql(table, columns, sample_rows if rows > sample_rows else None)
    connection.execute(f"CREATE OR REPLACE TEMP TABLE {quote(MEASURES_TABLE)} AS {measured_sql}")
    try:
        [(result.measured,)] = connection.execute(f"SELECT count(*) FROM {quote(MEASURES_TABLE)}").fetchall()
        measures = [m for m in LENGTH_MEASURES if m != "n_tokens" or "n_tokens" in columns]
        for measure in measures:
            result.distributions[measure] = distribution(connection, measure).get("all", {"count": 0})
            result.histograms[measure] = histogram(connection, measure)
        for by in SPLITS:
            result.splits[by] = group_summary(connection, by, result.crosstabs[f"origin_by_{by}"])
        for measure in ("prompt_chars", "response_chars") + (("n_tokens",) if "n_tokens" in columns else ()):
            result.lengths_by_source[measure] = distribution(connection, measure, by="source")
        result.outliers = outliers(
            connection, [m for m in ("prompt_chars", "response_chars", "n_tokens") if m in measures]
        )
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {quote(MEASURES_TABLE)}")
    if language_rows > 0 and rows:
        by_source, result.language_sample = sample_languages(connection, table, language_rows)
        totals: Counter[str] = Counter()
        for counts in by_source.values():
            totals.update(counts)
        result.languages = dict(totals.most_common())
        result.crosstabs["language_by_source"] = by_source
    result.agreement = agreement(connection, table)
    return result


# --- plots ------------------------------------------------------------------------------------


PLOT_DPI = 72


def _png(figure: Any, label_px: int = 30, top_px: int = 28, bottom_px: int = 24) -> bytes:
    """The figure as PNG with fixed margins, in pixels at :data:`PLOT_DPI`: ``label_px`` left of each
    column of axes (category names), ``top_px`` above each row (titles), ``bottom_px`` below
    (tick labels). Cheaper than measuring every label for a tight layout."""
    rows, columns = figure.axes[0].get_gridspec().get_geometry()
    width, height = figure.get_figwidth() * PLOT_DPI, figure.get_figheight() * PLOT_DPI
    left, right, top, bottom = label_px / width, 1 - 12 / width, 1 - top_px / height, bottom_px / height
    axes_width = ((right - left) * width - (columns - 1) * label_px) / columns
    axes_height = ((top - bottom) * height - (rows - 1) * (top_px + bottom_px)) / rows
    figure.subplots_adjust(
        left=left,
        right=right,
        top=top,
        bottom=bottom,
        wspace=(label_px + 12) / axes_width,
        hspace=(top_px + bottom_px) / axes_height,
    )
    return figure_png(figure, dpi=PLOT_DPI, tight=False)


def _no_minor_ticks(ax: Any) -> None:
    """Log scales draw eight minor ticks a decade, each its own artists: a quarter of a figure's cost."""
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())


def _short(label: str, width: int = 24) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


def _bars(ax: Any, counts: Mapping[str, int], title: str, top: int = 10) -> None:
    items = list(counts.items())[:top]
    if len(counts) > top:
        items.append(("(other)", sum(v for _, v in list(counts.items())[top:])))
    labels = [_short(k) for k, _ in items][::-1]
    ax.barh(labels, [v for _, v in items][::-1], color="#4c72b0")
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=8)


def plot_lengths(version: VersionInspection) -> bytes:
    """Histograms of prompt/response characters, tokens (formatted) or words, and turns."""
    plt = pyplot()
    third = "n_tokens" if "n_tokens" in version.histograms else "response_words"
    panels = [
        ("prompt_chars", "prompt length (characters)"),
        ("response_chars", "response length (characters)"),
        (third, "example length (tokens)" if third == "n_tokens" else "response length (words)"),
        ("turns", "user turns per conversation"),
    ]
    figure, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, (measure, title) in zip(axes, panels, strict=True):
        bins = version.histograms.get(measure) or []
        if not bins or not sum(c for _, _, c in bins):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        elif measure == "turns" or len(bins) == 1:
            ax.bar([f"{low:g}" for low, _, _ in bins], [c for _, _, c in bins], color="#4c72b0")
        else:
            edges = [bins[0][0]] + [high for _, high, _ in bins]
            ax.stairs([c for _, _, c in bins], [e + 1 for e in edges], fill=True, color="#4c72b0")
            ax.set_xscale("log")
            _no_minor_ticks(ax)
            ax.set_xlabel("1 + value (log scale)", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(labelsize=8)
    figure.suptitle(f"{version.table}: {version.rows} rows ({version.measured_note})", fontsize=11)
    return _png(figure, label_px=42, top_px=44, bottom_px=34)


def plot_by_source(version: VersionInspection) -> bytes:
    """Box plots (whiskers p5–p95) of prompt and response length per source, from SQL quantiles."""
    plt = pyplot()
    measures = list(version.lengths_by_source)
    figure, axes = plt.subplots(
        1,
        len(measures),
        figsize=(5 * len(measures), 0.5 + 0.45 * max(2, len(version.categories.get("source", {})))),
        squeeze=False,
    )
    for ax, measure in zip(axes[0], measures, strict=True):
        groups = version.lengths_by_source[measure]
        stats: list[dict[str, Any]] = [
            {
                "label": _short(g),
                "whislo": s["p05"],
                "q1": s["p25"],
                "med": s["median"],
                "q3": s["p75"],
                "whishi": s["p95"],
                "fliers": [],
            }
            for g, s in groups.items()
            if s["count"]
        ]
        if stats:
            ax.bxp(stats, orientation="horizontal", showfliers=False)
            ax.set_xscale("symlog")
            _no_minor_ticks(ax)
        ax.set_title(f"{measure.replace('_', ' ')} by source (p5–p95)", fontsize=10)
        ax.tick_params(labelsize=8)
    return _png(figure, label_px=130)


def plot_composition(version: VersionInspection) -> bytes:
    """Bar charts: kinds, origins per source (stacked), licences, languages, teachers, task types."""
    plt = pyplot()
    figure, axes = plt.subplots(2, 3, figsize=(14, 6))
    _bars(axes[0][0], version.categories.get("kind", {}), "kind")
    ax = axes[0][1]
    by_source = version.crosstabs.get("origin_by_source", {})
    origins = sorted({o for counts in by_source.values() for o in counts})
    left = [0] * len(by_source)
    palette = {"human": "#55a868", "synthetic": "#c44e52", "augmented": "#dd8452"}
    for origin in origins:
        values = [counts.get(origin, 0) for counts in by_source.values()]
        ax.barh(list(by_source), values, left=left, label=origin, color=palette.get(origin))
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_title(f"origin by source (synthetic share {version.synthetic_share:.1%})", fontsize=10)
    ax.tick_params(labelsize=8)
    if origins:
        ax.legend(fontsize=8)
    _bars(axes[0][2], version.categories.get("license", {}), "licence")
    _bars(axes[1][0], version.languages, f"language (sample of {version.language_sample})")
    _bars(axes[1][1], version.categories.get("teacher", {}), "teacher / generator")
    _bars(axes[1][2], version.categories.get("task_type", {}), "task type (extra.category…)")
    return _png(figure, label_px=130)


def plot_overview(versions: Sequence[VersionInspection]) -> bytes:
    """Rows of each version, stacked by origin: where rows leave the pipeline and where synthetic ones join."""
    plt = pyplot()
    figure, ax = plt.subplots(figsize=(7, 2.6))
    palette = {"human": "#55a868", "synthetic": "#c44e52", "augmented": "#dd8452"}
    origins = sorted({o for v in versions for o in v.categories.get("origin", {})})
    bottom = [0] * len(versions)
    for origin in origins:
        values = [v.categories.get("origin", {}).get(origin, 0) for v in versions]
        ax.bar([v.table for v in versions], values, bottom=bottom, label=origin, color=palette.get(origin))
        bottom = [a + b for a, b in zip(bottom, values, strict=True)]
    ax.set_ylabel("rows", fontsize=9)
    ax.set_title("rows per dataset version, by origin", fontsize=10)
    ax.tick_params(labelsize=8)
    if origins:
        ax.legend(fontsize=8)
    return _png(figure, label_px=60)


def plots(version: VersionInspection) -> dict[str, bytes]:
    return {
        "lengths": plot_lengths(version),
        "by_source": plot_by_source(version),
        "composition": plot_composition(version),
    }


_PLOT_PRELOAD = ("matplotlib.pyplot", __name__)


def inspect_versions(
    connection: duckdb.DuckDBPyConnection, log: Callable[[str], None] = lambda _: None, workers: int | None = None
) -> tuple[list[VersionInspection], list[str], dict[str, dict[str, bytes]]]:
    """Every dataset version of :data:`VERSIONS` present in the warehouse, inspected; the names of those not
    materialized yet; and each inspected version's :func:`plots`. ``log`` gets progress: rows of the versions
    inspected so far, of all.

    A version's plots are drawn in one of ``workers`` processes (all cores when None) while the next version
    is inspected here: drawing is all Python (~0.7 s a version at 1M rows), inspecting is mostly DuckDB, and
    one after the other they took 6.5 s of a +1% re-run at 1M."""
    present = table_names(connection)
    versions = [version for version in VERSIONS if version in present]
    count = min(len(versions), available_cores() if workers is None else workers)
    warm_up(_PLOT_PRELOAD, len(versions), count)  # the first version is inspected while the server imports matplotlib
    rows = {version: count_rows(connection, version) for version in versions}
    progress = reported(versions, log, "inspection", sum(rows.values()), size=rows.__getitem__)
    inspected: list[VersionInspection] = []

    def each_inspected() -> Iterator[VersionInspection]:
        for version in progress:
            inspected.append(inspect_version(connection, version))
            yield inspected[-1]

    drawn = list(map_ordered(plots, each_inspected(), count, preload=_PLOT_PRELOAD))
    pngs = {version.table: images for version, images in zip(inspected, drawn, strict=True)}
    return inspected, [version for version in VERSIONS if version not in present], pngs


# --- rendering --------------------------------------------------------------------------------

DEFINITIONS_MD = (
    "Lengths: prompt = user turns, response = assistant turns (chosen completion for preference rows); "
    "characters and words in every version, tokens (`n_tokens`, target tokenizer) in `formatted` only. "
    "Turns = user messages. Outliers: Tukey far-out fences (k = 3) on ln(1 + length). Languages: fastText "
    f"lid.176 on the prompt side of a reservoir sample ({LANGUAGE_SAMPLE_ROWS} rows), `und` = fewer than "
    f"{MIN_LETTERS} letters."
)


def _distribution_rows(version: VersionInspection) -> list[dict[str, Any]]:
    return [{"measure": m} | d for m, d in version.distributions.items()]


def markdown_summary(version: VersionInspection, images: Mapping[str, bytes] | None = None) -> str:
    """Markdown for the Dagster UI: tables, plots inline as base64 PNG, outliers and agreement."""
    parts = [
        f"### {version.table}: {version.rows} rows, synthetic share {version.synthetic_share:.1%}",
        DEFINITIONS_MD,
        f"**Lengths** ({version.measured_note})",
        markdown_table(_distribution_rows(version)),
    ]
    for name, png in (images or {}).items():
        parts.append(png_markdown(png, f"{version.table} {name}"))
    for column in ("kind", "origin", "license", "teacher", "task_type", "topic"):
        counts = version.categories.get(column, {})
        if counts and list(counts) != [NONE]:
            parts.append(f"**by {column}**\n\n{counts_table(counts, column)}")
    if version.languages:
        parts.append(
            f"**languages** (sample of {version.language_sample} rows)\n\n{counts_table(version.languages, 'language')}"
        )
    for by in SPLITS:
        lines = version.splits.get(by, [])
        if lines and [line[by] for line in lines] != [NONE]:
            parts.append(f"**by {by}**\n\n{markdown_table(lines)}")
    parts.append(f"**outliers** ({len(version.outliers)})\n\n{markdown_table(version.outliers[:20])}")
    parts.append(
        "**inter-annotator agreement**\n\n"
        + markdown_table([{"statistic": k, "value": v} for k, v in version.agreement.items()], width=200)
    )
    return "\n\n".join(parts)


def overview_markdown(versions: Sequence[VersionInspection], data_versions: Mapping[str, str]) -> str:
    """One line per inspected version: rows, synthetic share, outliers and its data version."""
    return "\n".join(
        ["| version | rows | synthetic share | outliers | data version |", "|---|---|---|---|---|"]
        + [
            f"| {v.table} | {v.rows} | {v.synthetic_share:.1%} | {len(v.outliers)} | {data_versions.get(v.table, '')} |"
            for v in versions
        ]
    )


def overview_plot_markdown(versions: Sequence[VersionInspection]) -> str:
    """The rows-per-version-by-origin plot inline, or a note when nothing was inspected."""
    if not versions:
        return "_no dataset version in the warehouse yet_"
    return png_markdown(plot_overview(versions), "rows per version by origin")


def _inline_code_html(markdown: str) -> str:
    """A line of the Markdown notes (shown as Markdown in the UI) as HTML: escaped, `code` as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(markdown))


def _html_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return "<p><em>(none)</em></p>"
    columns = list(rows[0].keys())
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in columns)
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _counts_rows(counts: Mapping[str, int], key: str) -> list[dict[str, Any]]:
    total = sum(counts.values())
    return [{key: k, "rows": v, "share": f"{v / total:.1%}" if total else "-"} for k, v in counts.items()]


def render_html(
    versions: Sequence[VersionInspection],
    images: Mapping[str, Mapping[str, str]],
    title: str = "Distillery inspection",
    versions_info: Mapping[str, str] | None = None,
) -> str:
    """A self-describing HTML report; ``images[table][name]`` is the PNG's path relative to the report."""
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;margin:.5em 0}"
        "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px} th{background:#eee} img{max-width:100%}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>Generated {datetime.now(UTC).isoformat(timespec='seconds')}. "
        f"{_inline_code_html(DEFINITIONS_MD)}</p>",
        _html_table(
            [
                {
                    "version": v.table,
                    "rows": v.rows,
                    "synthetic share": f"{v.synthetic_share:.1%}",
                    "data version": (versions_info or {}).get(v.table, ""),
                    "outliers": len(v.outliers),
                }
                for v in versions
            ]
        ),
        "<img alt='rows per version' src='overview.png'>" if versions else "",
    ]
    for version in versions:
        out.append(f"<h2 id='{html.escape(version.table)}'>{html.escape(version.table)}</h2>")
        out.append(
            f"<h3>Lengths</h3><p>{_inline_code_html(version.measured_note)}</p>"
            + _html_table(_distribution_rows(version))
        )
        for name, path in images.get(version.table, {}).items():
            out.append(f"<img alt='{html.escape(version.table)} {html.escape(name)}' src='{html.escape(path)}'>")
        for column in ("kind", "origin", "license", "teacher", "task_type", "topic", "source"):
            counts = version.categories.get(column, {})
            if counts and list(counts) != [NONE]:
                out.append(f"<h3>by {html.escape(column)}</h3>" + _html_table(_counts_rows(counts, column)))
        if version.languages:
            out.append(
                f"<h3>languages (sample of {version.language_sample} rows)</h3>"
                + _html_table(_counts_rows(version.languages, "language"))
            )
        for by in SPLITS:
            lines = version.splits.get(by, [])
            if lines and [line[by] for line in lines] != [NONE]:
                out.append(f"<h3>split by {html.escape(by)}</h3>" + _html_table(lines))
        out.append(f"<h3>outliers ({len(version.outliers)})</h3>" + _html_table(version.outliers))
        out.append(
            "<h3>inter-annotator agreement</h3>"
            + _html_table([{"statistic": k, "value": v} for k, v in version.agreement.items()])
        )
    out.append("</body></html>")
    return "\n".join(out)


def write_inspection_report(
    out_dir: Path,
    versions: Iterable[VersionInspection],
    versions_info: Mapping[str, str] | None = None,
    drawn: Mapping[str, dict[str, bytes]] | None = None,
) -> tuple[Path, dict[str, dict[str, bytes]]]:
    """Write ``index.html``, one PNG per plot and ``stats.json`` under ``out_dir``; return the report path
    and the PNG bytes per version (for the Dagster UI). ``drawn``: the versions' :func:`plots`, when
    :func:`inspect_versions` drew them already."""
    out_dir.mkdir(parents=True, exist_ok=True)
    versions = list(versions)
    pngs = {version.table: drawn[version.table] if drawn else plots(version) for version in versions}
    paths: dict[str, dict[str, str]] = {}
    for version in versions:
        for name, png in pngs[version.table].items():
            filename = f"{version.table}_{name}.png"
            (out_dir / filename).write_bytes(png)
            paths.setdefault(version.table, {})[name] = filename
    if versions:
        (out_dir / "overview.png").write_bytes(plot_overview(versions))
    (out_dir / "stats.json").write_text(json.dumps({v.table: v.as_json() for v in versions}, indent=1))
    report = out_dir / "index.html"
    report.write_text(render_html(versions, paths, versions_info=versions_info), encoding="utf-8")
    return report, pngs
