"""Batched MinHash signatures, LSH banding and exact Jaccard, compatible with ``datasketch``.

Signatures equal ``datasketch.MinHash(num_perm, seed, hashfunc=MinHasher.hashfunc)`` ones under
datasketch 2.x's default ``affine32`` scheme (MurmurHash3 32-bit finalizer on the input hash, then
``a·h + b mod 2^32`` with datasketch's seeded ``a``/``b``), so they can be loaded as
``LeanMinHash(seed=…, hashvalues=…, scheme="affine32")`` and used with its LSH and storage
backends. Work is done a batch of ~1,000 documents at a time:

* the batch is one UTF-8 buffer; a 256-entry table lower-cases ASCII letters and turns every other
  non-word byte into a space, so tokens are runs of non-space bytes (no regex per document);
* a token is hashed from unaligned 8-byte little-endian reads of the buffer (one fmix64 per
  8 bytes); a word n-gram hash is a position-weighted sum of its token hashes, then fmix64;
* with numba installed a compiled kernel does all of that and the ``num_perm`` permutations in one
  pass per document, releasing the GIL so threads can share the cores; without it the same hashes
  are computed with numpy (identical results, several times slower). The kernel finds token
  boundaries 8 bytes at a time (SWAR) and applies the permutations per document, permutation-outer,
  so the min over shingles stays in vector registers;
* buffers are allocated once and reused: touching fresh memory pages dominates on small VMs.

Tokens are exactly :func:`curation.core.normalize.words` (NFKC, casefold, ``\\w+``): ASCII documents take
the byte path directly; in the others only the non-ASCII runs are normalised in Python first.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import threading
import unicodedata
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# ---------------------------------------------------------------------------------------------
# Hash primitives (numpy and pure-Python versions must agree bit for bit; tests check it).

_M64 = (1 << 64) - 1
_U64 = np.uint64
# MurmurHash3 fmix64 constants (Appleby, public domain reference implementation).
_F64_1 = 0xFF51AFD7ED558CCD
_F64_2 = 0xC4CEB9FE1A85EC53
# Seeds for the length and per-position weights of a word shingle (arbitrary odd constants).
_LEN_MULT = 0x9E3779B97F4A7C15
_POSITION_MULTS = (
    0xA0761D6478BD642F,
    0xE7037ED1A0B428DB,
    0x8EBC6AF09C88C6E3,
    0x589965CC75374CC3,
    0x1D8E4E27C47D124F,
    0xD6E8FEB86659FD93,
    0xCA5A826395121157,
    0x87C37B91114253D5,
)
MAX_WORD_N = len(_POSITION_MULTS)
# datasketch's "empty" MinHash value under affine32.
EMPTY_VALUE = np.uint32(0xFFFFFFFF)


def _fmix64_int(h: int) -> int:
    h ^= h >> 33
    h = (h * _F64_1) & _M64
    h ^= h >> 33
    h = (h * _F64_2) & _M64
    return h ^ (h >> 33)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 fmix64 in place on a uint64 array (wrap-around multiplication is intended)."""
    h ^= h >> _U64(33)
    h *= _U64(_F64_1)
    h ^= h >> _U64(33)
    h *= _U64(_F64_2)
    h ^= h >> _U64(33)
    return h


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3 fmix32 in place, as datasketch applies it to every input hash (affine32)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def token_hash64(token: bytes) -> int:
    """64-bit hash of one token (or one character n-gram): 8-byte chunks folded with fmix64."""
    h = (len(token) * _LEN_MULT) & _M64
    for start in range(0, len(token), 8):
        h = _fmix64_int(h ^ int.from_bytes(token[start : start + 8], "little"))
    return h


def _combine_int(token_hashes: Sequence[int]) -> int:
    acc = 0
    for position, value in enumerate(token_hashes):
        acc = (acc + value * _POSITION_MULTS[position]) & _M64
    return _fmix64_int(acc)


def _to_bytes(shingle: bytes | str) -> bytes:
    return shingle.encode("utf-8") if isinstance(shingle, str) else shingle


def word_shingle_hash64(shingle: bytes | str) -> int:
    """64-bit hash of a word shingle given as its words joined by single spaces."""
    return _combine_int([token_hash64(t) for t in _to_bytes(shingle).split(b" ")])


def word_shingle_hash32(shingle: bytes | str) -> int:
    """The 32-bit hash datasketch sees for a word shingle (high half of the 64-bit one)."""
    return word_shingle_hash64(shingle) >> 32


def char_shingle_hash64(shingle: bytes | str) -> int:
    """64-bit hash of a character shingle (its UTF-8 bytes)."""
    return _fmix64_int(token_hash64(_to_bytes(shingle)))


def char_shingle_hash32(shingle: bytes | str) -> int:
    return char_shingle_hash64(shingle) >> 32


# ---------------------------------------------------------------------------------------------
# Tokenising a batch.

# Byte → byte table: ASCII letters lower-cased, ASCII [0-9_] kept, other ASCII → space, non-ASCII
# bytes kept (only present after `words()` has already normalised the document).
_WORD_TABLE = bytes(
    (c + 32 if 65 <= c <= 90 else c) if (c >= 128 or chr(c).isalnum() or c == 95) else 32 for c in range(256)
)
_SPACE = 32
_LOW_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [_M64], dtype=np.uint64)
_PAD = b" " + b"\0" * 8  # trailing space ends the last token; zeros make 8-byte reads safe
_TABLE_ARRAY = np.frombuffer(_WORD_TABLE, dtype=np.uint8).copy()
_NO_OUTPUT = np.zeros(0, dtype=np.uint64)
_NO_SIG = np.zeros((0, 0), dtype=np.uint32)


