"""Near duplicates on the ``ray`` engine: the candidate pairs of :func:`curation.dedup.near.candidates` and
the exact Jaccards of :func:`curation.dedup.near.pair_jaccards`, without any one process holding every
signature or band key.

The driver streams the survivors' signatures out of the warehouse a batch at a time, and each batch is a
Ray task; everything after lives in Ray's object store (on the node of the task that made it, spilled to
disk when the store fills) and is a hash-partitioned shuffle over ``P`` partitions in four steps:

1. **band keys** (a task per batch of signatures): each usable row's key in every band, partitioned by
   key (``key % P``: the keys are 64-bit hashes), and the batch's signatures partitioned by row
   (``row % P``);
2. **buckets** (a task per key partition): its rows sorted by (band, key, row); each bucket pairs its
   members as the local engine does (each with its ``max_bucket`` successors, in row order, see
   :func:`curation.dedup.minhash.bucket_ties_by_index`); each pair is sent to its first row's partition;
3. **unique pairs** (a task per row partition): a pair that several bands found counted once, and its
   first row's signature attached; sent to its second row's partition;
4. **estimate** (a task per row partition): the MinHash estimate from the two signatures; the pairs
   within ``estimate_margin`` of the threshold go back to the driver, the only pairs that do (a few per
   near duplicate).

Exact verification then runs on workers too (:func:`pair_jaccards`): the driver reads the candidates'
texts from the warehouse a chunk of pairs at a time and each chunk is a task that returns its Jaccards.
The verified pairs are few, and the driver groups them into clusters as on the local engine.

Every step is a pure function of its inputs, and the pairs come back sorted, so the answer is the local
engine's to the bit (the same candidates, Jaccards, clusters and data versions); a task whose worker died is
run again by Ray (:data:`curation.core.ray_engine.TASK_RETRIES`) with the same result.

Scale: each of the ``R`` batches makes ``2P`` objects, so ``P`` is kept to what the rows need
(:func:`partitions_for`); past some 10^8 rows on hundreds of CPUs a push-based shuffle (Ray Data's) would
replace this all-to-all one."""

from __future__ import annotations

import functools
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from curation.core.parallel import map_ordered
from curation.core.ray_engine import TASK_RETRIES
from curation.dedup.minhash import (
    MinHasher,
    ShingleConfig,
    band_keys,
    estimated_jaccard,
    pairs_in_groups,
    signature_matrix,
)
from curation.dedup.near import NearConfig, chunk_jaccards, component_order

__all__ = ["candidates", "pair_jaccards", "partitions_for"]

ROWS_PER_PARTITION = 50_000
"""Rows of signatures (and their band keys, 18 a row) per shuffle partition at least: about 25 MB of
signatures and 16 MB of band keys for one task to sort and join."""

PARTITIONS_PER_CPU = 2
"""Shuffle partitions per CPU of the cluster at most, so a slow partition does not leave CPUs idle."""

_LOW = np.int64(0xFFFFFFFF)


def partitions_for(rows: int, cpus: int) -> int:
    """Shuffle partitions for ``rows`` signatures on ``cpus`` CPUs: enough to keep every CPU busy, no more
    than the rows fill (each batch makes two objects per partition)."""
    return max(1, min(PARTITIONS_PER_CPU * cpus, math.ceil(rows / ROWS_PER_PARTITION)))


