"""Tests that need the shared datasets (../shared/data) skip with the reason when the folder is absent, and
a session where the folder is present fails if any of them was skipped anyway (issue 13): run on small
suites of their own, in a subprocess, with ``tests/conftest.py`` as their plugin and the folder pointed
elsewhere by ``$DISTILLERY_TEST_SHARED_DATA``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, SHARED_DATA_REASON

SUITE = {
    "test_reads.py": """
import json
import pytest
from tests.conftest import SHARED_DATA, require_shared_data

def test_reads_a_file():
    json.loads((SHARED_DATA / "some-dataset" / "rows.json").read_text())

def test_checks_first():
    require_shared_data(SHARED_DATA / "some-dataset" / "rows.json")

def test_needs_nothing():
    pass
""",
    "test_module_level.py": """
from tests.conftest import SHARED_DATA
ROWS = (SHARED_DATA / "some-dataset" / "rows.json").read_text()

def test_uses_rows():
    assert ROWS
""",
}


def _run(tmp_path: Path, data: Path, *args: str, only: str = "") -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    for name, text in SUITE.items():
        (suite / name).write_text(text)
    env = {**os.environ, "DISTILLERY_TEST_SHARED_DATA": str(data), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "tests.conftest",
            "-p",
            "no:cacheprovider",
            "-rfEs",
            *args,
            str(suite / only),
        ],
        cwd=suite,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_absent_data_skips_with_the_reason(tmp_path: Path) -> None:
    ran = _run(tmp_path, tmp_path / "no-such-folder")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "1 passed, 3 skipped" in ran.stdout, ran.stdout
    assert ran.stdout.count(SHARED_DATA_REASON) == 3  # the file read, the check first, the module-level read


@pytest.mark.slow  # two xdist workers start
def test_present_data_with_a_missing_file_fails(tmp_path: Path) -> None:
    """With the folder there, a missing file is an error (a renamed file, a mistyped path), never a skip;
    and a test that skipped itself for want of it fails the session, on xdist workers too."""
    data = tmp_path / "data"
    data.mkdir()
    ran = _run(tmp_path, data, "-n", "2")
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert "FAILED test_reads.py::test_reads_a_file - FileNotFoundError" in ran.stdout, ran.stdout
    assert "ERROR test_module_level.py" in ran.stdout
    assert "1 test(s) skipped for want of the shared datasets, which are present" in ran.stdout, ran.stdout


def test_a_skip_for_present_data_alone_fails_the_session(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "some-dataset").mkdir(parents=True)
    (data / "some-dataset" / "rows.json").write_text("[]")
    ran = _run(tmp_path, data, "-k", "checks_first or needs_nothing", only="test_reads.py")
    assert ran.returncode == 0, ran.stdout + ran.stderr  # the data is there: nothing skipped, nothing failed
    (data / "some-dataset" / "rows.json").unlink()
    ran = _run(tmp_path, data, "-k", "checks_first or needs_nothing", only="test_reads.py")
    assert ran.returncode == 1 and "1 passed, 1 skipped" in ran.stdout, ran.stdout + ran.stderr