# A run of non-ASCII bytes with the ASCII character before it: NFKC can compose that character
# with combining marks in the run (e.g. "e" + U+0301), and never reaches further (ASCII characters
# are starters that nothing composes onto), so normalising the run alone is exact.
_NON_ASCII_RUN = re.compile(rb"[\x00-\x7f]?[\x80-\xff]+")


@functools.lru_cache(maxsize=8192)
def _clean_run(run: bytes) -> bytes:
    # `\w` in Python's re is "isalnum() or underscore"; every other character splits words.
    text = unicodedata.normalize("NFKC", run.decode("utf-8")).casefold()
    return "".join(c if c.isalnum() or c == "_" else " " for c in text).encode("utf-8")


def _word_buffer(texts: Sequence[str]) -> tuple[bytes, np.ndarray]:
    """The batch as one buffer ``" doc0 doc1 … "`` for ``_WORD_TABLE`` and each document's
    [start, end) bytes. Non-ASCII runs are found with numpy over the whole buffer (a regex per
    document cost more than the hashing) and replaced by :func:`_clean_run` output."""
    parts = [t.encode("utf-8") for t in texts]
    raw = b" ".join([b"", *parts, b""])
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    bounds = np.empty((len(parts), 2), dtype=np.int64)
    if len(parts):
        np.cumsum(lengths + 1, out=bounds[:, 1])
        bounds[:, 0] = bounds[:, 1] - lengths
    if raw.isascii():
        return raw, bounds
    high = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8) >= 0x80)  # few: nonzero on bool is fast
    cut = np.flatnonzero(np.diff(high) > 1) + 1
    run_start = high[np.r_[0, cut]] - 1  # with the ASCII byte before each run (raw starts with a space)
    run_end = high[np.r_[cut - 1, high.size - 1]] + 1
    pieces: list[bytes] = []
    deltas = np.empty(run_end.size, dtype=np.int64)
    pos = 0
    for k, (lo, hi) in enumerate(zip(run_start.tolist(), run_end.tolist(), strict=True)):
        pieces.append(raw[pos:lo])
        cleaned = _clean_run(raw[lo:hi])
        pieces.append(cleaned)
        deltas[k] = len(cleaned) - (hi - lo)
        pos = hi
    pieces.append(raw[pos:])
    # A run at a document's start begins with the separator space, which stays one space, so a
    # document's start moves by the runs ending before it and its end by the runs ending by then.
    shift = np.r_[0, np.cumsum(deltas)]
    bounds += shift[np.searchsorted(run_end, bounds, side="right")]
    return b"".join(pieces), bounds


def _word_bytes(text: str) -> bytes:
    """A document as bytes whose non-space runs, after ``_WORD_TABLE``, are exactly
    ``normalize.words(text)``. ASCII letters are lower-cased later by the table; only the
    non-ASCII runs are normalised and case-folded here (doing the whole string is slow)."""
    if text.isascii():
        return text.encode("ascii")
    return _NON_ASCII_RUN.sub(lambda m: _clean_run(m.group()), text.encode("utf-8"))


def _char_bytes(text: str) -> bytes:
    """Normalised text for character shingles: NFKC, casefold, whitespace collapsed (UTF-8 bytes;
    for non-ASCII text a "character" n-gram is a byte n-gram)."""
    if text.isascii():
        return " ".join(text.lower().split()).encode("ascii")
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).encode("utf-8")


def _u64_reader(buf: bytes) -> np.ndarray:
    """uint64 little-endian read at every byte offset of ``buf`` (read-only, no copy)."""
    return np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))


def _hash_spans(reader: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Vectorised :func:`token_hash64` over byte spans of the buffer behind ``reader``."""
    h = lengths.astype(np.uint64) * _U64(_LEN_MULT)
    first = reader[starts] & _LOW_MASKS[np.minimum(lengths, 8)]
    h ^= first
    _fmix64(h)
    long_idx = np.flatnonzero(lengths > 8)
    offset = 8
    while long_idx.size:
        rest = lengths[long_idx] - offset
        chunk = reader[starts[long_idx] + offset] & _LOW_MASKS[np.minimum(rest, 8)]
        sub = h[long_idx] ^ chunk
        h[long_idx] = _fmix64(sub)
        offset += 8
        long_idx = long_idx[rest > 8]
    return h


@dataclass(frozen=True)
class ShingleConfig:
    """What a document's set is made of: word n-grams (default 5) or character n-grams."""

    unit: Literal["word", "char"] = "word"
    n: int = 5

    def __post_init__(self) -> None:
        if self.unit not in ("word", "char"):
            raise ValueError(f"ShingleConfig.unit must be 'word' or 'char', got {self.unit!r}")
        limit = MAX_WORD_N if self.unit == "word" else 64
        if not 1 <= self.n <= limit:
            raise ValueError(f"ShingleConfig.n must be in 1..{limit} for {self.unit} shingles, got {self.n}")

    def shingles(self, text: str) -> list[bytes]:
        """The shingles of one document as bytes (slow reference; the batch path never builds them)."""
        if self.unit == "word":
            toks = _word_bytes(text).translate(_WORD_TABLE).split()
            if not toks:
                return []
            if len(toks) < self.n:
                return [b" ".join(toks)]
            return [b" ".join(toks[i : i + self.n]) for i in range(len(toks) - self.n + 1)]
        data = _char_bytes(text)
        if not data:
            return []
        if len(data) < self.n:
            return [data]
        return [data[i : i + self.n] for i in range(len(data) - self.n + 1)]

    @property
    def hashfunc32(self) -> Callable[[bytes | str], int]:
        """The ``hashfunc`` to give ``datasketch.MinHash`` so it reproduces our signatures."""
        return word_shingle_hash32 if self.unit == "word" else char_shingle_hash32

    @property
    def hashfunc64(self) -> Callable[[bytes | str], int]:
        return word_shingle_hash64 if self.unit == "word" else char_shingle_hash64


DEFAULT_SHINGLES = ShingleConfig()


@dataclass
class ShingleBatch:
    """Shingle hashes of a batch: document ``i`` owns ``hashes[offsets[i]:offsets[i+1]]``."""

    hashes: np.ndarray  # uint64, in document order, duplicates kept
    offsets: np.ndarray  # int64, len = n_docs + 1

    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)


