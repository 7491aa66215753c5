"""Disjoint sets for grouping rows (duplicate clusters, split groups): the one union-find."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Generic, TypeVar

import numpy as np

K = TypeVar("K", bound=Hashable)


class UnionFind(Generic[K]):
    """Disjoint sets over any sortable keys. The representative of a set is its smallest member, so
    the grouping never depends on the order in which unions were made."""

    def __init__(self) -> None:
        self.parent: dict[K, K] = {}

    def find(self, key: K) -> K:
        parent = self.parent
        parent.setdefault(key, key)
        root = key
        while parent[root] != root:
            root = parent[root]
        while parent[key] != root:  # path compression keeps later finds nearly O(1)
            parent[key], key = root, parent[key]
        return root

    def union(self, a: K, b: K) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a != root_b:
            small, large = (root_a, root_b) if root_a < root_b else (root_b, root_a)  # type: ignore[operator]
            self.parent[large] = small


def component_labels(n: int, pairs: Iterable[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """For items ``0..n-1`` joined by ``pairs``, the smallest item index of each item's component."""
    sets: UnionFind[int] = UnionFind()
    for a, b in pairs:
        sets.union(int(a), int(b))
    return np.array([sets.find(i) for i in range(n)], dtype=np.int64)
