"""Near duplicates: MinHash signatures (the kernels are in :mod:`curation.dedup.minhash`) and the key that
persists them between runs (:func:`signature_key`, the ``dedup_signatures`` table), LSH candidate pairs
(:func:`candidates`), exact Jaccard verification (:func:`verify`), connected components over the
verified pairs (:func:`near_components`), and :class:`NearDupIndex` for checking a new batch against an
already deduplicated corpus (:func:`incremental_near_duplicates`). Signatures and texts are asked for
through callbacks, so the documents can be a list in memory (:func:`near_duplicate_pairs`) or rows of a
table read a chunk at a time (the stage)."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from curation.core.components import component_labels
from curation.core.schema import Row
from curation.dedup.clusters import DEFAULT_POLICY, ClusterMember, KeepPolicy, cluster_members
from curation.dedup.fields import FieldSet, dedup_text
from curation.dedup.minhash import (
    DEFAULT_SHINGLES,
    LSHIndex,
    MinHasher,
    ShingleConfig,
    band_keys,
    candidate_pairs,
    default_workers,
    estimated_jaccard,
    iter_signature_batches,
    lsh_params,
    pairs_jaccard,
)


@dataclass(frozen=True)
class NearConfig:
    """Near-duplicate settings. Pairs are *reported* at ``threshold`` (exact Jaccard of shingle
    sets); LSH bands are datasketch's optimum for the lower ``lsh_threshold`` so that pairs just
    above ``threshold`` are still found (at 0.8 itself datasketch's bands find only ~40% of pairs
    with Jaccard 0.80, see :func:`curation.dedup.minhash.candidate_probability`)."""

    threshold: float = 0.8
    lsh_threshold: float = 0.6
    num_perm: int = 128
    seed: int = 1
    shingles: ShingleConfig = DEFAULT_SHINGLES
    fields: FieldSet = "prompt_response"
    weights: tuple[float, float] = (0.5, 0.5)
    # Candidates whose MinHash estimate is this far below `threshold` skip exact verification:
    # the estimate's standard deviation at J=0.8 with 128 permutations is 0.035, so 0.15 is > 4 sigma.
    estimate_margin: float = 0.15
    max_bucket: int = 64
    batch_size: int = 1000
    # Threads for signatures and verification; both cores paid off (about 1.5x with two).
    workers: int = field(default_factory=default_workers)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"NearConfig.threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.lsh_threshold <= self.threshold:
            raise ValueError(f"NearConfig.lsh_threshold must be in (0, threshold], got {self.lsh_threshold}")

    @property
    def params(self) -> tuple[int, int]:
        return lsh_params(self.lsh_threshold, self.num_perm, self.weights)

    def hasher(self) -> MinHasher:
        return MinHasher(self.num_perm, self.seed, self.shingles)


@dataclass
class NearResult:
    """Near-duplicate pairs of one batch of texts (indices into it), verified exactly."""

    signatures: np.ndarray | None  # (n, num_perm) uint32 to persist; None with keep_signatures=False
    shingle_counts: np.ndarray  # (n,) documents with 0 shingles are never near duplicates
    pairs: np.ndarray  # (k, 2) int64, i < j, exact Jaccard >= threshold
    jaccard: np.ndarray  # (k,) float64
    n_candidates: int = 0
    n_verified: int = 0


def compute_signatures(
    texts: Sequence[str], config: NearConfig, hasher: MinHasher | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Signatures and shingle counts of all texts, in batches (threads if ``config.workers > 1``)."""
    hasher = hasher or config.hasher()
    sig = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    counts = np.empty(len(texts), dtype=np.int64)
    for start, s, c in iter_signature_batches(hasher, texts, config.batch_size, config.workers):
        sig[start : start + len(s)] = s
        counts[start : start + len(c)] = c
    return sig, counts