def shingle_batch(texts: Sequence[str], config: ShingleConfig) -> ShingleBatch:
    """64-bit shingle hashes of every document in ``texts`` (a batch of ~1,000 suits the cache)."""
    if config.unit == "word":
        return _word_shingles(texts, config.n)
    return _char_shingles(texts, config.n)


def _batch_buffer(parts: list[bytes]) -> tuple[bytes, np.ndarray]:
    """Documents joined by spaces, with a leading space, and each document's [start, end) bytes."""
    lengths = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    starts = np.empty(len(parts), dtype=np.int64)
    if len(parts):
        starts[0] = 1
        np.cumsum(lengths[:-1] + 1, out=starts[1:])
        starts[1:] += 1
    buf = b" " + b" ".join(parts) + _PAD
    bounds = np.stack([starts, starts + lengths], axis=1) if len(parts) else np.zeros((0, 2), np.int64)
    return buf, bounds


def _word_shingles(texts: Sequence[str], n: int) -> ShingleBatch:
    buf, bounds = _batch_buffer([_word_bytes(t) for t in texts])
    buf = buf.translate(_WORD_TABLE)[:-8] + b"\0" * 8  # keep the zero padding after translate
    arr = np.frombuffer(buf, dtype=np.uint8)
    is_word = (arr[:-8] != _SPACE).view(np.int8)
    edges = np.flatnonzero(np.diff(is_word)) + 1
    tok_start = edges[0::2]
    tok_len = edges[1::2] - tok_start
    reader = _u64_reader(buf)
    tok_hash = _hash_spans(reader, tok_start, tok_len)
    # Tokens per document: documents are separated by at least one space, so tokens never straddle.
    word_off = np.searchsorted(tok_start, bounds[:, 0]) if len(texts) else np.zeros(0, np.int64)
    word_off = np.append(word_off, tok_start.size).astype(np.int64)
    n_words = np.diff(word_off)
    n_shingles = np.where(n_words >= n, n_words - n + 1, np.minimum(n_words, 1))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(n_shingles, out=offsets[1:])
    total_windows = max(tok_hash.size - n + 1, 0)
    acc = np.zeros(total_windows, dtype=np.uint64)
    for k in range(n):
        acc += tok_hash[k : k + total_windows] * _U64(_POSITION_MULTS[k])
    _fmix64(acc)
    full = n_words >= n
    out = np.empty(int(offsets[-1]), dtype=np.uint64)
    if full.all():
        keep = np.repeat(word_off[:-1], n_shingles) + _arange_within(n_shingles)
        out[:] = acc[keep]
    else:
        docs = np.flatnonzero(full)
        keep = np.repeat(word_off[docs], n_shingles[docs]) + _arange_within(n_shingles[docs])
        dest = np.repeat(offsets[docs], n_shingles[docs]) + _arange_within(n_shingles[docs])
        out[dest] = acc[keep]
        for d in np.flatnonzero((~full) & (n_words > 0)):  # short documents: one shingle of all words
            out[offsets[d]] = _combine_int([int(x) for x in tok_hash[word_off[d] : word_off[d + 1]]])
    return ShingleBatch(out, offsets)


