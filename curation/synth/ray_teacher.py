"""Teacher requests on the ``ray`` compute engine (``compute.engine: ray``).

On the local engine a model teacher runs in the driver: the HTTP teacher's asyncio client with its bounded
concurrency, or the transformers model in this process. With Ray, :class:`RayTeacher` sends the requests it
is given as Ray tasks through :meth:`curation.core.ray_engine.RayEngine.map_ordered`:

* **chunks**: the requests are cut into about :data:`CHUNKS_PER_CPU` chunks per CPU of the cluster (at most
  :data:`MAX_CHUNK_REQUESTS` requests each), one task per chunk; within a chunk the HTTP teacher still sends
  its ``concurrency`` requests at once, so a cluster of N CPUs keeps up to N times that many in flight — what
  a fleet of model servers behind one URL needs to stay busy;
* **the teacher on the worker**: each worker process builds the teacher once from its project-file spec (the
  map's ``initializer``) and keeps it for later maps (a transformers model is loaded once per process, not
  per call), after checking that what it built is the teacher the driver records in provenance (the same
  model, revision and weights fingerprint: a node whose model directory differs fails instead of writing
  rows under the wrong weights);
* **order**: chunks come back in request order and the driver calls ``on_result`` for each generation as
  its chunk lands, so the generation cache (:class:`curation.synth.cache.CachedTeacher`, which wraps this
  class: only its misses come here) stores them as they arrive and progress is reported; rows, cache and
  every data version are the local engine's;
* **the API key** is never a task argument, so it is never in Ray's object store (which may spill to disk)
  or its task records: the worker reads it from the environment variable the spec names (``api_key_env``),
  as the driver did. A Ray started by the driver (no ``compute.address``) gives its workers the driver's
  environment; **on a remote cluster the variable must be set on every node** (in the environment of
  ``ray start``), otherwise the first chunk fails with an error that names it. A key given to the teacher
  resource directly (``TeacherResource.api_key``) cannot be read there: such a teacher stays in the driver;
* **failures**: a worker process that dies mid-chunk (killed, out of memory, node lost) is run again by Ray
  (:data:`curation.core.ray_engine.TASK_RETRIES`; a chunk is a pure function of its requests, and the driver
  takes one result per chunk). A request the teacher gives up on (:class:`TeacherError`) does not lose the
  rest: the worker returns its chunk's other generations, the driver reports and caches every generation
  that was made, then raises :class:`TeacherError` as the local teacher does. Any other error of the teacher's
  code is raised in the driver as itself.

The procedural teacher stays in the driver (rules over strings: a task would cost more than it saves), and
so does a transformers teacher on a GPU (``device`` other than cpu): the engine's tasks ask Ray for a CPU,
not a GPU; serve such a model (vLLM, ``transformers serve``) and use the openai-compatible backend instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from curation.core.ray_engine import current as current_engine
from curation.synth.teachers import (
    ChatRequest,
    Generation,
    ResultCallback,
    Teacher,
    TeacherError,
    WrappedTeacher,
    build_teacher,
)

CHUNKS_PER_CPU = 2
"""Chunks of requests per CPU of the cluster: a CPU whose chunk finished early takes another, so one slow
chunk does not leave the others idle."""

MAX_CHUNK_REQUESTS = 256
"""Requests per chunk at most, however many there are: a chunk's generations reach the cache when it lands,
so this bounds what a crashed driver loses and what a retried chunk sends again."""

_REMOTE_BACKENDS = frozenset({"openai-compatible", "transformers"})

ChunkResult = tuple[list[Generation | None], str | None]
"""A chunk's generations in request order (None: the teacher gave up on it) and the teacher's error, if any."""


def on_ray_when_active(teacher: Teacher, spec: Mapping[str, Any], base_dir: Path | None = None) -> Teacher:
    """``teacher`` (built from ``spec``) as a :class:`RayTeacher` when a Ray worker can build the same teacher
    from ``spec`` alone and the work is worth a task: the openai-compatible backend (its key, if any, read
    from ``api_key_env``) and the transformers backend on a CPU. Otherwise ``teacher`` itself. Which engine
    runs the requests is decided at each ``generate``, so the result is safe to use on the local engine."""
    backend = spec.get("backend", "procedural")
    if backend not in _REMOTE_BACKENDS:
        return teacher
    if backend == "transformers" and str(spec.get("device", "cpu")) != "cpu":
        return teacher
    return RayTeacher(teacher, spec, base_dir)


class RayTeacher(WrappedTeacher):
    """A model teacher whose requests run as Ray tasks while the Ray engine is active (module docstring);
    on the local engine, the wrapped teacher in this process. Every other attribute (``info``,
    ``cache_extra``, ``scrub_secrets``) is the wrapped teacher's."""

    def __init__(self, teacher: Teacher, spec: Mapping[str, Any], base_dir: Path | None = None) -> None:
        if "api_key" in spec:
            raise ValueError("a teacher spec sent to Ray workers must name its key's variable (api_key_env)")
        super().__init__(teacher)
        self.spec = dict(spec)
        self.base_dir = base_dir

    def __reduce__(self) -> Any:
        raise TypeError("RayTeacher holds the driver's teacher (and its key); workers rebuild it from the spec")

    def task_arguments(self) -> tuple[str, str | None, dict[str, Any]]:
        """What every task of a ``generate`` gets besides its requests (the map's ``initargs``): the spec,
        the folder its paths are relative to, and the teacher the driver records. No secret is among them."""
        return (
            json.dumps(self.spec, sort_keys=True, default=str),
            None if self.base_dir is None else str(self.base_dir),
            self.info.as_dict(),
        )

    def chunks(self, requests: Sequence[ChatRequest], cpus: int) -> list[Sequence[ChatRequest]]:
        """``requests`` cut into consecutive chunks, about :data:`CHUNKS_PER_CPU` per CPU."""
        size = max(1, min(MAX_CHUNK_REQUESTS, math.ceil(len(requests) / (CHUNKS_PER_CPU * max(1, cpus)))))
        return [requests[start : start + size] for start in range(0, len(requests), size)]

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        """Generations in request order, ``on_result`` called here as each chunk lands (Ray), or the wrapped
        teacher's (local engine)."""
        engine = current_engine()
        if engine is None or not requests:
            return self.teacher.generate(requests, on_result)
        chunks = self.chunks(requests, engine.cpus)
        results: list[Generation | None] = [None] * len(requests)
        failures: list[str] = []
        start = 0
        landed = engine.map_ordered(_generate_chunk, chunks, engine.cpus, _use_teacher, self.task_arguments())
        for chunk, (generations, error) in zip(chunks, landed, strict=True):
            for offset, generation in enumerate(generations):
                if generation is not None:
                    results[start + offset] = generation
                    if on_result is not None:
                        on_result(start + offset, generation)
            if error is not None:
                failures.append(f"requests {start}-{start + len(chunk) - 1}: {error}")
            start += len(chunk)
        if failures:
            done = sum(r is not None for r in results)
            raise TeacherError(
                f"{len(requests) - done} of {len(requests)} requests failed on Ray workers ({done} succeeded and "
                f"were reported); first: {failures[0]}"
            )
        return [g for g in results if g is not None]


