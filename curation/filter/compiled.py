"""Compiled screens (numba) for the filter steps whose Python is the chain's main cost.

A screen here, like the RE2 screens of :mod:`curation.filter.prefilter`, may only pass more than the step
it stands in front of: every text the step could reject must pass, and the step decides exactly on the
texts that do. Hashing keeps that safe by construction: two different words (or n-grams) that happen to
share a hash can only look *more* repetitive than they are.

:func:`loop_screen` stands in front of :class:`curation.filter.quality.Repetition`'s degenerate-loop
check: Python spends ~25 µs a turn splitting it into words and building the set of distinct words and
the set of n-grams; the kernel does the same for a whole batch of turns in one pass over their bytes,
about five times faster.

numba is imported, and the kernel compiled (or loaded from its on-disk cache), only when a process has
seen enough rows to repay it (:func:`worth_compiling`): numba's start costs about a CPU-second a process,
which a worker filtering tens of thousands of rows earns back and a test or a demo run never would.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

HAVE_JIT = importlib.util.find_spec("numba") is not None
"""Whether numba is installed (checked without importing it)."""

JIT_AFTER_ROWS = 60_000
"""Rows a process filters in Python before the compiled screens start: numba's start (about 0.9
CPU-seconds: its import and its code generator) against about 12 µs saved per row."""

_rows_seen = 0

# Byte → byte: ASCII letters lower-cased, [0-9_] kept, every other byte a space: ``\w`` of ASCII text,
# so the runs of non-space bytes are exactly :func:`curation.core.normalize.words` of an ASCII text.
ASCII_WORD_BYTES = (
    bytes(
        (code | 0x20 if chr(code).isalpha() else code) if chr(code).isalnum() or code == 0x5F else 0x20
        for code in range(128)
    )
    + b" " * 128
)
_TABLE = np.frombuffer(ASCII_WORD_BYTES, dtype=np.uint8)

# FNV-1a for a word's bytes, then murmur3's finaliser for words and n-grams (never 0: 0 is a free slot).
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX_1 = np.uint64(0xFF51AFD7ED558CCD)
_MIX_2 = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT = np.uint64(33)
_ONE = np.uint64(1)
_M64 = (1 << 64) - 1


def worth_compiling(rows: int) -> bool:
    """Count ``rows`` more rows filtered in this process, and say whether the compiled screens should be
    used for them: numba is installed and the process has filtered more than :data:`JIT_AFTER_ROWS`."""
    global _rows_seen
    _rows_seen += rows
    return HAVE_JIT and _rows_seen > JIT_AFTER_ROWS


def _position_multipliers(n: int) -> np.ndarray:
    """An odd 64-bit multiplier per position of an n-gram (splitmix64 of the position)."""
    values = []
    for k in range(n):
        z = (0x9E3779B97F4A7C15 * (k + 1)) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        values.append((z ^ (z >> 31)) | 1)
    return np.array(values, dtype=np.uint64)


@functools.cache
def _loop_kernel() -> Callable[..., Any]:  # pragma: no cover - compiled
    """The loop screen's kernel, compiled on first use (numba caches the machine code on disk)."""
    from numba import njit

    @njit(cache=True, nogil=True)
    def kernel(data, bounds, table, min_words, keep, share, multipliers, out):
        """For each text ``data[bounds[d, 0]:bounds[d, 1]]`` (each followed by a space): whether it has
        ``min_words`` words, its distinct words hold less than ``keep`` of its word characters, and the
        n-grams occurring more than once cover more than ``share`` of them, on word and n-gram hashes."""
        n = multipliers.size
        longest = 1
        for d in range(bounds.shape[0]):
            longest = max(longest, bounds[d, 1] - bounds[d, 0])
        hashes = np.empty(longest // 2 + 1, dtype=np.uint64)
        lengths = np.empty(longest // 2 + 1, dtype=np.int64)
        covered = np.empty(longest // 2 + 1, dtype=np.bool_)
        # Open-addressing tables shared by all texts: a slot is taken only if its stamp is this text's
        # (2d for its words, 2d + 1 for its n-grams), so nothing is cleared between texts.
        size = 1
        while size < longest + 2:
            size *= 2
        keys = np.empty(size, dtype=np.uint64)
        stamps = np.full(size, -1, dtype=np.int64)
        first = np.empty(size, dtype=np.int64)
        for d in range(bounds.shape[0]):
            out[d] = False
            i = bounds[d, 0]
            end = bounds[d, 1]
            count = 0
            total = 0
            while i < end:
                c = table[data[i]]
                if c == 32:
                    i += 1
                    continue
                start = i
                h = _FNV_OFFSET
                while c != 32:  # every text is followed by a space
                    h = (h ^ np.uint64(c)) * _FNV_PRIME
                    i += 1
                    c = table[data[i]]
                h ^= np.uint64(i - start)
                h ^= h >> _SHIFT
                h *= _MIX_1
                h ^= h >> _SHIFT
                h *= _MIX_2
                h ^= h >> _SHIFT
                hashes[count] = h | _ONE
                lengths[count] = i - start
                total += i - start
                count += 1
            if count < min_words:
                continue
            # The distinct words' characters (words sharing a hash count once: fewer, never more).
            mask = np.uint64(1)
            while mask < np.uint64(2 * count):
                mask *= np.uint64(2)
            mask -= _ONE
            stamp = 2 * d
            distinct = 0
            for t in range(count):
                s = hashes[t] & mask
                while stamps[s] == stamp and keys[s] != hashes[t]:
                    s = (s + _ONE) & mask
                if stamps[s] != stamp:
                    stamps[s] = stamp
                    keys[s] = hashes[t]
                    distinct += lengths[t]
            if not distinct < keep * total:
                continue
            # Characters covered by n-grams seen before (n-grams sharing a hash count as the same).
            stamp += 1
            covered_chars = 0
            if count >= n:
                covered[:count] = False
                for g in range(count - n + 1):
                    h = np.uint64(0)
                    for k in range(n):
                        h += hashes[g + k] * multipliers[k]
                    h ^= h >> _SHIFT
                    h *= _MIX_1
                    h ^= h >> _SHIFT
                    h *= _MIX_2
                    h ^= h >> _SHIFT
                    h |= _ONE
                    s = h & mask
                    while stamps[s] == stamp and keys[s] != h:
                        s = (s + _ONE) & mask
                    if stamps[s] != stamp:
                        stamps[s] = stamp
                        keys[s] = h
                        first[s] = g
                    else:
                        covered[g : g + n] = True
                        covered[first[s] : first[s] + n] = True
                for t in range(count):
                    if covered[t]:
                        covered_chars += lengths[t]
            out[d] = (covered_chars / total if total else 0.0) > share

    return kernel


def loop_screen(texts: Sequence[str], min_words: int, share: float, n: int) -> list[bool]:
    """For each ASCII text (its prose), whether :class:`curation.filter.quality.Repetition` might find a
    degenerate loop in it: at least ``min_words`` words, and the words of n-grams occurring more than
    once may cover more than ``share`` of its word characters. ``False`` is certain; ``True`` means
    check it exactly. Needs numba (:data:`HAVE_JIT`); ``n`` below 1 passes every text."""
    if not texts or n < 1:
        return [True] * len(texts)
    encoded = [text.encode("ascii") for text in texts]
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    bounds = np.empty((len(encoded), 2), dtype=np.int64)
    np.cumsum(lengths + 1, out=bounds[:, 1])
    bounds[:, 1] -= 1
    bounds[:, 0] = bounds[:, 1] - lengths
    data = np.frombuffer(b" ".join(encoded) + b" ", dtype=np.uint8)
    out = np.zeros(len(encoded), dtype=np.bool_)
    # The bound exactly as Python computes it: distinct < (1 - share / 2) * total.
    _loop_kernel()(data, bounds, _TABLE, min_words, 1 - share / 2, share, _position_multipliers(n), out)
    return out.tolist()
