"""Independent looks at the filtered table that its checks report: PII still detectable after
redaction, licences against the intended use. They reuse the detector and the policy the stage uses,
never the stage's own results, so a bypassed or broken step is caught."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import duckdb

from curation.core.config import ProjectConfig
from curation.core.licenses import LicensePolicy
from curation.core.schema import COLUMNS, Row, iter_rows
from curation.core.texts import all_text
from curation.core.warehouse import quote, read_batches
from curation.filter.base import Cleaner, Filter
from curation.filter.pii import find_pii, pii_candidates, pii_screen

EVERY_ROW_ENTITIES: tuple[str, ...] = ("PRIVATE_KEY", "URL_CREDENTIALS")
"""Looked for in every row even when the check scans a sample: the most damaging secrets, and their
screens (a fixed string to find first) run over the stored JSON at memory speed. They hold for the
JSON text as well as for the texts in it: no character they need is escaped by JSON."""

_BATCH_ROWS = 2_000


def pii_policy(cleaners: Sequence[Cleaner], filters: Sequence[Filter]) -> tuple[str, ...]:
    """The PII types the project removes: those the `pii` cleaner redacts and the `pii` filter drops."""
    entities: list[str] = []
    steps: list[Cleaner | Filter] = [*cleaners, *filters]
    for step in steps:
        if step.name == "pii":
            entities += [e for e in getattr(step, "entities", None) or () if e not in entities]
    return tuple(entities)


def pii_left(
    rows: Iterable[Row], entities: Collection[str], sample: int = 10
) -> tuple[int, Counter[str], list[dict[str, Any]]]:
    """(rows scanned, rows with a match per entity type, a few hits). Hits name the row, the type and
    the offset but never the matched text: the check's metadata must not republish the secret. Rows are
    screened a batch at a time (:func:`curation.filter.pii.pii_candidates`), with the same result."""
    scanned, per_entity = 0, Counter[str]()
    hits: list[dict[str, Any]] = []
    for batch in _batches(rows):
        texts = [all_text(row) for row in batch]
        scanned += len(batch)
        for row, text, candidates in zip(batch, texts, pii_candidates(texts, entities), strict=True):
            matches = find_pii(text, candidates) if candidates else []
            for entity in dict.fromkeys(m.entity for m in matches):
                per_entity[entity] += 1
            if matches and len(hits) < sample:
                hits.append(
                    {
                        "row_id": row["row_id"],
                        "source": row.get("source"),
                        "entity": matches[0].entity,
                        "offset": matches[0].start,
                        "length": matches[0].end - matches[0].start,
                    }
                )
    return scanned, per_entity, hits


def _batches(rows: Iterable[Row]) -> Iterator[list[Row]]:
    iterator = iter(rows)
    while batch := list(islice(iterator, _BATCH_ROWS)):
        yield batch


def pii_left_in_every_row(
    connection: duckdb.DuckDBPyConnection, table: str, entities: Collection[str], sample: int = 10
) -> tuple[int, Counter[str], list[dict[str, Any]]]:
    """:func:`pii_left` for ``entities`` (of :data:`EVERY_ROW_ENTITIES`) over every row of ``table``: DuckDB
    screens the stored texts, the detectors search the rows that pass. Returns (rows that passed the
    screen, rows with a match per entity, a few hits)."""
    if not entities:
        return 0, Counter(), []
    screen = pii_screen(entities)
    texts = "concat_ws(chr(10), text, CAST(messages AS VARCHAR), CAST(chosen AS VARCHAR), CAST(rejected AS VARCHAR))"
    columns = ", ".join(quote(name) for name in COLUMNS)
    sql = f"SELECT {columns} FROM {quote(table)}"
    if screen is not None:
        sql += f" WHERE regexp_matches({texts}, ?)"
    sql += " ORDER BY row_id"
    return pii_left(iter_rows(read_batches(connection, sql, [screen] if screen else [])), entities, sample)


def license_breakdown(
    connection: duckdb.DuckDBPyConnection, table: str, project: ProjectConfig
) -> list[dict[str, Any]]:
    """Rows per licence in ``table`` and whether the project's policy allows it for its intended use."""
    policy = LicensePolicy.with_overrides(project.policy.licenses)
    result = []
    for license_id, rows in connection.execute(
        f"SELECT license, count(*) FROM {quote(table)} GROUP BY 1 ORDER BY 2 DESC, 1"
    ).fetchall():
        allowed, why = policy.allows(license_id, project.policy.intended_use)
        result.append({"license": license_id, "rows": int(rows), "allowed": allowed, "why_not": why or None})
    return result
