"""Row-wise work on every core: an ordered map over batches in worker processes.

The stages' row-wise work (cleaners and filters, PII detection, rendering and token counting) is
pure Python holding the GIL, so threads do not help; processes do. :func:`map_ordered` runs a function
over an iterable of batches in a pool of worker processes and yields the results *in input order*, so
a stage's output — and its data version — is the same with one worker or many. At most
``2 * workers`` batches are in flight, so memory stays bounded however large the input.

Workers start from a ``forkserver``: a clean process forked before the caller opened DuckDB or
started any thread, so a worker never inherits a lock held by another thread. Each worker builds its
own state once (``initializer``), e.g. the filter chain or the tokenizer, and the per-batch function
reads it from a module global.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

MIN_ROWS_PER_WORKER = 5_000
"""Below this many rows per worker, starting processes (about a second each, importing the stage's
libraries) costs more than it saves: the work runs in the calling process."""


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def workers_for(rows: int, configured: int | None) -> int:
    """How many worker processes a stage should use for about ``rows`` rows: the configured count when the
    project file sets one; otherwise all cores, fewer when there is not enough work to repay their start."""
    if configured is not None:
        return configured
    return max(1, min(available_cores(), rows // MIN_ROWS_PER_WORKER))


def map_ordered(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: Sequence[Any] = (),
    preload: Sequence[str] = (),
) -> Iterator[Result]:
    """``function`` over ``items``, results in input order. ``workers <= 1`` runs in this process
    (after calling ``initializer`` here); otherwise in that many processes, with ``preload`` modules
    imported once in the fork server so workers start fast. ``function`` and ``initializer`` must be
    module-level (picklable); an exception in a worker is raised here, naming nothing new."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=initializer, initargs=tuple(initargs))
    pending: deque[Future[Result]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
