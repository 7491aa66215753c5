"""Independent looks at the filtered table that its checks report: PII still detectable after
redaction, licences against the intended use. They reuse the detector and the policy the stage uses,
never the stage's own results, so a bypassed or broken step is caught."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import duckdb

from curation.core.config import ProjectConfig
from curation.core.licenses import LicensePolicy
from curation.core.schema import Row
from curation.core.texts import all_text
from curation.core.warehouse import quote
from curation.filter.base import Cleaner, Filter
from curation.filter.pii import find_pii


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
    the offset but never the matched text: the check's metadata must not republish the secret."""
    scanned, per_entity = 0, Counter[str]()
    hits: list[dict[str, Any]] = []
    for row in rows:
        scanned += 1
        matches = find_pii(all_text(row), entities)
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
