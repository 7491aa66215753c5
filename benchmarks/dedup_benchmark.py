"""Near-duplicate stage benchmark: curation.dedup.near against plain datasketch, on real text.

Corpus: documents of 50-400 words cut from Python docstrings of the installed packages and the
standard library, plus injected exact copies and near copies. Near copies are made by editing
contiguous spans (replace, delete or insert a run of words), because random single-word edits drop
word 5-gram Jaccard far below 0.8. The ground truth is *every* pair with word 5-gram Jaccard >= 0.8,
found exactly (AllPairs prefix filtering, Bayardo et al. 2007, then exact set intersection) on an
independent tokenisation, so natural near duplicates in the docstrings count too.

Reported in one run: docs/s of the near-duplicate stage on one and on two threads, the ratio to
plain datasketch (one MinHash per document, ``update`` per shingle, ``MinHashLSH`` at 0.8) measured
on a sample, precision and recall at Jaccard >= 0.8 by Jaccard band (ours, and datasketch's LSH at
0.8 reporting its candidates), and peak memory (tracemalloc) at two corpus sizes.

    .venv/bin/python -m benchmarks.dedup_benchmark            # 200,000 documents, a few minutes
    .venv/bin/python -m benchmarks.dedup_benchmark --docs 5000  # smoke run
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import re
import resource
import sysconfig
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from curation.core.normalize import words
from curation.dedup.minhash import MinHasher, band_keys, candidate_pairs, lsh_params
from curation.dedup.near import NearConfig, near_duplicate_pairs

THRESHOLD = 0.8
BANDS = ((0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0), (1.0, 1.01))
_DOCSTRING = re.compile(r'(?:"""|\'\'\')(.*?)(?:"""|\'\'\')', re.S)


# ---------------------------------------------------------------------------------------------
# Corpus.


def docstring_pool(max_words: int = 4_000_000) -> list[list[str]]:
    """Distinct docstrings (as word lists, whitespace-split) from the interpreter's own sources."""
    paths = sysconfig.get_paths()
    roots = sorted({Path(paths[key]) for key in ("purelib", "platlib", "stdlib") if Path(paths[key]).is_dir()})
    seen: set[str] = set()
    units: list[list[str]] = []
    total = 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                source = path.read_text("utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for match in _DOCSTRING.finditer(source):
                text = " ".join(match.group(1).split())
                if len(text) < 40 or text in seen:
                    continue
                seen.add(text)
                units.append(text.split(" "))
                total += len(units[-1])
            if total >= max_words:
                return units
    if not units:
        raise SystemExit("no docstrings found under sys.path: the corpus needs Python sources")
    return units


def _span_edit(doc: list[str], rng: np.random.Generator, vocab: list[str]) -> list[str]:
    out = list(doc)
    for _ in range(int(rng.integers(1, 3))):
        length = len(out)
        span = int(rng.integers(1, max(2, int(length * rng.uniform(0.02, 0.12)))))
        at = int(rng.integers(0, max(1, length - span)))
        op = rng.integers(3)
        fresh = [vocab[k] for k in rng.integers(0, len(vocab), span)]
        if op == 0:
            out[at : at + span] = fresh
        elif op == 1:
            del out[at : at + span]
        else:
            out[at:at] = fresh
    return out


def build_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], int, int]:
    """``n_docs`` texts: ~85% distinct docstring mixes, 5% exact copies, 10% span-edited copies."""
    rng = np.random.default_rng(seed)
    pool = docstring_pool()
    vocab = sorted({w for unit in pool[:5000] for w in unit})
    n_exact = n_docs // 20
    n_near = n_docs // 10
    n_base = n_docs - n_exact - n_near
    docs: list[list[str]] = []
    for length in rng.integers(50, 401, n_base):
        ws: list[str] = []
        while len(ws) < length:
            ws.extend(pool[int(rng.integers(len(pool)))])
        docs.append(ws[:length])
    for k in rng.integers(0, n_base, n_exact):
        docs.append(docs[int(k)])
    for k in rng.integers(0, n_base, n_near):
        docs.append(_span_edit(docs[int(k)], rng, vocab))
    order = rng.permutation(len(docs))
    return [" ".join(docs[int(i)]) for i in order], n_exact, n_near