# ---------------------------------------------------------------------------------------------
# On the Ray worker (module-level: Ray pickles these by reference and the worker imports this module).

_BUILT: dict[str, Teacher] = {}
"""In a Ray worker process: the teachers built here, by their spec and folder (kept across maps: the judge's
and the teacher's maps alternate, and a transformers model takes seconds to load)."""

_ACTIVE: list[Teacher] = []
"""In a Ray worker process: the teacher of the map this process runs now (set by :func:`_use_teacher`)."""

_MAX_BUILT = 4
"""Teachers one worker keeps at most (a run has a teacher and a judge; more are rebuilt when needed)."""


def _use_teacher(spec_json: str, base_dir: str | None, info: Mapping[str, str]) -> None:
    """The map's initializer: build (or reuse) this process's teacher for the spec and check it is the one
    the driver records, so rows never name other weights than those that wrote them."""
    key = hashlib.sha256(json.dumps([spec_json, base_dir]).encode()).hexdigest()
    teacher = _BUILT.get(key)
    if teacher is None:
        spec = json.loads(spec_json)
        variable = spec.get("api_key_env")
        if variable and not os.environ.get(variable):
            raise TeacherError(
                f"environment variable {variable} (api_key_env of the teacher) is not set on Ray worker "
                f"{socket.gethostname()}: on a Ray cluster, set it in the environment of every node's `ray start`"
            )
        teacher = build_teacher(spec, base_dir=None if base_dir is None else Path(base_dir))
        if len(_BUILT) >= _MAX_BUILT:
            _BUILT.clear()
        _BUILT[key] = teacher
    if teacher.info.as_dict() != dict(info):
        raise TeacherError(
            f"the teacher built on Ray worker {socket.gethostname()} is {teacher.info.as_dict()}, not the driver's "
            f"{dict(info)}: give every node the same model files"
        )
    _ACTIVE[:] = [teacher]


def _generate_chunk(requests: Sequence[ChatRequest]) -> ChunkResult:
    """One chunk on a Ray worker: its generations in order, and the teacher's error if it gave up on some
    (those it made are returned all the same, so the driver caches them)."""
    (teacher,) = _ACTIVE
    made: list[Generation | None] = [None] * len(requests)

    def keep(index: int, generation: Generation) -> None:
        made[index] = generation

    try:
        returned = teacher.generate(requests, on_result=keep)
    except TeacherError as error:
        return made, str(error)
    for index, generation in enumerate(returned):  # a backend that ignores on_result
        if made[index] is None:
            made[index] = generation
    return made, None
