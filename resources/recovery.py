"""Crash recovery for the Dagster instance of a Distillery home.

A run killed with SIGKILL (or a power cut) cannot tell Dagster it ended: it stays ``STARTED`` and keeps
its ``duckdb_writer`` pool slot, and every later run would wait for that slot forever. Dagster's run
monitoring fixes this only where its daemon runs (``distillery ui``), so ``distillery run`` checks for
itself before it starts: a run whose process is gone is marked failed (the reason in its event log and
on the terminal) and its slots and pending claims are freed, with Dagster's own instance methods.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from curation.core.home import dagster_home, exclusive_lock
from resources.warehouse import POOL

PID_TAG = "distillery/pid"
"""Tag of every run ``distillery run`` starts: the process that executes its steps."""

UNFINISHED = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def open_instance() -> DagsterInstance:
    """The home's Dagster instance, its SQLite storages created under a lock.

    Opening an instance creates and stamps its schema on first use; two processes doing that at once
    (a `distillery run` started while `distillery ui` comes up) leave two alembic heads and an instance
    nobody can open again. Whoever comes second waits for the first and opens a finished schema."""
    with exclusive_lock(dagster_home() / "storage.lock"):
        return DagsterInstance.get()


def run_pid(instance: DagsterInstance, run_id: str, tags: dict[str, str]) -> int | None:
    """The process executing a run: our tag, else the pid Dagster records in its engine events
    ("Executing steps in process (pid: N)", "Started process for run (pid: N)")."""
    if tags.get(PID_TAG, "").isdigit():
        return int(tags[PID_TAG])
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        value = data.metadata.get("pid") if data else None
        text = str(getattr(value, "value", value) or "")
        if text.isdigit():
            return int(text)
    return None


def process_started_at(pid: int) -> float | None:
    """When process ``pid`` started (Unix time), from /proc; None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError):
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (command)": state is field 3, starttime field 22
    if fields[0] in ("Z", "X"):  # a zombie: dead, not yet reaped by its parent
        return float("inf")
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def process_alive(pid: int, started_by: float | None = None) -> bool:
    """Whether ``pid`` is a live process, and (given ``started_by``, the run's start time) the same one
    that started the run, not a later process that reused its id."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    started = process_started_at(pid)
    return started is None or started_by is None or started <= started_by + 2.0


def recover_dead_runs(instance: DagsterInstance, log: Callable[[str], None]) -> list[str]:
    """Mark failed every unfinished run of ``instance`` whose process is gone, free its pool slots and
    pending claims, and free slots still held by runs that already ended. Returns the run ids freed.
    Runs whose process cannot be found out (no pid recorded) are left to Dagster's run monitoring."""
    freed: list[str] = []
    for record in instance.get_run_records(RunsFilter(statuses=UNFINISHED)):
        run = record.dagster_run
        pid = run_pid(instance, run.run_id, dict(run.tags))
        started = record.start_time or record.create_timestamp.timestamp()
        if pid is None or process_alive(pid, started):
            continue
        reason = (
            f"run {run.run_id} was {run.status.value} but its process (pid {pid}) is gone (killed or crashed); "
            f"marked FAILED and its {POOL} slot freed"
        )
        instance.report_run_failed(run, message=f"{reason} by distillery run (pid {os.getpid()}).")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(reason)
        freed.append(run.run_id)
    info = instance.event_log_storage.get_concurrency_info(POOL)
    holders = {slot.run_id for slot in info.claimed_slots} | {step.run_id for step in info.pending_steps}
    for run_id in sorted(holders - set(freed)):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            log(f"run {run_id} had ended ({run.status.value if run else 'deleted'}) holding a {POOL} slot; freed")
            freed.append(run_id)
    return freed


def wait_for_pool(instance: DagsterInstance, log: Callable[[str], None], poll_s: float = 1.0) -> None:
    """Wait, saying so once, while live runs of other processes (e.g. launched from the UI) hold the
    writer slot. Dagster's own wait inside a run is silent and swallows SIGINT/SIGTERM; this one is plain
    Python, so Ctrl-C and SIGTERM stop it."""
    told = False
    while True:
        holders = {s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots}
        if not holders:
            return
        if not told:
            log(f"waiting for the {POOL} slot, held by run(s) {', '.join(sorted(holders))} (Ctrl-C to stop waiting)")
            told = True
        time.sleep(poll_s)
        recover_dead_runs(instance, log)  # a holder that dies while we wait frees its slot
