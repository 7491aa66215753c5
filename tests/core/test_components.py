"""Connected components: the one grouping behind near-duplicate clusters and split groups."""

from __future__ import annotations

import random

import numpy as np

from curation.core.components import component_labels, smallest_member_groups


def _brute_force(n: int, pairs: list[tuple[int, int]]) -> list[int]:
    groups = [{i} for i in range(n)]
    for a, b in pairs:
        merged = groups[a] | groups[b]
        for member in merged:
            groups[member] = merged
    return [min(group) for group in groups]


def test_every_item_is_labelled_with_the_smallest_index_of_its_component() -> None:
    rng = random.Random(7)
    for _ in range(200):
        n = rng.randint(1, 40)
        pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(rng.randint(0, n))]
        assert component_labels(n, pairs).tolist() == _brute_force(n, pairs)


def test_a_long_chain_in_any_order_converges_to_one_label() -> None:
    order = np.random.default_rng(0).permutation(100_000)
    chain = np.stack([order[:-1], order[1:]], axis=1)
    assert set(component_labels(100_000, chain).tolist()) == {0}


def test_groups_of_keys_are_named_by_their_smallest_member_whatever_the_link_order() -> None:
    links = [("r:b", "r:a"), ("r:c", "c:9"), ("r:d", "r:c")]
    for ordered in (links, links[::-1]):
        groups = smallest_member_groups(["r:a", "r:b", "r:c", "r:d", "r:e"], ordered)
        assert groups == {"r:a": "r:a", "r:b": "r:a", "r:c": "c:9", "r:d": "c:9", "c:9": "c:9", "r:e": "r:e"}
