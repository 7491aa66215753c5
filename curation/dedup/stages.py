"""Deduplication of canonical rows: exact, near (MinHash LSH + exact Jaccard), repeated paragraphs
inside a document, boilerplate across documents, and one instruction with several responses.

Every removal is recorded as a :class:`ClusterMember` (one row of the ``dedup_clusters`` table:
which row it duplicates, how, and how similar), every in-text edit as an :class:`Edit`. The kept row
of a cluster is chosen by :class:`KeepPolicy`, a documented total order, so the same input always
gives the same clusters.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from curation.core.licenses import permissiveness_rank
from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions, normalize_text
from curation.core.schema import Row, prompt_text, response_text
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

FieldSet = Literal["first_prompt", "prompt", "prompt_response", "conversation"]
FIELD_SETS: tuple[str, ...] = ("first_prompt", "prompt", "prompt_response", "conversation")
_SEP = "\x1f"  # cannot occur after whitespace normalisation, so joined fields never run together


# ---------------------------------------------------------------------------------------------
# What is compared.

def _first_user(row: Row) -> str:
    if row.get("kind") == "text":
        return row.get("text") or ""
    for message in row.get("messages") or []:
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def field_parts(row: Row, fields: FieldSet) -> list[str]:
    """The pieces of a row that a field set compares, in a fixed order."""
    if fields == "first_prompt":
        return [_first_user(row)]
    if fields == "prompt":
        return [prompt_text(row)]
    if fields == "prompt_response":
        return [prompt_text(row), response_text(row)]
    if fields == "conversation":
        parts = [row.get("kind") or "", row.get("text") or ""]
        for column in ("messages", "chosen", "rejected"):
            for message in row.get(column) or []:
                parts.append(f"{column}:{message.get('role')}")
                parts.append(message.get("content") or "")
        return parts
    raise ValueError(f"unknown dedup field set {fields!r}; use one of {', '.join(FIELD_SETS)}")


def dedup_text(row: Row, fields: FieldSet) -> str:
    """The compared text of a row as one string (what near-duplicate shingles are taken from):
    contents only, without the kind and role labels the exact key includes."""
    parts = field_parts(row, fields)
    if fields == "conversation":
        parts = parts[1:2] + parts[3::2]
    return "\n".join(p for p in parts if p)


def exact_key(row: Row, fields: FieldSet, options: NormalizeOptions = DEFAULT_OPTIONS) -> str:
    """Hex digest of the normalised field set: equal keys mean exact duplicates."""
    normalised = _SEP.join(normalize_text(p, options) for p in field_parts(row, fields))
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Which row of a cluster is kept.

_ORIGIN_RANK = {"human": 0, "augmented": 1, "synthetic": 2}


def default_quality(row: Row) -> float:
    """A non-empty response first, then a numeric ``extra.quality`` or reward ``score`` if present."""
    has_response = 1.0 if response_text(row).strip() or row.get("kind") in ("text", "prompt") else 0.0
    extra = row.get("extra") or {}
    signal = extra.get("quality") if isinstance(extra, dict) else None
    if not isinstance(signal, int | float):
        signal = row.get("score")
    signal = float(signal) if isinstance(signal, int | float) and math.isfinite(signal) else 0.0
    return has_response * 1e6 + signal


@dataclass(frozen=True)
class KeepPolicy:
    """The order that picks a cluster's kept row, best first:

    1. human before augmented before synthetic (``origin``; unknown last);
    2. more permissive licence (``license_rank``, default :func:`curation.core.licenses.permissiveness_rank`);
    3. higher quality (``quality``, default :func:`default_quality`);
    4. earliest ``ingested_at``, then earliest in the input, then smallest ``row_id``.
    """

    quality: Callable[[Row], float] = default_quality
    license_rank: Callable[[str | None], int] = permissiveness_rank

    def sort_key(self, row: Row, position: int) -> tuple[Any, ...]:
        ingested = row.get("ingested_at")
        return (_ORIGIN_RANK.get(row.get("origin") or "", 3), -self.license_rank(row.get("license")),
                -self.quality(row), ingested is None, str(ingested or ""), position, row.get("row_id") or "")

    def choose(self, rows: Sequence[Row], positions: Sequence[int]) -> int:
        """Index (into ``rows``) of the row to keep."""
        return min(range(len(rows)), key=lambda i: self.sort_key(rows[i], positions[i]))

    def reason(self, kept: Row, removed: Row, kept_pos: int, removed_pos: int) -> str:
        """Why ``kept`` won over ``removed``, naming the first criterion that separated them."""
        a, b = self.sort_key(kept, kept_pos), self.sort_key(removed, removed_pos)
        if a[0] != b[0]:
            return f"origin {kept.get('origin')} preferred to {removed.get('origin')}"
        if a[1] != b[1]:
            return (f"licence {kept.get('license')} more permissive than {removed.get('license')}; "
                    f"the removed row's source and licence stay on record in dedup_clusters")
        if a[2] != b[2]:
            return "higher quality signal (non-empty response, quality/score)"
        if a[3:5] != b[3:5]:
            return "ingested earlier"
        return "earlier in the input (all preference criteria tied)"


# ---------------------------------------------------------------------------------------------
# Records.

@dataclass(frozen=True)
class ClusterMember:
    """One row of ``dedup_clusters``. Kept rows appear too, with ``row_id == kept_row_id``.

    ``jaccard`` is the verified similarity to the kept row (1.0 for exact). With union-find a row
    can join a cluster through a chain; ``matched_row_id``/``matched_jaccard`` then name the verified
    neighbour (similarity >= threshold) that linked it.
    """

    cluster_id: str
    row_id: str
    kept_row_id: str
    method: str
    jaccard: float
    matched_row_id: str
    matched_jaccard: float
    removed: bool
    reason: str


CLUSTER_SCHEMA = pa.schema([
    ("cluster_id", pa.string()), ("row_id", pa.string()), ("kept_row_id", pa.string()),
    ("method", pa.string()), ("jaccard", pa.float64()), ("matched_row_id", pa.string()),
    ("matched_jaccard", pa.float64()), ("removed", pa.bool_()), ("reason", pa.string()),
])


def clusters_table(members: Iterable[ClusterMember]) -> pa.Table:
    """``dedup_clusters`` rows as an Arrow table."""
    return pa.Table.from_pylist([m.__dict__ for m in members], schema=CLUSTER_SCHEMA)


@dataclass(frozen=True)
class Edit:
    """Text removed from a kept row (repeated paragraph inside it, or cross-document boilerplate)."""

    row_id: str
    location: str  # "text" or "messages[2]" / "chosen[0]" / "rejected[0]"
    operation: str  # "repeated_paragraph", "repeated_line" or "boilerplate"
    removed: str


def _cluster_records(rows: Sequence[Row], groups: Iterable[Sequence[int]], method: str, policy: KeepPolicy,
                     similarity: Callable[[int, int], float] | None = None,
                     links: dict[int, tuple[int, float]] | None = None,
                     remove: bool = True) -> list[ClusterMember]:
    out: list[ClusterMember] = []
    for group in groups:
        members = sorted(group)
        kept = members[policy.choose([rows[i] for i in members], members)]
        kept_id = rows[kept]["row_id"]
        cluster_id = f"{method}:{kept_id}"
        for i in members:
            if i == kept:
                out.append(ClusterMember(cluster_id, kept_id, kept_id, method, 1.0, kept_id, 1.0, False,
                                         f"kept: best of {len(members)} by policy"))
                continue
            jac = similarity(i, kept) if similarity else 1.0
            match, match_j = links.get(i, (kept, jac)) if links else (kept, jac)
            reason = policy.reason(rows[kept], rows[i], kept, i)
            out.append(ClusterMember(cluster_id, rows[i]["row_id"], kept_id, method, jac, rows[match]["row_id"],
                                     match_j, remove, reason))
    return out


# ---------------------------------------------------------------------------------------------
# Exact duplicates.

@dataclass(frozen=True)
class ExactConfig:
    fields: FieldSet = "prompt_response"
    normalize: NormalizeOptions = DEFAULT_OPTIONS


def exact_duplicates(rows: Sequence[Row], config: ExactConfig = ExactConfig(),
                     policy: KeepPolicy = KeepPolicy()) -> list[ClusterMember]:
    """Clusters of rows whose normalised field set is identical (only clusters of two or more).
    Rows with nothing in the compared fields (e.g. no user turn for ``first_prompt``) are skipped:
    empty is not a duplicate of empty."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if not dedup_text(row, config.fields).strip():
            continue
        groups[exact_key(row, config.fields, config.normalize)].append(i)
    return _cluster_records(rows, (g for g in groups.values() if len(g) > 1), f"exact:{config.fields}", policy)


