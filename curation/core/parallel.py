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

The ``ray`` engine (``compute.engine: ray``, :mod:`curation.core.ray_engine`) runs the same functions over
the same batches as Ray tasks: a stage runs its maps inside :func:`use_engine` and every map in it goes to
that engine, with the same ordered results.

The fork server imports the modules a map names (``preload``: the stage's batch functions and their
libraries, compiled kernels loaded) once, so every worker of every pass of the stage is forked with them
instead of importing them again (two CPU-seconds per worker for dedup's). Python runs one fork server per
process; a map that names other modules than the running server's replaces it (:func:`_fork_server`), so a
stage's workers carry only their own stage's libraries: every worker's resident memory counts the pages it
shares with the server, and one server for the whole run had put dedup's numba and scipy (~90 MiB) into
each of ``formatted``'s three processes for nothing.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import multiprocessing
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from curation.core.ray_engine import RayEngine

Item = TypeVar("Item")
Result = TypeVar("Result")

MIN_ROWS_PER_WORKER = 5_000
"""Below this many rows per worker, starting processes (about a second each, importing the stage's
libraries) costs more than it saves: the work runs in the calling process."""


_BASE_PRELOAD = ("__main__", "pandas")
"""Modules every fork server imports. ``__main__``, the standard library's default: otherwise every worker
imports the main script again (the ``distillery`` command's imports). ``pandas``: every worker hands its
results back in Arrow, and pyarrow imports pandas the first time it converts Python values (most of a
CPU-second)."""

_server_lock = threading.Lock()
_server_modules: tuple[str, ...] | None = None
"""What the fork server started by this process imported (None: none started yet)."""
_pools_open = 0
"""Worker pools of this process alive now: the fork server is not replaced under one (a pool may fork
another worker from it at any time)."""


def _stop_fork_server() -> bool:
    """Stop this process's fork server, if the interpreter lets us; the next pool starts a new one. Python has
    no public call for this: ``ForkServer._stop`` is what CPython's own tests use (3.8 to 3.14 at least).
    Where it is missing the running server is kept, which is only bigger, never wrong: a worker imports what
    its server did not."""
    from multiprocessing import forkserver

    stop = getattr(getattr(forkserver, "_forkserver", None), "_stop", None)
    if stop is None:
        return False
    stop()
    return True


def _select_fork_server(preload: Sequence[str]) -> bool:
    """Make the forkserver context's server the one importing :data:`_BASE_PRELOAD` and ``preload``: a server
    another map started with other modules is stopped first, unless a pool still uses it. Call holding
    ``_server_lock``; returns whether the server (started now or later) imports those modules."""
    global _server_modules
    wanted = tuple(sorted({*_BASE_PRELOAD, *preload}))
    if _server_modules == wanted:
        return True
    if _pools_open or (_server_modules is not None and not _stop_fork_server()):
        return False
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(wanted))
    _server_modules = wanted
    return True


@contextlib.contextmanager
def _fork_server(preload: Sequence[str]) -> Iterator[multiprocessing.context.ForkServerContext]:
    """The forkserver context for one pool, its server importing :data:`_BASE_PRELOAD` and ``preload``
    (:func:`_select_fork_server`)."""
    global _pools_open
    with _server_lock:
        _select_fork_server(preload)
        _pools_open += 1
    try:
        yield multiprocessing.get_context("forkserver")
    finally:
        with _server_lock:
            _pools_open -= 1


def warm_up(preload: Sequence[str], items: int, workers: int) -> None:
    """Start now the fork server a coming :func:`map_ordered` with ``preload`` and ``workers`` will fork its
    workers from to work on ``items`` (rows, versions): nothing when there are none, when the workers are
    too few for a pool, or on Ray. The server imports its modules
    (0.5-1.1 s: transformers, matplotlib, the stage's code) in its own process while the stage goes on with
    its SQL, instead of while the map waits for its first workers."""
    if _current() is not None or items <= 0 or workers <= 1:
        return
    with _server_lock:
        if not _select_fork_server(preload):
            return
    from multiprocessing import forkserver

    forkserver.ensure_running()  # spawns the server and returns; its imports run beside this process