def _arange_within(counts: np.ndarray) -> np.ndarray:
    """[0..c0), [0..c1), … concatenated."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.arange(total, dtype=np.int64) - np.repeat(starts, counts)


def _char_shingles(texts: Sequence[str], n: int) -> ShingleBatch:
    buf, bounds = _batch_buffer([_char_bytes(t) for t in texts])
    reader = _u64_reader(buf)
    lengths = bounds[:, 1] - bounds[:, 0]
    n_shingles = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(n_shingles, out=offsets[1:])
    starts = np.repeat(bounds[:, 0], n_shingles) + _arange_within(n_shingles)
    span = np.repeat(np.minimum(lengths, n), n_shingles)
    hashes = _fmix64(_hash_spans(reader, starts, span))
    return ShingleBatch(hashes, offsets)


# ---------------------------------------------------------------------------------------------
# Optional compiled kernels (numba). Same hash definitions as above, fused into one pass over the
# bytes so no per-shingle arrays are materialised; the numpy path is the fallback and the
# reference the tests compare against.

try:
    from numba import njit
    from numba.cpython.unsafe.numbers import trailing_zeros  # LLVM cttz intrinsic

    HAVE_JIT = True
except ImportError:  # pragma: no cover - exercised where numba is not installed
    HAVE_JIT = False

if HAVE_JIT:
    _J_F1 = np.uint64(_F64_1)
    _J_F2 = np.uint64(_F64_2)
    _J_S33 = np.uint64(33)
    _J_LEN = np.uint64(_LEN_MULT)
    _J_MULTS = np.array(_POSITION_MULTS, dtype=np.uint64)

    @njit(cache=True, nogil=True, inline="always")
    def _j_fmix64(h):  # pragma: no cover - compiled
        h ^= h >> _J_S33
        h *= _J_F1
        h ^= h >> _J_S33
        h *= _J_F2
        h ^= h >> _J_S33
        return h

    # SWAR constants: the translated buffer has 0x20 for every separator, never 0x20 in a token.
    _J_SPACES = np.uint64(0x2020202020202020)
    _J_ONES = np.uint64(0x0101010101010101)
    _J_HIGH = np.uint64(0x8080808080808080)
    _J_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)

    @njit(cache=True, nogil=True, inline="always")
    def _j_fmix32_high(shingle64):  # pragma: no cover - compiled
        """datasketch's input hash of a shingle: fmix32 of the high 32 bits."""
        x = np.uint32(shingle64 >> np.uint64(32))
        x ^= x >> np.uint32(16)
        x = np.uint32(x * np.uint32(0x85EBCA6B))
        x ^= x >> np.uint32(13)
        x = np.uint32(x * np.uint32(0xC2B2AE35))
        x ^= x >> np.uint32(16)
        return x

    @njit(cache=True, nogil=True, inline="always")
    def _j_fold(xs, m, a, b, row):  # pragma: no cover - compiled
        """``row[p] = min(row[p], min_s(xs[s]·a[p] + b[p]))`` over the first ``m`` values. The
        inner loop runs over shingles so it vectorises as a min-reduction held in registers; the
        old shingle-outer order loaded and stored the 128-value row for every shingle (~3x slower)."""
        for p in range(a.size):
            ap = a[p]
            bp = b[p]
            v = row[p]
            for s in range(m):
                v = min(v, np.uint32(xs[s] * ap + bp))
            row[p] = v

    @njit(cache=True, nogil=True)
    def _j_words(raw, table, scratch, scratch64, masks, bounds, n, a, b, sig, out, counts):  # pragma: no cover
        """Tokenise, hash and shingle a batch. With ``out`` empty, fold shingles into ``sig``;
        otherwise write the 64-bit shingle hashes to ``out`` (``counts`` then gives the split)."""
        for i in range(raw.size):  # the _WORD_TABLE translation, into a reused buffer
            scratch[i] = table[raw[i]]
        for i in range(raw.size, raw.size + 8):
            scratch[i] = 0
        write = out.size > 0
        w = 0
        xs = np.empty(512, dtype=np.uint32)  # a document's input hashes, folded into sig[d] in blocks
        m = 0
        # Position weights aligned to the newest of the last 8 tokens r0..r7 (zeros for n < 8), so
        # the window is a branch-free sum over registers instead of a ring shifted in memory.
        wts = np.zeros(8, dtype=np.uint64)
        for q in range(n):
            wts[8 - n + q] = _J_MULTS[q]
        w0, w1, w2, w3, w4, w5, w6, w7 = wts[0], wts[1], wts[2], wts[3], wts[4], wts[5], wts[6], wts[7]
        for d in range(bounds.shape[0]):
            i = bounds[d, 0]
            end = bounds[d, 1]
            nt = 0
            r0 = r1 = r2 = r3 = r4 = r5 = r6 = r7 = np.uint64(0)
            while True:
                # Token boundaries 8 bytes at a time (SWAR): one predictable branch per token
                # instead of one per byte. The buffer is zero-padded, so reads past it are safe.
                while i < end:  # skip separators
                    x = scratch64[i] ^ _J_SPACES
                    y = (((x & _J_LOW7) + _J_LOW7) | x) & _J_HIGH  # high bit of each non-space byte
                    if y != 0:
                        i += trailing_zeros(y) >> 3
                        break
                    i += 8
                if i >= end:
                    break
                j = i
                while True:  # a space always follows a document, so this stops at or before `end`
                    x = scratch64[j] ^ _J_SPACES
                    z = (x - _J_ONES) & ~x & _J_HIGH  # lowest flagged byte is exactly the first space
                    if z != 0:
                        j += trailing_zeros(z) >> 3
                        break
                    j += 8
                h = np.uint64(j - i) * _J_LEN
                for k in range(i, j, 8):
                    h = _j_fmix64(h ^ (scratch64[k] & masks[min(j - k, 8)]))
                r0, r1, r2, r3, r4, r5, r6, r7 = r1, r2, r3, r4, r5, r6, r7, h
                nt += 1
                if nt >= n:
                    acc = _j_fmix64(r0 * w0 + r1 * w1 + r2 * w2 + r3 * w3 + r4 * w4 + r5 * w5 + r6 * w6 + r7 * w7)
                    if write:
                        out[w] = acc
                        w += 1
                    else:
                        xs[m] = _j_fmix32_high(acc)
                        m += 1
                        if m == xs.size:
                            _j_fold(xs, m, a, b, sig[d])
                            m = 0
                i = j
            if 0 < nt < n:  # short document: one shingle of all its words
                ring = np.array((r0, r1, r2, r3, r4, r5, r6, r7))
                acc = np.uint64(0)
                for q in range(nt):
                    acc += ring[8 - nt + q] * _J_MULTS[q]
                acc = _j_fmix64(acc)
                if write:
                    out[w] = acc
                    w += 1
                else:
                    xs[m] = _j_fmix32_high(acc)
                    m += 1
            if m:
                _j_fold(xs, m, a, b, sig[d])
                m = 0
            counts[d] = nt - n + 1 if nt >= n else min(nt, 1)

    @njit(cache=True, nogil=True)
    def _j_sort_unique(values, offsets, new_offsets):  # pragma: no cover - compiled
        """Sort each document's hashes and drop repeats, compacting in place."""
        w = 0
        new_offsets[0] = 0
        for d in range(offsets.size - 1):
            seg = np.sort(values[offsets[d] : offsets[d + 1]])
            for k in range(seg.size):
                if k == 0 or seg[k] != seg[k - 1]:
                    values[w] = seg[k]
                    w += 1
            new_offsets[d + 1] = w

    @njit(cache=True, nogil=True)
    def _j_pair_jaccard(values, offsets, left, right, out):  # pragma: no cover - compiled
        """Exact Jaccard of unsorted hash multisets taken as sets: an open-addressing table per
        pair (values are fmix64 outputs, so their low bits index it directly), no sorting."""
        longest = 1
        for d in range(offsets.size - 1):
            longest = max(longest, offsets[d + 1] - offsets[d])
        size = 1
        while size < 4 * longest:
            size *= 2
        mask = np.uint64(size - 1)
        keys = np.zeros(size, dtype=np.uint64)
        state = np.zeros(size, dtype=np.uint8)  # 0 empty, 1 in left, 2 in both, 3 right only
        used = np.zeros(size, dtype=np.int64)
        for p in range(left.size):
            n_used = 0
            n_left = 0
            for k in range(offsets[left[p]], offsets[left[p] + 1]):
                v = values[k]
                slot = np.int64(v & mask)
                while state[slot] != 0 and keys[slot] != v:
                    slot = (slot + 1) & (size - 1)
                if state[slot] == 0:
                    state[slot] = 1
                    keys[slot] = v
                    used[n_used] = slot
                    n_used += 1
                    n_left += 1
            inter = 0
            right_only = 0
            for k in range(offsets[right[p]], offsets[right[p] + 1]):
                v = values[k]
                slot = np.int64(v & mask)
                while state[slot] != 0 and keys[slot] != v:
                    slot = (slot + 1) & (size - 1)
                if state[slot] == 0:
                    state[slot] = 3
                    keys[slot] = v
                    used[n_used] = slot
                    n_used += 1
                    right_only += 1
                elif state[slot] == 1:
                    state[slot] = 2
                    inter += 1
            union = n_left + right_only
            out[p] = 1.0 if union == 0 else inter / union
            for k in range(n_used):
                state[used[k]] = 0


