"""The Dagster UI in a real browser (issue 13, "Done when"): `distillery ui --config` on a user's project, driven
by headless Chromium through Playwright as a person clicks it. A `distillery run` is re-executed from its run
page; a changed source file, once observed, shows `raw` Unsynced, a new `raw` shows `deduped` Unsynced, and
materializing makes them fresh. A screenshot of each state is saved in the test's tmp folder (and copied to
``$DISTILLERY_UI_SCREENSHOT_DIR`` when set).

Chromium is the system's (``python -m tests.browser_setup`` installs it); without it this test fails saying what
to install, unless ``DISTILLERY_SKIP_BROWSER_TESTS=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_setup import SKIP_ENV, find_chromium, missing_message
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow

# Headless, and nothing that reaches outside the machine (no component updates, sync or QUIC probes).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROWS = '{"instruction": "Name a colour.", "output": "Blue."}\n{"instruction": "Add 2 and 3.", "output": "5"}\n'
PROJECT = "sources:\n  - {name: mine, path: 'x.jsonl', mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n"
RUN_TIMEOUT_MS = 240_000
ENDED = re.compile(r"^(Success|Failure|Canceled)$")


def _chromium() -> str:
    path = find_chromium()
    if path is None:
        if os.environ.get(SKIP_ENV) == "1":
            pytest.skip(f"no Chromium and {SKIP_ENV}=1")
        pytest.fail(missing_message(), pytrace=False)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["data"]


@contextlib.contextmanager
def _ui(config: Path, home: Path, log: Path) -> Iterator[int]:
    """`distillery ui --config CONFIG --home HOME` on a free loopback port, in its own process group (the
    webserver, the daemon and the code server go with it)."""
    port = _free_port()
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("DISTILLERY_", "DAGSTER_"))}
    command = [sys.executable, "-m", "distillery_cli", "ui", "--config", str(config), "--home", str(home)]
    with log.open("w") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=REPO,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield port
    finally:
        # `dagster dev` does not always stop its webserver, daemon and code servers on SIGTERM once its parent
        # is gone: the whole group gets a grace period, then SIGKILL.
        os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
        deadline = time.monotonic() + 20
        with contextlib.suppress(ProcessLookupError):
            while time.monotonic() < deadline:
                os.killpg(process.pid, 0)  # raises once no process of the group is left
                time.sleep(0.5)
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_loaded(port: int, log: Path, timeout_s: float = 240) -> None:
    query = "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, KeyError, TypeError, IndexError):
            if _graphql(port, query)["workspaceOrError"]["locationEntries"][0]["loadStatus"] == "LOADED":
                return
        time.sleep(1)
    pytest.fail(f"the UI did not load the code location within {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def _button(page: Any, text: str) -> Any:
    """The button showing exactly ``text`` (its accessible name also holds its icon's label)."""
    return page.locator("button").filter(has_text=re.compile(rf"^{re.escape(text)}$"))


def _run_ends(page: Any, what: str) -> None:
    """On a run's page: wait until it ends, and require success."""
    status = page.get_by_text(ENDED).first
    status.wait_for(timeout=RUN_TIMEOUT_MS)
    assert status.inner_text() == "Success", f"{what}: the run {page.url} ended {status.inner_text()}"


def _follow_launched_run(page: Any, what: str) -> None:
    """After a Materialize or Observe click: open the launched run from the UI's toast and wait for it."""
    page.get_by_text(re.compile(r"^Launched run")).first.wait_for(timeout=60_000)
    page.locator("a, button").filter(has_text=re.compile(r"^View$")).first.click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]+"), timeout=60_000)
    _run_ends(page, what)


def _stale_status(port: int, asset: str) -> str:
    query = "query($k: [AssetKeyInput!]) { assetNodes(assetKeys: $k) { staleStatus } }"
    return _graphql(port, query, {"k": [{"path": [asset]}]})["assetNodes"][0]["staleStatus"]


