"""Deterministic train/eval splits and nested subsets for data-scaling runs.

Every decision comes from a seeded 64-bit hash (xxh3) of an id, never from input order or a
global random state, so the same rows and seed give the same result on any machine, in any
order, under any partitioning of the work. Rows that share an origin (lineage) or a near-duplicate
cluster form one split group (:func:`split_groups`), and :func:`split_leaks` re-checks a stored split.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

from curation.core.components import smallest_member_groups
from curation.core.hashing import stable_unit

Split = Literal["train", "eval"]


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
    stratum most of its rows belong to. Within a stratum, groups are taken in seeded-hash order
    into eval until the stratum's target (``eval_fraction`` × rows, rounded without bias) is reached;
    a group that would overshoot is skipped for a smaller one, so large clusters tend to stay in
    train. The result depends on the set of rows and the seed only; adding rows to a stratum can
    move a few of its groups (use :func:`nested_subsets` where per-row stability matters).
    """
    if not 0.0 <= eval_fraction <= 1.0:
        raise ValueError(f"eval_fraction must be within [0, 1], got {eval_fraction}")
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

    eval_groups: set[str] = set()
    for stratum, groups in by_stratum.items():
        groups.sort()
        total = sum(size for _, _, size in groups)
        target = _rounded_count(eval_fraction * total, seed, "\x1e".join(stratum))
        taken = 0
        for _, group, size in groups:
            if taken >= target:
                break
            if taken + size <= target:
                eval_groups.add(group)
                taken += size
    return {row_id: ("eval" if group in eval_groups else "train") for row_id, group in row_group.items()}


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
    fractions: Sequence[float] = (0.25, 0.5, 1.0),
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
        result: dict[str, float] = {}
        for row_id in ids:
            u = stable_unit(seed, "subset", row_id)
            result[row_id] = next(f for f in levels if u < f)
        return result

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


def subset(assignment: Mapping[str, float], fraction: float) -> set[str]:
    """The row_ids of the subset for ``fraction`` from a :func:`nested_subsets` result."""
    return {row_id for row_id, smallest in assignment.items() if smallest <= fraction}


# --------------------------------------------------------------------------- split groups


def split_groups(
    row_ids: Iterable[str], edges: Iterable[tuple[str, str]], clusters: Mapping[str, str]
) -> dict[str, str]:
    """Group id per row: rows connected through any lineage edge ``(child, parent)`` or sharing a
    near-duplicate cluster (``row_id -> cluster_id``) share a group, so a cleaned copy, a perturbation,
    a paraphrase or a second answer to the same instruction never lands in another split than its
    origin. Every parent of a multi-parent row is followed, not only the first.

    The group id is the smallest member key (``r:<row_id>`` or ``c:<cluster_id>``), so it does not
    depend on edge order; :func:`assign_splits` hashes it, so changing it would move rows between splits."""
    ids = list(row_ids)
    links = [(f"r:{child}", f"r:{parent}") for child, parent in edges]
    links += [(f"r:{row_id}", f"c:{cluster_id}") for row_id, cluster_id in clusters.items()]
    groups = smallest_member_groups((f"r:{row_id}" for row_id in ids), links)
    return {row_id: groups[f"r:{row_id}"] for row_id in ids}


def split_leaks(
    row_splits: Mapping[str, tuple[str, str]], edges: Iterable[tuple[str, str]], clusters: Mapping[str, str]
) -> list[dict[str, Any]]:
    """Ancestors and near-duplicate clusters reached from both splits (the check behind
    ``splits_disjoint_by_cluster``).

    ``row_splits`` maps a formatted row's id to ``(parent_id, split)``. Each row's ancestors are
    walked through every edge; an ancestor (or its cluster) seen from a train row and an eval row is
    a leak: the two rows share an origin. Written as a walk, not with :func:`split_groups`' connected components,
    so the check does not trust the code it checks."""
    parents: dict[str, list[str]] = defaultdict(list)
    for child, parent in edges:
        parents[child].append(parent)
    seen_from: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for row_id, (parent_id, split) in row_splits.items():
        stack, visited = [parent_id], set()
        while stack:
            node = stack.pop()
            if node in visited:
                continue
            visited.add(node)
            stack.extend(parents.get(node, ()))
        keys = {f"row {node}" for node in visited}
        keys |= {f"cluster {clusters[node]}" for node in visited if node in clusters}
        for key in keys:
            seen_from[key][split].append(row_id)
    leaks = []
    for key, by_split in sorted(seen_from.items()):
        if len(by_split) > 1:
            leaks.append({"shared": key, **{split: sorted(ids)[:5] for split, ids in sorted(by_split.items())}})
    return leaks