# ---------------------------------------------------------------------------------------------
# Signatures.

_BLOCK = 2048  # shingles per permutation block: 2048 x 128 x 4 B = 1 MiB stays in L2


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """datasketch's affine32 permutation parameters ``(a, b)`` for ``(num_perm, seed)``."""
    # Same generator calls, in the same order, as datasketch.MinHash._init_permutations (affine32).
    gen = np.random.RandomState(seed)
    a = gen.randint(0, 1 << 31, num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, num_perm, dtype=np.uint32)
    return a, b


class MinHasher:
    """Signatures for batches of documents under one (shingles, num_perm, seed) configuration."""

    def __init__(
        self, num_perm: int = 128, seed: int = 1, shingles: ShingleConfig | None = None, use_jit: bool | None = None
    ) -> None:
        if num_perm < 2:
            raise ValueError(f"num_perm must be at least 2, got {num_perm}")
        self.num_perm = num_perm
        self.seed = seed
        self.shingles = shingles or ShingleConfig()
        self.a, self.b = permutations(num_perm, seed)
        self._work = np.empty((_BLOCK, num_perm), dtype=np.uint32)
        # numba when installed (about 10x faster); the numpy path gives identical signatures.
        self.use_jit = HAVE_JIT if use_jit is None else (use_jit and HAVE_JIT)
        self._scratch = np.zeros(0, dtype=np.uint8)
        self._scratch64 = np.zeros(0, dtype=np.uint64)
        self._out = np.zeros(0, dtype=np.uint64)

    @property
    def hashfunc(self) -> Callable[[bytes | str], int]:
        """Shingle → 32-bit hash, for ``datasketch.MinHash(hashfunc=…)``."""
        return self.shingles.hashfunc32

    def shingle_batch(self, texts: Sequence[str]) -> ShingleBatch:
        return shingle_batch(texts, self.shingles)

    def signatures(self, texts: Sequence[str]) -> np.ndarray:
        """``(len(texts), num_perm)`` uint32 signatures; an empty document gets all ``0xFFFFFFFF``."""
        return self.signatures_and_counts(texts)[0]

    def signatures_and_counts(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Signatures and the number of shingles per document (0 = nothing to compare)."""
        sig = np.full((len(texts), self.num_perm), EMPTY_VALUE, dtype=np.uint32)
        if self.use_jit and self.shingles.unit == "word":
            counts = np.zeros(len(texts), dtype=np.int64)
            self._run_word_kernel(texts, sig, counts)
            return sig, counts
        batch = self.shingle_batch(texts)
        return self.signatures_from_shingles(batch), batch.counts()

    def _run_word_kernel(
        self, texts: Sequence[str], sig: np.ndarray, counts: np.ndarray, want_hashes: bool = False
    ) -> np.ndarray:
        raw, bounds = _word_buffer(texts)
        if self._scratch.size < len(raw) + 8:  # grown rarely, then reused: fresh pages are slow
            self._scratch = np.zeros(max(len(raw) + 8, 2 * self._scratch.size), dtype=np.uint8)
            self._scratch64 = np.ndarray((self._scratch.size - 7,), dtype="<u8", buffer=self._scratch, strides=(1,))
        out = _NO_OUTPUT
        if want_hashes:
            # Tokens are separated by at least one byte: at most len/2 + 1 shingles per document.
            capacity = len(raw) // 2 + len(texts) + 1
            if self._out.size < capacity:
                self._out = np.empty(max(capacity, 2 * self._out.size), dtype=np.uint64)
            out = self._out
        _j_words(
            np.frombuffer(raw, dtype=np.uint8),
            _TABLE_ARRAY,
            self._scratch,
            self._scratch64,
            _LOW_MASKS,
            bounds,
            self.shingles.n,
            self.a,
            self.b,
            sig,
            out,
            counts,
        )
        return out

    def shingle_hashes(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """64-bit shingle hashes per document as (values, offsets), in text order, repeats kept."""
        if self.use_jit and self.shingles.unit == "word":
            counts = np.zeros(len(texts), dtype=np.int64)
            out = self._run_word_kernel(texts, _NO_SIG, counts, want_hashes=True)
            offsets = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            return out[: offsets[-1]].copy(), offsets
        batch = self.shingle_batch(texts)
        return batch.hashes, batch.offsets

    def shingle_sets(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique 64-bit shingle hashes per document as (values, offsets): the exact sets."""
        if self.use_jit and self.shingles.unit == "word":
            counts = np.zeros(len(texts), dtype=np.int64)
            out = self._run_word_kernel(texts, _NO_SIG, counts, want_hashes=True)
            offsets = np.zeros(len(texts) + 1, dtype=np.int64)
            np.cumsum(counts, out=offsets[1:])
            values = out[: offsets[-1]]
        else:
            batch = self.shingle_batch(texts)
            values, offsets = batch.hashes.copy(), batch.offsets
        if HAVE_JIT:
            new_offsets = np.empty_like(offsets)
            _j_sort_unique(values, offsets, new_offsets)
            return values[: new_offsets[-1]].copy(), new_offsets
        sets = [np.unique(values[a:b]) for a, b in itertools.pairwise(offsets.tolist())]
        new_offsets = np.zeros(len(sets) + 1, dtype=np.int64)
        np.cumsum([s.size for s in sets], out=new_offsets[1:])
        return (np.concatenate(sets) if sets else np.zeros(0, np.uint64)), new_offsets

    def signatures_from_shingles(self, batch: ShingleBatch) -> np.ndarray:
        hv = (batch.hashes >> _U64(32)).astype(np.uint32)
        _fmix32(hv)
        n_docs = batch.offsets.size - 1
        sig = np.full((n_docs, self.num_perm), EMPTY_VALUE, dtype=np.uint32)
        counts = np.diff(batch.offsets)
        nonempty = np.flatnonzero(counts > 0)
        if nonempty.size == 0:
            return sig
        # Walk documents in blocks of whole documents whose shingles fit the work buffer.
        offs = batch.offsets
        i = 0
        while i < nonempty.size:
            first = nonempty[i]
            limit = offs[first] + _BLOCK
            j = int(np.searchsorted(offs, limit, side="right")) - 1  # docs [first, j) fit
            j = max(j, first + 1)
            lo, hi = int(offs[first]), int(offs[j])
            if hi - lo > _BLOCK:  # one document larger than the block: reduce it in pieces
                sig[first] = self._long_doc(hv[lo:hi])
            else:
                work = self._work[: hi - lo]
                np.multiply(hv[lo:hi, None], self.a[None, :], out=work)
                work += self.b
                docs = nonempty[(nonempty >= first) & (nonempty < j)]
                sig[docs] = np.minimum.reduceat(work, offs[docs] - lo, axis=0)
            i = int(np.searchsorted(nonempty, j))
        return sig

    def _long_doc(self, hv: np.ndarray) -> np.ndarray:
        out = np.full(self.num_perm, EMPTY_VALUE, dtype=np.uint32)
        for lo in range(0, hv.size, _BLOCK):
            part = hv[lo : lo + _BLOCK]
            work = self._work[: part.size]
            np.multiply(part[:, None], self.a[None, :], out=work)
            work += self.b
            np.minimum(out, work.min(axis=0), out=out)
        return out

    def datasketch_minhash(self, text: str):  # -> datasketch.MinHash (slow reference)
        """The same document through ``datasketch.MinHash.update`` (for tests and interop)."""
        from datasketch import MinHash

        m = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=self.hashfunc)
        for shingle in self.shingles.shingles(text):
            m.update(shingle)
        return m

    def lean(self, signature: np.ndarray):  # -> datasketch.LeanMinHash
        """A stored signature as a ``datasketch.LeanMinHash`` (serialisable, usable in its LSH)."""
        from datasketch import LeanMinHash

        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme="affine32")