def _expect_unsynced(page: Any, port: int, base: str, asset: str, unsynced: bool, timeout_s: float = 90) -> None:
    """The asset's page shows the Unsynced tag (or not), as the UI's GraphQL has it, within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    shown = None
    while time.monotonic() < deadline:
        page.goto(f"{base}/assets/{asset}")
        page.get_by_text("Latest materialization").first.wait_for(timeout=60_000)
        page.wait_for_timeout(1500)  # the tag comes with the asset's live data
        shown = page.get_by_text(re.compile(r"^Unsynced")).count() > 0
        if shown == unsynced and (_stale_status(port, asset) == "STALE") == unsynced:
            return
        time.sleep(2)
    pytest.fail(f"{asset}: expected {'Unsynced' if unsynced else 'fresh'}, the page shows Unsynced={shown}")


def test_the_ui_re_executes_a_cli_run_and_shows_a_changed_source_unsynced_until_materialized(tmp_path: Path) -> None:
    chromium = _chromium()
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail('playwright is not installed: pip install -e ".[dev]"', pytrace=False)
    home, folder = tmp_path / "home", tmp_path / "project"
    folder.mkdir()
    (folder / "x.jsonl").write_text(ROWS)
    config = folder / "distillery.yaml"
    config.write_text(PROJECT)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    keep = os.environ.get("DISTILLERY_UI_SCREENSHOT_DIR")

    def screenshot(page: Any, name: str) -> None:
        with contextlib.suppress(AssertionError):  # each node's live data; the picture is taken either way
            expect(page.get_by_text("Loading...")).to_have_count(0, timeout=30_000)
        page.wait_for_timeout(1000)  # let the graph settle
        page.screenshot(path=str(shots / f"{name}.png"))
        if keep:
            shutil.copy(shots / f"{name}.png", Path(keep) / f"ui-browser-{name}.png")

    log = tmp_path / "ui.log"
    with _ui(config, home, log) as port:
        # The CLI run while the UI starts: a run of the `distill` job, `raw` and `deduped` only.
        done = run_cli("run", "--config", str(config), "--select", "raw,deduped", home=home)
        assert done.returncode == 0, done.stderr[-3000:]
        _wait_loaded(port, log)
        runs = _graphql(port, "{ runsOrError { ... on Runs { results { runId pipelineName } } } }")
        ((cli_run, job),) = [(r["runId"], r["pipelineName"]) for r in runs["runsOrError"]["results"]]
        assert job == "distill"
        _graphql(port, "mutation { setNuxSeen }")  # otherwise a sign-up dialog covers the pages
        base = f"http://127.0.0.1:{port}"

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.set_default_timeout(60_000)

                # The CLI run's page: Re-execute is there and enabled (it was disabled for CLI runs).
                page.goto(f"{base}/runs/{cli_run}")
                reexecute = _button(page, "Re-execute all (*)")
                expect(reexecute).to_be_enabled(timeout=60_000)  # disabled until the page has the run's origin
                screenshot(page, "01-cli-run")

                # A source file changes; the UI's Observe on source_files records it; raw is Unsynced.
                _expect_unsynced(page, port, base, "raw", unsynced=False)
                with (folder / "x.jsonl").open("a") as handle:
                    handle.write('{"instruction": "New?", "output": "Yes."}\n')
                page.goto(f"{base}/assets/source_files")
                _button(page, "Observe").click()
                _follow_launched_run(page, "observing source_files")
                _expect_unsynced(page, port, base, "raw", unsynced=True)
                _expect_unsynced(page, port, base, "deduped", unsynced=False)
                page.goto(f"{base}/assets/raw?view=lineage")
                page.get_by_text(re.compile(r"^Unsynced")).first.wait_for()
                screenshot(page, "02-raw-unsynced")

                # raw materialized from its page: fresh, and deduped, made from the old raw, is Unsynced.
                page.goto(f"{base}/assets/raw")
                _button(page, "Materialize").click()
                _follow_launched_run(page, "materializing raw")
                _expect_unsynced(page, port, base, "raw", unsynced=False)
                _expect_unsynced(page, port, base, "deduped", unsynced=True)
                page.goto(f"{base}/assets/raw?view=lineage")
                page.get_by_text(re.compile(r"^Unsynced")).first.wait_for()
                screenshot(page, "03-deduped-unsynced")

                # The CLI run re-executed from its page: a new run of `distill`, which succeeds; all fresh.
                page.goto(f"{base}/runs/{cli_run}")
                _button(page, "Re-execute all (*)").click()
                page.wait_for_url(lambda url: "/runs/" in url and cli_run not in url, timeout=60_000)
                child = page.url.rstrip("/").rsplit("/", 1)[-1]
                _run_ends(page, "re-executing the CLI run")
                screenshot(page, "04-re-executed")
                for asset in ("raw", "deduped"):
                    _expect_unsynced(page, port, base, asset, unsynced=False)
                page.goto(f"{base}/assets/raw?view=lineage")
                page.get_by_text("deduped", exact=True).first.wait_for()
                screenshot(page, "05-fresh")
            finally:
                browser.close()

        run = _graphql(
            port,
            "query($id: ID!) { runOrError(runId: $id) { ... on Run { parentRunId pipelineName status } } }",
            {"id": child},
        )["runOrError"]
        assert run == {"parentRunId": cli_run, "pipelineName": "distill", "status": "SUCCESS"}
    for name in ("01-cli-run", "02-raw-unsynced", "03-deduped-unsynced", "04-re-executed", "05-fresh"):
        assert (shots / f"{name}.png").stat().st_size > 10_000, name
