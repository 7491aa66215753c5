"""Duplicate clusters: which row of a cluster is kept (:class:`KeepPolicy`, a documented total order,
so the same input always gives the same clusters), the record of every member (:class:`ClusterMember`,
one row of the ``dedup_clusters`` table), and the licence note a kept row carries for the copies it
absorbed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from curation.core.licenses import permissiveness_rank
from curation.core.schema import Row
from curation.core.texts import response_text

# ---------------------------------------------------------------------------------------------
# Which row of a cluster is kept.

_ORIGIN_RANK = {"human": 0, "augmented": 1, "synthetic": 2}


def default_quality(row: Row) -> float:
    """A non-empty response first, then a numeric ``extra.quality`` or reward ``score`` if present."""
    has_response = 1.0 if response_text(row).strip() or row.get("kind") in ("text", "prompt") else 0.0
    extra = row.get("extra") or {}
    signal = extra.get("quality") if isinstance(extra, dict) else None
    if not isinstance(signal, int | float):
        signal = row.get("score")
    signal = float(signal) if isinstance(signal, int | float) and math.isfinite(signal) else 0.0
    return has_response * 1e6 + signal


@dataclass(frozen=True)
class KeepPolicy:
    """The order that picks a cluster's kept row, best first:

    1. human before augmented before synthetic (``origin``; unknown last);
    2. more permissive licence (``license_rank``, default :func:`curation.core.licenses.permissiveness_rank`);
    3. higher quality (``quality``, default :func:`default_quality`);
    4. earliest ``ingested_at``, then earliest in the input, then smallest ``row_id``.
    """

    quality: Callable[[Row], float] = default_quality
    license_rank: Callable[[str | None], int] = permissiveness_rank

    def sort_key(self, row: Row, position: int) -> tuple[Any, ...]:
        ingested = row.get("ingested_at")
        return (
            _ORIGIN_RANK.get(row.get("origin") or "", 3),
            -self.license_rank(row.get("license")),
            -self.quality(row),
            ingested is None,
            str(ingested or ""),
            position,
            row.get("row_id") or "",
        )

    def choose(self, rows: Sequence[Row], positions: Sequence[int]) -> int:
        """Index (into ``rows``) of the row to keep."""
        return min(range(len(rows)), key=lambda i: self.sort_key(rows[i], positions[i]))

    def reason(self, kept: Row, removed: Row, kept_pos: int, removed_pos: int) -> str:
        """Why ``kept`` won over ``removed``, naming the first criterion that separated them."""
        a, b = self.sort_key(kept, kept_pos), self.sort_key(removed, removed_pos)
        if a[0] != b[0]:
            return f"origin {kept.get('origin')} preferred to {removed.get('origin')}"
        if a[1] != b[1]:
            return (
                f"licence {kept.get('license')} more permissive than {removed.get('license')}; "
                f"the removed row's source and licence stay on record in dedup_clusters"
            )
        if a[2] != b[2]:
            return "higher quality signal (non-empty response, quality/score)"
        if a[3:5] != b[3:5]:
            return "ingested earlier"
        return "earlier in the input (all preference criteria tied)"


DEFAULT_POLICY = KeepPolicy()
"""The documented order with its default quality and licence ranking (the default of every step)."""


# ---------------------------------------------------------------------------------------------
# The record of each member.


@dataclass(frozen=True)
class ClusterMember:
    """One row of ``dedup_clusters``. Kept rows appear too, with ``row_id == kept_row_id``.

    ``jaccard`` is the verified similarity to the kept row (1.0 for exact). Grouped by connected components, a row
    can join a cluster through a chain; ``matched_row_id``/``matched_jaccard`` then name the verified
    neighbour (similarity >= threshold) that linked it.
    """

    cluster_id: str
    row_id: str
    kept_row_id: str
    method: str
    jaccard: float
    matched_row_id: str
    matched_jaccard: float
    removed: bool
    reason: str


CLUSTER_SCHEMA = pa.schema(
    [
        ("cluster_id", pa.string()),
        ("row_id", pa.string()),
        ("kept_row_id", pa.string()),
        ("method", pa.string()),
        ("jaccard", pa.float64()),
        ("matched_row_id", pa.string()),
        ("matched_jaccard", pa.float64()),
        ("removed", pa.bool_()),
        ("reason", pa.string()),
    ]
)

CLUSTERS_DDL = (
    "cluster_id VARCHAR NOT NULL, row_id VARCHAR NOT NULL, kept_row_id VARCHAR NOT NULL, "
    "method VARCHAR NOT NULL, jaccard DOUBLE, matched_row_id VARCHAR, matched_jaccard DOUBLE, "
    "removed BOOLEAN NOT NULL, reason VARCHAR"
)
"""Columns of the warehouse's ``dedup_clusters`` table (:data:`CLUSTER_SCHEMA` in SQL)."""


def clusters_table(members: Iterable[ClusterMember]) -> pa.Table:
    """``dedup_clusters`` rows as an Arrow table."""
    return pa.Table.from_pylist([m.__dict__ for m in members], schema=CLUSTER_SCHEMA)


def cluster_members(
    rows: Sequence[Row],
    groups: Iterable[Sequence[int]],
    method: str,
    policy: KeepPolicy,
    similarity: Callable[[int, int], float] | None = None,
    links: dict[int, tuple[int, float]] | None = None,
    remove: bool = True,
) -> list[ClusterMember]:
    """The records of clusters given as groups of indices into ``rows``: one kept row per group
    (by ``policy``), the others removed (or only flagged with ``remove=False``).
    ``similarity(member, kept)`` is each member's verified similarity to its kept row (1.0 when
    omitted: exact copies); ``links`` maps a member to the neighbour that linked it and their
    similarity (the kept row itself when omitted)."""
    out: list[ClusterMember] = []
    for group in groups:
        members = sorted(group)
        kept = members[policy.choose([rows[i] for i in members], members)]
        kept_id = rows[kept]["row_id"]
        cluster_id = f"{method}:{kept_id}"
        for i in members:
            if i == kept:
                out.append(
                    ClusterMember(
                        cluster_id,
                        kept_id,
                        kept_id,
                        method,
                        1.0,
                        kept_id,
                        1.0,
                        False,
                        f"kept: best of {len(members)} by policy",
                    )
                )
                continue
            jac = similarity(i, kept) if similarity else 1.0
            match, match_j = links.get(i, (kept, jac)) if links else (kept, jac)
            reason = policy.reason(rows[kept], rows[i], kept, i)
            out.append(
                ClusterMember(
                    cluster_id, rows[i]["row_id"], kept_id, method, jac, rows[match]["row_id"], match_j, remove, reason
                )
            )
    return out


# ---------------------------------------------------------------------------------------------
# Provenance of absorbed copies.


def with_license_note(row: Row, members: Sequence[ClusterMember], rows_by_id: Mapping[str, Row]) -> Row:
    """The kept row with the licences of the rows it absorbed listed in ``extra.dedup_sources``
    (so a merged row keeps both provenances on the row itself, not only in dedup_clusters). ``members`` may
    be all cluster members or just those absorbed by this row."""
    absorbed = [rows_by_id[m.row_id] for m in members if m.removed and m.kept_row_id == row["row_id"]]
    if not absorbed:
        return row
    extra = dict(row.get("extra") or {})
    extra["dedup_sources"] = [
        {
            "row_id": r["row_id"],
            "source": r.get("source"),
            "license": r.get("license"),
            "source_uri": r.get("source_uri"),
        }
        for r in absorbed
    ]
    return {**row, "extra": extra}
