"""The `filtered` asset's contract: a Great Expectations suite, no PII left after redaction, no licence the
intended use forbids, and every rejection explained. (Row conservation, filtered + rejected = input, is the
shared `rows_conserved` check in checks/datasets.py.)"""

from collections.abc import Iterable, Sequence
from typing import Any

import duckdb
import pandas as pd
from dagster import (
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    Config,
    MetadataValue,
    asset_check,
)
from pydantic import Field

from checks.expectations import (
    DEFAULT_SAMPLE_ROWS,
    Expectation,
    between,
    columns_frame,
    in_set,
    lengths_between,
    not_null,
    sample_relation,
    suite_check,
)
from curation.core.config import ProjectConfig
from curation.core.markdown import markdown_table
from curation.core.schema import KINDS, ORIGINS, iter_rows
from curation.core.warehouse import count_rows, read_batches
from curation.filter.base import Filter
from curation.filter.chain import project_chain
from curation.filter.quality import measured_sides
from curation.filter.rechecks import EVERY_ROW_ENTITIES, license_breakdown, pii_left, pii_left_in_every_row, pii_policy
from resources import ProjectResource, WarehouseResource
from resources.warehouse import POOL

REQUIRED_COLUMNS: tuple[str, ...] = ("row_id", "kind", "source", "source_uri", "license", "origin")


# --------------------------------------------------------------------------- the GE suite


def _length_filter(filters: Sequence[Filter]) -> Filter | None:
    return next((f for f in filters if f.name == "length"), None)


def filtered_suite(project: ProjectConfig) -> list[Expectation]:
    """Required columns present, kind/origin in their domains, and instruction/response lengths within
    the bounds the project's `length` filter enforces (so the suite fails if that filter was bypassed)."""
    expectations = [
        *not_null(*REQUIRED_COLUMNS),
        in_set("kind", KINDS),
        in_set("origin", ORIGINS),
        lengths_between("row_id", min_value=1),
        lengths_between("license", min_value=1),
    ]
    length = _length_filter(project_chain(project)[1])
    if length is not None:
        for side, column in (("prompt", "prompt_words"), ("response", "response_words")):
            low, high = getattr(length, f"min_{side}_words"), getattr(length, f"max_{side}_words")
            if low is not None or high is not None:
                expectations.append(between(column, low, high))
            low, high = getattr(length, f"min_{side}_chars"), getattr(length, f"max_{side}_chars")
            if low is not None or high is not None:
                expectations.append(between(column.replace("words", "chars"), low, high))
    return expectations


