"""The ``ray`` compute engine: the same ordered map over batches as :func:`curation.core.parallel.map_ordered`,
as Ray tasks.

Each batch is one task: the stage's batch function (module-level, so it is pickled by reference and the
worker imports the stage's module) applied to one Arrow record batch. The driver keeps at most
``2 * workers`` tasks in flight and takes their results in submission order, so the output — every
table and data version — is the same as the local engine's, and the driver's memory stays bounded
however large the input.

A stage's per-process state (the filter chain, the tokenizer, the dedup plan) is built once per Ray worker
process and map: the ``initializer`` and its arguments go to the object store once per map, and a worker
runs the initializer before the first batch of that map it is given (:func:`_apply`).

Failure: a task whose worker process dies (killed, out of memory, node lost) is run again by Ray
(``max_retries``). A batch function is pure, and the driver takes exactly one result per batch, so a
retried batch is neither lost nor counted twice. An exception raised by the stage's own code is not
retried: it is raised in the driver as the original exception.

``ray`` is imported only when this engine is used (it takes a second to import, and a local run never
needs it).
"""

from __future__ import annotations

import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from curation.core.parallel import _current, available_cores

Item = TypeVar("Item")
Result = TypeVar("Result")

TASK_RETRIES = 3
"""Times Ray runs a batch again after its worker process died (Ray's own default for tasks)."""

LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
"""Object store of a Ray started in this process. Only the batches in flight and the stage's worker state
live there; Ray's default (30% of the machine's memory) would reserve gigabytes of shared memory."""


class EngineUnavailable(RuntimeError):
    """The configured engine cannot run (Ray not installed, no cluster at the address)."""


@dataclass(frozen=True)
class RayEngine:
    """A connected Ray: where it runs and how many CPUs it has."""

    address: str | None
    cpus: int
    intermediates: str | None = None
    """Folder or object-store URI where tasks exchange Arrow data as Parquet (:mod:`curation.core.intermediates`);
    None: through Ray's object store."""

    def map_ordered(
        self,
        function: Callable[[Item], Result],
        items: Iterable[Item],
        workers: int,
        initializer: Callable[..., None] | None = None,
        initargs: Sequence[Any] = (),
        parts: bool = False,
    ) -> Iterator[Result]:
        """``function`` over ``items`` as Ray tasks, at most ``2 * workers`` in flight, results in input
        order; an exception raised by ``function`` or ``initializer`` is raised here as itself.

        With :attr:`intermediates`, Arrow data in items and results goes through Parquet files; the results
        hold :class:`~curation.core.intermediates.ParquetPart` in place of their Arrow tables when ``parts``
        (the caller appends them to the warehouse, which reads the files), else the tables read back. A
        result's files are deleted when the caller asks for the next result."""
        import ray

        from curation.core import intermediates as store

        map_id = uuid.uuid4().hex
        folder = None
        if self.intermediates is not None:
            folder = store.new_folder(self.intermediates, map_id)
        remote = _remote_apply()
        setup = ray.put((map_id, initializer, tuple(initargs), folder))
        pending: deque[tuple[Any, list[Any]]] = deque()
        in_flight = 2 * max(1, workers)

        def submit(number: int, item: Any) -> None:
            sent = item if folder is None else store.spill(item, folder, f"in-{number}")
            pending.append((remote.remote(setup, function, sent), store.parts_in(sent)))

        def taken() -> Iterator[Any]:
            task, inputs = pending.popleft()
            result = _result(task)
            for part in inputs:
                store.delete_part(part)
            made = store.parts_in(result)
            yield result if parts else store.load(result)
            for part in made:
                store.delete_part(part)

        try:
            for number, item in enumerate(items):
                submit(number, item)
                if len(pending) >= in_flight:
                    yield from taken()
            while pending:
                yield from taken()
        finally:
            for task, _ in pending:
                ray.cancel(task, force=True)
            if folder is not None:
                store.delete_folder(folder)


def current() -> RayEngine | None:
    """The Ray engine the stages' maps run on now (inside :func:`curation.core.parallel.use_engine` with
    ``engine: ray``), or None on the local engine: for a stage whose work is more than an ordered map
    (dedup's near-duplicate shuffle, :mod:`curation.dedup.distributed`)."""
    return _current()


