"""Shared fixtures: paths to ../shared/data and a temporary Distillery home per test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_CONFIG = REPO / "demo" / "distillery.yaml"


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
