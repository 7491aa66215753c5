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
    assert result.returncode == 2  # found before the run starts (tests/pipeline/test_cli_runs.py)
    assert "source 'mine': no file matches 'nowhere/*.jsonl'" in result.stderr


def test_an_unreachable_ray_cluster_is_one_line_before_any_work(tmp_path: Path) -> None:
    config = tmp_path / "distillery.yaml"
    (tmp_path / "x.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    config.write_text(
        "sources:\n  - {name: s, path: x.jsonl, mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n"
        "compute: {engine: ray, address: '127.0.0.1:9'}\n"
    )
    result = run_cli("run", "--config", str(config), home=tmp_path / "home")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: compute.address '127.0.0.1:9': nothing answers at 127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr and "STEP_START" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("config is a folder", "is a folder, not a project file; did you mean"),
        ("config is /dev/zero", "--config /dev/zero is not a regular file"),
        ("config is missing", "missing.yaml: project file not found"),
        ("home is a file", "is a file, not a folder"),
        ("home cannot be created", "cannot be created or written"),
    ],
)
def test_command_line_errors_are_one_line_and_status_2(tmp_path: Path, case: str, expected: str) -> None:
    """Each mistake a user can make on the command line: a clear line on stderr, exit status 2, no traceback
    (a folder or a device as the project file, or a file as the home, used to end in one; /dev/zero in a
    read that never ended)."""
    (tmp_path / "distillery.yaml").write_text(
        "sources:\n  - {name: s, path: x.jsonl, mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n"
    )
    (tmp_path / "a_file").write_text("")
    home, config = tmp_path / "home", tmp_path / "distillery.yaml"
    arguments = {
        "config is a folder": (["--config", str(tmp_path)], home),
        "config is /dev/zero": (["--config", "/dev/zero"], home),
        "config is missing": (["--config", str(tmp_path / "missing.yaml")], home),
        "home is a file": (["--config", str(config)], tmp_path / "a_file"),
        "home cannot be created": (["--config", str(config)], Path("/sys/distillery-home")),  # EPERM, root too
    }[case]
    result = run_cli("run", *arguments[0], home=arguments[1], timeout=60)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.stderr[-2000:]


def test_version_is_the_installed_package_version(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = run_cli("--version", home=tmp_path / "home")
    assert result.returncode == 0 and result.stdout.strip() == f"distillery {version('distillery')}"


def test_help_is_plain_text_and_explains_every_option() -> None:
    """The help showed reStructuredText ``literals`` and options without text (--home, --port, --sample)."""
    import argparse

    from distillery_cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    parsers = {"distillery": parser} | dict(commands.choices)
    for name, command in parsers.items():
        assert "``" not in command.format_help(), name
        silent = [a.option_strings for a in command._actions if a.option_strings and not a.help]
        assert silent == [], f"{name}: options without help text: {silent}"


def test_audit_into_a_closed_pipe_stops_quietly(tmp_path: Path) -> None:
    """`distillery audit ROW | head`: the reader leaves early; no BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    config = tmp_path / "distillery.yaml"
    (tmp_path / "x.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    config.write_text("sources:\n  - {name: s, path: x.jsonl, mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n")
    home = tmp_path / "home"
    ran = run_cli("run", "--config", str(config), "--select", "raw", home=home)
    assert ran.returncode == 0 and "BetaWarning" not in ran.stderr, ran.stderr[-2000:]  # no noise on every run
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        (row_id,) = connection.execute("SELECT row_id FROM raw").fetchone()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    reader, writer = os.pipe()
    os.close(reader)  # gone before the first line is written
    process = subprocess.run(
        [sys.executable, "-m", "distillery_cli", "audit", row_id, "--home", str(home)],
        cwd=REPO,
        env=environment,
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    os.close(writer)
    assert "Traceback" not in process.stderr and "BrokenPipeError" not in process.stderr, process.stderr
    assert process.returncode == 141  # as a tool ended by SIGPIPE


def test_an_asset_whose_check_raised_is_not_recorded_as_verified() -> None:
    """A check that raises gives no evaluation: the run used to record its asset as up to date, so the next
    `distillery run` skipped it with the check never passed."""
    from distillery_cli import unverified_assets

    @dg.asset
    def table() -> None:
        return None

    @dg.asset_check(asset=table)
    def broken() -> dg.AssetCheckResult:
        raise RuntimeError("the check itself crashed")

    @dg.asset_check(asset=table)
    def fine() -> dg.AssetCheckResult:
        return dg.AssetCheckResult(passed=True)

    @dg.asset
    def other() -> None:
        return None

    with dg.instance_for_test() as instance:
        result = dg.materialize([table, other, broken, fine], instance=instance, raise_on_error=False)
    assert unverified_assets(result, {"table", "other"}, [broken, fine]) == {"table"}
