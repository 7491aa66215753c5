"""The schedule, the landing-file sensor (cursor, run keys) and the run-failure alert (file and webhook)."""

from __future__ import annotations

import json
import os
import shutil
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import dagster as dg
import pytest

import curation.ingest.landing as landing
from sensors.automation import landing_files_sensor, nightly_schedule, run_failure_alert
from tests.conftest import DEMO_CONFIG

PROJECT = """\
name: sensor-test
sources:
  - name: sft
    path: landing/sft/*.jsonl
    mapping: alpaca
    license: Apache-2.0
  - name: chat
    path: landing/chat.json
    mapping: sharegpt
    license: CC-BY-4.0
format:
  tokenizer: tok
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "landing" / "sft").mkdir(parents=True)
    shutil.copy(DEMO_CONFIG.parent / "data" / "alpaca_sft.jsonl", tmp_path / "landing" / "sft" / "a.jsonl")
    shutil.copy(DEMO_CONFIG.parent / "data" / "chat_sharegpt.json", tmp_path / "landing" / "chat.json")
    config = tmp_path / "distillery.yaml"
    config.write_text(PROJECT)
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    return tmp_path


def evaluate(instance: dg.DagsterInstance, cursor: str | None) -> tuple[dg.SensorResult | None, list, str | None]:
    """One sensor tick as the daemon runs it: (run requests, skip message, new cursor)."""
    context = dg.build_sensor_context(instance=instance, cursor=cursor)
    data = landing_files_sensor.evaluate_tick(context)
    return data.run_requests, data.skip_message, data.cursor


def test_landing_sensor_runs_once_per_change_and_never_for_unchanged_files(project: Path) -> None:
    with dg.instance_for_test() as instance:
        requests, skip, cursor = evaluate(instance, None)
        assert len(requests) == 1 and skip is None  # first look: every file is new
        first = requests[0]
        assert first.run_key.startswith("landing-")
        assert first.tags["distillery/changed_files"] == "2"
        assert first.tags["distillery/changed_sources"] == "chat,sft"
        assert sorted(json.loads(cursor)) == sorted(
            [f"sft:{project / 'landing/sft/a.jsonl'}", f"chat:{project / 'landing/chat.json'}"]
        )

        # Same files, same cursor: no run.
        requests, skip, same_cursor = evaluate(instance, cursor)
        assert requests == [] and "no landing file added or changed" in skip
        assert same_cursor == cursor

        # A daemon that lost its cursor update re-evaluates the same change: the same run key, so
        # Dagster starts no second run for it.
        again, _, _ = evaluate(instance, None)
        assert again[0].run_key == first.run_key

        # Touched, not changed (new mtime, same bytes): no run, but the cursor remembers the new mtime.
        chat = project / "landing" / "chat.json"
        os.utime(chat, ns=(chat.stat().st_atime_ns, chat.stat().st_mtime_ns + 5_000_000_000))
        requests, skip, touched_cursor = evaluate(instance, cursor)
        assert requests == [] and skip
        assert touched_cursor != cursor

        # Changed content: one run, for that source only.
        chat.write_text(json.dumps(json.loads(chat.read_text())[:1]))
        requests, _, changed_cursor = evaluate(instance, touched_cursor)
        assert len(requests) == 1 and requests[0].tags["distillery/changed_sources"] == "chat"
        assert requests[0].tags["distillery/changed_files"] == "1"
        assert requests[0].run_key != first.run_key

        # Added file matching the source's glob: one run for it.
        shutil.copy(project / "landing" / "sft" / "a.jsonl", project / "landing" / "sft" / "b.jsonl")
        (project / "landing" / "sft" / "b.jsonl").write_text('{"instruction": "New?", "output": "Yes."}\n')
        requests, _, added_cursor = evaluate(instance, changed_cursor)
        assert len(requests) == 1 and requests[0].tags["distillery/changed_sources"] == "sft"
        assert f"sft:{project / 'landing/sft/b.jsonl'}" in json.loads(added_cursor)

        # Then nothing more.
        requests, skip, _ = evaluate(instance, added_cursor)
        assert requests == [] and skip


def test_unchanged_files_are_not_read_again(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with dg.instance_for_test() as instance:
        _, _, cursor = evaluate(instance, None)
        hashed: list[Path] = []
        real = landing.digest_or_reason
        monkeypatch.setattr(landing, "digest_or_reason", lambda path: hashed.append(path) or real(path))
        evaluate(instance, cursor)
        assert hashed == []
        (project / "landing" / "chat.json").write_text("[]")
        evaluate(instance, cursor)
        assert hashed == [project / "landing" / "chat.json"]


def test_an_unreadable_landing_file_starts_a_run_instead_of_failing_the_tick(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import curation.ingest.readers as readers

    locked = project / "landing" / "chat.json"
    real = readers.file_digest

    def refuse(path: Path) -> str:  # tests run as root, which file modes do not stop
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    with dg.instance_for_test() as instance:
        _, _, cursor = evaluate(instance, None)
        os.utime(locked, ns=(locked.stat().st_atime_ns, locked.stat().st_mtime_ns + 5_000_000_000))
        monkeypatch.setattr(readers, "file_digest", refuse)
        requests, _, _ = evaluate(instance, cursor)  # raw quarantines the file with the reason
        assert len(requests) == 1 and requests[0].tags["distillery/changed_sources"] == "chat"


def test_going_back_to_earlier_content_is_a_new_change() -> None:
    a = {"s:/f": "1:10:aaa"}
    b = {"s:/f": "1:20:bbb"}
    back = {"s:/f": "1:30:aaa"}
    assert landing.changed_files(b, back) == ["s:/f"]
    keys = {landing.state_key(b, a), landing.state_key(back, b), landing.state_key(a, {})}
    assert len(keys) == 3
    assert landing.state_key(back, b) == landing.state_key(a, b)  # same transition, same key


def test_an_invalid_project_file_skips_and_keeps_the_cursor(project: Path) -> None:
    with dg.instance_for_test() as instance:
        _, _, cursor = evaluate(instance, None)
        (project / "distillery.yaml").write_text("sources: []\n")
        requests, skip, kept = evaluate(instance, cursor)
        assert requests == [] and "cannot read the project file" in skip and "sources" in skip
        assert kept == cursor


def test_nightly_schedule_requests_the_distill_job_once_per_tick() -> None:
    from definitions import ASSETS, defs

    when = datetime(2026, 3, 4, 2, 0, tzinfo=UTC)
    data = nightly_schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=when))
    assert len(data.run_requests) == 1
    request = data.run_requests[0]
    assert request.tags["distillery/trigger"] == "nightly"
    assert request.run_key == "nightly-2026-03-04T02:00:00+00:00"
    assert nightly_schedule.job_name == "distill" and nightly_schedule.cron_schedule == "0 2 * * *"
    (job,) = [j for j in defs.jobs if j.name == "distill"]
    assert {"raw", "deduped", "filtered", "synthetic_mixed", "formatted"} <= {
        k.to_user_string() for k in job.selection.resolve(ASSETS)
    }
    assert nightly_schedule in defs.schedules


# --- run-failure alerts ---------------------------------------------------------------------


@dg.op
def explode() -> None:
    raise ValueError("planted failure for the alert test")


@dg.job
def failing_job() -> None:
    explode()


def failure_context(instance: dg.DagsterInstance) -> dg.RunFailureSensorContext:
    """A real failed run and the context the daemon would give the failure sensor for it."""
    result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    run = instance.get_run_by_id(result.run_id)
    records = instance.get_records_for_run(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    event = records[0].event_log_entry.dagster_event
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert", dagster_event=event, dagster_instance=instance, dagster_run=run
    ).for_run_failure()


def test_the_failure_sensor_finds_a_failed_run_and_alerts_once(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ticks as the daemon runs them: the first sets the starting point, the next finds the failed run
    (started outside any code location, like `distillery run`), later ones do not alert again."""
    monkeypatch.delenv("DISTILLERY_ALERT_FILE", raising=False)
    monkeypatch.delenv("DISTILLERY_ALERT_WEBHOOK", raising=False)
    defs = dg.Definitions(sensors=[run_failure_alert], jobs=[failing_job])
    alerts = home / "alerts.jsonl"
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> str | None:
            return run_failure_alert.evaluate_tick(
                dg.build_sensor_context(instance=instance, definitions=defs, cursor=cursor)
            ).cursor

        cursor = tick(None)
        assert not alerts.exists()
        result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        cursor = tick(cursor)
        tick(cursor)
    records = [json.loads(line) for line in alerts.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["run_id"] == result.run_id and records[0]["job"] == "failing_job"
    assert "explode" in records[0]["error"]


class _Collector(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict]]] = []

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Collector.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_failed_run_is_posted_to_the_webhook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = HTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Collector.received.clear()
    alert_file = tmp_path / "alerts" / "failed.jsonl"
    monkeypatch.setenv("DISTILLERY_ALERT_FILE", str(alert_file))
    monkeypatch.setenv("DISTILLERY_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hooks/SECRET-TOKEN")
    try:
        with dg.instance_for_test() as instance:
            context = failure_context(instance)
            run_failure_alert(context)
    finally:
        server.shutdown()
        server.server_close()
    assert len(_Collector.received) == 1
    path, payload = _Collector.received[0]
    assert path == "/hooks/SECRET-TOKEN"
    assert payload["run_id"] == context.dagster_run.run_id and "failed" in payload["text"]
    recorded = alert_file.read_text()
    assert json.loads(recorded)["run_id"] == context.dagster_run.run_id
    assert "SECRET-TOKEN" not in recorded


def test_an_unreachable_webhook_still_records_the_alert_without_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sensors.automation import alert_record, deliver_alert

    server = HTTPServer(("127.0.0.1", 0), _Collector)
    port = server.server_port
    server.server_close()  # nothing listens there now
    alert_file = tmp_path / "alerts.jsonl"
    outcome = deliver_alert(
        alert_record("run-1", "distill", "boom"),
        {
            "DISTILLERY_ALERT_FILE": str(alert_file),
            "DISTILLERY_ALERT_WEBHOOK": f"http://127.0.0.1:{port}/hooks/SECRET-TOKEN",
        },
    )
    assert "host 127.0.0.1 failed" in outcome["webhook"]
    record = json.loads(alert_file.read_text())
    assert record["run_id"] == "run-1" and "127.0.0.1" in record["webhook_error"]
    assert "SECRET-TOKEN" not in alert_file.read_text() and "SECRET-TOKEN" not in outcome["webhook"]
    with pytest.raises(RuntimeError, match="must be an http"):
        from sensors.automation import post_webhook

        post_webhook("file:///etc/passwd", {})
