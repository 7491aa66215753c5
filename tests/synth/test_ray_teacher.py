"""Teacher requests on the ``ray`` engine, against a real Ray started here and a real HTTP server on loopback
that records which process each request came from (the owner of the client's socket, from ``/proc``): the
local engine's generations in the same order, sent from Ray workers; cache hits never sent; the API key read
by the workers from their own environment, never carried in a task; a teacher's error raised as itself."""

from __future__ import annotations

import json
import os
import pickle
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from curation.core.config import ComputeConfig
from curation.core.parallel import use_engine
from curation.synth.cache import CachedTeacher, GenerationCache
from curation.synth.ray_teacher import RayTeacher, _use_teacher, on_ray_when_active
from curation.synth.teachers import ChatRequest, GenerationParams, TeacherError, build_teacher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("ray"),
    pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="finds a request's process through Linux /proc"),
]

SECRET = "sk-ray-test-0123456789abcdef-DO-NOT-LEAK"
KEY_ENV = "DISTILLERY_TEST_RAY_TEACHER_KEY"
WORKER_ONLY_ENV = "DISTILLERY_TEST_RAY_WORKER_KEY"
WORKER_KEY = "sk-what-the-workers-environment-says"
DRIVER_ONLY_ENV = "DISTILLERY_TEST_RAY_DRIVER_ONLY_KEY"


@dataclass
class Recorded:
    """What the server received: each request's prompt, Authorization header and client process."""

    prompts: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    pids: list[int | None] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""


