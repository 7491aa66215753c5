"""Shared fixtures: paths to ../shared/data and a temporary Distillery home per test.

The shared datasets (``../shared/data``, beside the repository; ``$DISTILLERY_TEST_SHARED_DATA`` elsewhere)
are owned here. A clone without them runs every other test: a test, fixture or module that fails because
the folder is absent is reported as *skipped* with :data:`SHARED_DATA_REASON` (the hooks below), whatever
way it reached for a file. When the folder is there, nothing is turned into a skip (a missing file in it is a
failure), and a skip that gives that reason anyway fails the session, so CI, which has the data, can never
pass with those tests silently skipped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DISTILLERY_TEST_SHARED_DATA") or REPO.parent / "shared" / "data")
DEMO_CONFIG = REPO / "demo" / "distillery.yaml"
SHARED_DATA_REASON = "needs the shared datasets in ../shared/data"
"""The reason of every skip for want of the shared datasets: the session guard looks for it."""


def shared_data_skip_reason() -> str:
    return f"{SHARED_DATA_REASON} ({SHARED_DATA} is absent)"


def require_shared_data(path: Path = SHARED_DATA) -> Path:
    """``path`` (a file or folder of the shared datasets), or a skip with :data:`SHARED_DATA_REASON` when it is
    not there: for tests that check first instead of failing on the read."""
    if not path.exists():
        pytest.skip(f"{SHARED_DATA_REASON} ({path} is absent)")
    return path


needs_shared_data = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=shared_data_skip_reason())
"""For a test or module (``pytestmark``) that needs the shared datasets before it can even start."""


def _caused_by_absent_data(error: BaseException | None) -> bool:
    """Whether ``error`` (or one it was raised from) is about a path under the absent shared-data folder."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        filename = getattr(error, "filename", None) if isinstance(error, OSError) else None
        if str(SHARED_DATA) in (str(filename) if filename else str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test (or its fixture) that failed only because the shared datasets are absent: skipped, with why."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    absent = report.failed and call.excinfo is not None and not SHARED_DATA.is_dir()
    if absent and _caused_by_absent_data(call.excinfo.value):
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, f"Skipped: {shared_data_skip_reason()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A test module that reads the shared datasets when imported: skipped as a whole when they are absent."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and not SHARED_DATA.is_dir() and str(SHARED_DATA) in str(report.longrepr):
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, f"Skipped: {shared_data_skip_reason()}")


_skipped_reports: list[str] = []
"""Node ids skipped for want of the shared datasets in this session (on the xdist controller: every worker's)."""


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Remember each test skipped for want of the shared datasets."""
    if report.skipped and SHARED_DATA_REASON in str(report.longrepr):
        _skipped_reports.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """The same for a whole module skipped at collection."""
    if report.skipped and SHARED_DATA_REASON in str(report.longrepr):
        _skipped_reports.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With the shared datasets present, a test skipped for want of them fails the session: the data is
    there, so the skip hides a test that should have run (a file renamed, a path mistyped)."""
    if hasattr(session.config, "workerinput") or not _skipped_reports or not SHARED_DATA.is_dir():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(
            f"{len(_skipped_reports)} test(s) skipped for want of the shared datasets, which are present at "
            f"{SHARED_DATA}: {', '.join(sorted(set(_skipped_reports))[:10])}",
            red=True,
        )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def patched_tables(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tables the test's writes stage as a patch of their current version (``StagedWrite.patch``), in order."""
    from curation.core.warehouse import StagedWrite

    patched: list[str] = []
    original = StagedWrite.patch

    def recording(self: StagedWrite, table: str, *args: Any, **kwargs: Any) -> Any:
        patched.append(table)
        return original(self, table, *args, **kwargs)

    monkeypatch.setattr(StagedWrite, "patch", recording)
    return patched


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh $DISTILLERY_HOME (warehouse, Dagster instance) for one test."""
    home = tmp_path / "home"
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    return home


def run_cli(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`distillery ARGS --home HOME` in a subprocess, as a user runs it: no inherited Distillery or Dagster
    settings from the test environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    environment |= env or {}
    return subprocess.run(
        [sys.executable, "-m", "distillery_cli", *args, "--home", str(home)],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