# ---------------------------------------------------------------------------------------------
# Exact ground truth (independent of curation.dedup.minhash: its own tokens, ids and 64-bit keys).


def shingle_sets(texts: Sequence[str], n: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique 64-bit word n-gram keys per document (CSR: values, offsets)."""
    ascii_word = re.compile(r"\w+")
    vocab: dict[str, int] = {}
    parts: list[np.ndarray] = []
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    mult = np.uint64(0x100000001B3)
    for i, text in enumerate(texts):
        toks = ascii_word.findall(text.lower()) if text.isascii() else words(text)
        ids = np.fromiter((vocab.setdefault(t, len(vocab) + 1) for t in toks), dtype=np.uint64, count=len(toks))
        if ids.size == 0:
            keys = ids
        elif ids.size < n:
            keys = np.array([hash(tuple(ids.tolist())) & ((1 << 63) - 1)], dtype=np.uint64)
        else:
            m = ids.size - n + 1
            keys = ids[:m].copy()
            for k in range(1, n):
                keys = keys * mult + ids[k : k + m]
        keys = np.unique(keys)
        parts.append(keys)
        offsets[i + 1] = offsets[i] + keys.size
    return np.concatenate(parts), offsets


def jaccard_csr(values: np.ndarray, offsets: np.ndarray, a: int, b: int) -> float:
    x, y = values[offsets[a] : offsets[a + 1]], values[offsets[b] : offsets[b + 1]]
    inter = np.intersect1d(x, y, assume_unique=True).size
    union = x.size + y.size - inter
    return inter / union if union else 1.0


def all_pairs(values: np.ndarray, offsets: np.ndarray, t: float) -> dict[tuple[int, int], float]:
    """Every pair with Jaccard >= t: prefix filtering by global rarity, then exact verification."""
    sizes = np.diff(offsets)
    doc_of = np.repeat(np.arange(sizes.size), sizes)
    uniq, inverse, df = np.unique(values, return_inverse=True, return_counts=True)
    # Global order: rarest first (ties by value), as a rank per distinct token.
    rank = np.empty(uniq.size, dtype=np.int64)
    rank[np.argsort(df.astype(np.int64) * (uniq.size + 1) + np.arange(uniq.size))] = np.arange(uniq.size)
    token_rank = rank[inverse]
    del uniq, inverse, df, rank
    # Each document's tokens by rank (documents are already contiguous): one sort on a packed key.
    order = np.argsort((doc_of.astype(np.int64) << 32) | token_rank)
    pos_in_doc = np.arange(values.size) - np.repeat(offsets[:-1], sizes)
    prefix_len = sizes - np.ceil(t * sizes).astype(np.int64) + 1
    in_prefix = pos_in_doc < prefix_len[doc_of]
    tok = token_rank[order][in_prefix]
    doc = doc_of[in_prefix]
    by_tok = np.argsort((tok << 32) | doc)
    tok, doc = tok[by_tok], doc[by_tok]
    starts = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])
    run = np.diff(np.r_[starts, tok.size])
    start, size = starts[run > 1], run[run > 1]
    pos = np.repeat(start, size) + np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
    rank_in = pos - np.repeat(start, size)
    bucket = np.repeat(size, size)
    codes = []
    for gap in range(1, int(size.max()) if size.size else 1):
        live = rank_in + gap < bucket
        pos, rank_in, bucket = pos[live], rank_in[live], bucket[live]
        a, b = doc[pos], doc[pos + gap]
        ok = np.minimum(sizes[a], sizes[b]) >= t * np.maximum(sizes[a], sizes[b])  # length filter
        lo, hi = np.minimum(a, b)[ok], np.maximum(a, b)[ok]
        codes.append((lo.astype(np.int64) << 32) | hi)
    code = np.unique(np.concatenate(codes)) if codes else np.zeros(0, np.int64)
    candidates = zip((code >> 32).tolist(), (code & 0xFFFFFFFF).tolist(), strict=True)
    truth = {}
    for a, b in candidates:
        j = jaccard_csr(values, offsets, a, b)
        if j >= t - 1e-12:
            truth[(a, b)] = j
    return truth


# ---------------------------------------------------------------------------------------------
# Runs.


class Clock:
    """Wall and CPU seconds of a block: CPU time (all threads of this process) is what to compare
    when other work shares the machine; wall time is what a user waits."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_ours(texts: Sequence[str], workers: int) -> tuple[Clock, dict[tuple[int, int], float], int, int]:
    config = NearConfig(threshold=THRESHOLD, workers=workers)
    gc.collect()
    with Clock() as clock:
        result = near_duplicate_pairs(texts, config)
    pairs = {(int(a), int(b)): float(j) for (a, b), j in zip(result.pairs, result.jaccard, strict=True)}
    return clock, pairs, result.n_candidates, result.n_verified


def run_datasketch(texts: Sequence[str]) -> Clock:
    """Plain datasketch: MinHash per document, update per shingle, MinHashLSH(0.8) query + insert."""
    from datasketch import MinHash, MinHashLSH

    with Clock() as clock:
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
        for i, text in enumerate(texts):
            toks = words(text)
            m = MinHash(num_perm=128)
            for k in range(max(1, len(toks) - 4)):
                m.update(" ".join(toks[k : k + 5]).encode("utf-8"))
            lsh.query(m)
            lsh.insert(i, m)
    return clock


def run_datasketch_bulk(texts: Sequence[str]) -> Clock:
    from datasketch import MinHash, MinHashLSH

    with Clock() as clock:
        sets = []
        for text in texts:
            toks = words(text)
            sets.append([" ".join(toks[k : k + 5]).encode("utf-8") for k in range(max(1, len(toks) - 4))])
        lsh = MinHashLSH(threshold=THRESHOLD, num_perm=128)
        for i, m in enumerate(MinHash.bulk(sets, num_perm=128)):
            lsh.query(m)
            lsh.insert(i, m)
    return clock


def plain_lsh_pairs(texts: Sequence[str]) -> dict[tuple[int, int], float]:
    """What datasketch's MinHashLSH at 0.8 reports on the whole corpus: its candidates, unverified.
    Uses our signatures, which equal datasketch's for the same hash function (tested), and
    datasketch's own (bands, rows) for 0.8."""
    hasher = MinHasher(128, 1)
    sig = np.concatenate([hasher.signatures(texts[i : i + 1000]) for i in range(0, len(texts), 1000)])
    b, r = lsh_params(THRESHOLD, 128)
    return {(int(x), int(y)): 0.0 for x, y in candidate_pairs(band_keys(sig, b, r))}


def peak_memory(texts: Sequence[str], keep_signatures: bool) -> float:
    """Peak MiB allocated (tracemalloc: Python objects and numpy buffers) by the stage, one thread.
    ``keep_signatures=False`` is the streaming mode: each signature batch goes to a sink (here it
    is dropped; the asset writes it to the warehouse) and only band keys and 16-bit sketches stay."""
    gc.collect()
    tracemalloc.start()
    near_duplicate_pairs(
        texts,
        NearConfig(threshold=THRESHOLD, workers=1),
        sink=None if keep_signatures else (lambda start, sig, counts: None),
        keep_signatures=keep_signatures,
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def score(
    found: dict[tuple[int, int], float], truth: dict[tuple[int, int], float]
) -> list[tuple[str, int, int, float]]:
    rows = []
    for lo, hi in BANDS:
        band = {p for p, j in truth.items() if lo <= j < hi}
        hit = sum(1 for p in band if p in found)
        rows.append(
            (
                f"[{lo:.2f}, {min(hi, 1.0):.2f}{']' if hi > 1 else ')'}",
                len(band),
                hit,
                hit / len(band) if band else math.nan,
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument(
        "--baseline-docs", type=int, default=3000, help="sample size for the (slow) plain datasketch throughput"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    texts, n_exact, n_near = build_corpus(args.docs, args.seed)
    n_words = sum(t.count(" ") + 1 for t in texts)
    print(
        f"corpus: {len(texts):,} docs, {n_words / len(texts):.0f} words/doc on average, "
        f"{n_exact:,} exact and {n_near:,} span-edited copies injected ({time.perf_counter() - t0:.1f}s)"
    )

    t0 = time.perf_counter()
    values, offsets = shingle_sets(texts)
    truth = all_pairs(values, offsets, THRESHOLD)
    del values, offsets
    print(
        f"ground truth: {len(truth):,} pairs with word-5-gram Jaccard >= {THRESHOLD} "
        f"(exact all-pairs, {time.perf_counter() - t0:.1f}s)"
    )

    MinHasher().signatures(texts[:10])  # compile/load the kernels outside the timings
    sample = texts[: args.baseline_docs]
    load_before = os.getloadavg()[0]
    base = run_datasketch(sample)
    bulk = run_datasketch_bulk(sample)
    c1, ours1, cand, verified = run_ours(texts, 1)
    c2, ours2, _, _ = run_ours(texts, 2)
    assert ours1 == ours2, "one and two threads must find the same pairs"
    load_after = os.getloadavg()[0]
    plain = plain_lsh_pairs(texts)

    print("\nthroughput (near-duplicate stage: shingles, signatures, LSH, exact verification)")
    print(f"  {'method':<40}{'docs/s':>10}{'docs/CPU-s':>12}{'x baseline':>12}")
    base_wall, base_cpu = len(sample) / base.wall, len(sample) / base.cpu
    for label, n, clock in (
        ("datasketch MinHash.update + MinHashLSH", len(sample), base),
        ("datasketch MinHash.bulk + MinHashLSH", len(sample), bulk),
        ("Distillery, 1 thread", len(texts), c1),
        ("Distillery, 2 threads", len(texts), c2),
    ):
        print(f"  {label:<40}{n / clock.wall:>10,.0f}{n / clock.cpu:>12,.0f}{n / clock.wall / base_wall:>12.1f}")
    b, r = NearConfig().params
    print(
        f"  (ours: {b} bands x {r} rows = datasketch's optimum for 0.6; {cand:,} candidate pairs, "
        f"{verified:,} verified exactly; baseline measured on {len(sample):,} docs; "
        f"load average {load_before:.1f} before, {load_after:.1f} after on {os.cpu_count()} cores; "
        f"x baseline by CPU time: {len(texts) / c1.cpu / base_cpu:.0f})"
    )

    print(f"\nquality against the ground truth at Jaccard >= {THRESHOLD}")
    for label, found in (("Distillery", ours1), (f"datasketch LSH at 0.8 {lsh_params(THRESHOLD, 128)}", plain)):
        tp = sum(1 for p in found if p in truth)
        precision = tp / len(found) if found else math.nan
        recall = tp / len(truth) if truth else math.nan
        print(f"  {label}: precision {precision:.4f}  recall {recall:.4f}  ({len(found):,} pairs reported)")
        for band, n, _hit, rec in score(found, truth):
            print(f"      true J in {band:<14} {n:>8,} pairs  recall {rec:.4f}")

    small = texts[: len(texts) // 4]
    print("\npeak memory of the stage (tracemalloc, one thread)")
    for keep, label in ((True, "signatures kept in memory"), (False, "signatures streamed to a sink")):
        mem_small, mem_full = peak_memory(small, keep), peak_memory(texts, keep)
        per_million = (mem_full - mem_small) / (len(texts) - len(small)) * 1e6 / 1024
        print(
            f"  {label:<31}{len(small):>9,} docs: {mem_small:7.1f} MiB{len(texts):>10,} docs: "
            f"{mem_full:7.1f} MiB  -> +{per_million:.2f} GiB per million docs"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  (process max RSS including corpus and ground truth: {rss:,.0f} MiB)")


if __name__ == "__main__":
    main()