# ---------------------------------------------------------------------------------------------
# Near duplicates.

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


def compute_signatures(texts: Sequence[str], config: NearConfig,
                       hasher: MinHasher | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Signatures and shingle counts of all texts, in batches (threads if ``config.workers > 1``)."""
    hasher = hasher or config.hasher()
    sig = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    counts = np.empty(len(texts), dtype=np.int64)
    for start, s, c in iter_signature_batches(hasher, texts, config.batch_size, config.workers):
        sig[start:start + len(s)] = s
        counts[start:start + len(c)] = c
    return sig, counts


def _component_order(pairs: np.ndarray) -> np.ndarray:
    """Pair order grouped by connected component (label propagation to the smallest member)."""
    if len(pairs) == 0:
        return np.zeros(0, dtype=np.int64)
    ids, local = np.unique(pairs, return_inverse=True)
    local = local.reshape(-1, 2)
    label = np.arange(ids.size)
    while True:
        low = np.minimum(label[local[:, 0]], label[local[:, 1]])
        new = label.copy()
        np.minimum.at(new, local[:, 0], low)
        np.minimum.at(new, local[:, 1], low)
        new = new[new]  # pointer jumping: long chains converge in log steps
        if np.array_equal(new, label):
            break
        label = new
    return np.argsort(label[local[:, 0]], kind="stable")


def pair_jaccards(hasher: MinHasher, pairs: np.ndarray, left_texts: Callable[[np.ndarray], Sequence[str]],
                  right_texts: Callable[[np.ndarray], Sequence[str]] | None = None,
                  chunk: int = 2048, workers: int = 1) -> np.ndarray:
    """Exact shingle Jaccard of each ``(left, right)`` pair, recomputing the shingles of only the
    documents involved, a chunk of pairs at a time (memory stays bounded). ``right_texts``
    defaults to ``left_texts`` (pairs within one collection)."""
    out = np.empty(len(pairs), dtype=np.float64)
    # Pairs of one near-duplicate group go into the same chunk, so each document is hashed once.
    order = _component_order(pairs) if right_texts is None else np.argsort(pairs[:, 0], kind="stable")
    local = threading.local()

    def work(lo: int) -> None:
        own = getattr(local, "hasher", None)
        if own is None:
            own = local.hasher = MinHasher(hasher.num_perm, hasher.seed, hasher.shingles, hasher.use_jit)
        sel = order[lo:lo + chunk]
        part = pairs[sel]
        if right_texts is None:
            ids = np.unique(part)
            texts = left_texts(ids)
            idx = np.searchsorted(ids, part)
            # Identical texts have identical shingle sets, so their Jaccard is exactly 1.0 without
            # hashing (exact copies are ~10% of candidate pairs; ~18% fewer documents to re-hash).
            same = np.fromiter((texts[i] == texts[j] for i, j in idx.tolist()), dtype=bool, count=len(idx))
            if same.any():
                out[sel[same]] = 1.0
                sel, idx = sel[~same], idx[~same]
                if not len(sel):
                    return
                needed = np.unique(idx)
                texts = [texts[i] for i in needed.tolist()]
                idx = np.searchsorted(needed, idx)
            values, offsets = own.shingle_hashes(texts)
        else:
            left_ids, right_ids = np.unique(part[:, 0]), np.unique(part[:, 1])
            values, offsets = own.shingle_hashes(list(left_texts(left_ids)) + list(right_texts(right_ids)))
            idx = np.stack([np.searchsorted(left_ids, part[:, 0]),
                            left_ids.size + np.searchsorted(right_ids, part[:, 1])], axis=1)
        out[sel] = pairs_jaccard(values, offsets, idx)

    starts = range(0, len(order), chunk)
    if workers > 1 and len(starts) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, starts))
    else:
        for lo in starts:
            work(lo)
    return out


def _estimates(signatures: np.ndarray, pairs: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = np.empty(len(pairs), dtype=np.float64)
    for lo in range(0, len(pairs), chunk):
        part = pairs[lo:lo + chunk]
        out[lo:lo + chunk] = estimated_jaccard(signatures[part[:, 0]], signatures[part[:, 1]])
    return out


SignatureSink = Callable[[int, np.ndarray, np.ndarray], None]


def near_duplicate_pairs(texts: Sequence[str], config: NearConfig = NearConfig(),
                         signatures: np.ndarray | None = None,
                         shingle_counts: np.ndarray | None = None,
                         sink: SignatureSink | None = None,
                         keep_signatures: bool = True) -> NearResult:
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
            raise ValueError(f"{len(signatures)} stored signatures and {len(shingle_counts)} counts "
                             f"for {n} texts: pass one per text, in the same order")
        for lo in range(0, n, 4096):
            keys[lo:lo + 4096] = band_keys(signatures[lo:lo + 4096], bands, rows)
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
    usable = np.flatnonzero(counts > 0)
    cand = usable[candidate_pairs(keys[usable], config.max_bucket, config.workers)]
    del keys
    result = NearResult(signatures, shingle_counts, np.zeros((0, 2), np.int64), np.zeros(0), len(cand))
    if len(cand):
        cand = cand[_estimates(sketch, cand) >= config.threshold - config.estimate_margin]
    result.n_verified = len(cand)
    if len(cand):
        jac = pair_jaccards(hasher, cand, lambda idx: [texts[i] for i in idx], workers=config.workers)
        keep = jac >= config.threshold - 1e-12
        result.pairs, result.jaccard = cand[keep], jac[keep]
    return result


def _union_find(n: int, pairs: np.ndarray) -> np.ndarray:
    parent = np.arange(n)

    def find(x: int) -> int:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    for a, b in pairs:
        ra, rb = find(int(a)), find(int(b))
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return np.array([find(i) for i in range(n)])


def near_clusters(rows: Sequence[Row], result: NearResult, config: NearConfig,
                  policy: KeepPolicy = KeepPolicy(),
                  texts: Sequence[str] | None = None) -> list[ClusterMember]:
    """Union-find clusters over verified pairs, one kept row each, with the exact Jaccard of every
    member to its kept row and the verified neighbour that linked it."""
    if len(result.pairs) == 0:
        return []
    involved = np.unique(result.pairs.ravel())
    local = {int(g): k for k, g in enumerate(involved)}
    roots = _union_find(len(involved), np.vectorize(local.get)(result.pairs))
    groups: dict[int, list[int]] = defaultdict(list)
    for k, r in enumerate(roots):
        groups[int(r)].append(int(involved[k]))
    best: dict[int, tuple[int, float]] = {}
    for (a, b), j in zip(result.pairs.tolist(), result.jaccard.tolist(), strict=True):
        for x, y in ((a, b), (b, a)):
            if x not in best or j > best[x][1] or (j == best[x][1] and y < best[x][0]):
                best[x] = (y, j)
    texts = texts if texts is not None else [dedup_text(r, config.fields) for r in rows]
    kept_of: dict[int, int] = {}
    ordered_groups = []
    for members in groups.values():
        members = sorted(members)
        kept = members[policy.choose([rows[i] for i in members], members)]
        kept_of.update({i: kept for i in members if i != kept})
        ordered_groups.append(members)
    to_kept = np.array(sorted(kept_of.items()), dtype=np.int64).reshape(-1, 2)
    jac = pair_jaccards(config.hasher(), to_kept, lambda idx: [texts[i] for i in idx])
    similarity = {int(i): float(j) for i, j in zip(to_kept[:, 0], jac, strict=True)}
    method = f"near:{config.fields}:{config.shingles.unit}{config.shingles.n}"
    return _cluster_records(rows, ordered_groups, method, policy,
                            similarity=lambda i, k: similarity[i], links=best)


SignatureStore = Mapping[str, tuple[np.ndarray, int]]
"""Known signatures by :func:`signature_key`: (signature, shingle count)."""


def signature_key(text: str, config: NearConfig) -> str:
    """What a stored signature is valid for: the compared text and every setting that shapes it."""
    settings = f"{config.num_perm}:{config.seed}:{config.shingles.unit}:{config.shingles.n}"
    return hashlib.sha256(f"{settings}\x1f{text}".encode()).hexdigest()[:32]


def signatures_with_store(texts: Sequence[str], config: NearConfig, known: SignatureStore
                          ) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Signatures of ``texts``, computing only those ``known`` lacks; also their keys and how many
    were computed (0 on unchanged input: no MinHash work)."""
    keys = [signature_key(t, config) for t in texts]
    signatures = np.empty((len(texts), config.num_perm), dtype=np.uint32)
    counts = np.empty(len(texts), dtype=np.int64)
    missing = [i for i, key in enumerate(keys) if key not in known]
    for i, key in enumerate(keys):
        if key in known:
            signatures[i], counts[i] = known[key]
    if missing:
        computed, computed_counts = compute_signatures([texts[i] for i in missing], config)
        signatures[missing], counts[missing] = computed, computed_counts
    return signatures, counts, keys, len(missing)


def near_duplicates(rows: Sequence[Row], config: NearConfig = NearConfig(), policy: KeepPolicy = KeepPolicy(),
                    known: SignatureStore | None = None) -> tuple[list[ClusterMember], NearResult]:
    """Near-duplicate clusters of ``rows`` on ``config.fields``; also returns signatures to persist.
    With ``known`` (signatures persisted by an earlier run) only new texts are MinHashed."""
    texts = [dedup_text(r, config.fields) for r in rows]
    if known is None:
        result = near_duplicate_pairs(texts, config)
    else:
        signatures, counts, _, _ = signatures_with_store(texts, config, known)
        result = near_duplicate_pairs(texts, config, signatures, counts)
    return near_clusters(rows, result, config, policy, texts), result


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
            raise ValueError(f"signatures have shape {signatures.shape}, expected (n, {self.config.num_perm}); "
                             "they were made with another num_perm and must be recomputed")
        self.index.add(signatures)
        for rid in row_ids:
            self._known[rid] = len(self.row_ids)
            self.row_ids.append(rid)

    def query(self, texts: Sequence[str], signatures: np.ndarray, shingle_counts: np.ndarray,
              fetch_texts: Callable[[list[str]], Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Verified ``(new_index, stored_position)`` pairs with their exact Jaccard."""
        usable = shingle_counts > 0
        cand = self.index.query(signatures, self.config.max_bucket)
        cand = cand[usable[cand[:, 0]]] if len(cand) else cand
        if len(cand) == 0:
            return np.zeros((0, 2), np.int64), np.zeros(0)
        jac = pair_jaccards(self.config.hasher(), cand, lambda idx: [texts[i] for i in idx],
                            lambda idx: fetch_texts([self.row_ids[i] for i in idx]))
        keep = jac >= self.config.threshold - 1e-12
        return cand[keep], jac[keep]


def incremental_near_duplicates(rows: Sequence[Row], index: NearDupIndex,
                                fetch_texts: Callable[[list[str]], Sequence[str]],
                                policy: KeepPolicy = KeepPolicy(),
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
    old_pairs, old_jac = index.query(texts, result.signatures, result.shingle_counts, fetch_texts)
    best: dict[int, tuple[int, float]] = {}
    for (i, pos), j in zip(old_pairs.tolist(), old_jac.tolist(), strict=True):
        if i not in best or j > best[i][1] or (j == best[i][1] and pos < best[i][0]):
            best[i] = (pos, j)
    if best:
        method = f"near:{config.fields}:{config.shingles.unit}{config.shingles.n}:existing"
        position = {r["row_id"]: i for i, r in enumerate(rows)}
        # Members whose batch-kept row matched a stored row (and that did not match one themselves).
        follow = [(position[m.row_id], best[position[m.kept_row_id]][0], m) for m in members
                  if m.row_id != m.kept_row_id and position[m.kept_row_id] in best
                  and position[m.row_id] not in best]
        jac = pair_jaccards(config.hasher(), np.array([(i, pos) for i, pos, _ in follow], np.int64).reshape(-1, 2),
                            lambda idx: [texts[i] for i in idx],
                            lambda idx: fetch_texts([index.row_ids[i] for i in idx]))
        redirected = {m.row_id: ClusterMember(f"{method}:{index.row_ids[pos]}", m.row_id, index.row_ids[pos],
                                              method, float(j), m.kept_row_id, m.jaccard, True,
                                              "its cluster's kept row duplicates an already stored row")
                      for (_, pos, m), j in zip(follow, jac, strict=True)}
        for i, (pos, j) in best.items():
            kept_id = index.row_ids[pos]
            redirected[rows[i]["row_id"]] = ClusterMember(f"{method}:{kept_id}", rows[i]["row_id"], kept_id,
                                                          method, j, kept_id, j, True,
                                                          "an already stored row is kept")
        members = [redirected.get(m.row_id, m) for m in members]
        listed = {m.row_id for m in members}
        members += [m for rid, m in sorted(redirected.items()) if rid not in listed]
    removed = {m.row_id for m in members if m.removed}
    survivors = [i for i, r in enumerate(rows) if r["row_id"] not in removed and r["row_id"] not in index]
    if result.signatures is not None:
        index.add([rows[i]["row_id"] for i in survivors], result.signatures[survivors])
    return members, result


# ---------------------------------------------------------------------------------------------
# Repeated paragraphs inside a document, and boilerplate across documents.

_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)
_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n")


def _blocks(text: str) -> list[tuple[str, bool]]:
    """The text as (block, is_code) pieces; fenced code blocks are never edited."""
    out: list[tuple[str, bool]] = []
    pos = 0
    fences = [m.start() for m in _FENCE.finditer(text)]
    for open_at, close_at in zip(fences[0::2], fences[1::2], strict=False):
        end = text.find("\n", close_at)
        end = len(text) if end < 0 else end + 1
        out.append((text[pos:open_at], False))
        out.append((text[open_at:end], True))
        pos = end
    out.append((text[pos:], False))
    return [(b, code) for b, code in out if b]


def _key(unit: str, options: NormalizeOptions) -> str:
    return normalize_text(unit, options)


@dataclass(frozen=True)
class WithinConfig:
    """Repeated units inside one text: ``paragraph`` (blank-line separated) or ``line``.
    Units shorter than ``min_chars`` (after normalisation) are never removed: short lines such as
    ``}`` or list bullets repeat legitimately."""

    unit: Literal["paragraph", "line"] = "paragraph"
    min_chars: int = 20
    normalize: NormalizeOptions = DEFAULT_OPTIONS


def remove_repeats(text: str, config: WithinConfig = WithinConfig()) -> tuple[str, list[str]]:
    """``text`` with later repeats of a paragraph (or line) removed; returns (text, removed units)."""
    seen: set[str] = set()
    removed: list[str] = []
    pieces: list[str] = []
    splitter = _PARAGRAPH_SPLIT if config.unit == "paragraph" else re.compile(r"\n")
    joiner = "\n\n" if config.unit == "paragraph" else "\n"
    for block, is_code in _blocks(text):
        if is_code:
            pieces.append(block)
            continue
        kept_units = []
        for unit in splitter.split(block):
            key = _key(unit, config.normalize)
            if len(key) >= config.min_chars and key in seen:
                removed.append(unit)
                continue
            seen.add(key)
            kept_units.append(unit)
        pieces.append(joiner.join(kept_units))
    return ("".join(pieces), removed) if removed else (text, [])


def _locations(row: Row) -> Iterable[tuple[str, str]]:
    if row.get("text"):
        yield "text", row["text"]
    for column in ("messages", "chosen", "rejected"):
        for k, message in enumerate(row.get(column) or []):
            if message.get("content"):
                yield f"{column}[{k}]", message["content"]


def _with_location(row: Row, location: str, text: str) -> Row:
    if location == "text":
        return {**row, "text": text}
    column, k = location[:-1].split("[")
    messages = [dict(m) for m in row[column]]
    messages[int(k)]["content"] = text
    return {**row, column: messages}


def remove_repeats_in_row(row: Row, config: WithinConfig = WithinConfig()) -> tuple[Row, list[Edit]]:
    """Apply :func:`remove_repeats` to each text field and message of a row (row kept, edits recorded)."""
    edits: list[Edit] = []
    for location, text in list(_locations(row)):
        new_text, removed = remove_repeats(text, config)
        if removed:
            row = _with_location(row, location, new_text)
            edits.extend(Edit(row["row_id"], location, f"repeated_{config.unit}", r) for r in removed)
    return row, edits


@dataclass(frozen=True)
class BoilerplateConfig:
    """A paragraph is boilerplate when it occurs in at least ``min_docs`` rows and in at least
    ``min_fraction`` of all rows (the C4 cleaning removed repeated spans across documents the same
    way; these thresholds are ours and configurable)."""

    min_docs: int = 10
    min_fraction: float = 0.001
    min_chars: int = 30
    normalize: NormalizeOptions = DEFAULT_OPTIONS
    # Only model-side text and documents: in instruction data a prompt shared by many rows ("Multiply the
    # two numbers.") with different inputs is the task itself, while boilerplate — sign-offs, disclaimers,
    # "I hope this helps!" — lives in responses and scraped documents.
    roles: tuple[str, ...] = ("assistant",)


def _boilerplate_locations(row: Row, config: BoilerplateConfig) -> Iterable[tuple[str, str]]:
    """Text rows' text and the messages whose role is in ``config.roles`` (chosen/rejected are assistant)."""
    for location, text in _locations(row):
        if location == "text" or location.startswith(("chosen", "rejected")):
            yield location, text
            continue
        column, k = location[:-1].split("[")
        if row[column][int(k)].get("role") in config.roles:
            yield location, text


def _paragraph_keys(text: str, config: BoilerplateConfig) -> Iterable[tuple[str, str]]:
    for block, is_code in _blocks(text):
        if is_code:
            continue
        for unit in _PARAGRAPH_SPLIT.split(block):
            key = _key(unit, config.normalize)
            if len(key) >= config.min_chars:
                yield unit, hashlib.blake2b(key.encode("utf-8"), digest_size=12).hexdigest()


def paragraph_counts(rows: Iterable[Row], config: BoilerplateConfig = BoilerplateConfig()) -> tuple[Counter[str], int]:
    """How many rows each (normalised, hashed) paragraph occurs in, and the number of rows.
    Streams: only the counter is held."""
    counts: Counter[str] = Counter()
    n = 0
    for row in rows:
        n += 1
        counts.update({key for _, text in _boilerplate_locations(row, config)
                       for _, key in _paragraph_keys(text, config)})
    return counts, n


def boilerplate_keys(counts: Counter[str], n_rows: int, config: BoilerplateConfig = BoilerplateConfig()) -> set[str]:
    floor = max(config.min_docs, math.ceil(config.min_fraction * n_rows))
    return {key for key, c in counts.items() if c >= floor}


def strip_boilerplate(row: Row, keys: set[str], config: BoilerplateConfig = BoilerplateConfig()
                      ) -> tuple[Row, list[Edit]]:
    """Remove boilerplate paragraphs from a row. A field made only of boilerplate is left as it is
    (a stock answer that is the whole response is content, not decoration; filters judge it)."""
    edits: list[Edit] = []
    for location, text in list(_boilerplate_locations(row, config)):
        hits = [unit for unit, key in _paragraph_keys(text, config) if key in keys]
        if not hits:
            continue
        pieces = []
        removed = []
        for block, is_code in _blocks(text):
            if is_code:
                pieces.append(block)
                continue
            units = _PARAGRAPH_SPLIT.split(block)
            kept = []
            for unit in units:
                key = _key(unit, config.normalize)
                digest = hashlib.blake2b(key.encode("utf-8"), digest_size=12).hexdigest()
                if len(key) >= config.min_chars and digest in keys:
                    removed.append(unit)
                else:
                    kept.append(unit)
            pieces.append("\n\n".join(kept))
        new_text = "".join(pieces)
        if not new_text.strip():
            continue
        row = _with_location(row, location, new_text.strip("\n") if new_text != text else text)
        edits.extend(Edit(row["row_id"], location, "boilerplate", r) for r in removed)
    return row, edits


# ---------------------------------------------------------------------------------------------
# One instruction, several responses.

ConflictMode = Literal["keep_best", "flag", "off"]


@dataclass(frozen=True)
class ConflictConfig:
    """Rows with the same normalised prompt but different responses. ``keep_best`` keeps one by
    :class:`KeepPolicy`; ``flag`` keeps all and records them (``removed = False``)."""

    mode: ConflictMode = "keep_best"
    prompt_fields: FieldSet = "prompt"
    normalize: NormalizeOptions = DEFAULT_OPTIONS


def same_prompt_conflicts(rows: Sequence[Row], config: ConflictConfig = ConflictConfig(),
                          policy: KeepPolicy = KeepPolicy()) -> list[ClusterMember]:
    """Clusters of rows sharing a prompt with at least two distinct responses."""
    if config.mode == "off":
        return []
    groups: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        if row.get("kind") in ("text", "prompt") or not prompt_text(row).strip():
            continue
        groups[exact_key(row, config.prompt_fields, config.normalize)].append(i)
    conflicted = []
    for members in groups.values():
        responses = {normalize_text(response_text(rows[i]), config.normalize) for i in members}
        if len(members) > 1 and len(responses) > 1:
            conflicted.append(members)
    return _cluster_records(rows, conflicted, f"same_prompt:{config.prompt_fields}", policy,
                            remove=config.mode == "keep_best")


# ---------------------------------------------------------------------------------------------
# Everything in order.

@dataclass(frozen=True)
class DedupConfig:
    within: WithinConfig | None = WithinConfig()
    boilerplate: BoilerplateConfig | None = BoilerplateConfig()
    exact: ExactConfig | None = ExactConfig()
    near: NearConfig | None = NearConfig()
    conflicts: ConflictConfig = ConflictConfig()
    policy: KeepPolicy = field(default_factory=KeepPolicy)


@dataclass
class DedupResult:
    kept: list[Row]
    members: list[ClusterMember]
    edits: list[Edit]
    signatures: np.ndarray | None  # aligned with the rows that reached the near stage
    signature_row_ids: list[str]
    signature_keys: list[str] = field(default_factory=list)  # signature_key of each, to persist them
    shingle_counts: np.ndarray | None = None
    signatures_computed: int = 0  # MinHash work done (0 on unchanged input with known signatures)

    @property
    def removed_ids(self) -> set[str]:
        return {m.row_id for m in self.members if m.removed}


def dedup_rows(rows: Sequence[Row], config: DedupConfig = DedupConfig(),
               known_signatures: SignatureStore | None = None) -> DedupResult:
    """In-text edits, then exact, near and same-prompt dedup, each on the previous stage's survivors.
    Each removed row appears once in ``members`` (the stage that removed it). ``known_signatures``
    (persisted by an earlier run, see :func:`signature_key`) spares MinHash work on texts seen before."""
    rows = list(rows)
    edits: list[Edit] = []
    if config.within is not None:
        out = []
        for row in rows:
            row, e = remove_repeats_in_row(row, config.within)
            out.append(row)
            edits.extend(e)
        rows = out
    if config.boilerplate is not None:
        counts, n = paragraph_counts(rows, config.boilerplate)
        keys = boilerplate_keys(counts, n, config.boilerplate)
        if keys:
            out = []
            for row in rows:
                row, e = strip_boilerplate(row, keys, config.boilerplate)
                out.append(row)
                edits.extend(e)
            rows = out
    members: list[ClusterMember] = []

    def survivors(current: list[Row], stage: list[ClusterMember]) -> list[Row]:
        gone = {m.row_id for m in stage if m.removed}
        return [r for r in current if r["row_id"] not in gone]

    if config.exact is not None:
        stage = exact_duplicates(rows, config.exact, config.policy)
        members.extend(stage)
        rows = survivors(rows, stage)
    result = DedupResult([], [], edits, None, [])
    if config.near is not None and rows:
        texts = [dedup_text(r, config.near.fields) for r in rows]
        signatures, counts, keys, computed = signatures_with_store(texts, config.near, known_signatures or {})
        pairs = near_duplicate_pairs(texts, config.near, signatures, counts)
        stage = near_clusters(rows, pairs, config.near, config.policy, texts)
        members.extend(stage)
        result = DedupResult([], [], edits, signatures, [r["row_id"] for r in rows], keys, counts, computed)
        rows = survivors(rows, stage)
    stage = same_prompt_conflicts(rows, config.conflicts, config.policy)
    members.extend(stage)
    result.kept, result.members = survivors(rows, stage), members
    return result


def with_license_note(row: Row, members: Sequence[ClusterMember], rows_by_id: dict[str, Row]) -> Row:
    """The kept row with the licences of the rows it absorbed listed in ``extra.dedup_sources``
    (so a merged row keeps both provenances on the row itself, not only in dedup_clusters)."""
    absorbed = [rows_by_id[m.row_id] for m in members if m.removed and m.kept_row_id == row["row_id"]]
    if not absorbed:
        return row
    extra = dict(row.get("extra") or {})
    extra["dedup_sources"] = [{"row_id": r["row_id"], "source": r.get("source"), "license": r.get("license"),
                               "source_uri": r.get("source_uri")} for r in absorbed]
    return {**row, "extra": extra}


__all__ = [
    "CLUSTER_SCHEMA",
    "FIELD_SETS",
    "BoilerplateConfig",
    "ClusterMember",
    "ConflictConfig",
    "DedupConfig",
    "DedupResult",
    "Edit",
    "ExactConfig",
    "KeepPolicy",
    "NearConfig",
    "NearDupIndex",
    "NearResult",
    "WithinConfig",
    "boilerplate_keys",
    "clusters_table",
    "compute_signatures",
    "dedup_rows",
    "dedup_text",
    "default_quality",
    "exact_duplicates",
    "exact_key",
    "field_parts",
    "incremental_near_duplicates",
    "near_clusters",
    "near_duplicate_pairs",
    "near_duplicates",
    "pair_jaccards",
    "paragraph_counts",
    "remove_repeats",
    "remove_repeats_in_row",
    "same_prompt_conflicts",
    "strip_boilerplate",
    "with_license_note",
]


def config_from_settings(exact_fields: FieldSet = "prompt_response", lowercase: bool = True,
                         strip_punctuation: bool = False, near: Mapping[str, Any] | bool = True,
                         within: Mapping[str, Any] | bool = True, boilerplate: Mapping[str, Any] | bool = True,
                         conflicts: Mapping[str, Any] | None = None) -> DedupConfig:
    """A :class:`DedupConfig` from the project file's ``dedup:`` section, with errors naming the key."""
    normalize = NormalizeOptions(lowercase=lowercase, strip_punctuation=strip_punctuation)

    def build(name: str, factory: Callable[..., Any], settings: Mapping[str, Any] | bool, **fixed: Any) -> Any:
        if settings is False:
            return None
        params = dict(settings) if isinstance(settings, Mapping) else {}
        try:
            return factory(**fixed, **params)
        except TypeError as error:
            raise ValueError(f"dedup.{name}: {error}; see the README for the keys it takes") from error

    near_settings = dict(near) if isinstance(near, Mapping) else near
    if isinstance(near_settings, dict) and ("unit" in near_settings or "n" in near_settings):
        near_settings["shingles"] = ShingleConfig(near_settings.pop("unit", "word"), near_settings.pop("n", 5))
    return DedupConfig(
        within=build("within", WithinConfig, within, normalize=normalize),
        boilerplate=build("boilerplate", BoilerplateConfig, boilerplate, normalize=normalize),
        exact=ExactConfig(fields=exact_fields, normalize=normalize),
        near=build("near", NearConfig, near_settings),
        conflicts=build("conflicts", ConflictConfig, dict(conflicts or {}), normalize=normalize) or ConflictConfig(),
    )
