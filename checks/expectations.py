"""Great Expectations 1.x suites inside Dagster asset checks, reusable by any asset.

``dagster-ge`` pins GE < 1 and pandas < 3, so suites run here directly: an
ephemeral GE context, a pandas datasource with a whole-dataframe batch, ``batch.validate(suite)``
on a bounded sample (a seeded reservoir of ``sample_rows``, or every row of a small table) pulled from
DuckDB, never a whole large table, and the GE statistics returned as check metadata, which says how
many of the table's rows were validated. Expectations are plain :class:`Expectation` specs, resolved
against ``great_expectations.expectations`` only when a suite runs: GE takes ~5 s to import, and loading
the code location (every ``distillery`` command) must not pay that.
"""

import contextlib
import importlib
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    Config,
    MetadataValue,
    asset_check,
)
from pydantic import Field

from curation.core.config import ProjectConfig
from curation.core.markdown import markdown_table
from curation.core.warehouse import count_rows, quote, sample_sql
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

SAMPLE_SEED = 0
DEFAULT_SAMPLE_ROWS = 20_000
"""Rows validated per suite. A table this small or smaller is validated whole; above it a seeded
reservoir sample is. On 2 cores a 20,000-row suite of ~10 expectations takes well under a second
once GE is imported, so the default keeps a check cheap next to the asset it guards."""


def coverage(checked: int, total: int) -> str:
    """What a check looked at, for its metadata: ``sampled N of M rows`` or ``all M rows``."""
    return f"sampled {checked:,} of {total:,} rows (seeded reservoir)" if checked < total else f"all {total:,} rows"


class ExpectationsConfig(Config):
    """Run config of a suite check (set it in the launchpad under ops.<check>.config)."""

    sample_rows: int = Field(
        default=DEFAULT_SAMPLE_ROWS,
        gt=0,
        description="Validate at most this many rows (a seeded reservoir sample beyond).",
    )


@dataclass(frozen=True)
class Expectation:
    """One expectation: a class name from ``great_expectations.expectations`` and its arguments."""

    type: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def column(self) -> str:
        return str(self.kwargs.get("column", ""))


def not_null(*columns: str) -> list[Expectation]:
    return [Expectation("ExpectColumnValuesToNotBeNull", {"column": c}) for c in columns]


def in_set(column: str, values: Iterable[Any]) -> Expectation:
    return Expectation("ExpectColumnValuesToBeInSet", {"column": column, "value_set": list(values)})


def between(column: str, min_value: float | None = None, max_value: float | None = None) -> Expectation:
    """Values within [min_value, max_value]; NULLs are ignored (GE's rule), so pair with not_null."""
    return Expectation(
        "ExpectColumnValuesToBeBetween", {"column": column, "min_value": min_value, "max_value": max_value}
    )


def unique(column: str) -> Expectation:
    return Expectation("ExpectColumnValuesToBeUnique", {"column": column})


def lengths_between(column: str, min_value: int | None = None, max_value: int | None = None) -> Expectation:
    return Expectation(
        "ExpectColumnValueLengthsToBeBetween", {"column": column, "min_value": min_value, "max_value": max_value}
    )


@dataclass(frozen=True)
class SuiteOutcome:
    """What a suite found: GE's statistics and one line per expectation."""

    suite: str
    success: bool
    statistics: Mapping[str, Any]
    results: list[dict[str, Any]]
    rows_validated: int
    rows_total: int

    @property
    def sampled(self) -> bool:
        return self.rows_validated < self.rows_total

    def failures(self) -> list[dict[str, Any]]:
        return [r for r in self.results if not r["success"]]

    def metadata(self) -> dict[str, Any]:
        """Check metadata: GE's statistics, how much was validated, and a table of the results."""
        stats = self.statistics
        return {
            "suite": self.suite,
            "evaluated_expectations": int(stats.get("evaluated_expectations") or 0),
            "successful_expectations": int(stats.get("successful_expectations") or 0),
            "unsuccessful_expectations": int(stats.get("unsuccessful_expectations") or 0),
            "success_percent": float(stats.get("success_percent") or 0.0),
            "rows_validated": self.rows_validated,
            "rows_total": self.rows_total,
            "sampled": self.sampled,
            "coverage": coverage(self.rows_validated, self.rows_total),
            "results": MetadataValue.md(markdown_table(self.results, width=60)),
            "failures": MetadataValue.json(self.failures()),
        }


