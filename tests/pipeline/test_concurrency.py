"""Concurrency on one home with real processes: read-only commands while the warehouse is being written, and a
run while another process reads it. DuckDB lets one process write the file or several read it; whoever finds
it held waits, says who holds it, and either goes on when it is free or stops with one clear line — never a
raw DuckDB lock error or a traceback. (Two `distillery run` at once: tests/pipeline/test_recovery.py.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

HOLD = {
    # A run's write in progress: a staged write of the warehouse open in another process.
    "write": "from curation.core.warehouse import Warehouse\n"
    "with Warehouse(sys.argv[1]).write('raw') as staged:\n"
    "    staged.create('raw', 'x INTEGER'); print('held', flush=True); sys.stdin.read()\n"
    "    raise SystemExit(0)  # discarded, not committed: raw stays as it is",
    # A notebook (or another command) reading the warehouse.
    "read": "import duckdb\n"
    "connection = duckdb.connect(sys.argv[1], read_only=True); print('held', flush=True); sys.stdin.read()",
}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("concurrency") / "home"
    result = run_cli("run", "--select", "raw", home=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def _holder(home: Path, how: str) -> subprocess.Popen[str]:
    """A process holding the warehouse (``write`` or ``read``) until its stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\n" + HOLD[how], str(home / "warehouse.duckdb")],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    return holder


def _release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=30) == 0


def _cli(*args: str, home: Path, wait_s: float) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, home=home, env={"DISTILLERY_LOCK_TIMEOUT_S": str(wait_s)}, timeout=120)


def _one_clear_error(result: subprocess.CompletedProcess[str], holder: int) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "IO Error" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"process {holder} (" in errors[0], result.stderr[-3000:]
    assert any(line.startswith("waiting: ") for line in result.stderr.splitlines()), "it said it waited"


@pytest.fixture
def row_id(home: Path) -> Iterator[str]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        (row,) = connection.execute("SELECT row_id FROM raw ORDER BY row_id LIMIT 1").fetchall()
    yield row[0]


def test_read_only_commands_during_a_write_wait_then_say_so_or_work(home: Path, row_id: str) -> None:
    commands = [
        ("audit", row_id),
        ("report", "--table", "raw", "--out", str(home / "report")),
        ("preview", "--table", "raw", "--sample", "20"),
    ]
    holder = _holder(home, "write")
    try:
        for command in commands:
            result = _cli(*command, home=home, wait_s=1)
            _one_clear_error(result, holder.pid)
            assert "is being written by" in result.stderr and "reading waits until that write ends" in result.stderr
    finally:
        _release(holder)
    result = _cli(*commands[0], home=home, wait_s=1)  # the write over, they work (one shown: each costs seconds)
    assert result.returncode == 0 and row_id in result.stdout, result.stderr[-3000:]


def test_a_run_waits_for_a_reader_then_runs_or_stops_with_one_line(home: Path) -> None:
    holder = _holder(home, "read")
    try:
        stopped = _cli("run", "--select", "raw", "--force", home=home, wait_s=2)
    finally:
        _release(holder)
    _one_clear_error(stopped, holder.pid)
    assert "writing waits until that process closes it" in stopped.stderr

    # A reader that lets go while the run waits: the run goes on by itself.
    holder = _holder(home, "read")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    run = subprocess.Popen(
        [sys.executable, "-m", "distillery_cli", "run", "--select", "raw", "--force", "--home", str(home)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert run.stderr is not None
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline:
            line = run.stderr.readline()
            seen.append(line)
            if not line or line.startswith("waiting: "):
                break
        assert seen[-1].startswith("waiting: ") and f"process {holder.pid} (" in seen[-1], "".join(seen)
    finally:
        _release(holder)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "checks: " in out