def component_order(pairs: np.ndarray) -> np.ndarray:
    """Pair order grouped by connected component (so the pairs of one group share a chunk)."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64)
    ids, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    label = component_labels(ids.size, local)
    return np.argsort(label[local[:, 0]], kind="stable")


def pair_jaccards(
    hasher: MinHasher,
    pairs: np.ndarray,
    left_texts: Callable[[np.ndarray], Sequence[str]],
    right_texts: Callable[[np.ndarray], Sequence[str]] | None = None,
    chunk: int = 2048,
    workers: int = 1,
) -> np.ndarray:
    """Exact shingle Jaccard of each ``(left, right)`` pair, recomputing the shingles of only the
    documents involved, a chunk of pairs at a time (memory stays bounded). ``right_texts``
    defaults to ``left_texts`` (pairs within one collection)."""
    out = np.empty(len(pairs), dtype=np.float64)
    # Pairs of one near-duplicate group go into the same chunk, so each document is hashed once.
    order = component_order(pairs) if right_texts is None else np.argsort(pairs[:, 0], kind="stable")
    local = threading.local()

    def work(lo: int) -> None:
        own = getattr(local, "hasher", None)
        if own is None:
            own = local.hasher = MinHasher(hasher.num_perm, hasher.seed, hasher.shingles, hasher.use_jit)
        sel = order[lo : lo + chunk]
        part = pairs[sel]
        if right_texts is None:
            ids = np.unique(part)
            out[sel] = chunk_jaccards(own, left_texts(ids), np.searchsorted(ids, part))
            return
        left_ids, right_ids = np.unique(part[:, 0]), np.unique(part[:, 1])
        values, offsets = own.shingle_hashes(list(left_texts(left_ids)) + list(right_texts(right_ids)))
        idx = np.stack(
            [np.searchsorted(left_ids, part[:, 0]), left_ids.size + np.searchsorted(right_ids, part[:, 1])], axis=1
        )
        out[sel] = pairs_jaccard(values, offsets, idx)

    starts = range(0, len(order), chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, starts))
    else:
        for lo in starts:
            work(lo)
    return out


def chunk_jaccards(hasher: MinHasher, texts: Sequence[str], pairs: np.ndarray) -> np.ndarray:
    """Exact shingle Jaccard of each pair of ``texts`` (``pairs`` index them): one chunk of
    :func:`pair_jaccards`, here or on a worker (:func:`curation.dedup.distributed.pair_jaccards`)."""
    out = np.empty(len(pairs), dtype=np.float64)
    # Identical texts have identical shingle sets, so their Jaccard is exactly 1.0 without
    # hashing (exact copies are ~10% of candidate pairs; ~18% fewer documents to re-hash).
    same = np.fromiter((texts[i] == texts[j] for i, j in pairs.tolist()), dtype=bool, count=len(pairs))
    rest = np.flatnonzero(~same)
    out[same] = 1.0
    if not rest.size:
        return out
    idx = pairs[rest]
    if rest.size < len(pairs):
        needed = np.unique(idx)
        texts = [texts[i] for i in needed.tolist()]
        idx = np.searchsorted(needed, idx)
    values, offsets = hasher.shingle_hashes(texts)
    out[rest] = pairs_jaccard(values, offsets, idx)
    return out


def _estimates(signatures_of: Callable[[np.ndarray], np.ndarray], pairs: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """MinHash estimate of each pair, fetching the signatures of a chunk of pairs at a time."""
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), chunk):
        part = pairs[lo : lo + chunk]
        ids = np.unique(part)
        signatures = signatures_of(ids)
        local = np.searchsorted(ids, part)
        out[lo : lo + chunk] = estimated_jaccard(signatures[local[:, 0]], signatures[local[:, 1]])
    return out


def candidates(
    keys: np.ndarray,
    shingle_counts: np.ndarray,
    config: NearConfig,
    signatures_of: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, int]:
    """Pairs ``(i, j)``, ``i < j``, worth verifying among documents with LSH band ``keys`` (``(n, bands)``)
    and ``shingle_counts``: they share a band and their MinHash estimate is within
    ``config.estimate_margin`` of the threshold. ``signatures_of(ids)`` gives the signatures of sorted
    document indices (full or, for the estimate, their low 16 bits). Also returns how many pairs shared a band."""
    usable = np.flatnonzero(shingle_counts > 0)
    cand = usable[candidate_pairs(keys[usable], config.max_bucket, config.workers)]
    return plausible(cand, config, signatures_of), len(cand)


def plausible(cand: np.ndarray, config: NearConfig, signatures_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The pairs of documents that shared a band (``cand``) whose MinHash estimate is within
    ``config.estimate_margin`` of the threshold: the ones worth the exact Jaccard."""
    if not len(cand):
        return cand
    return cand[_estimates(signatures_of, cand) >= config.threshold - config.estimate_margin]


