"""Automation: a nightly schedule, a landing-folder sensor per project, and a run-failure alert."""

from sensors.automation import landing_files_sensor, nightly_schedule, run_failure_alert

__all__ = ["landing_files_sensor", "nightly_schedule", "run_failure_alert"]
