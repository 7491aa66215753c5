"""kill -9 at several points of real `distillery run`s on the demo, each next run recovering by itself.

One chain on one home: a run killed during ``raw``, the next killed during ``deduped``, the next during
``formatted``, the next during ``exports``, then a run to the end. Each kill point is chosen by watching the
run (a log line emitted while the asset's staged write is open, or the export's temp folder appearing),
never by sleeping. After each kill the warehouse opens and every dataset table is its previous or its
new version; each next run removes the debris of the one before (staging tables, export temp folders,
the dead run's ``STARTED`` record and writer slot) without help, and the last one ends with the
reference data versions of the demo.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from curation.core.warehouse import content_hash, table_names
from curation.format.export import verify_export
from tests.conftest import REPO

REFERENCE = {
    "raw": "a92b6a957ff903ef",
    "deduped": "31a21b99f0b27621",
    "filtered": "a4049cd21c1fbe2c",
    "synthetic": "458c399f00ffd219",
    "synthetic_mixed": "8e7c06ff4b20ae25",
    "formatted": "847b2517e7de439f",
}
EXPORTS_VERSION = "8f3a7493bd8a777d"

# (asset, what shows the run is inside that asset's write): a log line printed while its staging
# tables exist, or the export's temp folder appearing.
KILL_POINTS: list[tuple[str, re.Pattern[str] | str]] = [
    ("raw", re.compile(r" - raw - ingesting demo_nc_qa")),
    ("deduped", re.compile(r" - deduped - deduped: clusters decided")),
    ("formatted", re.compile(r" - formatted - formatting: done")),
    ("exports", "exports/.tmp-*"),
]


def _start(home: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    return subprocess.Popen(
        [sys.executable, "-m", "distillery_cli", "run", "--home", str(home)],
        cwd=REPO,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its worker processes too
    )


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _run_and_kill(home: Path, cue: re.Pattern[str] | str, timeout_s: float = 240) -> str:
    """Start a run, SIGKILL its process group at ``cue``; returns what it printed."""
    process = _start(home)
    lines, seen = _lines(process), []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if isinstance(cue, str) and any(home.glob(cue)):
                break
            try:
                line = lines.get(timeout=0.005)
            except queue.Empty:
                continue
            if line is None:
                pytest.fail("the run ended before the kill point:\n" + "".join(seen[-40:]))
            seen.append(line)
            if isinstance(cue, re.Pattern) and cue.search(line):
                break
        else:
            pytest.fail(f"no kill point {cue} within {timeout_s} s:\n" + "".join(seen[-40:]))
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    return "".join(seen)


def _versions(home: Path) -> dict[str, str]:
    """Data version of every dataset table present, reading the warehouse as a new process would."""
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        present = table_names(connection)
        return {table: content_hash(connection, table) for table in REFERENCE if table in present}


def _staging(home: Path) -> set[str]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        return {t for t in table_names(connection) if t.startswith("_stage_")}


def _unfinished_runs(home: Path) -> list[str]:
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
        claimed = instance.event_log_storage.get_concurrency_info("duckdb_writer").claimed_slots
        return [r.dagster_run.run_id for r in records] + [f"slot:{s.run_id}" for s in claimed]


@pytest.mark.slow
def test_every_kill_point_recovers_by_itself_to_the_reference_versions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    previous: dict[str, str] = {}
    debris: set[str] = set()  # staging tables and temp folders the kill before left behind
    left_by_kills: set[str] = set()
    for asset, cue in KILL_POINTS:
        output = _run_and_kill(home, cue)
        assert "Traceback" not in output, output[-3000:]
        # The debris of the kill before is gone: this run removed it before writing.
        leftovers = _staging(home) | {p.name for p in (home / "exports").glob(".tmp-*")}
        assert not (debris & leftovers), f"after the kill during {asset}, still there: {debris & leftovers}"
        debris = leftovers
        left_by_kills |= leftovers
        versions = _versions(home)  # the warehouse opens after a SIGKILL
        for table, version in versions.items():
            assert version in (previous.get(table), REFERENCE[table]), (asset, table, version)
        published = [d for d in (home / "exports").glob("*") if d.is_dir() and not d.name.startswith(".")]
        assert not [d for d in published if verify_export(d)], "a published export is incomplete"
        previous = versions
        assert _unfinished_runs(home), "the killed run is left STARTED: the next run has something to recover"
    assert any(name.startswith("_stage_") for name in left_by_kills), "no kill hit a staged write"
    assert any(name.startswith(".tmp-") for name in left_by_kills), "the kill during exports missed the export"

    final = subprocess.run(
        [sys.executable, "-m", "distillery_cli", "run", "--home", str(home)],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert final.returncode == 0, final.stderr[-3000:]
    assert "recovery: run " in final.stderr and "is gone" in final.stderr  # the reason, on the terminal
    assert _versions(home) == REFERENCE
    assert _staging(home) == set()
    assert sorted(p.name for p in (home / "exports").iterdir() if p.name != "LATEST") == [EXPORTS_VERSION]
    assert verify_export(home / "exports" / EXPORTS_VERSION) == []
    assert _unfinished_runs(home) == []
