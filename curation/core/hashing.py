"""Seeded, order-independent random decisions (splits, subsets, seed rows, mix choices): the same row gets
the same draw whatever else is in the data and in whatever order it arrives."""

from __future__ import annotations

import xxhash

_TWO_64 = float(2**64)


def stable_unit(seed: int | str, purpose: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, key).

    ``purpose`` keeps independent decisions independent: the eval split and the 25% subset
    must not pick the same rows just because they share a seed.
    """
    digest = xxhash.xxh3_64_intdigest(f"{seed}\x1f{purpose}\x1f{key}".encode())
    return digest / _TWO_64