@dataclass(frozen=True)
class _Shuffle:
    """What every task of one shuffle needs to know (sent once, small)."""

    bands: int
    rows: int
    num_perm: int
    max_bucket: int
    floor: float  # the lowest MinHash estimate worth verifying
    partitions: int

    def split(self, route: np.ndarray, *columns: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """``columns`` cut into one part per partition by ``route`` (each row's partition), row order kept."""
        order = np.argsort(route, kind="stable")
        bounds = np.searchsorted(route[order], np.arange(self.partitions + 1))
        sorted_columns = [column[order] for column in columns]
        return [tuple(column[bounds[p] : bounds[p + 1]] for column in sorted_columns) for p in range(self.partitions)]


def candidates(
    batches: Iterable[pa.RecordBatch], config: NearConfig, partitions: int, in_flight: int = 4
) -> tuple[np.ndarray, int]:
    """:func:`curation.dedup.near.candidates` on Ray: the pairs ``(i, j)``, ``i < j``, sorted, worth verifying
    among rows whose signatures come in ``batches`` (columns ``near_index``, ``signature``, ``shingles``; in
    any order), and how many pairs shared a band. At most ``in_flight`` batches wait for their first task,
    so the driver reads ahead no further than the cluster keeps up."""
    import ray

    bands, rows = config.params
    spec = _Shuffle(
        bands, rows, config.num_perm, config.max_bucket, config.threshold - config.estimate_margin, partitions
    )
    blocks: list[list[Any]] = []
    waiting: deque[Any] = deque()
    for batch in batches:
        refs = _submit(_band_block, 2 * partitions, spec, batch)
        blocks.append(refs)
        waiting.append(refs[0])
        if len(waiting) >= in_flight:
            ray.wait([waiting.popleft()], fetch_local=False)
    if not blocks:
        return np.zeros((0, 2), np.int64), 0
    signatures = [[block[partitions + p] for block in blocks] for p in range(partitions)]
    paired = [_submit(_bucket_pairs, partitions, spec, *[block[p] for block in blocks]) for p in range(partitions)]
    del blocks, waiting  # each object is freed once the tasks that read it are done
    unique = [
        _submit(_unique_pairs, partitions + 1, spec, len(signatures[p]), *signatures[p], *[part[p] for part in paired])
        for p in range(partitions)
    ]
    del paired
    kept = [
        _submit(_estimate, 1, spec, len(signatures[p]), *signatures[p], *[part[1 + p] for part in unique])[0]
        for p in range(partitions)
    ]
    found = sum(_get([part[0] for part in unique]))
    codes = np.sort(np.concatenate(_get(kept)))
    return np.stack([codes >> 32, codes & _LOW], axis=1), int(found)


def pair_jaccards(
    config: NearConfig,
    pairs: np.ndarray,
    texts_of: Callable[[np.ndarray], Sequence[str]],
    workers: int,
    chunk: int = 2048,
) -> np.ndarray:
    """:func:`curation.dedup.near.pair_jaccards` of pairs within one collection, a task per chunk of pairs
    (the same chunks, grouped by connected component): ``texts_of`` runs here, a chunk at a time, and the
    texts go with the chunk's pairs to a worker, which shingles them and returns their Jaccards."""
    out = np.empty(len(pairs), dtype=np.float64)
    order = component_order(pairs)
    starts = range(0, len(order), chunk)
    hasher = (config.num_perm, config.seed, config.shingles)

    def chunks() -> Iterable[tuple[tuple[int, int, ShingleConfig], list[str], np.ndarray]]:
        for lo in starts:
            part = pairs[order[lo : lo + chunk]]
            ids = np.unique(part)
            yield hasher, list(texts_of(ids)), np.searchsorted(ids, part)

    for lo, values in zip(starts, map_ordered(_chunk_task, chunks(), workers), strict=True):
        out[order[lo : lo + chunk]] = values
    return out


# ---------------------------------------------------------------------------------------------
# The tasks (module-level: Ray pickles them by reference and the worker imports this module).


def _band_block(spec: _Shuffle, batch: pa.RecordBatch) -> list[tuple[np.ndarray, ...]]:
    """Step 1: the band keys of a batch's usable rows (``(band, key, row)``) by key partition, then its
    usable rows' signatures (``(row, signature)``) by row partition."""
    usable = batch.column("shingles").to_numpy() > 0
    row = batch.column("near_index").to_numpy().astype(np.int64)[usable]
    signatures = signature_matrix(batch.column("signature"), spec.num_perm)[usable]
    keys = band_keys(signatures, spec.bands, spec.rows).ravel()
    band = np.tile(np.arange(spec.bands, dtype=np.int16), row.size)
    route = (keys % np.uint64(spec.partitions)).astype(np.int64)
    by_key = spec.split(route, band, keys, np.repeat(row, spec.bands))
    return by_key + spec.split(row % spec.partitions, row, signatures)


def _bucket_pairs(spec: _Shuffle, *parts: tuple[np.ndarray, ...]) -> Any:
    """Step 2: the pairs of one key partition's buckets (each a ``(band, key)``), deduplicated here, as
    ``i << 32 | j`` codes by the partition of ``i``."""
    band, key, row = (np.concatenate([part[c] for part in parts]) for c in range(3))
    if key.size < 2:
        return _returned([np.zeros(0, np.int64)] * spec.partitions, spec)
    # Most keys are met once: sort by key alone (numpy's SIMD sort), then order only the rows of shared
    # keys by (key, band, row). A key names its band already; grouping by both is exact all the same.
    order = np.argsort(key)
    sorted_keys = key[order]
    run = np.cumsum(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    shared = np.bincount(run)[run] > 1
    run, band, row = run[shared], band[order[shared]], row[order[shared]]
    order = np.lexsort((row, band, run))
    run, band, row = run[order], band[order], row[order]
    bucket = np.cumsum(np.r_[True, (run[1:] != run[:-1]) | (band[1:] != band[:-1])])
    pairs = pairs_in_groups(row, bucket, spec.max_bucket)  # rows ascend within a bucket: i < j
    codes = np.unique((pairs[:, 0] << 32) | pairs[:, 1])
    return _returned([codes for (codes,) in spec.split((codes >> 32) % spec.partitions, codes)], spec)


def _unique_pairs(spec: _Shuffle, signature_parts: int, *parts: Any) -> list[Any]:
    """Step 3: one row partition's pairs by their first row, counted once; the first row's signature goes
    with each to the partition of its second row. Returns how many pairs there were, then the parts."""
    rows, signatures = _signature_table(parts[:signature_parts])
    codes = np.unique(np.concatenate(parts[signature_parts:]))
    first, second = codes >> 32, codes & _LOW
    routed = spec.split(second % spec.partitions, first, second, signatures[np.searchsorted(rows, first)])
    return [int(codes.size), *routed]


def _estimate(spec: _Shuffle, signature_parts: int, *parts: Any) -> np.ndarray:
    """Step 4: the pairs of one row partition (by second row) whose MinHash estimate reaches the floor,
    as codes."""
    rows, signatures = _signature_table(parts[:signature_parts])
    first, second, first_signatures = (np.concatenate([part[c] for part in parts[signature_parts:]]) for c in range(3))
    estimate = estimated_jaccard(first_signatures, signatures[np.searchsorted(rows, second)])
    keep = estimate >= spec.floor
    return (first[keep] << 32) | second[keep]


def _signature_table(parts: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """A row partition's signatures, sorted by row (to look rows up with ``searchsorted``)."""
    rows = np.concatenate([part[0] for part in parts])
    order = np.argsort(rows)
    return rows[order], np.concatenate([part[1] for part in parts])[order]


def _chunk_task(item: tuple[tuple[int, int, ShingleConfig], list[str], np.ndarray]) -> np.ndarray:
    (num_perm, seed, shingles), texts, pairs = item
    return chunk_jaccards(_hasher(num_perm, seed, shingles), texts, pairs)


@functools.lru_cache(maxsize=4)
def _hasher(num_perm: int, seed: int, shingles: ShingleConfig) -> MinHasher:
    """One hasher per worker process and settings (a task runs alone in its process)."""
    return MinHasher(num_perm, seed, shingles)


# ---------------------------------------------------------------------------------------------
# Ray plumbing.


def _returned(parts: list[Any], spec: _Shuffle) -> Any:
    """A task's ``partitions`` results as Ray wants them: one value alone is returned as itself."""
    return parts if spec.partitions > 1 else parts[0]


_REMOTES: dict[Callable[..., Any], Any] = {}


def _remote(function: Callable[..., Any]) -> Any:
    """``function`` as a Ray remote function, made once (after ``import ray``), retried when its worker dies."""
    if function not in _REMOTES:
        import ray

        _REMOTES[function] = ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(function)
    return _REMOTES[function]


def _submit(function: Callable[..., Any], returns: int, *args: Any) -> list[Any]:
    """``function(*args)`` as a Ray task with ``returns`` results: their references (Ray gives one alone as
    itself). Arguments that are references are passed as the objects they name."""
    refs = _remote(function).options(num_returns=returns).remote(*args)
    return list(refs) if returns > 1 else [refs]


def _get(refs: list[Any]) -> list[Any]:
    """``ray.get``, an error of the task's own code raised as itself."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as error:
        raise error.as_instanceof_cause() from None
