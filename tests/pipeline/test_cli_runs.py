"""`distillery run` as the UI sees it and as a user who made a mistake sees it (issue 13): its runs are runs of
the `distill` job that re-execute; the project file's paths are checked before any step; a failed run says
which tables it replaced; commands that only read need no writable home."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import REPO, run_cli

ROWS = '{"instruction": "Name a colour.", "output": "Blue."}\n{"instruction": "Add 2 and 3.", "output": "5"}\n'


def _project(folder: Path, path: str = "x.jsonl") -> Path:
    """A one-source project in ``folder``; ``format.tokenizer`` names no real tokenizer, so ``formatted`` fails."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.jsonl").write_text(ROWS)
    config = folder / "distillery.yaml"
    config.write_text(
        f"sources:\n  - {{name: mine, path: '{path}', mapping: alpaca, license: MIT}}\nformat: {{tokenizer: t}}\n"
    )
    return config


def _graphql(port: int, query: str, variables: dict[str, object] | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


def _wait(what: str, done: object, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, TypeError):
            if done():  # type: ignore[operator]
                return
        time.sleep(1)
    pytest.fail(f"{what}: not within {timeout_s:g} s")


def _table_state(home: Path) -> list[tuple[object, ...]]:
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        return (
            connection.execute("SELECT * FROM asset_state ORDER BY ALL").fetchall()
            + connection.execute("SELECT count(*), min(row_id) FROM raw").fetchall()
        )


def test_plus_name_selects_the_asset_and_everything_upstream() -> None:
    """`--select +formatted` (Dagster's spelling for "and what it is made from") was rejected as unknown."""
    from definitions import ASSETS
    from distillery_cli import _asset_graph, _parse_select

    known = set(_asset_graph(ASSETS))
    selected = {key.to_user_string() for key in _parse_select("+formatted", known).resolve(ASSETS)}
    assert selected == {"raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted"}
    both = {key.to_user_string() for key in _parse_select("+deduped+", known).resolve(ASSETS)}
    assert both == known  # raw is upstream of deduped; every other asset is downstream of it
    with pytest.raises(ValueError, match=r"unknown asset\(s\) \['\+rawr'\]"):
        _parse_select("+rawr", known)


@pytest.mark.slow
def test_a_cli_run_is_a_run_of_the_distill_job_that_re_executes(tmp_path: Path) -> None:
    """The run is recorded under the code location's `distill` job (as a subset for a selection), not as
    `__ephemeral_asset_job__`, and re-executing it succeeds: from Python, and from `distillery ui --config` as the
    UI's Re-execute button does it, on the user's project."""
    home, config = tmp_path / "home", _project(tmp_path / "project")
    result = run_cli("run", "--config", str(config), "--select", "+deduped", home=home)
    assert result.returncode == 0, result.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        (parent,) = instance.get_runs()
    assert parent.job_name == "distill" and parent.is_success
    assert parent.asset_selection == {dg.AssetKey("raw"), dg.AssetKey("deduped")}
    assert "distillery/pid" not in parent.tags, "a re-execution copies its parent's tags: the pid would be wrong"
    # The UI's Re-execute finds the job through the run's origin (a run without one is refused with
    # "Expected non-None value"): it names the workspace's code location and its repository.
    origin = parent.remote_job_origin
    assert origin is not None and origin.job_name == "distill"
    assert (origin.location_name, origin.repository_origin.repository_name) == ("distillery", "__repository__")

    script = (
        "import dagster as dg\n"
        "from definitions import distill\n"
        "instance = dg.DagsterInstance.get()\n"
        f"options = dg.ReexecutionOptions({parent.run_id!r})\n"
        "with dg.execute_job(dg.reconstructable(distill), instance, reexecution_options=options) as result:\n"
        "    assert result.success\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    environment |= {
        "DISTILLERY_HOME": str(home),
        "DISTILLERY_CONFIG": str(config),
        "DAGSTER_HOME": str(home / "dagster"),
    }
    again = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=environment, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        child = next(r for r in instance.get_runs() if r.run_id != parent.run_id)
        materialized = {
            record.asset_entry.asset_key
            for record in instance.get_asset_records([dg.AssetKey("raw"), dg.AssetKey("deduped")])
            if record.asset_entry.last_materialization_record
            and record.asset_entry.last_materialization_record.run_id == child.run_id
        }
    assert child.job_name == "distill" and child.is_success and child.parent_run_id == parent.run_id
    assert materialized == {dg.AssetKey("raw"), dg.AssetKey("deduped")}

    # The UI's "Re-execute all" (the mutation its button sends), in `distillery ui --config` on this project.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distillery_cli",
            "ui",
            "--config",
            str(config),
            "--home",
            str(home),
            "--port",
            str(port),
        ],
        cwd=REPO,
        env={k: v for k, v in environment.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # the webserver, the daemon and the code server go with it
    )
    try:
        locations = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
        _wait(
            "the UI's code location loads",
            lambda: _graphql(port, locations)["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED",
        )
        launched = _graphql(
            port,
            "mutation($p: ReexecutionParams) { launchPipelineReexecution(reexecutionParams: $p) { __typename "
            "... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }",
            {"p": {"parentRunId": parent.run_id, "strategy": "ALL_STEPS"}},
        )["launchPipelineReexecution"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        status = "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"
        variables = {"id": launched["run"]["runId"]}
        _wait(
            "the re-execution ends",
            lambda: _graphql(port, status, variables)["runOrError"]["status"] in ("SUCCESS", "FAILURE", "CANCELED"),
        )
        assert _graphql(port, status, variables)["runOrError"]["status"] == "SUCCESS"
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
            ui.wait()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        record = instance.get_asset_records([dg.AssetKey("raw")])[0].asset_entry.last_materialization_record
        assert record is not None and record.run_id == launched["run"]["runId"]
        rows = record.event_log_entry.asset_materialization.metadata["dagster/row_count"].value
    assert rows == 2, "the UI run read this project's source (the demo has 66 rows)"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing file", "missing.jsonl is not there (file not found)"),
        ("glob matching nothing", "no file matches 'nowhere/*.jsonl'"),
        ("folder given as a file", "folder.jsonl is a folder, not a data file"),
        ("link loop", "loop.jsonl cannot be read (Too many levels of symbolic links)"),
        ("benchmark missing", "benchmark 'bench': "),
    ],
)
def test_unreadable_project_paths_stop_the_run_before_any_step(tmp_path: Path, case: str, expected: str) -> None:
    """A source (or benchmark) path that cannot be read is one message naming the source and the path, exit
    status 2, no traceback, and no table touched: a missing file used to be found inside `raw`, which
    replaced the table with an empty one before every later step failed."""
    home, folder = tmp_path / "home", tmp_path / "project"
    config = _project(folder)
    before = None
    if case == "missing file":  # a home with tables: they stay as they were (the other cases start empty)
        first = run_cli("run", "--config", str(config), "--select", "raw", home=home)
        assert first.returncode == 0, first.stderr[-3000:]
        before = _table_state(home)
    (folder / "folder.jsonl").mkdir()
    (folder / "loop.jsonl").symlink_to(folder / "loop.jsonl")
    path = {
        "missing file": "missing.jsonl",
        "glob matching nothing": "nowhere/*.jsonl",
        "folder given as a file": "folder.jsonl",
        "link loop": "loop.jsonl",
        "benchmark missing": "x.jsonl",
    }[case]
    _project(folder, path)
    if case == "benchmark missing":
        benchmarks = "format: {tokenizer: t, benchmarks: [{name: bench, path: gone.jsonl}]}"
        config.write_text(config.read_text().replace("format: {tokenizer: t}", benchmarks))
    result = run_cli("run", "--config", str(config), home=home)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "STEP_START" not in result.stderr + result.stdout
    assert result.stderr.startswith(f"error: {config}: 1 path of the project file cannot be read"), result.stderr
    assert expected in result.stderr and ("source 'mine'" in result.stderr or case == "benchmark missing")
    if before is None:
        assert not (home / "warehouse.duckdb").exists(), "no table was written"
    else:
        assert _table_state(home) == before
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert len(instance.get_runs()) == (0 if before is None else 1), "no run was started"


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode")
def test_an_unreadable_source_file_stops_the_run(tmp_path: Path) -> None:
    config = _project(tmp_path / "project")
    (tmp_path / "project" / "x.jsonl").chmod(0)
    result = run_cli("run", "--config", str(config), home=tmp_path / "home")
    assert result.returncode == 2 and "x.jsonl cannot be read (Permission denied)" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_failed_run_names_the_tables_it_replaced(tmp_path: Path) -> None:
    """After a failure the closing line said every previous table was intact, even when a step had just
    replaced one: it now lists what the run replaced (before and after) and what kept its version."""
    home, folder = tmp_path / "home", tmp_path / "project"
    config = _project(folder)
    first = run_cli("run", "--config", str(config), "--select", "raw", home=home)
    assert first.returncode == 0, first.stderr[-3000:]
    (version,) = [line.split()[-1] for line in first.stdout.splitlines() if line.startswith("raw ")]
    (folder / "x.jsonl").write_text(ROWS + '{"instruction": "New?", "output": "Yes."}\n')
    failed = run_cli("run", "--config", str(config), "--select", "raw,formatted", home=home)  # no tokenizer 't'
    assert failed.returncode == 1, failed.stderr[-3000:]
    closing = failed.stderr[failed.stderr.index("The run FAILED") :]
    assert "intact" not in closing
    assert f"  raw (was 2 rows, {version}; now 3 rows, " in closing, closing
    kept = closing[closing.index("Not changed by this run") :].split(": ", 1)[1]
    assert "formatted" in kept and "deduped" in kept and "raw" not in kept, closing