def gc_paused(function: Callable[[Item], Result]) -> Callable[[Item], Result]:
    """``function`` (a batch function) with Python's cyclic garbage collector paused while it runs. A batch
    decodes thousands of rows into dicts and lists, and every few hundred of them the collector would walk
    all that are alive again, for cycles batch code does not make: 10-15% of dedup's facts pass. Memory
    is still freed by reference counting as it goes; anything cyclic waits for the next collection."""

    @functools.wraps(function)
    def paused(item: Item) -> Result:
        if not gc.isenabled():
            return function(item)
        gc.disable()
        try:
            return function(item)
        finally:
            gc.enable()

    return paused


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class EngineSettings(Protocol):
    """What :func:`use_engine` reads (the project's ``compute`` section)."""

    @property
    def engine(self) -> str: ...
    @property
    def address(self) -> str | None: ...
    @property
    def workers(self) -> int | None: ...
    @property
    def intermediates(self) -> str | None: ...


_ENGINE: list[RayEngine | None] = []
"""The engines of the :func:`use_engine` blocks open now, innermost last (None: the local one)."""


def _current() -> RayEngine | None:
    return _ENGINE[-1] if _ENGINE else None


@contextlib.contextmanager
def use_engine(settings: EngineSettings) -> Iterator[None]:
    """Run the maps inside on the engine the settings name: worker processes here (``local``) or Ray tasks
    (``ray``, connected or started now, so a cluster that does not answer fails before any work)."""
    if settings.engine == "ray":
        from curation.core.ray_engine import connect

        _ENGINE.append(connect(settings.address, settings.workers, intermediates_root(settings.intermediates)))
    else:
        _ENGINE.append(None)
    try:
        yield
    finally:
        _ENGINE.pop()


def intermediates_root(setting: str | None) -> str | None:
    """Where the Ray engine's Parquet intermediates go: a URI as given, a relative path inside the
    Distillery home (so every run of a home finds, and sweeps, the same folder)."""
    if setting is None or "://" in setting or os.path.isabs(os.path.expanduser(setting)):
        return None if setting is None else os.path.expanduser(setting)
    from curation.core.home import distillery_home

    return str(distillery_home() / setting)


def engine_is_local() -> bool:
    """Whether maps run in worker processes here (not as Ray tasks)."""
    return _current() is None


def engine_description() -> str:
    """The engine maps run on now, for logs and metadata."""
    engine = _current()
    if engine is None:
        return "local"
    return f"ray ({engine.address or 'started here'}, {engine.cpus} CPUs)"


def workers_for(rows: int, configured: int | None, rows_per_worker: int = MIN_ROWS_PER_WORKER) -> int:
    """How many worker processes a stage should use for about ``rows`` rows: the configured count when the
    project file sets one; otherwise all cores, fewer when there is not enough work to repay their start
    (``rows_per_worker`` at least each: fewer for a stage whose rows cost more). On Ray, whose workers are
    started once for the cluster, every CPU of the cluster."""
    if configured is not None:
        return configured
    engine = _current()
    if engine is not None:
        return engine.cpus
    return max(1, min(available_cores(), rows // rows_per_worker))


def map_ordered(
    function: Callable[[Item], Result],
    items: Iterable[Item],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: Sequence[Any] = (),
    preload: Sequence[str] = (),
    parts: bool = False,
) -> Iterator[Result]:
    """``function`` over ``items``, results in input order. ``workers <= 1`` runs in this process (after
    calling ``initializer`` here); otherwise in that many processes, forked from a server that imported the
    ``preload`` modules (:func:`_fork_server`) so workers start fast. ``function`` and ``initializer`` must
    be module-level (picklable); an exception in a worker is raised here, naming nothing new. Inside
    :func:`use_engine` with Ray, the batches are Ray tasks (``workers``: tasks in flight per half), whatever
    their number. ``parts``: the caller only appends the results' Arrow tables to the warehouse
    (:meth:`~curation.core.warehouse.StagedTables.append`), so on Ray with Parquet intermediates they may
    stay files (:class:`~curation.core.intermediates.ParquetPart`)."""
    engine = _current()
    if engine is not None:
        yield from engine.map_ordered(function, items, workers, initializer, initargs, parts)
        return
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    with _fork_server(preload) as context:
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
