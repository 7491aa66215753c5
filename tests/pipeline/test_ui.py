"""The Dagster UI as a person meets it: after a real run, the webserver on loopback shows the five
dataset assets, their dependencies and checks with materializations, and a browser renders the graph.

Chromium comes from the system's packages; the test installs it (apt-get, as root) when absent and
skips, saying why, only where no browser can be installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

DATASETS = {
    "raw": ["source_files"],  # the observable source asset of the landing files
    "deduped": ["raw"],
    "filtered": ["deduped"],
    "synthetic_mixed": ["filtered", "synthetic"],
    "formatted": ["synthetic_mixed"],
}
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser", "google-chrome")
ASSETS_QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path }
  assetChecksOrError { __typename ... on AssetChecks { checks { name blocking
    executionForLatestMaterialization { status } } } }
  assetMaterializations(limit: 1) { runId timestamp } } }"""


def find_or_install_browser() -> str:
    """A Chromium binary; installed from the system's packages when absent (Debian/Ubuntu, as root)."""
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip(
            "no Chromium on this machine and it cannot be installed here (needs apt-get as root): "
            "install chromium-headless-shell or chromium to run the UI screenshot test"
        )
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=180", "-y", "-q"]
    log = []
    for command in (
        [*apt, "update"],
        [*apt, "install", "--no-install-recommends", "chromium-headless-shell", "fonts-dejavu-core"],
        [*apt, "install", "chromium"],
    ):
        if command[-1] == "chromium" and any(shutil.which(b) for b in BROWSERS):
            break
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
            log.append(f"$ {' '.join(command)} -> {done.returncode}\n{done.stderr[-800:]}")
        except subprocess.TimeoutExpired:
            log.append(f"$ {' '.join(command)} timed out")
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("Chromium could not be installed from the system's packages:\n" + "\n".join(log))


def run_browser(args: list[str], timeout: float = 180) -> subprocess.CompletedProcess:
    """Chromium in its own process group, so that no renderer or zygote outlives the test."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body["errors"]
    return body["data"]


@pytest.fixture(scope="module")
def ran_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home after a real `distillery run` on the bundled demo (persistent Dagster instance)."""
    home = tmp_path_factory.mktemp("ui") / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DISTILLERY_CONFIG", "DAGSTER_HOME")}
    done = subprocess.run(
        [sys.executable, str(REPO / "distillery_cli.py"), "run", "--home", str(home)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"distillery run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return home


@pytest.fixture(scope="module")
def webserver(ran_home: Path, tmp_path_factory: pytest.TempPathFactory):
    """dagster-webserver on 127.0.0.1 in its own process group, stopped by that group at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("webserver") / "webserver.log"
    env = {k: v for k, v in os.environ.items() if k != "DISTILLERY_CONFIG"} | {
        "DAGSTER_HOME": str(ran_home / "dagster"),
        "DISTILLERY_HOME": str(ran_home),
    }
    binary = Path(sys.executable).parent / "dagster-webserver"
    with log.open("w") as output:
        process = subprocess.Popen(
            [str(binary), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                nodes = graphql(port, "{ assetNodes { assetKey { path } } }")["assetNodes"]
                if {n["assetKey"]["path"][0] for n in nodes} >= set(DATASETS):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the webserver did not serve the assets within 240 s:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield port
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def test_the_cli_binds_the_ui_to_loopback_by_default() -> None:
    from distillery_cli import build_parser

    assert build_parser().parse_args(["ui"]).host == "127.0.0.1"


def test_graphql_shows_the_datasets_their_dependencies_checks_and_materializations(webserver: int) -> None:
    nodes = {tuple(n["assetKey"]["path"]): n for n in graphql(webserver, ASSETS_QUERY)["assetNodes"]}
    for name, parents in DATASETS.items():
        node = nodes[(name,)]
        assert sorted(d["path"][0] for d in node["dependencyKeys"]) == sorted(parents), name
        assert node["groupName"] == "datasets"
        assert len(node["assetMaterializations"]) == 1, f"{name} has no materialization in the UI"
        checks = node["assetChecksOrError"]["checks"]
        names = {c["name"] for c in checks}
        assert "canonical_schema" in names and names & {"rows_conserved", "records_conserved"}, name
        assert all(c["blocking"] for c in checks if c["name"] == "canonical_schema")
        for check in checks:
            status = (check["executionForLatestMaterialization"] or {}).get("status")
            assert status == "SUCCEEDED", f"{name}:{check['name']} is {status}"
    runs = {n["assetMaterializations"][0]["runId"] for n in nodes.values() if n["assetMaterializations"]}
    assert len(runs) == 1  # all from the one `distillery run`


def screenshot_ok(path: Path) -> None:
    """A real PNG of the window's size that is neither blank nor nearly uniform."""
    from PIL import Image, ImageStat

    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (1600, 1000)
        gray = image.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10, f"{path.name} is blank"
        assert len(gray.getcolors(maxcolors=256 * 256) or range(257)) > 20, f"{path.name} is nearly uniform"


def test_a_browser_renders_the_asset_graph(webserver: int, tmp_path: Path) -> None:
    browser = find_or_install_browser()
    graphql(webserver, "mutation { setNuxSeen }")  # otherwise a sign-up dialog covers the graph
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1600,1000",
        "--virtual-time-budget=20000",
    ]
    # The global lineage (/asset-groups) collapses each group into one box once there are several groups;
    # the datasets group's own lineage page always draws the dataset assets and their edges.
    pages = {
        "global": f"http://127.0.0.1:{webserver}/asset-groups",
        "datasets": f"http://127.0.0.1:{webserver}/locations/distillery/asset-groups/datasets/lineage",
    }
    keep = os.environ.get("DISTILLERY_UI_SCREENSHOT_DIR")  # keep copies (e.g. for the README) when asked
    for name, url in pages.items():
        screenshot = tmp_path / f"{name}.png"
        done = run_browser([*flags, f"--screenshot={screenshot}", url])
        assert screenshot.exists(), f"no screenshot of {url} ({done.returncode}):\n{done.stderr[-2000:]}"
        screenshot_ok(screenshot)
        if keep:
            shutil.copy(screenshot, Path(keep) / f"ui-{name}.png")

    # What the page shows once rendered: the dataset assets, not an error page. The graph is laid out
    # asynchronously; a loaded machine may need a second look.
    missing: list[str] = []
    for _ in range(3):
        dom = run_browser([*flags, "--dump-dom", pages["datasets"]]).stdout
        missing = [name for name in DATASETS if f">{name}<" not in dom]
        if not missing:
            break
    assert not missing, f"not on the rendered datasets graph: {missing}"


def test_inspection_plots_are_in_the_ui_metadata(webserver: int) -> None:
    nodes = graphql(
        webserver,
        """{ assetNodes(assetKeys: [{path: ["inspection"]}]) { assetKey { path }
        assetMaterializations(limit: 1) { metadataEntries { label ... on MarkdownMetadataEntry { mdStr } } } } }""",
    )
    if not nodes["assetNodes"]:
        pytest.skip("the inspection asset is not registered in definitions.py")
    (materialization,) = nodes["assetNodes"][0]["assetMaterializations"]
    markdown = {e["label"]: e.get("mdStr") or "" for e in materialization["metadataEntries"]}
    for name in DATASETS:
        assert markdown[name].count("data:image/png;base64,") == 3, name