def _socket_owner(local_port: int) -> int | None:
    """The process holding the loopback TCP socket whose local port is ``local_port`` (a client's)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == local_port and fields[9] != "0":
                    inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and any(_link(fd) in inodes for fd in _fds(proc)):
            return int(proc.name)
    return None


def _fds(proc: Path) -> list[Path]:
    try:
        return list((proc / "fd").iterdir())
    except OSError:  # gone, or not ours to read
        return []


def _link(fd: Path) -> str:
    try:
        return os.readlink(fd)
    except OSError:  # closed while we looked (another thread's)
        return ""


@pytest.fixture
def server() -> Iterator[Recorded]:
    state = Recorded()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = body["messages"][-1]["content"]
            owner = _socket_owner(self.client_address[1])  # while the client waits: its socket is open
            with state.lock:
                state.prompts.append(prompt)
                state.auth.append(self.headers.get("Authorization"))
                state.pids.append(owner)
            if prompt in state.refuse:
                status, reply = 400, {"error": {"message": f"no {prompt}"}}
            else:
                message = {"role": "assistant", "content": f"answer to {prompt}"}
                reply = {"model": "fake", "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}
            data = json.dumps(reply).encode()
            self.send_response(status if prompt in state.refuse else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    http.daemon_threads = True
    threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    state.base_url = f"http://127.0.0.1:{http.server_address[1]}/v1"
    yield state
    http.shutdown()
    http.server_close()


@pytest.fixture(scope="module")
def ray_engine() -> Iterator[None]:
    """A Ray of 2 CPUs started here, after the keys are in this process's environment: its workers inherit
    it, as a Ray started by ``distillery run`` does."""
    import ray

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KEY_ENV, SECRET)
        patch.setenv(WORKER_ONLY_ENV, WORKER_KEY)
        patch.delenv(DRIVER_ONLY_ENV, raising=False)
        with use_engine(ComputeConfig(engine="ray", workers=2)):
            yield
    ray.shutdown()


def spec_for(server: Recorded, key_env: str = KEY_ENV) -> dict[str, Any]:
    return {
        "backend": "openai-compatible",
        "base_url": server.base_url,
        "model": "fake-model",
        "license": "Apache-2.0",
        "api_key_env": key_env,
        "max_retries": 0,
        "concurrency": 3,
    }


def on_ray(spec: dict[str, Any]) -> RayTeacher:
    teacher = on_ray_when_active(build_teacher(spec), spec)
    assert isinstance(teacher, RayTeacher)
    return teacher


def ask(text: str) -> ChatRequest:
    return ChatRequest(({"role": "user", "content": text},), GenerationParams(max_new_tokens=16, seed=1))


def test_ray_sends_the_requests_from_workers_and_returns_the_local_generations_in_order(
    ray_engine: None, server: Recorded
) -> None:
    requests = [ask(f"q{i}") for i in range(20)]
    teacher = on_ray(spec_for(server))
    landed: list[int] = []
    generations = teacher.generate(requests, on_result=lambda index, generation: landed.append(index))
    from_ray = list(server.pids)
    with use_engine(ComputeConfig()):  # the same teacher on the local engine: requests from this process
        local = teacher.generate(requests)
    assert generations == local
    assert [g.text for g in generations] == [f"answer to q{i}" for i in range(20)]
    assert sorted(landed) == list(range(20))  # each reported once, as its chunk landed
    assert len(from_ray) == 20 and None not in from_ray and os.getpid() not in from_ray
    assert server.pids[20:] == [os.getpid()] * 20  # the check sees this process when it is the client
    assert server.auth == [f"Bearer {SECRET}"] * 40


def test_cached_requests_are_not_sent_to_ray_again(ray_engine: None, server: Recorded, tmp_path: Path) -> None:
    teacher = on_ray(spec_for(server))
    with GenerationCache(tmp_path / "cache.duckdb") as cache:
        first = CachedTeacher(teacher, cache).generate([ask(f"q{i}") for i in range(6)])
        assert len(server.prompts) == 6 and len(cache) == 6
        landed: list[int] = []
        again = CachedTeacher(teacher, cache).generate(
            [ask(f"q{i}") for i in range(8)], on_result=lambda index, generation: landed.append(index)
        )
    assert sorted(server.prompts[6:]) == ["q6", "q7"]  # only the misses were sent, from Ray workers
    assert None not in server.pids and os.getpid() not in server.pids
    assert [g.text for g in again] == [f"answer to q{i}" for i in range(8)]
    assert [g.cached for g in again] == [True] * 6 + [False] * 2 and again[:6] != first  # marked cached
    assert sorted(landed) == list(range(8))


def test_the_key_is_read_by_the_workers_and_never_carried_in_a_task(
    ray_engine: None, server: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    # The driver's environment says SECRET now; the workers' (inherited when Ray started) says WORKER_KEY.
    # A key carried from the driver to the workers would reach the server as SECRET.
    monkeypatch.setenv(WORKER_ONLY_ENV, SECRET)
    spec = spec_for(server, WORKER_ONLY_ENV)
    teacher = on_ray(spec)
    requests = [ask(f"q{i}") for i in range(5)]
    assert [g.text for g in teacher.generate(requests)] == [f"answer to q{i}" for i in range(5)]
    assert server.auth == [f"Bearer {WORKER_KEY}"] * 5
    # What the tasks get, as Ray pickles it: no key anywhere; the teacher itself refuses to be pickled.
    payload = ray.cloudpickle.dumps((_use_teacher, teacher.task_arguments(), teacher.chunks(requests, 2)))
    assert SECRET.encode() not in payload and WORKER_KEY.encode() not in payload
    with pytest.raises(TypeError, match="workers rebuild it from the spec"):
        pickle.dumps(teacher)


def test_a_key_missing_on_the_workers_is_one_error_naming_the_variable(
    ray_engine: None, server: Recorded, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(DRIVER_ONLY_ENV, SECRET)  # set after Ray started: as on a cluster's unprepared node
    teacher = on_ray(spec_for(server, DRIVER_ONLY_ENV))
    with pytest.raises(TeacherError, match=f"{DRIVER_ONLY_ENV} .*is not set on Ray worker"):
        teacher.generate([ask("q")])
    assert server.prompts == []


def test_a_teacher_error_is_raised_as_itself_after_the_other_generations_are_cached(
    ray_engine: None, server: Recorded, tmp_path: Path
) -> None:
    server.refuse.add("bad")
    requests = [ask("q0"), ask("q1"), ask("bad"), ask("q3"), ask("q4"), ask("q5")]
    teacher = on_ray(spec_for(server))
    with GenerationCache(tmp_path / "cache.duckdb") as cache:
        with pytest.raises(TeacherError, match=r"1 of 6 requests failed on Ray workers.*HTTP 400") as error:
            CachedTeacher(teacher, cache).generate(requests)
        assert type(error.value) is TeacherError and SECRET not in str(error.value)
        assert len(cache) == 5  # every generation made was reported and stored
        server.refuse.clear()
        sent = len(server.prompts)
        out = CachedTeacher(teacher, cache).generate(requests)
    assert server.prompts[sent:] == ["bad"]
    assert [g.text for g in out] == [f"answer to {r.messages[-1]['content']}" for r in requests]


def test_a_local_model_teacher_is_loaded_and_run_on_the_workers(ray_engine: None, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.model_fixtures import build_tiny_chat_model

    model_dir = build_tiny_chat_model(tmp_path / "tiny")
    spec = {"backend": "transformers", "model_dir": "tiny", "license": "Apache-2.0", "batch_size": 2}
    requests = [ask(f"say {word}") for word in ("one", "two", "three", "four", "five")]
    teacher = on_ray_when_active(build_teacher(spec, base_dir=tmp_path), spec, tmp_path)
    assert isinstance(teacher, RayTeacher)
    on_ray = teacher.generate(requests)
    assert teacher.teacher._model is None  # the driver never loaded the model: the workers generated
    with use_engine(ComputeConfig()):
        local = teacher.generate(requests)
    assert on_ray == local and all(g.completion_tokens for g in on_ray)
    assert teacher.teacher._model is not None and model_dir.is_dir()


def _materialize(assets: list[Any], config: Path, home: Path, cache: Path) -> dict[str, Any]:
    import dagster as dg

    from resources import ProjectResource, WarehouseResource
    from resources.teachers import TeacherResource
    from resources.tokenizer import TokenizerResource

    resources = {
        "project": ProjectResource(config_path=str(config)),
        "tokenizer": TokenizerResource(),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "teacher": TeacherResource(cache_path=str(cache)),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize(assets, instance=instance, resources=resources)
    return {
        e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
    }  # metadata values: their .value is the number or text


def test_the_synthetic_asset_on_ray_has_the_local_data_version(
    ray_engine: None, server: Recorded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    import yaml

    import definitions
    from tests.synth.test_synthetic_assets import project_file

    synthesis = {"teacher": spec_for(server), "methods": {"responses": {"count": 6}}}
    local_config = project_file(tmp_path / "local", synthesis)
    ray_config = tmp_path / "ray" / "distillery.yaml"
    ray_config.parent.mkdir()
    ray_config.write_text(
        yaml.safe_dump({**yaml.safe_load(local_config.read_text()), "compute": {"engine": "ray", "workers": 2}})
    )
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    upstream = [a for a in definitions.DATASETS if a.key.to_user_string() in {"raw", "deduped", "filtered"}]
    synthetic = [a for a in definitions.DATASETS if a.key.to_user_string() == "synthetic"]
    (tmp_path / "local-home").mkdir()
    local = _materialize(upstream + synthetic, local_config, tmp_path / "local-home", tmp_path / "local.duckdb")
    sent_locally = len(server.prompts)
    assert sent_locally > 0 and set(server.pids) == {os.getpid()}
    (tmp_path / "ray-home").mkdir()
    shutil.copy(tmp_path / "local-home" / "warehouse.duckdb", tmp_path / "ray-home" / "warehouse.duckdb")
    on_ray = _materialize(synthetic, ray_config, tmp_path / "ray-home", tmp_path / "ray.duckdb")
    ray_pids = server.pids[sent_locally:]
    assert len(ray_pids) == sent_locally and None not in ray_pids and os.getpid() not in ray_pids
    assert on_ray["synthetic"]["data_version"].value == local["synthetic"]["data_version"].value
    assert on_ray["synthetic"]["cached_generations"].value == local["synthetic"]["cached_generations"].value > 0