def length_columns(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Canonical columns plus instruction/response lengths measured as the `length` filter measures
    them (words = whitespace split, its kinds with a response); NULL where a side does not apply."""
    records = []
    for row in rows:
        prompt, response = measured_sides(row)
        records.append(
            {
                **{c: row.get(c) for c in REQUIRED_COLUMNS},
                "prompt_words": None if prompt is None else len(prompt.split()),
                "prompt_chars": None if prompt is None else len(prompt),
                "response_words": None if response is None else len(response.split()),
                "response_chars": None if response is None else len(response),
            }
        )
    frame = pd.DataFrame.from_records(
        records, columns=[*REQUIRED_COLUMNS, "prompt_words", "prompt_chars", "response_words", "response_chars"]
    )
    for column in ("prompt_words", "prompt_chars", "response_words", "response_chars"):
        frame[column] = frame[column].astype("Int64")  # keep NULLs as NULLs, not floats
    return frame


def filtered_frame(
    connection: duckdb.DuckDBPyConnection, project: ProjectConfig, sample_rows: int
) -> tuple[pd.DataFrame, int]:
    sql, total = sample_relation(connection, "filtered", sample_rows)
    return length_columns(iter_rows(read_batches(connection, sql))), total


filtered_expectations = suite_check(
    "filtered",
    filtered_suite,
    filtered_frame,
    description="Great Expectations suite: required columns non-null, kind and origin in their domains, "
    "instruction/response lengths within the length filter's bounds (sample, configurable).",
)


def rejections_suite(project: ProjectConfig) -> list[Expectation]:
    """Each rejection names an enabled filter and a non-empty reason."""
    names = [f.name for f in project_chain(project)[1]]
    return [*not_null("row_id", "filter", "reason"), in_set("filter", names), lengths_between("reason", 1)]


rejections_explained = suite_check(
    "filtered",
    rejections_suite,
    columns_frame("filter_rejections", ("row_id", "filter", "reason")),
    name="rejections_explained",
    description="Great Expectations suite on filter_rejections: every rejected row names an enabled filter "
    "and a non-empty reason.",
)


# --------------------------------------------------------------------------- PII left after redaction


class PiiScanConfig(Config):
    """Run config of `no_pii_left`: how many rows are searched for every PII type."""

    sample_rows: int | None = Field(
        default=DEFAULT_SAMPLE_ROWS,
        gt=0,
        description="Search a seeded sample of this many rows for every PII type (a smaller table whole; "
        "unset: every row). Private keys and credentials in URLs are looked for in every row regardless.",
    )


@asset_check(
    asset="filtered",
    name="no_pii_left",
    blocking=True,
    pool=POOL,
    description="No PII type that the project redacts (pii cleaner) or drops (pii filter) is still "
    f"detectable in a filtered row: every type in a seeded sample of {DEFAULT_SAMPLE_ROWS:,} rows (the whole "
    "table when smaller, configurable), private keys and credentials in URLs in every row (screened in "
    "SQL, then searched). Hits are reported by row, type and offset, never with the text.",
)
def filtered_no_pii_left(
    context: AssetCheckExecutionContext, config: PiiScanConfig, project: ProjectResource, warehouse: WarehouseResource
) -> AssetCheckResult:
    entities = pii_policy(*project_chain(project.load()))
    if not entities:
        return AssetCheckResult(
            passed=True,
            metadata={
                "entities": MetadataValue.json([]),
                "note": "the pii cleaner and the pii filter are both off: the project keeps personal data",
            },
        )
    every_row = [entity for entity in entities if entity in EVERY_ROW_ENTITIES]
    sampled = [entity for entity in entities if entity not in EVERY_ROW_ENTITIES]
    with warehouse.get().connect() as connection:
        if config.sample_rows is None:
            sql, total = "SELECT * FROM filtered ORDER BY row_id", count_rows(connection, "filtered")
        else:
            sql, total = sample_relation(connection, "filtered", config.sample_rows)
        scanned, per_entity, hits = pii_left(iter_rows(read_batches(connection, sql)), sampled)
        screened_in, every_row_found, every_row_hits = pii_left_in_every_row(connection, "filtered", every_row)
    per_entity += every_row_found
    hits = (every_row_hits + hits)[:10]
    if per_entity:
        context.log.warning(f"filtered: PII left in {sum(per_entity.values())} row(s): {dict(per_entity)}")
    return AssetCheckResult(
        passed=not per_entity,
        metadata={
            "rows_scanned": scanned,
            "rows_total": total,
            "scan": f"{', '.join(sampled) or 'nothing'} in {'all' if scanned == total else 'a seeded sample of'} "
            f"{scanned:,} of {total:,} rows; {', '.join(every_row) or 'nothing'} in every row ({screened_in:,} "
            "passed the SQL screen and were searched)",
            "rows_with_pii": sum(per_entity.values()),
            "entities": MetadataValue.json(list(entities)),
            "every_row_entities": MetadataValue.json(every_row),
            "rows_by_entity": MetadataValue.json(dict(per_entity)),
            "hits": MetadataValue.md(markdown_table(hits)),
        },
    )


# --------------------------------------------------------------------------- licences


def license_check(asset: str) -> AssetChecksDefinition:
    @asset_check(
        asset=asset,
        name="licenses_allowed",
        blocking=True,
        pool=POOL,
        description=f"Every {asset} row's licence (each id of its expression) and, for a model-made row, its "
        "generator's terms (policy.teachers) allow the project's policy.intended_use (curation.core.licenses; the "
        "project's policy.licenses extend the table).",
    )
    def _check(
        context: AssetCheckExecutionContext, project: ProjectResource, warehouse: WarehouseResource
    ) -> AssetCheckResult:
        config = project.load()
        with warehouse.get().connect() as connection:
            breakdown = license_breakdown(connection, asset, config)
        bad = [b for b in breakdown if not b["allowed"]]
        return AssetCheckResult(
            passed=not bad,
            metadata={
                "intended_use": config.policy.intended_use,
                "rows_disallowed": sum(b["rows"] for b in bad),
                "licenses": MetadataValue.md(markdown_table(breakdown)),
                "disallowed": MetadataValue.json(
                    {
                        str(b["license"]) + (f" (generator {b['generator']})" if b["generator"] else ""): b["why_not"]
                        for b in bad
                    }
                ),
            },
        )

    return _check


filtered_licenses_allowed = license_check("filtered")

FILTERED_CHECKS: list[AssetChecksDefinition] = [
    filtered_expectations,
    rejections_explained,
    filtered_no_pii_left,
    filtered_licenses_allowed,
]
