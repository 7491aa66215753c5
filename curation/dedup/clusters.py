"""Duplicate clusters: which row of a cluster is kept (:class:`KeepPolicy`, a documented total order,
so the same input always gives the same clusters; in Python for lists of rows, in SQL over the stage's
per-row columns), the record of every member (:class:`ClusterMember`, one row of the ``dedup_clusters``
table), and the licence note a kept row carries for the copies it absorbed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import duckdb

from curation.core.licenses import permissiveness_rank
from curation.core.schema import Row
from curation.core.texts import response_text

# ---------------------------------------------------------------------------------------------
# Which row of a cluster is kept.

ORIGIN_RANK = {"human": 0, "augmented": 1, "synthetic": 2}
"""Criterion 1 of :class:`KeepPolicy` by ``origin`` (smaller is better; unknown origins rank 3)."""


def default_quality(row: Row) -> float:
    """A non-empty response first, then a numeric ``extra.quality`` or reward ``score`` if present."""
    return quality_of(response_text(row), row.get("kind"), row.get("extra"), row.get("score"))


def quality_of(response: str, kind: str | None, extra: Any, score: Any) -> float:
    """:func:`default_quality` from the parts of a row it reads (the row's response text already at hand)."""
    has_response = 1.0 if response.strip() or kind in ("text", "prompt") else 0.0
    signal = extra.get("quality") if isinstance(extra, dict) else None
    if not isinstance(signal, int | float):
        signal = score
    signal = float(signal) if isinstance(signal, int | float) and math.isfinite(signal) else 0.0
    return has_response * 1e6 + signal


@dataclass(frozen=True)
class KeepPolicy:
    """The order that picks a cluster's kept row, best first:

    1. human before augmented before synthetic (``origin``; unknown last);
    2. more permissive licence (``license_rank``, default :func:`curation.core.licenses.permissiveness_rank`);
    3. higher quality (``quality``, default :func:`default_quality`);
    4. earliest in the input: by source name, file and record number
       (:data:`curation.core.warehouse.SOURCE_ORDER`), then smallest ``row_id``.

    When a row was ingested is not a criterion: the same data keeps the same row whatever order its
    sources were ingested in, and in however many runs.
    """

    quality: Callable[[Row], float] = default_quality
    license_rank: Callable[[str | None], int] = permissiveness_rank

    CRITERIA: ClassVar[tuple[str, str, str]] = ("origin_rank", "license_order", "quality_order")
    """Names of criteria 1-3 as per-row columns (smaller is better), in :meth:`criteria` order."""

    ORDER_SQL: ClassVar[str] = "origin_rank, license_order, quality_order, position"
    """The whole order in SQL over those columns and the row's input ``position`` (its rank in
    :data:`~curation.core.warehouse.SOURCE_ORDER`; positions are unique, so ``row_id`` is never reached)."""

    def criteria(self, row: Row) -> tuple[float, float, float]:
        """Criteria 1-3 of a row, smaller is better (the stage stores them as :attr:`CRITERIA`)."""
        return (
            float(ORIGIN_RANK.get(row.get("origin") or "", 3)),
            float(-self.license_rank(row.get("license"))),
            -self.quality(row),
        )

    def sort_key(self, row: Row, position: int) -> tuple[Any, ...]:
        return (*self.criteria(row), position, row.get("row_id") or "")

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
        return "earlier in the input (all preference criteria tied)"

    @staticmethod
    def reason_sql(kept: str, removed: str) -> str:
        """:meth:`reason` in SQL, for the per-row columns of the kept and removed rows (table aliases)."""
        k, r = kept, removed
        return (
            f"CASE WHEN {k}.origin_rank <> {r}.origin_rank THEN 'origin ' || coalesce({k}.origin, 'None') "
            f"|| ' preferred to ' || coalesce({r}.origin, 'None') "
            f"WHEN {k}.license_order <> {r}.license_order THEN 'licence ' || coalesce({k}.license, 'None') "
            f"|| ' more permissive than ' || coalesce({r}.license, 'None') "
            "|| '; the removed row''s source and licence stay on record in dedup_clusters' "
            f"WHEN {k}.quality_order <> {r}.quality_order "
            "THEN 'higher quality signal (non-empty response, quality/score)' "
            "ELSE 'earlier in the input (all preference criteria tied)' END"
        )


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


CLUSTERS_DDL = (
    "cluster_id VARCHAR NOT NULL, row_id VARCHAR NOT NULL, kept_row_id VARCHAR NOT NULL, "
    "method VARCHAR NOT NULL, jaccard DOUBLE, matched_row_id VARCHAR, matched_jaccard DOUBLE, "
    "removed BOOLEAN NOT NULL, reason VARCHAR"
)
"""Columns of the warehouse's ``dedup_clusters`` table (one :class:`ClusterMember` per row)."""


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
# The same records in SQL, over the stage's per-row facts (curation.dedup.facts.FACT_SCHEMA) and its
# table of members by input position.

MEMBERS_DDL = (
    "step INTEGER NOT NULL, method VARCHAR NOT NULL, cluster_first BIGINT NOT NULL, position BIGINT NOT NULL, "
    "kept_position BIGINT NOT NULL, final_kept BIGINT NOT NULL, jaccard DOUBLE NOT NULL, "
    "matched_position BIGINT NOT NULL, matched_jaccard DOUBLE NOT NULL, removed BOOLEAN NOT NULL, "
    "reason VARCHAR NOT NULL"
)
"""Cluster members while the stage runs, by input position: ``kept_position`` is the row its step kept
(it names the cluster), ``final_kept`` the row that finally holds the content (:func:`resolve_kept_rows`),
``cluster_first`` the cluster's first row and ``step`` the step's number (together the order in which a
kept row lists the copies it absorbed)."""

_FACT_COLUMNS = ", ".join(("origin", "license", *KeepPolicy.CRITERIA))


def kept_sql(groups: str, facts: str) -> str:
    """The rows of ``groups`` (a query with ``position`` and ``cluster`` columns, and any others) with the
    policy's columns from ``facts``, the position of the row each cluster keeps (:attr:`KeepPolicy.ORDER_SQL`),
    the cluster's first position and its size."""
    return (
        f"SELECT g.*, {_FACT_COLUMNS}, first_value(position) OVER w AS kept_position, "
        "min(position) OVER w AS cluster_first, count(*) OVER w AS size "
        f"FROM ({groups}) AS g JOIN {facts} USING (position) "
        f"WINDOW w AS (PARTITION BY cluster ORDER BY {KeepPolicy.ORDER_SQL} "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)"
    )