def connect(address: str | None, workers: int | None, intermediates: str | None = None) -> RayEngine:
    """Connect to the Ray cluster at ``address``, or start a Ray of ``workers`` CPUs in this process (all
    cores when None); an existing connection of this process is reused. A missing package or a cluster
    that does not answer is one :class:`EngineUnavailable` naming what to do, raised before any work."""
    try:
        import ray
    except ImportError as error:
        raise EngineUnavailable(
            "compute.engine is ray but the ray package is not installed: pip install 'ray[data]' "
            "(or set compute.engine: local)"
        ) from error
    if address is None and ray.is_initialized():
        connected = ray.get_runtime_context().gcs_address
        if connected not in _STARTED_HERE:
            # Connected before the stage by the deployment's dagster-ray resource: named by its address, so
            # logs and metadata say which cluster did the work.
            address = connected
    elif address is not None and address != "auto":
        _probe(address)
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "configure_logging": False,
            "log_to_driver": False,
            "namespace": "distillery",
        }
        if address is None:
            options |= {"num_cpus": workers or available_cores(), "object_store_memory": LOCAL_OBJECT_STORE_BYTES}
        try:
            ray.init(address=address, **options)
            if address is None:
                _STARTED_HERE.append(ray.get_runtime_context().gcs_address)
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as error:
            raise EngineUnavailable(
                f"compute.address {address!r}: no Ray cluster answers there ({_first_line(error)}). Start one "
                "(`ray start --head` on the head node), correct the address, or set compute.engine: local"
            ) from error
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < 1:
        raise EngineUnavailable(f"the Ray cluster at {address or 'this process'} has no CPUs to run tasks on")
    return RayEngine(address, cpus, intermediates)


_STARTED_HERE: list[str] = []
"""Addresses of the Rays :func:`connect` started in this process (a connection it did not make is named by
its address)."""


PROBE_SECONDS = 5.0
"""How long the head node may take to accept a connection before the address counts as unreachable
(``ray.init`` itself retries for minutes, silently)."""


def _probe(address: str) -> None:
    """Fail fast when nothing listens at a cluster address (``ray://host[:port]`` or ``host[:port]``)."""
    client = address.startswith("ray://")
    location = address.removeprefix("ray://")
    host, _, port = location.rpartition(":") if ":" in location else (location, "", "")
    port_number = int(port) if port.isdigit() else (10001 if client else 6379)  # Ray's default ports
    try:
        with socket.create_connection((host or location, port_number), timeout=PROBE_SECONDS):
            pass
    except OSError as error:
        raise EngineUnavailable(
            f"compute.address {address!r}: nothing answers at {host or location}:{port_number} ({error}). "
            "Start the cluster (`ray start --head` on the head node), correct the address, "
            "or set compute.engine: local"
        ) from error


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _result(task: Any) -> Any:
    """The task's value, its Arrow data copied out of the object store (:func:`~curation.core.intermediates.owned`)."""
    import ray

    from curation.core.intermediates import owned

    try:
        return owned(ray.get(task))
    except ray.exceptions.RayTaskError as error:
        raise error.as_instanceof_cause() from None


_REMOTE: list[Any] = []


def _remote_apply() -> Any:
    """:func:`_apply` as a Ray remote function (made once: ``ray.remote`` must run after ``import ray``)."""
    if not _REMOTE:
        import ray

        _REMOTE.append(ray.remote(max_retries=TASK_RETRIES, retry_exceptions=False)(_apply))
    return _REMOTE[0]


_READY: list[str] = []
"""In a Ray worker process: the map whose initializer ran last here (its id)."""


def _apply(
    setup: tuple[str, Callable[..., None] | None, tuple[Any, ...], str | None],
    function: Callable[[Any], Any],
    item: Any,
) -> Any:
    """One batch on a Ray worker: the map's initializer first if this process has not run it for this map
    (a worker runs one task at a time, so the module state it builds is this map's until the next map).
    With a Parquet folder, the batch is read from its file and the result's Arrow data written to files."""
    map_id, initializer, initargs, folder = setup
    if [map_id] != _READY:
        if initializer is not None:
            initializer(*initargs)
        _READY[:] = [map_id]
    if folder is None:
        return function(item)
    from curation.core import intermediates as store

    return store.spill(function(store.load(item)), folder, "out")