def test_read_only_commands_need_no_writable_home(tmp_path: Path) -> None:
    """`audit`, `preview` and `report --out` only read the home: one whose `dagster/` folder cannot be made
    (here a file is in its way; a read-only disk or another user's home alike) still answers them, and the
    commands that must write there say so in one line."""
    home, config = tmp_path / "home", _project(tmp_path / "project")
    home.mkdir()
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:  # an empty warehouse is enough to read
        connection.execute("CREATE TABLE t (x INTEGER)")
    (home / "dagster").write_text("in the way\n")
    audit = run_cli("audit", "nope", home=home)
    assert "cannot be created or written" not in audit.stderr and "Traceback" not in audit.stderr, audit.stderr
    assert audit.returncode == 1 and "nope" in audit.stderr  # the row is unknown, the command ran
    preview = run_cli("preview", "--config", str(config), "--table", "t", home=home)
    assert "cannot be created or written" not in preview.stderr and "Traceback" not in preview.stderr, preview.stderr
    for command in (["run", "--config", str(config)], ["ui", "--config", str(config)]):
        refused = run_cli(*command, home=home, timeout=120)
        lines = refused.stderr.strip().splitlines()
        assert refused.returncode == 2 and len(lines) == 1 and "cannot be created or written" in lines[0], lines