def insert_members(
    connection: duckdb.DuckDBPyConnection,
    members: str,
    facts: str,
    groups: str,
    step: int,
    method: str,
    remove: bool = True,
    linked: bool = False,
) -> None:
    """Record the clusters of ``groups`` (``position, cluster``) as step ``step``: one kept row per cluster
    (by the policy), the others removed (or only flagged with ``remove=False``). With ``linked`` the groups
    also give each member's verified ``jaccard`` to its kept row and the neighbour that linked it
    (``matched_position, matched_jaccard``); otherwise members are exact copies of the kept row."""
    jaccard = "c.jaccard" if linked else "1.0"
    matched = "c.matched_position" if linked else "c.kept_position"
    matched_jaccard = "c.matched_jaccard" if linked else "1.0"
    kept = "c.position = c.kept_position"
    connection.execute(
        f"INSERT INTO {members} SELECT ?, ?, c.cluster_first, c.position, c.kept_position, c.kept_position, "
        f"CASE WHEN {kept} THEN 1.0 ELSE {jaccard} END, CASE WHEN {kept} THEN c.position ELSE {matched} END, "
        f"CASE WHEN {kept} THEN 1.0 ELSE {matched_jaccard} END, NOT ({kept}) AND ?, "
        f"CASE WHEN {kept} THEN 'kept: best of ' || CAST(c.size AS VARCHAR) || ' by policy' "
        f"ELSE {KeepPolicy.reason_sql('k', 'c')} END "
        f"FROM ({kept_sql(groups, facts)}) AS c JOIN {facts} AS k ON k.position = c.kept_position",
        [step, method, remove],
    )


