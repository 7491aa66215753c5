"""Recovery of a home after a crash, piece by piece: dead runs and their writer slot, the run lock, export
temp folders. tests/pipeline/test_kill_recovery.py does it end to end with real kill -9s."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus

from curation.core.home import HomeBusy, ensure_dagster_home, exclusive_lock, remove_dead_export_temps, run_lock_path
from resources.recovery import PID_TAG, process_alive, recover_dead_runs
from resources.warehouse import POOL
from tests.conftest import REPO


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: its pid names no process now
    return child.pid


def _started_run(instance: DagsterInstance, pid: int) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(
        DagsterRun(
            job_name="__ephemeral_asset_job__", run_id=run_id, status=DagsterRunStatus.STARTED, tags={PID_TAG: str(pid)}
        )
    )
    instance.event_log_storage.initialize_concurrency_limit_to_default(POOL)
    instance.event_log_storage.claim_concurrency_slot(POOL, run_id, "raw")
    return run_id


def test_a_started_run_whose_process_is_gone_is_failed_and_its_slot_freed(home: Path) -> None:
    ensure_dagster_home()
    messages: list[str] = []
    with DagsterInstance.get() as instance:
        dead = _started_run(instance, _dead_pid())
        live = _started_run(instance, os.getpid())  # a concurrent live run: left alone
        info = instance.event_log_storage.get_concurrency_info(POOL)
        assert [s.run_id for s in info.claimed_slots] == [dead]  # the dead run holds the one slot
        assert {s.run_id for s in info.pending_steps} == {dead, live}  # the live run waits for it

        assert recover_dead_runs(instance, messages.append) == [dead]

        assert instance.get_run_by_id(dead).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(live).status == DagsterRunStatus.STARTED
        info = instance.event_log_storage.get_concurrency_info(POOL)
        assert dead not in {s.run_id for s in info.claimed_slots} | {s.run_id for s in info.pending_steps}
        # The live run's claim now succeeds: nothing holds the slot any more.
        assert instance.event_log_storage.claim_concurrency_slot(POOL, live, "raw").is_claimed
    assert len(messages) == 1 and dead in messages[0] and "is gone" in messages[0]


def test_a_reused_pid_is_not_mistaken_for_the_run_that_died() -> None:
    assert process_alive(os.getpid())
    assert not process_alive(_dead_pid())
    # This process, started before "now", cannot be a run that started a minute ago with its pid.
    assert process_alive(os.getpid(), started_by=9e12)
    assert not process_alive(os.getpid(), started_by=0.0)


def test_the_home_lock_is_exclusive_and_dies_with_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, pathlib; from curation.core.home import exclusive_lock\n"
            f"with exclusive_lock(pathlib.Path({str(lock)!r})):\n print('held', flush=True); sys.stdin.read()",
        ],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(HomeBusy, match=f"pid {holder.pid}"), exclusive_lock(lock, wait=False):
            pass
    finally:
        holder.kill()  # SIGKILL: no cleanup runs, the kernel frees the lock
        holder.wait()
    with exclusive_lock(lock, wait=False):
        assert f"pid {os.getpid()}" in lock.read_text()


def test_export_temp_folders_of_dead_runs_are_removed(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    (root / ".tmp-0123456789ab" / "sft").mkdir(parents=True)
    (root / "8872392636e9359d").mkdir()
    (root / "LATEST").write_text("8872392636e9359d\n")
    assert [p.name for p in remove_dead_export_temps(root)] == [".tmp-0123456789ab"]
    assert sorted(p.name for p in root.iterdir()) == ["8872392636e9359d", "LATEST"]


@pytest.mark.slow
def test_a_second_run_on_a_busy_home_says_it_waits_and_stops_on_ctrl_c(home: Path) -> None:
    """Concurrency: the second `distillery run` waits, says why, and honours SIGINT and SIGTERM while
    it waits (before, it waited silently on Dagster's slot and ignored both)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    for sig, expected in ((signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)):
        with exclusive_lock(run_lock_path()):  # a live run holds the home
            second = subprocess.Popen(
                [sys.executable, "-m", "distillery_cli", "run", "--home", str(home)],
                cwd=REPO,
                env=environment,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert second.stderr is not None
            first_line = second.stderr.readline()
            while first_line and not first_line.startswith("waiting:"):
                first_line = second.stderr.readline()
            assert f"pid {os.getpid()}" in first_line and "Ctrl-C" in first_line
            second.send_signal(sig)
            assert second.wait(timeout=30) == expected
            rest = second.stderr.read()
        assert "Traceback" not in rest and "lock" not in rest.lower().replace("block", "")
        assert not (home / "warehouse.duckdb").exists(), "the waiting run wrote nothing"


@pytest.mark.slow
def test_a_run_removes_the_sandbox_folders_of_a_killed_run(tmp_path: Path) -> None:
    """A run killed while code synthesis ran leaves its sandboxes dead (they follow their pipeline) but their
    folders behind; the next `distillery run` removes them before any work, whatever it synthesizes."""
    from tests.conftest import run_cli

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    leftover = scratch / f"distillery-sandbox-{_dead_pid()}.12345-abcd"
    (leftover / "work").mkdir(parents=True)
    (leftover / "work" / "solution.py").write_text("print('left behind')\n")
    config = tmp_path / "distillery.yaml"
    (tmp_path / "x.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    config.write_text("sources:\n  - {name: s, path: x.jsonl, mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n")
    result = run_cli(
        "run", "--config", str(config), "--select", "raw", home=tmp_path / "home", env={"TMPDIR": str(scratch)}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not leftover.exists()
    assert f"removed {leftover}" in result.stderr


def test_processes_opening_a_new_home_at_once_leave_one_instance_every_later_process_opens(tmp_path: Path) -> None:
    """`distillery run` started while `distillery ui` comes up: both create the Dagster storages of a new
    home. Unserialised, the schema gets two alembic heads and no process can open the home again."""
    home = tmp_path / "home"
    environment = {**os.environ, "DISTILLERY_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")}
    opener = "from curation.core.home import ensure_dagster_home; ensure_dagster_home()\n"
    opener += "from resources.recovery import open_instance; open_instance().dispose()\n"
    openers = [
        subprocess.Popen([sys.executable, "-c", opener], cwd=REPO, env=environment, stderr=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    errors = [process.communicate(timeout=120)[1] for process in openers]
    assert [process.returncode for process in openers] == [0] * 6, "\n".join(errors)[-3000:]
    later = subprocess.run(
        [sys.executable, "-c", opener + "import dagster as dg\nprint(len(dg.DagsterInstance.get().get_runs()))"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert later.returncode == 0 and later.stdout.strip() == "0", later.stderr[-3000:]
