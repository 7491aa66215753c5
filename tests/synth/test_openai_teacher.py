"""The OpenAI-compatible teacher against real HTTP servers on loopback.

A small stdlib server scripts failures (429, 5xx, slow replies) and counts what it received;
the slow test talks to a real `transformers serve` process on a tiny random model.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from curation.synth.cache import CachedTeacher, GenerationCache
from curation.synth.teachers import (
    REDACTED_API_KEY,
    ChatRequest,
    Generation,
    GenerationParams,
    OpenAICompatibleTeacher,
    TeacherError,
    parse_retry_after,
)

SECRET = "sk-test-0123456789abcdef-DO-NOT-LEAK"

# (status, headers, body, delay seconds) for the n-th request (0-based) with this JSON body.
Reply = tuple[int, dict[str, str], dict[str, Any] | str, float]


def ok(content: str) -> Reply:
    body = {
        "id": "x",
        "object": "chat.completion",
        "model": "fake",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return 200, {}, body, 0.0


@dataclass
class FakeServer:
    script: Callable[[int, dict[str, Any]], Reply]
    received: list[dict[str, Any]] = field(default_factory=list)
    auth_headers: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    base_url: str = ""

    @property
    def count(self) -> int:
        return len(self.received)


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[int, dict[str, Any]], Reply]], FakeServer]]:
    servers: list[ThreadingHTTPServer] = []

    def start(script: Callable[[int, dict[str, Any]], Reply]) -> FakeServer:
        state = FakeServer(script)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with state.lock:
                    n = state.count
                    state.received.append(body)
                    state.auth_headers.append(self.headers.get("Authorization"))
                    state.in_flight += 1
                    state.max_in_flight = max(state.max_in_flight, state.in_flight)
                try:
                    status, headers, payload, delay = state.script(n, body)
                    time.sleep(delay)
                    data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                    self.send_response(status)
                    for k, v in {"Content-Type": "application/json", **headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)
                finally:
                    with state.lock:
                        state.in_flight -= 1

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        return state

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def teacher_for(server: FakeServer, **kwargs: Any) -> OpenAICompatibleTeacher:
    defaults: dict[str, Any] = {
        "api_key": SECRET,
        "license": "LicenseRef-test",
        "terms": "no-competing-models",
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "timeout_s": 5.0,
    }
    return OpenAICompatibleTeacher(server.base_url, "fake-model", **{**defaults, **kwargs})


def ask(text: str) -> ChatRequest:
    return ChatRequest(({"role": "user", "content": text},), GenerationParams(max_new_tokens=16, seed=3))


def test_sends_the_chat_completions_protocol(serve: Any) -> None:
    server = serve(lambda n, body: ok("reply to " + body["messages"][-1]["content"]))
    out = teacher_for(server).generate([ask("a"), ask("b")])
    assert [g.text for g in out] == ["reply to a", "reply to b"]
    assert out[0].finish_reason == "stop" and out[0].completion_tokens == 2
    body = server.received[0]
    assert body["model"] == "fake-model" and body["max_tokens"] == 16 and body["seed"] == 3
    assert body["messages"][0]["role"] == "user"
    assert server.auth_headers == [f"Bearer {SECRET}"] * 2


def test_retries_429_honouring_retry_after(serve: Any) -> None:
    def script(n: int, body: dict[str, Any]) -> Reply:
        return (429, {"Retry-After": "1"}, {"error": "rate limited"}, 0.0) if n == 0 else ok("fine")

    server = serve(script)
    started = time.monotonic()
    out = teacher_for(server).generate([ask("a")])
    assert out[0].text == "fine" and server.count == 2
    assert time.monotonic() - started >= 1.0  # waited as the server asked, not the 0.05 s back-off cap


def test_retries_5xx_then_gives_up_with_a_clear_error(serve: Any) -> None:
    server = serve(lambda n, body: (503, {}, "overloaded", 0.0))
    with pytest.raises(TeacherError, match=r"failed after 3 attempts; last: HTTP 503") as info:
        teacher_for(server, max_retries=2).generate([ask("a")])
    assert server.count == 3
    assert SECRET not in str(info.value)


def test_does_not_retry_client_errors(serve: Any) -> None:
    server = serve(lambda n, body: (400, {}, {"error": {"message": "bad model"}}, 0.0))
    with pytest.raises(TeacherError, match=r"refused the request.*HTTP 400.*not retried"):
        teacher_for(server).generate([ask("a")])
    assert server.count == 1


def test_timeouts_are_retried(serve: Any) -> None:
    server = serve(lambda n, body: (*ok("late")[:3], 1.5) if n == 0 else ok("quick"))
    out = teacher_for(server, timeout_s=0.3).generate([ask("a")])
    assert out[0].text == "quick" and server.count == 2
    slow = serve(lambda n, body: (*ok("late")[:3], 1.0))
    with pytest.raises(TeacherError, match=r"timed out after 0\.2s"):
        teacher_for(slow, timeout_s=0.2, max_retries=1).generate([ask("a")])
    assert slow.count == 2


def test_concurrency_is_bounded(serve: Any) -> None:
    server = serve(lambda n, body: (*ok("x")[:3], 0.1))
    teacher_for(server, concurrency=3).generate([ask(str(i)) for i in range(12)])
    assert server.count == 12
    assert 2 <= server.max_in_flight <= 3  # parallel, but never above the limit


def test_key_never_appears_in_repr_info_logs_or_errors(serve: Any, caplog: pytest.LogCaptureFixture) -> None:
    # A hostile server echoing the Authorization header back in its error body.
    server = serve(lambda n, body: (500, {}, f"bad auth header Bearer {SECRET}", 0.0))
    teacher = teacher_for(server, max_retries=1)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(TeacherError) as info:
        teacher.generate([ask("a")])
    assert server.count == 2
    for text in (
        repr(teacher),
        str(teacher),
        str(teacher.info),
        json.dumps(teacher.info.as_dict()),
        str(info.value),
        repr(info.value),
        caplog.text,
        repr(vars(teacher)),
    ):
        assert SECRET not in text
    assert REDACTED_API_KEY in str(info.value)
    with pytest.raises(TypeError, match="not picklable"):
        import pickle

        pickle.dumps(teacher)


def test_cache_second_run_makes_zero_requests_and_partial_failures_are_kept(serve: Any, tmp_path: Path) -> None:
    # Requests whose prompt is "bad" fail permanently; the others must be cached anyway.
    server = serve(
        lambda n, body: (
            (500, {}, "boom", 0.0)
            if body["messages"][-1]["content"] == "bad"
            else ok("answer " + body["messages"][-1]["content"])
        )
    )
    requests = [ask("q1"), ask("bad"), ask("q2")]
    with GenerationCache(tmp_path / "c.duckdb") as cache:
        with pytest.raises(TeacherError, match="1 of 3 requests failed"):
            CachedTeacher(teacher_for(server, max_retries=0), cache).generate(requests)
        assert len(cache) == 2
    server.script = lambda n, body: ok("answer " + body["messages"][-1]["content"])
    sent = server.count
    with GenerationCache(tmp_path / "c.duckdb") as cache:
        out = CachedTeacher(teacher_for(server), cache).generate(requests)
        assert server.count == sent + 1  # only the failed one is sent again
        assert [g.text for g in out] == ["answer q1", "answer bad", "answer q2"]
        teacher = teacher_for(server)
        again = CachedTeacher(teacher, cache).generate(requests)
    assert server.count == sent + 1 and teacher.requests_sent == 0
    assert all(g.cached for g in again)


def test_connection_refused_is_retried_then_reported() -> None:
    from tests.model_fixtures import free_port

    teacher = OpenAICompatibleTeacher(
        f"http://127.0.0.1:{free_port()}/v1",
        "m",
        api_key=SECRET,
        license="MIT",
        max_retries=2,
        backoff_base_s=0.01,
        timeout_s=2,
    )
    with pytest.raises(TeacherError, match="failed after 3 attempts; last: connection error"):
        teacher.generate([ask("a")])
    assert teacher.requests_sent == 3


def test_extra_body_is_sent_and_keys_the_cache(serve: Any) -> None:
    server = serve(lambda n, body: ok(f"stop={body.get('stop')}"))
    plain, with_stop = teacher_for(server), teacher_for(server, extra_body={"stop": ["\n"]})
    with GenerationCache(":memory:") as cache:
        a = CachedTeacher(plain, cache).generate([ask("q")])
        b = CachedTeacher(with_stop, cache).generate([ask("q")])
    assert server.count == 2 and server.received[1]["stop"] == ["\n"]
    assert (a[0].text, b[0].text) == ("stop=None", "stop=['\\n']")


def test_malformed_reply_is_a_clear_error(serve: Any) -> None:
    server = serve(lambda n, body: (200, {}, {"not": "chat"}, 0.0))
    with pytest.raises(TeacherError, match="not a chat-completions reply"):
        teacher_for(server).generate([ask("a")])


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="http"):
        OpenAICompatibleTeacher("localhost:8000", "m", license="MIT")


@pytest.mark.slow
def test_against_transformers_serve(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.model_fixtures import ServeProcess, build_tiny_chat_model

    model_dir = build_tiny_chat_model(tmp_path / "tiny-llama")
    with ServeProcess(model_dir) as served:
        requests = [ask("hello"), ask("what is two plus three ?"), ask("write a short poem")]
        teacher = OpenAICompatibleTeacher(
            served.base_url, str(model_dir), api_key=None, license="Apache-2.0", concurrency=2, timeout_s=30
        )
        with GenerationCache(tmp_path / "c.duckdb") as cache:
            first = CachedTeacher(teacher, cache).generate(requests)
            assert teacher.requests_sent == 3
            assert all(g.finish_reason in {"stop", "length"} and g.completion_tokens for g in first)
            again_teacher = OpenAICompatibleTeacher(served.base_url, str(model_dir), license="Apache-2.0")
            again = CachedTeacher(again_teacher, cache).generate(requests)
    assert again_teacher.requests_sent == 0
    assert [g.text for g in again] == [g.text for g in first]


def _echo_auth(server_ref: list[FakeServer]) -> Callable[[int, dict[str, Any]], Reply]:
    """A hostile server: every reply (text and finish reason) repeats the Authorization header it received."""

    def script(n: int, body: dict[str, Any]) -> Reply:
        auth = server_ref[0].auth_headers[n] or ""
        prompt = body["messages"][-1]["content"]
        text = f"Score: 5. I saw {auth}" if "impartial judge" in prompt else f"An answer. Your header: {auth}."
        status, headers, payload, delay = ok(text)
        assert isinstance(payload, dict)
        payload["choices"][0]["finish_reason"] = f"stop ({auth})"
        return status, headers, payload, delay

    return script


def _cache_text(path: Path) -> str:
    import duckdb

    with duckdb.connect(str(path), read_only=True) as db:
        return json.dumps(db.execute("SELECT * FROM generation_cache").fetchall(), default=str)


def test_a_reply_echoing_the_key_is_scrubbed_before_anything_stores_it(
    serve: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ref: list[FakeServer] = []
    server = serve(_echo_auth(ref))
    ref.append(server)
    caplog.set_level(logging.DEBUG)
    cache_file = tmp_path / "cache.duckdb"
    with GenerationCache(cache_file) as cache:
        out = CachedTeacher(teacher_for(server), cache).generate([ask("a"), ask("b")])
    assert server.auth_headers == [f"Bearer {SECRET}"] * 2  # the key was sent, and came back
    for gen in out:
        assert SECRET not in gen.text and SECRET not in gen.finish_reason
        assert f"Bearer {REDACTED_API_KEY}" in gen.text
    assert SECRET not in _cache_text(cache_file) and REDACTED_API_KEY in _cache_text(cache_file)
    assert SECRET.encode() not in cache_file.read_bytes()
    assert SECRET not in caplog.text


def test_cached_replies_stored_before_scrubbing_are_scrubbed_on_the_way_out(serve: Any) -> None:
    server = serve(lambda n, body: ok("fresh"))
    teacher = teacher_for(server)
    with GenerationCache(":memory:") as cache:
        cache.put(teacher.info, ask("old"), Generation(f"leaked {SECRET}", "stop"))
        hit = CachedTeacher(teacher, cache).generate([ask("old")])[0]
    assert hit.cached and hit.text == f"leaked {REDACTED_API_KEY}" and server.count == 0


@pytest.mark.slow
def test_a_key_echoing_server_leaves_the_key_in_no_table_cache_or_log(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The whole pipeline (Dagster, demo data) with a teacher and judge whose every reply echoes the key."""
    import duckdb

    from tests.synth.test_synthetic_assets import project_file, run_pipeline

    ref: list[FakeServer] = []
    server = serve(_echo_auth(ref))
    ref.append(server)
    monkeypatch.setenv("DISTILLERY_TEST_TEACHER_KEY", SECRET)
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    caplog.set_level(logging.DEBUG)
    synthesis = {
        "teacher": {
            "backend": "openai-compatible",
            "base_url": server.base_url,
            "model": "echo-model",
            "license": "Apache-2.0",
            "api_key_env": "DISTILLERY_TEST_TEACHER_KEY",
            "max_retries": 0,
        },
        "judge": "teacher",
        "methods": {"responses": {"count": 4}},
    }
    config = project_file(tmp_path / "project", synthesis)
    result = run_pipeline(tmp_path / "home", config, tmp_path / "cache.duckdb")
    assert server.count > 0 and all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    with duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True) as db:
        tables = [t for (t,) in db.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        dumps = {t: json.dumps(db.execute(f'SELECT * FROM "{t}"').fetchall(), default=str) for t in tables}
        synthetic_rows = db.execute("SELECT count(*) FROM synthetic").fetchone()
    assert synthetic_rows is not None and synthetic_rows[0] > 0  # replies were stored: the test can fail
    assert {"synthetic", "provenance", "synthetic_mixed", "formatted"} <= set(dumps)
    assert [t for t, text in dumps.items() if SECRET in text] == []
    assert REDACTED_API_KEY in dumps["synthetic"] and REDACTED_API_KEY in dumps["provenance"]  # judge replies
    assert SECRET not in _cache_text(tmp_path / "cache.duckdb")
    assert SECRET.encode() not in (tmp_path / "cache.duckdb").read_bytes()
    events = "\n".join(str(e) for e in result.all_events)
    assert SECRET not in events and SECRET not in caplog.text


# ----------------------------------------------------------------------------- provenance as it happened

SERVED = "fake-model-2026-01-15"  # what the server says answered: the configured name is an alias
FINGERPRINT = "fp_44709d6fcb"


def served(content: str, model: str = SERVED, fingerprint: str | None = FINGERPRINT) -> Reply:
    status, headers, body, delay = ok(content)
    assert isinstance(body, dict)
    return status, headers, {**body, "model": model, "system_fingerprint": fingerprint}, delay


def _synthesize_and_store(teacher: Any, judge: Any, cache: GenerationCache, policy_teachers: dict) -> list[dict]:
    """The ``responses`` method through the generation cache, its provenance written to a DuckDB table the way
    the ``synthetic`` asset writes it; the records as a reviewer selects them."""
    import duckdb
    import pyarrow as pa

    from curation.core.licenses import LicensePolicy
    from curation.core.provenance import PROVENANCE_DDL, PROVENANCE_SCHEMA
    from curation.core.schema import new_row
    from curation.synth.methods import SynthContext
    from curation.synth.stage import synthesize
    from curation.synth.terms import parse_model_registry, registered_teacher
    from curation.synth.verify import VerifySettings

    registry = parse_model_registry(policy_teachers)
    cached = CachedTeacher(teacher, cache)
    ctx = SynthContext(cached, registered_teacher(cached.info, registry), LicensePolicy(), registry, judge=judge)
    seeds = [
        new_row(
            row_id=f"s{i}",
            kind="prompt",
            messages=[{"role": "user", "content": f"Explain how tides work, part {i}"}],
            source="seeds",
            source_uri=f"seeds#{i}",
            license="Apache-2.0",
            origin="human",
        )
        for i in range(2)
    ]
    result = synthesize(ctx, seeds, {"responses": {"count": 2}}, VerifySettings(), "research", datetime(2026, 1, 1))
    assert len(result.accepted) == 2, result.rejected
    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE provenance ({PROVENANCE_DDL})")
    connection.register("_p", pa.Table.from_pylist(result.provenance_records(), schema=PROVENANCE_SCHEMA))
    connection.execute("INSERT INTO provenance SELECT * FROM _p")
    return connection.sql("SELECT * FROM provenance ORDER BY row_id").to_arrow_table().to_pylist()


def test_provenance_records_the_served_model_its_fingerprint_and_what_was_not_confirmed(serve: Any) -> None:
    from curation.synth.judges import ProceduralJudge

    server = serve(lambda n, body: served("Tides come from the pull of the moon on the oceans, twice a day."))
    teacher = teacher_for(server, revision="2026-01")
    with GenerationCache(":memory:") as cache:
        first = _synthesize_and_store(teacher, ProceduralJudge(), cache, {})
        sent = server.count
        again = _synthesize_and_store(teacher_for(server, revision="2026-01"), ProceduralJudge(), cache, {})
    assert sent == 2 and server.count == sent  # the second run came from the cache …
    for record in first + again:  # … and still says what the server did when it answered
        assert (record["teacher_model"], record["teacher_revision"]) == ("fake-model", "2026-01")  # as configured
        assert (record["served_model"], record["system_fingerprint"]) == (SERVED, FINGERPRINT)
        params = json.loads(record["generation_params"])
        assert params["temperature"] == 0.0 and params["seed"] == 0  # what was requested …
        assert params["not_confirmed"] == ["max_new_tokens", "seed", "temperature", "top_p"]  # … not confirmed
        assert "not confirmed" in params["note"] and "openai-compatible" in params["note"]
        assert "effective" not in params and "served" not in params  # the served fields are columns
        assert record["teacher_weights"] is None  # no local files to fingerprint


def test_provenance_records_the_judge_model_revision_licence_and_terms(serve: Any) -> None:
    from curation.synth.verify import ModelJudge

    teacher_server = serve(lambda n, body: served("Tides come from the pull of the moon on the oceans."))
    judge_server = serve(lambda n, body: served("Accurate and clear. Score: 4", model="acme/judge-9b-0125"))
    judge = ModelJudge(
        OpenAICompatibleTeacher(
            judge_server.base_url, "acme/judge-9b", license="LicenseRef-acme", revision="2025-01-25", timeout_s=5.0
        )
    )
    declared = {"acme/judge-9b": {"license": "Apache-2.0", "terms": "acme-judge-terms-v2"}}
    with GenerationCache(":memory:") as cache:
        records = _synthesize_and_store(teacher_for(teacher_server), judge, cache, declared)
    assert judge_server.count == 2
    for record in records:
        assert record["judge_score"] == 4.0
        # The judge as the policy declares it: licence and terms from policy.teachers, revision from its config.
        assert (record["judge_model"], record["judge_backend"], record["judge_revision"]) == (
            "acme/judge-9b",
            "openai-compatible",
            "2025-01-25",
        )
        assert (record["judge_license"], record["judge_terms"]) == ("Apache-2.0", "acme-judge-terms-v2")
        # … and what the judge's server said answered (its model id and fingerprint), in the verdict.
        judged = json.loads(record["verification"])["judge"]
        assert (judged["served_model"], judged["system_fingerprint"]) == ("acme/judge-9b-0125", FINGERPRINT)
