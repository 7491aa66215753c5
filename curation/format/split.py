"""Deterministic train/eval splits and nested subsets for data-scaling runs.

Every decision comes from a seeded 64-bit hash (xxh3) of an id, never from input order or a
global random state, so the same rows and seed give the same result on any machine, in any
order, under any partitioning of the work. Rows that share an origin (lineage) or a near-duplicate
cluster form one split group. :func:`assign_splits` splits rows held in memory; :func:`plan_splits`
splits a warehouse table the same way, in DuckDB and one sorted pass; :func:`split_leaks` re-checks a
stored split in SQL.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import uuid
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from curation.core.components import component_labels
from curation.core.hashing import stable_unit, stable_unit_sql
from curation.core.provenance import LINEAGE_WALK_DEPTH
from curation.core.warehouse import count_rows, quote, read_batches, table_names

if TYPE_CHECKING:
    import duckdb

Split = Literal["train", "eval"]
SUBSET_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 1.0)
"""The nested subsets every formatted row is tagged with (the smallest one holding it)."""
SPLIT_TOLERANCE = 0.1
"""How far (a share of its target, rounded down) a stratum's eval rows may be from ``eval_fraction`` × rows
before the split overrides a group's own draw. Within it a row keeps its split when data is added, so eval
figures across data versions are comparable; a stratum's eval count is binomial around the target, so a
target of ~1,000 rows or more (tolerance ≈ 3 standard deviations) is practically always inside."""


def _stratum(row: Mapping[str, Any], stratify_by: Sequence[str]) -> tuple[str, ...]:
    return tuple("" if row.get(name) is None else str(row.get(name)) for name in stratify_by)


def _rounded_count(exact: float, seed: int | str, stratum: str) -> int:
    """``floor(exact + v)`` with a per-stratum hash ``v``: unbiased rounding over many small strata.

    Plain rounding would send every stratum of one or two rows to train at a 10% fraction, so the
    overall eval share would fall short of the target; this keeps the expected count exact.
    """
    return math.floor(exact + stable_unit(seed, "round", stratum))


def assign_splits(
    rows: Iterable[Mapping[str, Any]],
    eval_fraction: float,
    seed: int | str = 0,
    stratify_by: Sequence[str] = ("kind", "source"),
    group_key: str | Mapping[str, str] | None = None,
) -> dict[str, Split]:
    """Map each row_id to ``"train"`` or ``"eval"``; stratified, grouped and deterministic.

    ``rows`` are mappings with ``row_id`` and the ``stratify_by`` fields. ``group_key`` names a
    field holding a group id (e.g. a near-duplicate ``cluster_id``) or maps row_id → group id;
    rows without a group are their own group. A group is never split: it goes wholly to the
    stratum most of its rows belong to. Within a stratum, a group is in eval when its seeded draw is
    under ``eval_fraction``, as long as the stratum's eval rows stay within :data:`SPLIT_TOLERANCE` of
    its target (``eval_fraction`` × rows, rounded without bias); see :func:`eval_groups_in_order`.
    The result depends on the set of rows and the seed only, and a row keeps its split as data grows.
    """
    _check_eval_fraction(eval_fraction)
    row_group: dict[str, str] = {}
    group_strata: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for row in rows:
        row_id = row.get("row_id")
        if row_id is None:
            raise ValueError(f"a row has no row_id (keys: {sorted(row)}); every row needs one to be split")
        row_id = str(row_id)
        if row_id in row_group:
            raise ValueError(f"row_id {row_id!r} appears twice; split rows after deduplication of ids")
        if isinstance(group_key, str):
            group = row.get(group_key)
        elif group_key is not None:
            group = group_key.get(row_id)
        else:
            group = None
        group = row_id if group is None else f"g:{group}"
        row_group[row_id] = group
        group_strata[group][_stratum(row, stratify_by)] += 1

    by_stratum: dict[tuple[str, ...], list[tuple[float, str, int]]] = defaultdict(list)
    for group, strata in group_strata.items():
        # Majority stratum; ties go to the smallest so the choice does not depend on row order.
        best = max(strata.values())
        stratum = min(s for s, count in strata.items() if count == best)
        by_stratum[stratum].append((stable_unit(seed, "split", group), group, sum(strata.values())))
    targets = {
        stratum: stratum_target(stratum, sum(size for _, _, size in groups), eval_fraction, seed)
        for stratum, groups in by_stratum.items()
    }
    ordered = (
        (stratum, group, size, draw) for stratum, groups in by_stratum.items() for draw, group, size in sorted(groups)
    )
    eval_groups = set(eval_groups_in_order(ordered, targets, eval_fraction))
    return {row_id: ("eval" if group in eval_groups else "train") for row_id, group in row_group.items()}


def _check_eval_fraction(eval_fraction: float) -> None:
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be within [0, 1], got {eval_fraction}")


def stratum_target(stratum: tuple[str, ...], rows: int, eval_fraction: float, seed: int | str) -> int:
    """Eval rows a stratum of ``rows`` rows should get: ``eval_fraction`` × rows, rounded without bias."""
    return _rounded_count(eval_fraction * rows, seed, "\x1e".join(stratum))


def _eval_band(target: int) -> tuple[int, int]:
    """The fewest and most eval rows a stratum of eval ``target`` may hold: target ± :data:`SPLIT_TOLERANCE` of
    it, rounded down (a target under 10 rows has no tolerance)."""
    slack = math.floor(target * SPLIT_TOLERANCE)
    return target - slack, target + slack


def eval_groups_in_order(
    groups: Iterable[tuple[tuple[str, ...], str, int, float]],
    targets: Mapping[tuple[str, ...], int],
    eval_fraction: float,
) -> Iterator[str]:
    """The eval groups, from ``(stratum, group, size, draw)`` in seeded-draw order within each stratum
    (strata may interleave). Holds one count per stratum, so a sorted stream of any length fits.

    A group goes to eval when its draw is under ``eval_fraction`` — a decision about the group alone, so
    rows added to a stratum never move its earlier groups — unless that would leave the stratum's eval
    rows outside its target ± :data:`SPLIT_TOLERANCE`: below the band, the next groups in draw order are
    taken too; a group that would carry the count above it is skipped (so a large cluster tends to stay
    in train). Large strata land inside the band by the law of large numbers and keep every row's split
    as data grows; small ones (a target under 10 rows has no tolerance) get their share exactly.
    """
    taken: Counter[tuple[str, ...]] = Counter()
    for stratum, group, size, draw in groups:
        target = targets[stratum]
        low, high = _eval_band(target)
        if taken[stratum] + size <= high and (draw < eval_fraction or taken[stratum] < low):
            taken[stratum] += size
            yield group


def split_summary(
    rows: Iterable[Mapping[str, Any]], splits: Mapping[str, Split], stratify_by: Sequence[str] = ("kind", "source")
) -> list[dict[str, Any]]:
    """Rows and eval share per stratum (for asset metadata), sorted by stratum."""
    counts: dict[tuple[str, ...], Counter[str]] = defaultdict(Counter)
    for row in rows:
        counts[_stratum(row, stratify_by)][splits[str(row["row_id"])]] += 1
    summary = []
    for stratum, c in sorted(counts.items()):
        n = c["train"] + c["eval"]
        summary.append(
            {**dict(zip(stratify_by, stratum, strict=True)), "rows": n, "eval": c["eval"], "eval_share": c["eval"] / n}
        )
    return summary


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(f) for f in fractions)
    if not values or any(not 0.0 < f <= 1.0 for f in values) or list(values) != sorted(set(values)):
        raise ValueError(f"fractions must be strictly increasing values in (0, 1], got {list(fractions)}")
    # Every row is in the full dataset; adding 1.0 keeps "smallest subset containing it" defined.
    return values if values[-1] == 1.0 else (*values, 1.0)


def nested_subsets(
    row_ids: Iterable[str],
    fractions: Sequence[float] = SUBSET_FRACTIONS,
    seed: int | str = 0,
    strata: Mapping[str, Hashable] | None = None,
) -> dict[str, float]:
    """Map each row_id to the smallest fraction whose subset contains it.

    The subset for ``f`` is every row mapped to a value <= ``f``, so subsets are nested by
    construction. Without ``strata`` a row's value depends only on its id and the seed
    (``hash < f``): stable when rows are added or removed, sizes ≈ ``f`` × rows. With ``strata``
    (row_id → stratum) each stratum contributes its own share exactly (rows ranked by hash,
    counts rounded without bias), at the cost of that per-row stability.
    """
    levels = _check_fractions(fractions)
    ids = [str(r) for r in row_ids]
    if strata is None:
        return {row_id: _smallest_level(row_id, levels, seed) for row_id in ids}

    members: dict[str, list[str]] = defaultdict(list)
    for row_id in ids:
        if row_id not in strata:
            raise KeyError(f"row_id {row_id!r} has no stratum in `strata`; give every row one")
        members[repr(strata[row_id])].append(row_id)
    result = {}
    for stratum, stratum_ids in members.items():
        ranked = sorted(stratum_ids, key=lambda r: (stable_unit(seed, "subset", r), r))
        n = len(ranked)
        # The same rounding offset for every level keeps the cut-offs monotone in f.
        offset = stable_unit(seed, "round", stratum)
        cutoffs = [(f, n if f == 1.0 else math.floor(f * n + offset)) for f in levels]
        for rank, row_id in enumerate(ranked):
            result[row_id] = next(f for f, cut in cutoffs if rank < cut)
    return result


def smallest_subset(row_id: str, seed: int | str = 0, fractions: Sequence[float] = SUBSET_FRACTIONS) -> float:
    """One row's value in :func:`nested_subsets` without strata: it depends on the id and seed only, so
    rows can be assigned one at a time, in any order or process."""
    return _smallest_level(row_id, _check_fractions(fractions), seed)


def _smallest_level(row_id: str, levels: tuple[float, ...], seed: int | str) -> float:
    u = stable_unit(seed, "subset", row_id)
    return next(f for f in levels if u < f)


def subset(assignment: Mapping[str, float], fraction: float) -> set[str]:
    """The row_ids of the subset for ``fraction`` from a :func:`nested_subsets` result."""
    return {row_id for row_id, smallest in assignment.items() if smallest <= fraction}


# --------------------------------------------------------------------------- a warehouse table


def _links_sql(connection: duckdb.DuckDBPyConnection) -> str:
    """What ties rows together across the split, as ``(a, b)`` keys ``r:<row_id>`` / ``c:<cluster_id>``:
    lineage edges of every asset before ``formatted``, every parent of a multi-parent row included, and
    near-duplicate clusters (none before ``deduped`` has run)."""
    sql = "SELECT 'r:' || child_id AS a, 'r:' || parent_id AS b FROM lineage WHERE asset <> 'formatted'"
    if "dedup_clusters" in table_names(connection):
        sql += " UNION ALL SELECT 'r:' || row_id, 'c:' || cluster_id FROM dedup_clusters"
    return sql


@contextlib.contextmanager
def _scratch(connection: duckdb.DuckDBPyConnection, *purposes: str) -> Iterator[list[str]]:
    """Names for work tables, dropped at the end. Plain tables, not temporary ones: a cursor (what
    :func:`~curation.core.warehouse.read_batches` streams from) does not see its connection's temporary
    tables. The ``_stage_`` prefix marks them as not data if a crash leaves them behind."""
    token = uuid.uuid4().hex[:8]
    names = [f"_stage_split_{purpose}_{token}" for purpose in purposes]
    try:
        yield names
    finally:
        for name in names:
            connection.execute(f"DROP TABLE IF EXISTS {quote(name)}")


def split_groups(connection: duckdb.DuckDBPyConnection, rows_table: str, into: str) -> None:
    """Create table ``into`` ``(row_id, grp)``: each row of ``rows_table`` and its split group. Rows
    connected through any lineage edge or sharing a near-duplicate cluster share a group, so a cleaned
    copy, a perturbation, a paraphrase or a second answer to the same instruction never lands in another
    split than its origin.

    The group id is the smallest member key (``r:<row_id>`` or ``c:<cluster_id>``), so it does not depend
    on edge order; :func:`plan_splits` hashes it, so changing it would move rows between splits. Keys are
    numbered in DuckDB in key order, so the components (:func:`~curation.core.components.component_labels`,
    over integer arrays) name each group by its smallest number, which is its smallest key."""
    rows = quote(rows_table)
    with _scratch(connection, "links", "keys") as (links, keys):
        connection.execute(f"CREATE TABLE {links} AS {_links_sql(connection)}")
        connection.execute(
            f"CREATE TABLE {keys} AS SELECT key, row_number() OVER (ORDER BY key) - 1 AS node FROM "
            f"(SELECT a AS key FROM {links} UNION SELECT b FROM {links} UNION SELECT 'r:' || row_id FROM {rows})"
        )
        pairs = connection.execute(
            f"SELECT ka.node AS a, kb.node AS b FROM {links} l "
            f"JOIN {keys} ka ON ka.key = l.a JOIN {keys} kb ON kb.key = l.b"
        ).fetchnumpy()
        labels = component_labels(count_rows(connection, keys), np.column_stack([pairs["a"], pairs["b"]]))
        connection.register("_split_labels", pa.table({"node": np.arange(len(labels)), "label": labels}))
        try:
            connection.execute(
                f"CREATE TABLE {quote(into)} AS SELECT m.row_id, g.key AS grp FROM {rows} m "
                f"JOIN {keys} k ON k.key = 'r:' || m.row_id JOIN _split_labels l ON l.node = k.node "
                f"JOIN {keys} g ON g.node = l.label"
            )
        finally:
            connection.unregister("_split_labels")


def plan_splits(
    connection: duckdb.DuckDBPyConnection, rows_table: str, into: str, eval_fraction: float, seed: int | str = 0
) -> None:
    """Create table ``into`` ``(row_id, split)``: every row of ``rows_table`` (canonical columns) split as
    :func:`assign_splits` would with groups from :func:`split_groups` and strata ``(kind, source)``,
    without holding the table in Python: groups, strata and draws are SQL. A stratum whose draws land
    inside its tolerance (large ones always do) takes its groups under ``eval_fraction`` in SQL; only
    the others are walked in draw order by :func:`eval_groups_in_order`, which decides those exactly as it
    would decide them all (an in-tolerance stratum's walk takes exactly the groups under the fraction). Its
    rows are in the order of ``rows_table``'s, so ``POSITIONAL JOIN`` lines the two up without sorting the
    wide table."""
    _check_eval_fraction(eval_fraction)
    with _scratch(connection, "groups", "strata", "walked", "eval") as (groups, strata, walked_table, chosen):
        split_groups(connection, rows_table, groups)
        with stable_unit_sql(connection, seed) as unit:
            # A group's stratum is the one most of its rows belong to, ties to the smallest (as in assign_splits).
            connection.execute(
                f"""CREATE TABLE {strata} AS
                WITH per_stratum AS (
                    SELECT g.grp, coalesce(m.kind, '') AS kind, coalesce(m.source, '') AS source, count(*) AS n
                    FROM {quote(rows_table)} m JOIN {groups} g USING (row_id) GROUP BY ALL),
                ranked AS (
                    SELECT *, sum(n) OVER (PARTITION BY grp) AS size,
                           row_number() OVER (PARTITION BY grp ORDER BY n DESC, kind, source) AS rank
                    FROM per_stratum)
                SELECT kind, source, grp, size, {unit}('split', 'g:' || grp) AS draw FROM ranked WHERE rank = 1"""
            )
        targets: dict[tuple[str, ...], int] = {}
        walked: list[tuple[str, str]] = []
        for kind, source, total, natural in connection.execute(
            f"SELECT kind, source, sum(size), coalesce(sum(size) FILTER (draw < ?), 0) FROM {strata} GROUP BY ALL",
            [eval_fraction],
        ).fetchall():
            target = targets[kind, source] = stratum_target((kind, source), int(total), eval_fraction, seed)
            low, high = _eval_band(target)
            if not low <= natural <= high:
                walked.append((kind, source))
        connection.execute(f"CREATE TABLE {walked_table} (kind VARCHAR, source VARCHAR)")
        if walked:
            connection.executemany(f"INSERT INTO {walked_table} VALUES (?, ?)", walked)
        walked_sql = f"(kind, source) IN (SELECT (kind, source) FROM {walked_table})"
        connection.execute(
            f"CREATE TABLE {chosen} AS SELECT grp FROM {strata} WHERE draw < ? AND NOT {walked_sql}", [eval_fraction]
        )
        ordered = (
            ((kind, source), group, size, draw)
            for batch in read_batches(
                connection,
                f"SELECT kind, source, grp, size, draw FROM {strata} WHERE {walked_sql} "
                "ORDER BY kind, source, draw, grp",
            )
            for kind, source, group, size, draw in zip(*(c.to_pylist() for c in batch.columns), strict=True)
        )
        taken = eval_groups_in_order(ordered, targets, eval_fraction)
        for part in iter(lambda: list(itertools.islice(taken, 10_000)), []):
            connection.register("_split_chosen", pa.table({"grp": pa.array(part, pa.string())}))
            try:
                connection.execute(f"INSERT INTO {chosen} SELECT grp FROM _split_chosen")
            finally:
                connection.unregister("_split_chosen")
        connection.execute(
            f"CREATE TABLE {quote(into)} AS SELECT m.row_id, "
            f"CASE WHEN c.grp IS NULL THEN 'train' ELSE 'eval' END AS split "
            f"FROM {quote(rows_table)} m JOIN {groups} g USING (row_id) LEFT JOIN {chosen} c USING (grp) "
            "ORDER BY m.rowid"
        )


def split_leaks(
    connection: duckdb.DuckDBPyConnection, table: str = "formatted", sample: int = 10
) -> tuple[int, list[dict[str, Any]]]:
    """Ancestors and near-duplicate clusters reached from both splits of a stored ``table`` (the check
    behind ``splits_disjoint_by_cluster``): how many, and the first ``sample`` with up to five rows per split.

    Each row's ancestors are walked from its ``parent_id`` through every lineage edge (a recursive
    query); an ancestor (or its cluster) seen from a train row and an eval row is a leak: the two rows
    share an origin. Written as a walk, not with :func:`split_groups`' components, so the check does not
    trust the code it checks.

    The walk is a UNION ALL deduplicated afterwards (a recursive UNION keeps every row it has seen in a hash
    table that does not spill), and only the ``sample`` shown get their rows listed. On the 1M-row benchmark
    the first form ran out of the 512 MB limit; this one runs within 96 MB there."""
    clusters = (
        "UNION ALL SELECT 'cluster ' || c.cluster_id, a.row_id, a.split FROM ancestors a "
        "JOIN dedup_clusters c ON c.row_id = a.node"
        if "dedup_clusters" in table_names(connection)
        else ""
    )
    rows = connection.execute(
        f"""WITH RECURSIVE ancestors(row_id, split, node, depth) AS (
            SELECT row_id, split, parent_id, 0 FROM {quote(table)}
            UNION ALL
            SELECT a.row_id, a.split, l.parent_id, a.depth + 1 FROM ancestors a
            JOIN lineage l ON l.child_id = a.node AND l.asset <> 'formatted' WHERE a.depth < {LINEAGE_WALK_DEPTH}),
        reached AS (SELECT DISTINCT * FROM (SELECT 'row ' || node AS shared, row_id, split FROM ancestors {clusters})),
        leaking AS (SELECT shared FROM reached GROUP BY shared HAVING min(split) <> max(split)),
        shown AS (SELECT shared FROM leaking ORDER BY shared LIMIT ?)
        SELECT (SELECT count(*) FROM leaking), shared,
               (list(row_id ORDER BY row_id) FILTER (split = 'eval'))[:5],
               (list(row_id ORDER BY row_id) FILTER (split = 'train'))[:5]
        FROM shown JOIN reached USING (shared) GROUP BY shared ORDER BY shared""",
        [sample],
    ).fetchall()
    return (int(rows[0][0]) if rows else 0), [
        {"shared": shared, "eval": eval_ids, "train": train_ids} for _, shared, eval_ids, train_ids in rows
    ]
