"""Automation: a nightly schedule, a sensor on the sources' landing files, and a run-failure alert.

Schedules and sensors start STOPPED: turn them on in the UI (Automation tab) or with
``dagster schedule start nightly_schedule`` / ``dagster sensor start landing_files_sensor`` and keep
``dagster-daemon run`` (or ``distillery ui``, which runs ``dagster dev``) running.

Alerts: every failed run of this code location is appended to ``$DISTILLERY_ALERT_FILE`` (default
``$DISTILLERY_HOME/alerts.jsonl``) and, when ``$DISTILLERY_ALERT_WEBHOOK`` is set, POSTed there as
JSON (Slack-style ``text`` plus the fields). The webhook URL usually embeds a token, so it is
never logged or recorded; errors name only its host.
"""

import json
import os
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dagster import (
    AssetObservation,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    ScheduleEvaluationContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    schedule,
    sensor,
)

from assets.sources import WATCH_KEY, latest_watch_key, source_observation, watch_key
from curation.core.config import ConfigError, ProjectConfig, load_project
from curation.core.freshness import source_fingerprint
from curation.core.home import distillery_home, project_config_path
from curation.ingest.landing import changed_files, changed_sources, file_states, state_key

ALERT_FILE_ENV = "DISTILLERY_ALERT_FILE"
ALERT_WEBHOOK_ENV = "DISTILLERY_ALERT_WEBHOOK"
WEBHOOK_TIMEOUT_S = 10.0


@schedule(
    cron_schedule="0 2 * * *",
    job_name="distill",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Materialize every dataset version nightly at 02:00 UTC (start it in the UI).",
)
def nightly_schedule(context: ScheduleEvaluationContext) -> RunRequest:
    # One run per scheduled time: a daemon that restarts and re-evaluates the same tick starts nothing new.
    scheduled = context.scheduled_execution_time
    stamp = scheduled.isoformat() if scheduled else datetime.now(UTC).isoformat(timespec="minutes")
    return RunRequest(
        run_key=f"nightly-{stamp}", tags={"distillery/trigger": "nightly", "distillery/scheduled_for": stamp}
    )


@sensor(
    job_name="distill",
    minimum_interval_seconds=60,
    default_status=DefaultSensorStatus.STOPPED,
    description="Start a run when a file matching a source's path is added or its content changes "
    "(sha256; a touched but unchanged file starts nothing), and observe source_files when its files or "
    "the sources' settings changed, so the UI shows raw Unsynced.",
)
def landing_files_sensor(context: SensorEvaluationContext) -> SensorResult | SkipReason:
    try:
        project = load_project(project_config_path())
    except ConfigError as error:
        # Keep the cursor: once the file is fixed the sensor compares against the last good state.
        return SkipReason(f"cannot read the project file, fix it to resume watching: {error}")
    previous = json.loads(context.cursor) if context.cursor else {}
    current = file_states(project, previous)
    changed = changed_files(previous, current)
    context.update_cursor(json.dumps(current, sort_keys=True))
    observations = _observe_sources(context, project, current)
    if not changed:
        skip = SkipReason(f"no landing file added or changed ({len(current)} files watched)")
        return SensorResult(skip_reason=skip, asset_events=observations) if observations else skip
    sources = changed_sources(changed)
    request = RunRequest(
        run_key=f"landing-{state_key(current, previous)}",
        tags={
            "distillery/trigger": "landing",
            "distillery/changed_files": str(len(changed)),
            "distillery/changed_sources": ",".join(sources)[:200],
        },
    )
    return SensorResult(run_requests=[request], asset_events=observations)


def _observe_sources(
    context: SensorEvaluationContext, project: ProjectConfig, states: dict[str, str]
) -> list[AssetObservation]:
    """An observation of ``source_files`` when what its version depends on changed since the latest one the
    sensor made: the file hashes (known from the cursor) or a source's settings. Only then is the fingerprint,
    which reads every file, computed; after an observation from elsewhere (a run of ``raw``, the UI's button)
    once more, at the same version when nothing changed."""
    key = watch_key(project, states)
    if latest_watch_key(context.instance) == key:
        return []
    return [source_observation(project, source_fingerprint(project), {WATCH_KEY: key, "files": len(states)})]


def alert_record(run_id: str, job: str, error: str | None, at: datetime | None = None) -> dict[str, Any]:
    """What an alert says about a failed run."""
    at = at or datetime.now(UTC)
    return {
        "at": at.isoformat(),
        "run_id": run_id,
        "job": job,
        "error": error or "",
        "text": f"Distillery run {run_id} of job {job} failed: {(error or '')[:500]}",
    }


def post_webhook(url: str, record: dict[str, Any], timeout: float = WEBHOOK_TIMEOUT_S) -> None:
    """POST ``record`` as JSON; raise ``RuntimeError`` naming only the host (the URL may hold a token)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise RuntimeError(f"{ALERT_WEBHOOK_ENV} must be an http(s) URL (got scheme {parts.scheme!r})")
    request = urllib.request.Request(
        url, data=json.dumps(record).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # scheme checked above: no file://
            response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "code", None) or getattr(error, "reason", None) or type(error).__name__
        raise RuntimeError(f"alert webhook at host {parts.hostname} failed: {reason}") from None


def deliver_alert(record: dict[str, Any], environ: dict[str, str] | None = None) -> dict[str, Any]:
    """Append ``record`` to the alert file and POST it to the webhook when one is configured.

    A webhook failure never loses the alert: it is recorded in the file with ``webhook_error``."""
    environ = dict(os.environ if environ is None else environ)
    alert_file = Path(environ.get(ALERT_FILE_ENV) or distillery_home() / "alerts.jsonl")
    webhook = environ.get(ALERT_WEBHOOK_ENV)
    outcome: dict[str, Any] = {"file": str(alert_file), "webhook": None}
    if webhook:
        try:
            post_webhook(webhook, record)
            outcome["webhook"] = "sent"
        except RuntimeError as error:
            outcome["webhook"] = str(error)
            record = record | {"webhook_error": str(error)}
    alert_file.parent.mkdir(parents=True, exist_ok=True)
    with alert_file.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
    return outcome


# monitor_all_code_locations: runs started by `distillery run` (dagster.materialize) belong to no code
# location, so only this setting lets the sensor see their failures too.
@run_failure_sensor(
    default_status=DefaultSensorStatus.STOPPED,
    monitor_all_code_locations=True,
    description=f"Record every failed run in ${ALERT_FILE_ENV} (default $DISTILLERY_HOME/alerts.jsonl) "
    f"and POST it to ${ALERT_WEBHOOK_ENV} when set.",
)
def run_failure_alert(context: RunFailureSensorContext) -> None:
    run = context.dagster_run
    record = alert_record(run.run_id, run.job_name, context.failure_event.message)
    outcome = deliver_alert(record)
    if outcome["webhook"] not in (None, "sent"):
        context.log.warning(outcome["webhook"])
