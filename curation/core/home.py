"""Where Distillery keeps its state: ``$DISTILLERY_HOME`` (default ``./.distillery``).

The home holds the warehouse (``warehouse.duckdb``), the Dagster instance (``dagster/``),
exports and reports. The project file comes from ``$DISTILLERY_CONFIG`` or the bundled demo.
"""

from __future__ import annotations

import os
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "demo" / "distillery.yaml"


def distillery_home() -> Path:
    return Path(os.environ.get("DISTILLERY_HOME", ".distillery")).expanduser().resolve()


def warehouse_path() -> Path:
    return distillery_home() / "warehouse.duckdb"


def dagster_home() -> Path:
    return distillery_home() / "dagster"


def exports_dir() -> Path:
    return distillery_home() / "exports"


def reports_dir() -> Path:
    return distillery_home() / "reports"


def project_config_path() -> Path:
    return Path(os.environ.get("DISTILLERY_CONFIG", str(DEMO_CONFIG))).expanduser().resolve()


INSTANCE_YAML = """\
# Written by Distillery. One writer at a time on the DuckDB file: every asset and check that
# opens it runs in the "duckdb_writer" pool, limited to one slot across all runs.
concurrency:
  pools:
    default_limit: 1
telemetry:
  enabled: false
"""


def ensure_dagster_home() -> Path:
    """Create the Dagster instance folder with its settings, once."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    settings = home / "dagster.yaml"
    if not settings.exists():
        settings.write_text(INSTANCE_YAML)
    return home
