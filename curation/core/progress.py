"""Progress of long stages: a line every few seconds, through whatever logger the caller passes."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def reported(
    items: Iterable[T],
    report: Callable[[str], None],
    label: str,
    total: int | None = None,
    every_s: float = 10.0,
    size: Callable[[T], int] | None = None,
) -> Iterator[T]:
    """Yield ``items`` unchanged, calling ``report("<label>: n of total rows (r/s)")`` at most every
    ``every_s`` seconds and once at the end, so a long stage shows it is moving without flooding the log.
    Each item is one row, or ``size(item)`` rows (a batch)."""
    start = last = time.monotonic()
    count = 0
    for item in items:
        yield item
        count += 1 if size is None else size(item)
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            of = f" of {total:,}" if total is not None else ""
            report(f"{label}: {count:,}{of} rows ({count / (now - start):,.0f} rows/s)")
    elapsed = max(time.monotonic() - start, 1e-9)
    report(f"{label}: done, {count:,} rows in {elapsed:.1f} s")