# ---------------------------------------------------------------------------------------------
# Parallel signatures over batches.


def iter_signature_batches(
    hasher: MinHasher, texts: Sequence[str], batch_size: int = 1000, workers: int = 1
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield ``(start, signatures, shingle_counts)`` per batch, in order.

    ``workers > 1`` uses threads: the compiled kernel releases the GIL, so threads share the texts
    without pickling them (a process pool spent more time copying 300 MB of text than it saved).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    starts = range(0, len(texts), batch_size)
    if workers <= 1 or len(texts) <= batch_size:
        for s in starts:
            sig, counts = hasher.signatures_and_counts(texts[s : s + batch_size])
            yield s, sig, counts
        return
    local = threading.local()

    def work(start: int) -> tuple[np.ndarray, np.ndarray]:
        own = getattr(local, "hasher", None)
        if own is None:  # one hasher per thread: each has its own scratch buffer
            own = local.hasher = MinHasher(hasher.num_perm, hasher.seed, hasher.shingles, hasher.use_jit)
        return own.signatures_and_counts(texts[start : start + batch_size])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[tuple[int, Future[tuple[np.ndarray, np.ndarray]]]] = deque()
        for s in starts:
            pending.append((s, pool.submit(work, s)))
            if len(pending) > 2 * workers:  # bounded read-ahead keeps memory flat
                start, future = pending.popleft()
                yield (start, *future.result())
        while pending:
            start, future = pending.popleft()
            yield (start, *future.result())


def default_workers() -> int:
    """One thread per core (two on the 2-core machines this was measured on), at most 8."""
    return max(1, min(os.cpu_count() or 1, 8))


# ---------------------------------------------------------------------------------------------
# LSH banding and candidates.


def lsh_params(threshold: float, num_perm: int, weights: tuple[float, float] = (0.5, 0.5)) -> tuple[int, int]:
    """datasketch's optimal (bands, rows) for a Jaccard threshold (its own grid search)."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"LSH threshold must be in (0, 1), got {threshold}")
    return _optimal_param(float(threshold), int(num_perm), float(weights[0]), float(weights[1]))


@functools.lru_cache(maxsize=64)  # datasketch's grid search costs ~10 ms per call
def _optimal_param(threshold: float, num_perm: int, fp_weight: float, fn_weight: float) -> tuple[int, int]:
    from datasketch.lsh import _optimal_param  # private, but it *is* datasketch's choice

    return _optimal_param(threshold, num_perm, fp_weight, fn_weight)


def candidate_probability(jaccard: float, bands: int, rows: int) -> float:
    """Probability that a pair with this Jaccard shares at least one band (S-curve)."""
    return 1.0 - (1.0 - jaccard**rows) ** bands


_BAND_MULTS = np.random.RandomState(0x5EED).randint(1, 1 << 62, size=64, dtype=np.int64).astype(np.uint64) * 2 + 1


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """``(n, bands)`` uint64 bucket keys: each band's ``rows`` values folded into one 64-bit hash."""
    if bands * rows > signatures.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {signatures.shape[1]}")
    if rows > _BAND_MULTS.size:
        raise ValueError(f"rows per band must be at most {_BAND_MULTS.size}, got {rows}")
    sig = signatures[:, : bands * rows].reshape(signatures.shape[0], bands, rows).astype(np.uint64)
    sig *= _BAND_MULTS[:rows]
    keys = sig.sum(axis=2, dtype=np.uint64)
    keys ^= np.arange(bands, dtype=np.uint64) * _U64(0x9E3779B97F4A7C15)  # distinct key space per band
    return _fmix64(keys)


def bucket_ties_by_index(order: np.ndarray, sorted_keys: np.ndarray, max_bucket: int) -> np.ndarray:
    """``order`` (an argsort giving ``sorted_keys``) with the members of each bucket over ``max_bucket + 1``
    in ascending index order. Only there does the order within a bucket decide which pairs
    :func:`pairs_in_groups` makes; putting them in index order makes that choice one that a distributed
    grouping, which never sees a whole band in one place, makes too (:mod:`curation.dedup.distributed`).
    Such buckets are rare, so this costs a scan of the run lengths and a sort of each big bucket."""
    if sorted_keys.size <= max_bucket + 1:
        return order
    run_start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_stop = np.r_[run_start[1:], sorted_keys.size]
    big = np.flatnonzero(run_stop - run_start > max_bucket + 1)
    if big.size:
        order = order.copy()
        for start, stop in zip(run_start[big].tolist(), run_stop[big].tolist(), strict=True):
            order[start:stop] = np.sort(order[start:stop])
    return order


def pairs_in_groups(order: np.ndarray, sorted_keys: np.ndarray, max_bucket: int) -> np.ndarray:
    """(i, j) index pairs that share a key; in buckets over ``max_bucket`` each member is paired
    with its ``max_bucket`` successors only (a near-duplicate run is still chained together). ``order``
    holds the documents in key order (:func:`bucket_ties_by_index` for the canonical choice in big buckets)."""
    if sorted_keys.size < 2:
        return np.zeros((0, 2), dtype=np.int64)
    run_start = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    run_size = np.diff(np.r_[run_start, sorted_keys.size])
    multi = run_size > 1
    start, size = run_start[multi], run_size[multi]
    if start.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    pos = np.repeat(start, size) + _arange_within(size)  # every member of a shared bucket
    rank = _arange_within(size)
    bucket = np.repeat(size, size)
    out = []
    for gap in range(1, min(int(size.max()) - 1, max_bucket) + 1):
        live = rank + gap < bucket
        pos, rank, bucket = pos[live], rank[live], bucket[live]
        if pos.size == 0:
            break
        out.append(np.stack([order[pos], order[pos + gap]], axis=1))
    return np.concatenate(out) if out else np.zeros((0, 2), dtype=np.int64)


def candidate_pairs(keys: np.ndarray, max_bucket: int = 64, workers: int = 1) -> np.ndarray:
    """Unique ``(i, j)`` with ``i < j`` sharing at least one band key; ``keys`` is ``(n, bands)``.
    One band at a time, so the sort needs ~24 bytes per document, not per document and band.
    ``workers > 1`` sorts bands on threads (numpy's sort releases the GIL): run serially this was
    the largest single-threaded part of the two-thread stage. The result does not depend on it, nor on how
    the sort breaks ties: a bucket over ``max_bucket`` pairs its members in index order."""

    def band_codes(band: int) -> np.ndarray | None:
        column = np.ascontiguousarray(keys[:, band])
        order = np.argsort(column)  # numpy's SIMD sort; ties only matter in buckets over max_bucket
        return band_pair_codes(order, column[order], max_bucket)

    bands = range(keys.shape[1])
    if workers > 1 and len(bands) > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # at most `workers` bands in memory
            found = list(pool.map(band_codes, bands))
    else:
        found = list(map(band_codes, bands))
    return pairs_of_codes(found)


def band_pair_codes(order: np.ndarray, sorted_keys: np.ndarray, max_bucket: int) -> np.ndarray | None:
    """The pairs one band makes (:func:`pairs_in_groups`) of documents ``order`` whose keys are ``sorted_keys``,
    each as ``(low << 32) | high`` (documents numbered below 2**32), or None when it makes none. ``order``
    need hold only the documents whose key another shares: a key alone in the band pairs nothing."""
    pairs = pairs_in_groups(bucket_ties_by_index(order, sorted_keys, max_bucket), sorted_keys, max_bucket)
    if not pairs.size:
        return None
    lo = np.minimum(pairs[:, 0], pairs[:, 1]).astype(np.int64)
    hi = np.maximum(pairs[:, 0], pairs[:, 1]).astype(np.int64)
    return (lo << 32) | hi


def pairs_of_codes(codes: Iterable[np.ndarray | None]) -> np.ndarray:
    """Unique ``(i, j)`` pairs, ``i < j``, in order, from the :func:`band_pair_codes` of every band."""
    found = [code for code in codes if code is not None]
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    code = np.unique(np.concatenate(found))
    return np.stack([code >> 32, code & 0xFFFFFFFF], axis=1)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> np.ndarray:
    """Row-wise MinHash estimate: share of equal signature positions."""
    return (sig_a == sig_b).mean(axis=-1)


class LSHIndex:
    """Band keys of stored documents, queried by new batches (incremental dedup).

    Holds ``bands`` uint64 keys and one int per band per document (about ``12·bands`` bytes per
    document), built from persisted signatures — no shingling or MinHash of the stored corpus.
    """

    def __init__(self, bands: int, rows: int) -> None:
        self.bands = bands
        self.rows = rows
        self._parts: list[np.ndarray] = []
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, signatures: np.ndarray) -> np.ndarray:
        """Index signatures; returns their positions (0-based, in insertion order)."""
        keys = band_keys(signatures, self.bands, self.rows)
        self._parts.append(keys)
        self._sorted = None
        positions = np.arange(self._n, self._n + len(keys))
        self._n += len(keys)
        return positions

    def _index(self) -> tuple[np.ndarray, np.ndarray]:
        if self._sorted is None:
            flat = np.concatenate([p.ravel() for p in self._parts]) if self._parts else np.zeros(0, np.uint64)
            order = np.argsort(flat, kind="stable")
            self._sorted = (flat[order], (order // self.bands).astype(np.int64))
            self._parts = [flat.reshape(-1, self.bands)] if flat.size else []
        return self._sorted

    def query(self, signatures: np.ndarray, max_per_key: int = 64) -> np.ndarray:
        """``(query_row, stored_position)`` pairs sharing a band, unique; at most ``max_per_key``
        stored documents per matching bucket."""
        keys = band_keys(signatures, self.bands, self.rows).ravel()
        sorted_keys, docs = self._index()
        lo = np.searchsorted(sorted_keys, keys, side="left")
        hi = np.searchsorted(sorted_keys, keys, side="right")
        hits = np.minimum(hi - lo, max_per_key)
        q = np.repeat(np.arange(keys.size) // self.bands, hits)
        s = docs[np.repeat(lo, hits) + _arange_within(hits)]
        if q.size == 0:
            return np.zeros((0, 2), dtype=np.int64)
        code = np.unique((q.astype(np.int64) << 32) | s)
        return np.stack([code >> 32, code & 0xFFFFFFFF], axis=1)


# ---------------------------------------------------------------------------------------------
# Exact Jaccard.


def exact_jaccard(set_a: np.ndarray, set_b: np.ndarray) -> float:
    """Jaccard of two sorted unique hash arrays (1.0 for two empty sets)."""
    if set_a.size == 0 and set_b.size == 0:
        return 1.0
    if set_a.size > set_b.size:
        set_a, set_b = set_b, set_a
    if set_a.size == 0:
        return 0.0
    pos = np.searchsorted(set_b, set_a)
    pos[pos == set_b.size] = 0
    inter = int(np.count_nonzero(set_b[pos] == set_a))
    return inter / (set_a.size + set_b.size - inter)


def pairs_jaccard(values: np.ndarray, offsets: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard (as sets) for index pairs into a CSR of hashes, sorted or not, repeats allowed
    (:meth:`MinHasher.shingle_hashes` or :meth:`MinHasher.shingle_sets`)."""
    out = np.empty(len(pairs), dtype=np.float64)
    if len(pairs) == 0:
        return out
    if HAVE_JIT:
        _j_pair_jaccard(values, offsets, np.ascontiguousarray(pairs[:, 0]), np.ascontiguousarray(pairs[:, 1]), out)
        return out
    for k, (a, b) in enumerate(pairs.tolist()):
        out[k] = exact_jaccard(
            np.unique(values[offsets[a] : offsets[a + 1]]), np.unique(values[offsets[b] : offsets[b + 1]])
        )
    return out


def signature_bytes(signature: np.ndarray) -> bytes:
    """A signature as little-endian bytes (a DuckDB BLOB); :func:`signature_from_bytes` reverses."""
    return np.ascontiguousarray(signature, dtype="<u4").tobytes()


def signature_from_bytes(blob: bytes, num_perm: int | None = None) -> np.ndarray:
    sig = np.frombuffer(blob, dtype="<u4").astype(np.uint32)
    if num_perm is not None and sig.size != num_perm:
        raise ValueError(
            f"stored signature has {sig.size} values, expected num_perm={num_perm}; "
            "signatures from another configuration must be recomputed"
        )
    return sig


def signature_column(signatures: np.ndarray) -> pa.Array:
    """A batch of signatures as an Arrow binary column (one :func:`signature_bytes` blob each), built on the
    signatures' bytes with offsets every ``4 * num_perm`` (no cast: a process's first pyarrow cast imports
    pandas)."""
    n, num_perm = signatures.shape
    width = 4 * num_perm
    if n * width >= 2**31:
        raise ValueError(f"{n} signatures of {num_perm} values are too many for one binary column; pass fewer")
    data = pa.py_buffer(np.ascontiguousarray(signatures, dtype="<u4").tobytes())
    offsets = pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32).tobytes())
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, data])


def signature_matrix(column: pa.Array | pa.ChunkedArray, num_perm: int) -> np.ndarray:
    """An Arrow column of signature blobs as one ``(n, num_perm)`` uint32 array (:func:`signature_column`
    reversed); an error if a blob was made with another ``num_perm``."""
    width = 4 * num_perm
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    parts = []
    for chunk in chunks:
        lengths = pc.min_max(pc.binary_length(chunk)).as_py()
        if chunk.null_count or (len(chunk) and lengths != {"min": width, "max": width}):
            raise ValueError(
                f"stored signatures are not {num_perm} values long; signatures from another configuration "
                "must be recomputed"
            )
        fixed = chunk.cast(pa.binary(width))
        data = fixed.buffers()[1]
        parts.append(np.frombuffer(data, dtype="<u4", count=len(fixed) * num_perm, offset=fixed.offset * width))
    if not parts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    return np.concatenate(parts).astype(np.uint32).reshape(-1, num_perm)
