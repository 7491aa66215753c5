"""Deterministic, stratified, grouped train/eval splits and nested subsets."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Any

import pytest

from curation.core.hashing import stable_unit
from curation.format.split import SPLIT_TOLERANCE, assign_splits, nested_subsets, split_summary, subset


def _rows(seed: int = 1) -> list[dict[str, Any]]:
    """Three strata of different sizes; rows come in near-duplicate clusters of 1-4 rows."""
    rng = random.Random(seed)
    rows = []
    for kind, source, count in (("sft", "alpaca", 1200), ("chat", "oasst", 400), ("preference", "hh", 90)):
        made = 0
        while made < count:
            size = min(rng.choice([1, 1, 1, 2, 3, 4]), count - made)
            cluster = f"{source}-c{made}"
            for k in range(size):
                rows.append(
                    {
                        "row_id": f"{source}-{made + k}",
                        "kind": kind,
                        "source": source,
                        "cluster_id": cluster if size > 1 else None,
                    }
                )
            made += size
    return rows


def test_same_rows_in_any_order_give_the_same_split() -> None:
    rows = _rows()
    first = assign_splits(rows, 0.1, seed=7, group_key="cluster_id")
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    assert assign_splits(shuffled, 0.1, seed=7, group_key="cluster_id") == first
    assert set(first) == {r["row_id"] for r in rows}
    # Another seed picks other rows.
    other = assign_splits(rows, 0.1, seed=8, group_key="cluster_id")
    assert other != first


def test_clusters_never_straddle_the_split() -> None:
    rows = _rows()
    splits = assign_splits(rows, 0.2, seed=0, group_key="cluster_id")
    by_cluster: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        if row["cluster_id"]:
            by_cluster[row["cluster_id"]].add(splits[row["row_id"]])
    assert by_cluster and all(len(sides) == 1 for sides in by_cluster.values())
    # Clusters do land in eval too, not only in train.
    assert any(sides == {"eval"} for sides in by_cluster.values())


def test_each_stratum_gets_its_share() -> None:
    rows = _rows()
    for seed in range(10):
        splits = assign_splits(rows, 0.1, seed=seed, group_key="cluster_id")
        for entry in split_summary(rows, splits):
            # The target is eval_fraction x rows rounded to a neighbouring integer; the eval rows stay
            # within SPLIT_TOLERANCE of it (none for the 9-row target of the 90-row stratum).
            target = 0.1 * entry["rows"]
            assert abs(entry["eval"] - target) < 1 + math.floor(math.ceil(target) * SPLIT_TOLERANCE), entry
    assert [(e["kind"], e["source"], e["rows"]) for e in split_summary(rows, splits)] == [
        ("chat", "oasst", 400),
        ("preference", "hh", 90),
        ("sft", "alpaca", 1200),
    ]


def test_rows_keep_their_split_as_a_stratum_grows() -> None:
    """Eval rows of one data version must not turn up in a later version's train split (a model trained
    on it would have seen them, and eval figures across versions would not compare), nor the reverse."""
    rows = [
        {"row_id": f"r{k}", "kind": "sft", "source": "alpaca", "cluster_id": f"c{k // 3}" if k % 7 == 0 else None}
        for k in range(20_000)
    ]
    before = assign_splits(rows, 0.1, seed=0, group_key="cluster_id")
    for grown in (20_200, 21_000, 24_000):
        more = [
            {"row_id": f"r{k}", "kind": "sft", "source": "alpaca", "cluster_id": None} for k in range(20_000, grown)
        ]
        after = assign_splits(rows + more, 0.1, seed=0, group_key="cluster_id")
        assert {row_id: after[row_id] for row_id in before} == before
        assert abs(Counter(after.values())["eval"] - 0.1 * grown) <= 0.1 * 0.1 * grown
        # New rows get their share of eval too.
        assert 0.05 < Counter(after[r["row_id"]] for r in more)["eval"] / len(more) < 0.2


def test_a_stratum_out_of_tolerance_is_brought_back() -> None:
    # Seeds where the 30-row stratum's draws under 0.5 hold far more or far fewer rows than 15: the split
    # then takes groups over or under their draw to stay within 15 ± 1.
    rows = [{"row_id": f"r{k}", "kind": "sft", "source": "s"} for k in range(30)]
    natural = {seed: sum(stable_unit(seed, "split", r["row_id"]) < 0.5 for r in rows) for seed in range(200)}
    far = [seed for seed, count in natural.items() if abs(count - 15) > 3]
    assert any(natural[s] > 18 for s in far) and any(natural[s] < 12 for s in far)
    for seed in far:
        assert Counter(assign_splits(rows, 0.5, seed=seed).values())["eval"] in (14, 15, 16)


def test_many_tiny_strata_keep_the_overall_fraction() -> None:
    # 300 sources of 2 rows: rounding each stratum's 0.2 rows to 0 would leave eval empty.
    rows = [{"row_id": f"s{s}-{k}", "kind": "sft", "source": f"s{s}"} for s in range(300) for k in range(2)]
    splits = assign_splits(rows, 0.1, seed=0)
    share = Counter(splits.values())["eval"] / len(rows)
    assert 0.06 < share < 0.14


def test_a_group_across_strata_follows_its_majority() -> None:
    rows = [{"row_id": f"a{k}", "kind": "sft", "source": "a"} for k in range(50)]
    rows += [{"row_id": f"b{k}", "kind": "sft", "source": "b"} for k in range(50)]
    # Group "x": two rows of source a, one of source b (a paraphrase that crossed sources).
    groups = {"a0": "x", "a1": "x", "b0": "x"}
    seen_in_eval = 0
    for seed in range(20):
        splits = assign_splits(rows, 0.3, seed=seed, group_key=groups)
        assert len({splits["a0"], splits["a1"], splits["b0"]}) == 1
        in_eval = splits["a0"] == "eval"
        seen_in_eval += in_eval
        summary = {e["source"]: e["eval"] for e in split_summary(rows, splits)}
        # Source a is the group's stratum, so stratum b is its 49 other rows: 0.3 x 49 = 14.7 -> a target
        # of 14 or 15 eval rows, ± 1 (SPLIT_TOLERANCE), plus b0 when the group is in eval.
        assert 13 <= summary["b"] - in_eval <= 16
    assert 0 < seen_in_eval < 20


def test_fraction_edges_and_errors() -> None:
    rows = _rows()[:100]
    assert set(assign_splits(rows, 0.0).values()) == {"train"}
    assert set(assign_splits(rows, 1.0).values()) == {"eval"}
    with pytest.raises(ValueError, match="eval_fraction"):
        assign_splits(rows, 1.5)
    with pytest.raises(ValueError, match="row_id"):
        assign_splits([{"kind": "sft"}], 0.1)
    with pytest.raises(ValueError, match="appears twice"):
        assign_splits([rows[0], rows[0]], 0.1)


def test_stable_unit_is_fixed_and_uniform() -> None:
    assert stable_unit(0, "split", "abc") == stable_unit(0, "split", "abc")
    assert stable_unit(0, "split", "abc") != stable_unit(0, "subset", "abc")
    values = [stable_unit(3, "t", str(k)) for k in range(20000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert abs(sum(v < 0.25 for v in values) / len(values) - 0.25) < 0.02


# ---- nested subsets ----------------------------------------------------------------------


def test_subsets_are_nested_and_sized() -> None:
    ids = [f"r{k}" for k in range(20000)]
    levels = nested_subsets(ids, (0.25, 0.5, 1.0), seed=1)
    quarter, half, full = subset(levels, 0.25), subset(levels, 0.5), subset(levels, 1.0)
    assert quarter < half < full == set(ids)
    assert abs(len(quarter) / len(ids) - 0.25) < 0.02
    assert abs(len(half) / len(ids) - 0.5) < 0.02


def test_subsets_are_stable_when_rows_are_added() -> None:
    old = [f"r{k}" for k in range(1000)]
    new = old + [f"new{k}" for k in range(500)]
    before = nested_subsets(old, seed=5)
    after = nested_subsets(list(reversed(new)), seed=5)
    assert all(after[row_id] == level for row_id, level in before.items())
    assert nested_subsets(old, seed=6) != before


def test_full_set_is_implied_and_fractions_validated() -> None:
    levels = nested_subsets([f"r{k}" for k in range(100)], (0.1, 0.3), seed=0)
    assert set(levels.values()) <= {0.1, 0.3, 1.0} and 1.0 in levels.values()
    for bad in ((0.5, 0.25), (0.0, 1.0), (0.5, 0.5), (), (1.5,)):
        with pytest.raises(ValueError, match="fractions"):
            nested_subsets(["a"], bad)


def test_stratified_subsets_take_each_stratum_share() -> None:
    ids = [f"r{k}" for k in range(1000)]
    strata = {row_id: ("code" if k < 100 else "chat") for k, row_id in enumerate(ids)}
    levels = nested_subsets(ids, (0.1, 0.5, 1.0), seed=2, strata=strata)
    for fraction in (0.1, 0.5):
        chosen = subset(levels, fraction)
        per_stratum = Counter(strata[r] for r in chosen)
        assert abs(per_stratum["code"] - 100 * fraction) < 1
        assert abs(per_stratum["chat"] - 900 * fraction) < 1
    assert subset(levels, 0.1) < subset(levels, 0.5) < subset(levels, 1.0)
    shuffled = ids[:]
    random.Random(0).shuffle(shuffled)
    assert nested_subsets(shuffled, (0.1, 0.5, 1.0), seed=2, strata=strata) == levels
    with pytest.raises(KeyError, match="no stratum"):
        nested_subsets(["unknown"], strata=strata)