Jaccards = Callable[[np.ndarray, Callable[[np.ndarray], Sequence[str]]], np.ndarray]
"""``jaccards(pairs, texts_of)``: :func:`pair_jaccards` of pairs within one collection, computed here or on
workers (:func:`curation.dedup.distributed.pair_jaccards`)."""


def verify(
    cand: np.ndarray,
    config: NearConfig,
    texts_of: Callable[[np.ndarray], Sequence[str]],
    jaccards: Jaccards | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The candidate pairs whose exact shingle Jaccard reaches ``config.threshold``, with it;
    ``texts_of(ids)`` gives the texts of sorted document indices (asked for a chunk of pairs at a time,
    grouped by connected component). ``jaccards`` computes them elsewhere (threads here by default)."""
    if not len(cand):
        return np.zeros((0, 2), np.int64), np.zeros(0)
    if jaccards is None:
        jac = pair_jaccards(config.hasher(), cand, texts_of, workers=config.workers)
    else:
        jac = jaccards(cand, texts_of)
    keep = jac >= config.threshold - 1e-12
    return cand[keep], jac[keep]


SignatureSink = Callable[[int, np.ndarray, np.ndarray], None]


def near_duplicate_pairs(
    texts: Sequence[str],
    config: NearConfig = NearConfig(),
    signatures: np.ndarray | None = None,
    shingle_counts: np.ndarray | None = None,
    sink: SignatureSink | None = None,
    keep_signatures: bool = True,
) -> NearResult:
    """All pairs within ``texts`` with exact shingle Jaccard >= ``config.threshold``.

    Pass stored ``signatures`` (and counts) to skip the MinHash work for documents seen before.
    ``sink(start, signatures, counts)`` receives each computed batch (to persist it as it comes);
    with ``keep_signatures=False`` only band keys and the low 16 bits of each signature value
    (for the MinHash pre-filter) stay in memory: about 400 instead of 660 bytes per document.
    """
    hasher = config.hasher()
    bands, rows = config.params
    n = len(texts)
    keys = np.empty((n, bands), dtype=np.uint64)
    if signatures is not None and shingle_counts is not None:
        if len(signatures) != n or len(shingle_counts) != n:
            raise ValueError(
                f"{len(signatures)} stored signatures and {len(shingle_counts)} counts "
                f"for {n} texts: pass one per text, in the same order"
            )
        for lo in range(0, n, 4096):
            keys[lo : lo + 4096] = band_keys(signatures[lo : lo + 4096], bands, rows)
        sketch, counts = signatures, shingle_counts
    else:
        counts = np.empty(n, dtype=np.int64)
        full = np.empty((n, config.num_perm), dtype=np.uint32) if keep_signatures else None
        # b-bit MinHash (Li & Koenig 2010): equal low 16 bits ~ equal values, false match 2^-16.
        sketch = full if full is not None else np.empty((n, config.num_perm), dtype=np.uint16)
        for start, sig, c in iter_signature_batches(hasher, texts, config.batch_size, config.workers):
            stop = start + len(sig)
            counts[start:stop] = c
            keys[start:stop] = band_keys(sig, bands, rows)
            sketch[start:stop] = sig if full is not None else sig.astype(np.uint16)
            if sink is not None:
                sink(start, sig, c)
        signatures, shingle_counts = full, counts
    cand, found = candidates(keys, counts, config, lambda ids: sketch[ids])
    del keys
    pairs, jac = verify(cand, config, lambda idx: [texts[i] for i in idx])
    return NearResult(signatures, counts, pairs, jac, found, len(cand))


def near_components(pairs: np.ndarray, jaccard: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The documents of verified ``pairs`` (sorted), the cluster of each (the smallest document of its
    connected component), and the verified neighbour that linked it (highest Jaccard, then smallest
    index) with that Jaccard."""
    documents = np.unique(pairs)
    cluster = documents[component_labels(documents.size, np.searchsorted(documents, pairs))]
    this = np.concatenate([pairs[:, 0], pairs[:, 1]])
    other = np.concatenate([pairs[:, 1], pairs[:, 0]])
    both = np.concatenate([jaccard, jaccard])
    order = np.lexsort((other, -both, this))
    first = order[np.r_[True, this[order][1:] != this[order][:-1]]] if order.size else order
    return documents, cluster, other[first], both[first]


def near_clusters(
    rows: Sequence[Row],
    result: NearResult,
    config: NearConfig,
    policy: KeepPolicy = DEFAULT_POLICY,
    texts: Sequence[str] | None = None,
) -> list[ClusterMember]:
    """Clusters over verified pairs (connected components), one kept row each, with the exact Jaccard
    of every member to its kept row and the verified neighbour that linked it."""
    if len(result.pairs) == 0:
        return []
    documents, cluster, matched, matched_jaccard = near_components(result.pairs, result.jaccard)
    groups: dict[int, list[int]] = defaultdict(list)
    for document, label in zip(documents.tolist(), cluster.tolist(), strict=True):
        groups[label].append(document)
    texts = texts if texts is not None else [dedup_text(r, config.fields) for r in rows]
    kept_of: dict[int, int] = {}
    for members in groups.values():
        kept = members[policy.choose([rows[i] for i in members], members)]
        kept_of.update({i: kept for i in members if i != kept})
    to_kept = np.array(sorted(kept_of.items()), dtype=np.int64).reshape(-1, 2)
    jac = pair_jaccards(config.hasher(), to_kept, lambda idx: [texts[i] for i in idx])
    similarity = {int(i): float(j) for i, j in zip(to_kept[:, 0], jac, strict=True)}
    links = {d: (m, j) for d, m, j in zip(documents.tolist(), matched.tolist(), matched_jaccard.tolist(), strict=True)}
    return cluster_members(
        rows, list(groups.values()), near_method(config), policy, similarity=lambda i, k: similarity[i], links=links
    )


def near_method(config: NearConfig) -> str:
    """How ``dedup_clusters.method`` names near duplicates under these settings."""
    return f"near:{config.fields}:{config.shingles.unit}{config.shingles.n}"


SIGNATURES_DDL = (
    "signature_key VARCHAR NOT NULL, signature BLOB USING COMPRESSION uncompressed NOT NULL, shingles BIGINT NOT NULL"
)
"""The ``dedup_signatures`` table: signatures persisted between runs, so a text is MinHashed once. Signatures
are random bytes: DuckDB's attempts to compress them (dictionary, FSST) never pay, and cost more than the rest
of their insert (4.1 against 2.1 CPU-seconds for 223k signatures), so the column is stored as it is.

One row per key, but no primary key: DuckDB holds an index in memory whole, and the one of a 2M-row run's
keys, built in the facts pass's transaction, outgrew the connection's memory limit and aborted the run. The
stage drops repeated keys itself (``curation.dedup.stage._drop_repeated_keys``)."""
SIGNATURE_SCHEMA = pa.schema([("signature_key", pa.string()), ("signature", pa.binary()), ("shingles", pa.int64())])


def signature_key(text: str, config: NearConfig) -> str:
    """What a stored signature is valid for: the compared text and every setting that shapes it."""
    return signature_keyer(config)(text)


@functools.lru_cache(maxsize=16)
def signature_keyer(config: NearConfig) -> Callable[[str], str]:
    """:func:`signature_key` under ``config`` as a one-argument function: the settings are hashed once and
    the hash state copied for each text (the same digest as hashing settings and text together)."""
    settings = f"{config.num_perm}:{config.seed}:{config.shingles.unit}:{config.shingles.n}"
    prefix = hashlib.sha256(f"{settings}\x1f".encode())

    def key(text: str) -> str:
        digest = prefix.copy()
        digest.update(text.encode())
        return digest.hexdigest()[:32]

    return key


class NearDupIndex:
    """Signatures of an already deduplicated corpus, for checking new rows against it.

    Built from persisted signatures (no shingling, no MinHash of the stored corpus). Only the
    band keys are held in memory; exact verification fetches the few matching stored texts through
    the ``fetch_texts`` callback (e.g. a DuckDB query by row id).
    """

    def __init__(self, config: NearConfig = NearConfig()) -> None:
        self.config = config
        self.index = LSHIndex(*config.params)
        self.row_ids: list[str] = []
        self._known: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.row_ids)

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._known

    def add(self, row_ids: Sequence[str], signatures: np.ndarray) -> None:
        if len(row_ids) != len(signatures):
            raise ValueError(f"{len(row_ids)} row ids but {len(signatures)} signatures")
        if signatures.shape[1:] != (self.config.num_perm,):
            raise ValueError(
                f"signatures have shape {signatures.shape}, expected (n, {self.config.num_perm}); "
                "they were made with another num_perm and must be recomputed"
            )
        self.index.add(signatures)
        for rid in row_ids:
            self._known[rid] = len(self.row_ids)
            self.row_ids.append(rid)

    def query(
        self,
        texts: Sequence[str],
        signatures: np.ndarray,
        shingle_counts: np.ndarray,
        fetch_texts: Callable[[list[str]], Sequence[str]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """Verified ``(new_index, stored_position)`` pairs with their exact Jaccard."""
        usable = shingle_counts > 0
        cand = self.index.query(signatures, self.config.max_bucket)
        cand = cand[usable[cand[:, 0]]] if len(cand) else cand
        if len(cand) == 0:
            return np.zeros((0, 2), np.int64), np.zeros(0)
        jac = pair_jaccards(
            self.config.hasher(),
            cand,
            lambda idx: [texts[i] for i in idx],
            lambda idx: fetch_texts([self.row_ids[i] for i in idx]),
        )
        keep = jac >= self.config.threshold - 1e-12
        return cand[keep], jac[keep]


def incremental_near_duplicates(
    rows: Sequence[Row],
    index: NearDupIndex,
    fetch_texts: Callable[[list[str]], Sequence[str]],
    policy: KeepPolicy = DEFAULT_POLICY,
    signatures: np.ndarray | None = None,
    shingle_counts: np.ndarray | None = None,
) -> tuple[list[ClusterMember], NearResult]:
    """Dedup a new batch against itself and against ``index`` (the stored corpus), then add the
    batch's surviving rows to ``index``.

    A stored row is never displaced (published rows stay stable): a new row that near-duplicates
    one is removed in its favour. When the row a batch cluster kept matches a stored row, the
    whole cluster is re-pointed to the stored row, with each member's exact Jaccard to it, so a
    removed row is still explained by one record."""
    config = index.config
    texts = [dedup_text(r, config.fields) for r in rows]
    result = near_duplicate_pairs(texts, config, signatures, shingle_counts)
    members = near_clusters(rows, result, config, policy, texts)
    # near_duplicate_pairs keeps the full signatures unless told not to, and the index needs them.
    assert result.signatures is not None
    old_pairs, old_jac = index.query(texts, result.signatures, result.shingle_counts, fetch_texts)
    best: dict[int, tuple[int, float]] = {}
    for (i, pos), j in zip(old_pairs.tolist(), old_jac.tolist(), strict=True):
        if i not in best or j > best[i][1] or (j == best[i][1] and pos < best[i][0]):
            best[i] = (pos, j)
    if best:
        method = f"near:{config.fields}:{config.shingles.unit}{config.shingles.n}:existing"
        position = {r["row_id"]: i for i, r in enumerate(rows)}
        # Members whose batch-kept row matched a stored row (and that did not match one themselves).
        follow = [
            (position[m.row_id], best[position[m.kept_row_id]][0], m)
            for m in members
            if m.row_id != m.kept_row_id and position[m.kept_row_id] in best and position[m.row_id] not in best
        ]
        jac = pair_jaccards(
            config.hasher(),
            np.array([(i, pos) for i, pos, _ in follow], np.int64).reshape(-1, 2),
            lambda idx: [texts[i] for i in idx],
            lambda idx: fetch_texts([index.row_ids[i] for i in idx]),
        )
        redirected = {
            m.row_id: ClusterMember(
                f"{method}:{index.row_ids[pos]}",
                m.row_id,
                index.row_ids[pos],
                method,
                float(j),
                m.kept_row_id,
                m.jaccard,
                True,
                "its cluster's kept row duplicates an already stored row",
            )
            for (_, pos, m), j in zip(follow, jac, strict=True)
        }
        for i, (pos, j) in best.items():
            kept_id = index.row_ids[pos]
            redirected[rows[i]["row_id"]] = ClusterMember(
                f"{method}:{kept_id}",
                rows[i]["row_id"],
                kept_id,
                method,
                j,
                kept_id,
                j,
                True,
                "an already stored row is kept",
            )
        members = [redirected.get(m.row_id, m) for m in members]
        listed = {m.row_id for m in members}
        members += [m for rid, m in sorted(redirected.items()) if rid not in listed]
    removed = {m.row_id for m in members if m.removed}
    survivors = [i for i, r in enumerate(rows) if r["row_id"] not in removed and r["row_id"] not in index]
    if result.signatures is not None:
        index.add([rows[i]["row_id"] for i in survivors], result.signatures[survivors])
    return members, result
