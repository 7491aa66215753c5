"""Progress of long stages: a line every few seconds, through whatever logger the caller passes.

One mechanism for every stage: :class:`Progress` counts work as it is done (rows, requests, versions) and
reports ``"<label>: done of total <unit> (rate <unit>/s, ETA …)"`` at most every ``every_s`` seconds and once
at the end; :func:`reported` wraps an iterable of rows or batches in one. Assets pass ``context.log.info``,
so the lines reach the Dagster log and, through it, the terminal of a CLI run. The interval is
``$DISTILLERY_PROGRESS_EVERY_S`` when set (``0`` reports every step: tests, debugging), else 10 seconds."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

EVERY_S_ENV = "DISTILLERY_PROGRESS_EVERY_S"
DEFAULT_EVERY_S = 10.0


def report_interval() -> float:
    """Seconds between two progress lines: ``$DISTILLERY_PROGRESS_EVERY_S``, else :data:`DEFAULT_EVERY_S`."""
    value = os.environ.get(EVERY_S_ENV, "").strip()
    if not value:
        return DEFAULT_EVERY_S
    try:
        return max(float(value), 0.0)
    except ValueError:
        raise ValueError(f"${EVERY_S_ENV} must be a number of seconds, got {value!r}") from None


def duration(seconds: float) -> str:
    """``seconds`` as a person reads a remaining time: ``45 s``, ``12 min``, ``3.2 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Work done so far in one long step, reported through ``report`` at most every ``every_s`` seconds.

    ``advance(n)`` after each piece of work (a row, a batch of ``n`` rows, a request); named ``counts``
    (``cached=1``, ``failed=2``) are kept beside the total and shown in each line. ``finish()`` writes the
    closing line, whatever the interval. Only time decides when a line is written, so at a million rows in
    batches of a few thousand the log still gets one line per interval, not one per batch."""

    def __init__(
        self,
        report: Callable[[str], None],
        label: str,
        total: int | None = None,
        every_s: float | None = None,
        unit: str = "rows",
    ) -> None:
        self.report = report
        self.label = label
        self.total = total
        self.every_s = report_interval() if every_s is None else every_s
        self.unit = unit
        self.done = 0
        self.counts: dict[str, int] = {}
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1, **counts: int) -> None:
        """Count ``n`` more units done (and ``counts`` more of each named kind); a line if one is due."""
        self.done += n
        for name, count in counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.report(self.line(now))

    def line(self, now: float | None = None) -> str:
        """``"<label>: 1,200 of 5,000 rows (300 rows/s, ETA 13 s; 12 cached)"``: the ETA assumes the rate so far
        holds, and is left out while nothing is done or the total is unknown."""
        elapsed = max((time.monotonic() if now is None else now) - self.start, 1e-9)
        rate = self.done / elapsed
        of = f" of {self.total:,}" if self.total is not None else ""
        details = [f"{rate:,.0f} {self.unit}/s"]
        if self.total is not None and self.done and self.total > self.done:
            details.append(f"ETA {duration((self.total - self.done) / rate)}")
        extra = ", ".join(f"{count:,} {name}" for name, count in self.counts.items())
        return f"{self.label}: {self.done:,}{of} {self.unit} ({', '.join(details)}{'; ' + extra if extra else ''})"

    def finish(self) -> None:
        """The closing line: how much was done, in how long."""
        elapsed = max(time.monotonic() - self.start, 1e-9)
        extra = "".join(f", {count:,} {name}" for name, count in self.counts.items())
        self.report(f"{self.label}: done, {self.done:,} {self.unit}{extra} in {elapsed:.1f} s")


def reported(
    items: Iterable[T],
    report: Callable[[str], None],
    label: str,
    total: int | None = None,
    every_s: float | None = None,
    size: Callable[[T], int] | None = None,
    unit: str = "rows",
) -> Iterator[T]:
    """Yield ``items`` unchanged, calling ``report("<label>: n of total rows (r rows/s, ETA …)")`` at most every
    ``every_s`` seconds (default: :func:`report_interval`) and once at the end, so a long stage shows it is
    moving without flooding the log. Each item is one row, or ``size(item)`` rows (a batch)."""
    progress = Progress(report, label, total, every_s, unit)
    for item in items:
        yield item
        progress.advance(1 if size is None else size(item))
    progress.finish()
