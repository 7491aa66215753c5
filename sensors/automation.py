import json
import os
from datetime import UTC, datetime
from pathlib import Path

from dagster import (
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    schedule,
    sensor,
)

from curation.config import load_project
from curation.home import distillery_home, project_config_path
from curation.landing import changed_files, file_states, state_key


@schedule(cron_schedule="0 2 * * *", job_name="distill", execution_timezone="UTC",
          default_status=DefaultScheduleStatus.STOPPED,
          description="Materialize every dataset version nightly at 02:00 UTC (start it in the UI).")
def nightly_schedule(context) -> RunRequest:
    return RunRequest(run_key=None, tags={"distillery/trigger": "nightly"})


@sensor(job_name="distill", minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED,
        description="Start a run when files matching a source's path are added or changed.")
def landing_files_sensor(context: SensorEvaluationContext):
    project = load_project(project_config_path())
    previous = json.loads(context.cursor) if context.cursor else {}
    current = file_states(project)
    changed = changed_files(previous, current)
    context.update_cursor(json.dumps(current, sort_keys=True))
    if not changed:
        return SkipReason("no landing file added or changed")
    return RunRequest(run_key=f"landing-{state_key(current)}",
                      tags={"distillery/trigger": "landing", "distillery/changed_files": str(len(changed))})


@run_failure_sensor(default_status=DefaultSensorStatus.STOPPED, description="Record every failed run in "
                    "$DISTILLERY_HOME/alerts.jsonl (or $DISTILLERY_ALERT_FILE).")
def run_failure_alert(context: RunFailureSensorContext) -> None:
    alert_file = Path(os.environ.get("DISTILLERY_ALERT_FILE", str(distillery_home() / "alerts.jsonl")))
    alert_file.parent.mkdir(parents=True, exist_ok=True)
    record = {"at": datetime.now(UTC).isoformat(), "run_id": context.dagster_run.run_id,
              "job": context.dagster_run.job_name, "error": context.failure_event.message}
    with alert_file.open("a") as handle:
        handle.write(json.dumps(record) + "\n")
