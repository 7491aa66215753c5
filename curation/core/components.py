"""Connected components: the one way rows are grouped (near-duplicate clusters, split groups, the order
in which candidate pairs are verified). A group is named by its smallest member, so grouping never
depends on the order of the links."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np

K = TypeVar("K", str, int)


def component_labels(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """For items ``0..n-1`` joined by ``pairs``, the smallest item index of each item's component.

    Label propagation with pointer jumping, all in numpy: every round each endpoint takes the smaller
    label of its pair, then each label jumps to its own label's label, so long chains converge in a
    logarithmic number of rounds and no Python code runs per pair."""
    label = np.arange(n, dtype=np.int64)
    links = np.asarray(pairs if isinstance(pairs, np.ndarray) else list(pairs), dtype=np.int64).reshape(-1, 2)
    if len(links) == 0:
        return label
    left, right = links[:, 0], links[:, 1]
    while True:
        low = np.minimum(label[left], label[right])
        new = label.copy()
        np.minimum.at(new, left, low)
        np.minimum.at(new, right, low)
        new = new[new]
        if np.array_equal(new, label):
            return label
        label = new


def smallest_member_groups(keys: Iterable[K], links: Iterable[tuple[K, K]]) -> dict[K, K]:
    """For every key (and every key that appears in a link), the smallest key connected to it."""
    link_list = list(links)
    members = sorted(set(keys).union(*link_list))
    index = {key: i for i, key in enumerate(members)}
    labels = component_labels(len(members), [(index[a], index[b]) for a, b in link_list])
    return {key: members[labels[i]] for key, i in index.items()}
