"""The `distillery` command on a temporary home, as a newcomer runs it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow


def test_run_then_rerun_selected_asset(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first = run_cli("run", home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "checks:" in first.stdout and " 0 failed" in first.stdout
    assert "ingesting demo_sft" in first.stderr, "progress is shown"
    # The README's quick start shows this run's output: it stays true (and a refactor that should not change
    # behaviour is held to the same data versions).
    readme = (REPO / "README.md").read_text()
    shown = readme[
        readme.index("asset             rows") : readme.index("checks:", readme.index("asset             rows"))
    ]
    printed = first.stdout[first.stdout.index("asset             rows") : first.stdout.index("checks:")]
    assert printed.split() == shown.split(), "README's quick-start output is stale: paste this run's table"
    warehouse = home / "warehouse.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        tables = {r[0] for r in connection.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        raw_rows = connection.execute("SELECT count(*) FROM raw").fetchone()[0]
    assert {
        "raw",
        "deduped",
        "filtered",
        "synthetic",
        "synthetic_mixed",
        "formatted",
        "lineage",
        "quarantine",
        "provenance",
    } <= tables

    # Nothing changed: nothing runs, and the versions shown are the recorded ones.
    unchanged = run_cli("run", home=home)
    assert unchanged.returncode == 0, unchanged.stderr[-3000:]
    assert "Every asset is up to date" in unchanged.stdout
    assert sorted(unchanged.stdout[unchanged.stdout.index("asset             rows") :].split()[:-2]) == sorted(
        printed.split()
    )

    again = run_cli("run", "--select", "raw", home=home)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "raw" in again.stdout and "formatted" not in again.stdout
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM raw").fetchone()[0] == raw_rows

    # Both runs are in the persistent instance the UI reads.
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs()
    assert len(runs) == 2 and all(r.is_success for r in runs)


def test_bad_config_is_reported_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "distillery.yaml"
    config.write_text(
        "sources:\n  - {name: s, path: x.jsonl, mapping: alpaca, license: MIT, colour: red}\nformat: {tokenizer: t}\n"
    )
    result = run_cli("run", "--config", str(config), home=tmp_path / "home")
    assert result.returncode == 2
    assert "sources.0.colour: unknown key" in result.stderr


def test_unknown_asset_in_select(tmp_path: Path) -> None:
    result = run_cli("run", "--select", "rawr", home=tmp_path / "home")
    assert result.returncode == 2 and "unknown asset(s) ['rawr']" in result.stderr


def test_missing_source_file_names_the_source(tmp_path: Path) -> None:
    config = tmp_path / "distillery.yaml"
    config.write_text(
        "sources:\n  - {name: mine, path: nowhere/*.jsonl, mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n"
    )
    result = run_cli("run", "--config", str(config), "--select", "raw", home=tmp_path / "home")
    assert result.returncode == 1
    assert "source 'mine': no file matches 'nowhere/*.jsonl'" in result.stderr