def import_early() -> threading.Thread:
    """Start importing Great Expectations on a thread of its own and return the thread. A run's first suite
    check otherwise waits for the import (~2 s with Dagster, pandas and DuckDB loaded; ~4 s cold) while the
    second core idles; started with the run, it overlaps the first asset, whose DuckDB work releases the GIL.
    A failed import is left to the check that needs it, which reports it."""

    def load() -> None:
        with contextlib.suppress(Exception):
            importlib.import_module("great_expectations.expectations")

    thread = threading.Thread(target=load, name="import-great-expectations", daemon=True)
    thread.start()
    return thread


def _ge_context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    # A fresh in-memory context per suite (~10 ms): nothing written to disk, no state across runs.
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm noise in run logs
    return context


def _result_row(result: Any) -> dict[str, Any]:
    config = result.expectation_config
    details = result.result or {}
    arguments = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "column")}
    examples = details.get("partial_unexpected_list") or []
    return {
        "expectation": config.type,
        "column": config.kwargs.get("column", ""),
        "success": bool(result.success),
        "arguments": ", ".join(f"{k}={v}" for k, v in arguments.items()),
        "unexpected_count": details.get("unexpected_count"),
        "unexpected_percent": (
            None if details.get("unexpected_percent") is None else round(float(details["unexpected_percent"]), 3)
        ),
        # Values only, a few: enough to see what is wrong (e.g. a kind no one declared).
        "examples": ", ".join(str(v)[:40] for v in examples[:5]),
        "error": (result.exception_info or {}).get("exception_message") if not result.success else None,
    }