def resolve_kept_rows(connection: duckdb.DuckDBPyConnection, members: str) -> None:
    """One resolution of every step's clusters into one clustering, in SQL over the whole members table.

    Each step runs on the rows no earlier step removed, so the removals form a forest: a removed row has
    one edge, to the row its step kept, and only a row still kept ends a path. ``final_kept`` of every
    member becomes the end of its path (the row that finally holds its content: the root of its tree,
    what a union-find over all the steps' edges would name), and the kept entry of a row that a later
    step removed goes (its removal is listed by that step). A member that would still name a removed
    row is an error here, not a dangling ``kept_row_id`` for the blocking check to find."""
    connection.execute(
        f"""
        UPDATE {members} AS m SET final_kept = r.target FROM (
            WITH RECURSIVE removal AS (SELECT position, kept_position FROM {members} WHERE removed),
            path(position, step, target, hops) AS (
                SELECT position, step, kept_position, 0 FROM {members}
                UNION ALL
                SELECT p.position, p.step, r.kept_position, p.hops + 1
                FROM path AS p JOIN removal AS r ON r.position = p.target WHERE p.hops < 64
            )
            SELECT position, step, target FROM path WHERE target NOT IN (SELECT position FROM removal)
        ) AS r
        WHERE r.position = m.position AND r.step = m.step
        """
    )
    connection.execute(
        f"DELETE FROM {members} WHERE NOT removed AND position = kept_position "
        f"AND position IN (SELECT position FROM {members} WHERE removed)"
    )
    (dangling,) = connection.execute(
        f"SELECT count(*) FROM {members} WHERE final_kept IN (SELECT position FROM {members} WHERE removed)"
    ).fetchone() or (0,)
    if dangling:
        raise RuntimeError(f"dedup: {dangling} cluster members still name a removed row after resolution")


def clusters_sql(members: str, facts: str) -> str:
    """The ``dedup_clusters`` rows (:data:`CLUSTERS_DDL`) of the stage's members."""
    return (
        "SELECT m.method || ':' || k.row_id AS cluster_id, f.row_id, t.row_id AS kept_row_id, m.method, m.jaccard, "
        "x.row_id AS matched_row_id, m.matched_jaccard, m.removed, m.reason "
        f"FROM {members} AS m JOIN {facts} AS f ON f.position = m.position "
        f"JOIN {facts} AS k ON k.position = m.kept_position JOIN {facts} AS t ON t.position = m.final_kept "
        f"JOIN {facts} AS x ON x.position = m.matched_position"
    )


def absorbed_sql(members: str, facts: str, source: str) -> str:
    """``(position, sources)`` of each row that absorbed removed copies: their ``row_id, source, license,
    source_uri`` from ``source`` (the input table), in the order of the steps, clusters and rows that
    removed them (what :func:`with_license_note` writes)."""
    return (
        "SELECT m.final_kept AS position, list({'row_id': f.row_id, 'source': r.source, 'license': r.license, "
        "'source_uri': r.source_uri} ORDER BY m.step, m.cluster_first, m.position) AS sources "
        f"FROM {members} AS m JOIN {facts} AS f ON f.position = m.position JOIN {source} AS r ON r.row_id = f.row_id "
        "WHERE m.removed GROUP BY m.final_kept"
    )


# ---------------------------------------------------------------------------------------------
# Provenance of absorbed copies.


def with_license_note(row: Row, absorbed: Sequence[Mapping[str, Any]]) -> Row:
    """The kept row with the copies it absorbed (each ``{row_id, source, license, source_uri}``, in
    cluster order) listed in ``extra.dedup_sources``, so a merged row keeps both provenances on the
    row itself, not only in dedup_clusters."""
    if not absorbed:
        return row
    extra = dict(row.get("extra") or {})
    extra["dedup_sources"] = [
        {"row_id": a["row_id"], "source": a["source"], "license": a["license"], "source_uri": a["source_uri"]}
        for a in absorbed
    ]
    return {**row, "extra": extra}
