"""Seeded, order-independent random decisions (splits, subsets, seed rows, mix choices): the same row gets
the same draw whatever else is in the data and in whatever order it arrives, in Python for one row or in
DuckDB SQL over a whole table (:func:`stable_unit_sql`)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import xxhash
from duckdb.func import ARROW

_TWO_64 = float(2**64)


def stable_unit(seed: int | str, purpose: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, purpose, key).

    ``purpose`` keeps independent decisions independent: the eval split and the 25% subset
    must not pick the same rows just because they share a seed.
    """
    digest = xxhash.xxh3_64_intdigest(f"{seed}\x1f{purpose}\x1f{key}".encode())
    return digest / _TWO_64


@contextlib.contextmanager
def stable_unit_sql(connection: duckdb.DuckDBPyConnection, seed: int | str) -> Iterator[str]:
    """Inside the block, SQL ``<name>(purpose, key) -> DOUBLE`` on ``connection`` is :func:`stable_unit` with
    ``seed`` (NULL for a NULL key): whole tables are ranked by their seeded draw in DuckDB, the same draw
    Python makes for one row. Yields the function's name (unique, so blocks can nest)."""

    def units(purposes: pa.Array, keys: pa.Array) -> pa.Array:
        # Arrow joins the texts per vector; only the hash itself runs per value in Python. numpy's uint64 ->
        # float64 rounds to nearest like Python's int / float, so the draws are equal to the bit.
        texts = pc.binary_join_element_wise(str(seed), purposes, keys, "\x1f").cast(pa.binary())
        digests = np.fromiter(map(xxhash.xxh3_64_intdigest, texts.fill_null(b"").to_pylist()), np.uint64, len(texts))
        return pa.array(digests.astype(np.float64) / _TWO_64, mask=texts.is_null().to_numpy(zero_copy_only=False))

    name = f"_stable_unit_{uuid.uuid4().hex[:8]}"
    connection.create_function(name, units, ["VARCHAR", "VARCHAR"], "DOUBLE", type=ARROW, side_effects=False)
    try:
        yield name
    finally:
        connection.remove_function(name)
