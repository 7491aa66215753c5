"""Shared fixtures: paths to ../shared/data and a temporary Distillery home per test."""

from __future__ import annotations

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