def validate_frame(
    frame: pd.DataFrame, suite: str, expectations: Sequence[Expectation], rows_total: int | None = None
) -> SuiteOutcome:
    """Validate ``frame`` against ``expectations`` with Great Expectations; one whole-frame batch."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    context = _ge_context()
    batch = (
        context.data_sources.add_pandas("distillery")
        .add_dataframe_asset(suite)
        .add_batch_definition_whole_dataframe("whole")
        .get_batch(batch_parameters={"dataframe": frame})
    )
    ge_suite = gx.ExpectationSuite(name=suite)
    for spec in expectations:
        factory = getattr(gxe, spec.type, None)
        if factory is None:
            raise ValueError(
                f"suite {suite}: {spec.type!r} is not an expectation in great_expectations."
                "expectations (use the class name, e.g. ExpectColumnValuesToNotBeNull)"
            )
        ge_suite.add_expectation(factory(**dict(spec.kwargs)))
    result = batch.validate(ge_suite)
    return SuiteOutcome(
        suite=suite,
        success=bool(result.success),
        statistics=dict(result.statistics),
        results=[_result_row(r) for r in result.results],
        rows_validated=len(frame),
        rows_total=len(frame) if rows_total is None else rows_total,
    )


def sample_relation(
    connection: duckdb.DuckDBPyConnection, table: str, sample_rows: int, columns: Sequence[str] = ("*",)
) -> tuple[str, int]:
    """SQL selecting ``columns`` of at most ``sample_rows`` rows of ``table`` (seeded, so a re-run
    checks the same rows; only the sampled rows' columns are read), and the table's full row count."""
    total = count_rows(connection, table)
    if total <= sample_rows:
        selected = ", ".join(c if c == "*" else quote(c) for c in columns)
        return f"SELECT {selected} FROM {quote(table)}", total
    return sample_sql(table, sample_rows, SAMPLE_SEED, columns), total


FrameBuilder = Callable[[duckdb.DuckDBPyConnection, ProjectConfig, int], tuple[pd.DataFrame, int]]
"""(connection, project, sample_rows) → (frame to validate, rows in the whole table)."""
SuiteBuilder = Callable[[ProjectConfig], list[Expectation]]


def columns_frame(table: str, columns: Sequence[str]) -> FrameBuilder:
    """A frame builder that pulls plain columns of ``table`` (a sample when the table is large)."""

    def build(
        connection: duckdb.DuckDBPyConnection, project: ProjectConfig, sample_rows: int
    ) -> tuple[pd.DataFrame, int]:
        sql, total = sample_relation(connection, table, sample_rows, columns)
        return connection.execute(sql).df(), total

    return build


def suite_check(
    asset: str,
    suite: SuiteBuilder,
    frame: FrameBuilder,
    name: str = "expectations",
    description: str = "",
    blocking: bool = True,
    severity: AssetCheckSeverity = AssetCheckSeverity.ERROR,
) -> AssetChecksDefinition:
    """An asset check that validates ``frame(...)`` against ``suite(project)`` with Great Expectations.

    Fails when any expectation fails; the metadata carries GE's statistics and each expectation's
    result, so the UI shows which column broke which rule and example values.
    """

    @asset_check(
        asset=asset,
        name=name,
        blocking=blocking,
        pool=POOL,
        description=description
        or f"Great Expectations suite on {asset} (sample of {DEFAULT_SAMPLE_ROWS:,} rows unless configured).",
    )
    def _check(
        context: AssetCheckExecutionContext,
        config: ExpectationsConfig,
        project: ProjectResource,
        warehouse: WarehouseResource,
    ) -> AssetCheckResult:
        settings = project.load()
        with warehouse.get().connect() as connection:
            data, total = frame(connection, settings, config.sample_rows)
        outcome = validate_frame(data, f"{asset}_{name}", suite(settings), rows_total=total)
        if not outcome.success:
            context.log.warning(
                f"{asset}: {len(outcome.failures())} expectation(s) failed: "
                + "; ".join(f"{f['expectation']}({f['column']})" for f in outcome.failures())
            )
        return AssetCheckResult(passed=outcome.success, severity=severity, metadata=outcome.metadata())

    return _check


# --------------------------------------------------------------------------- suites of other datasets

ROW_ID_PATTERN = r"^[0-9a-f]{20}$"
"""curation.core.schema.make_row_id: 20 hex characters of a sha256."""


def raw_suite(project: ProjectConfig) -> list[Expectation]:
    """Ingested rows carry a well-formed id, a source and a licence the project file declares (a row
    from a source since removed from the file, or relabelled, shows up here), and known kinds."""
    from curation.core.schema import KINDS, ORIGINS

    declared = {s.license for s in project.sources} | set(project.policy.licenses)
    return [
        *not_null("row_id", "kind", "source", "source_uri", "license", "origin"),
        Expectation("ExpectColumnValuesToMatchRegex", {"column": "row_id", "regex": ROW_ID_PATTERN}),
        unique("row_id"),
        in_set("kind", KINDS),
        in_set("origin", ORIGINS),
        in_set("source", sorted(s.name for s in project.sources)),
        in_set("license", sorted(declared)),
    ]


raw_expectations = suite_check(
    "raw",
    raw_suite,
    columns_frame("raw", ("row_id", "kind", "source", "source_uri", "license", "origin")),
    blocking=False,
    severity=AssetCheckSeverity.WARN,
    description="Great Expectations suite on raw: well-formed unique ids, known kinds and origins, sources and "
    "licences declared in the project file (a warning: raw keeps rows of sources since removed).",
)


def formatted_suite(project: ProjectConfig) -> list[Expectation]:
    """Training rows: an id, a parent, a split, a rendered text and a token count within the budget."""
    return [
        *not_null("row_id", "parent_id", "split", "text", "n_tokens"),
        unique("row_id"),
        in_set("split", ("train", "eval")),
        between("n_tokens", 1, project.format.max_tokens),
        lengths_between("text", min_value=1),
    ]


formatted_expectations = suite_check(
    "formatted",
    formatted_suite,
    columns_frame("formatted", ("row_id", "parent_id", "split", "text", "n_tokens")),
    description="Great Expectations suite on formatted: ids, parents, train/eval split, non-empty rendered "
    "text and token counts within format.max_tokens.",
)

SUITE_CHECKS: list[AssetChecksDefinition] = [raw_expectations, formatted_expectations]
"""Suites of datasets other than `filtered` (whose suite is in checks/filtered.py)."""
