"""Chromium for the browser tests (tests/pipeline/test_ui_browser.py), which drive the Dagster UI with Playwright.

Playwright comes from PyPI (the ``dev`` extra), but the browser build it would download comes from a CDN, and
PyPI has no Chromium: the tests use the system's. ``python -m tests.browser_setup`` (a step of the README's test
command, so of CI) finds it, or installs Debian's ``chromium`` package with apt-get when it is missing and this
is root on a Debian/Ubuntu machine; otherwise it prints what to install. It always exits 0 so the rest of the
suite still runs: without a Chromium, the browser tests FAIL with the same message, unless
``DISTILLERY_SKIP_BROWSER_TESTS=1`` says that this machine has none on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

CHROMIUM_ENV = "DISTILLERY_CHROMIUM"
"""A Chromium (or Chrome) binary to use instead of the first of :data:`CANDIDATES` on the PATH."""
SKIP_ENV = "DISTILLERY_SKIP_BROWSER_TESTS"
"""Set to 1 to skip the browser tests on a machine that has no Chromium on purpose."""
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PACKAGE = "chromium"
APT_TIMEOUT_S = 900


def find_chromium() -> str | None:
    """The Chromium binary the browser tests use: ``$DISTILLERY_CHROMIUM``, or the first candidate on the PATH."""
    chosen = os.environ.get(CHROMIUM_ENV)
    if chosen:
        return chosen if os.access(chosen, os.X_OK) else None
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


def missing_message() -> str:
    """What to do on a machine without Chromium (the browser tests fail with this)."""
    return (
        "no Chromium found for the browser tests (tests/pipeline/test_ui_browser.py): install Debian's or Ubuntu's "
        f"package (`sudo apt-get install -y {PACKAGE}`; `python -m tests.browser_setup` does it as root), or a "
        f"Chromium/Chrome from elsewhere and set {CHROMIUM_ENV}=/path/to/it, or set {SKIP_ENV}=1 to skip them. "
        "Playwright's own browser download (`playwright install`) is not used."
    )


def _apt(*arguments: str) -> subprocess.CompletedProcess[str]:
    # Non-interactive, and waiting for a dpkg lock held by another apt instead of failing at once.
    command = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300", *arguments]
    environment = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    print(f"$ DEBIAN_FRONTEND=noninteractive {' '.join(command)}", flush=True)
    return subprocess.run(
        command, env=environment, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=APT_TIMEOUT_S
    )


def install_chromium() -> str | None:
    """Install :data:`PACKAGE` with apt-get (as root on Debian/Ubuntu), ``apt-get update`` first only when the
    install fails (package lists absent or stale); the binary found afterwards, or None."""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        return None
    for step in (("install", PACKAGE), ("update",), ("install", PACKAGE)):
        try:
            done = _apt(*step)
        except subprocess.TimeoutExpired:
            print(f"  timed out after {APT_TIMEOUT_S} s", flush=True)
            continue
        if done.returncode != 0:
            print(f"  exit {done.returncode}: {done.stderr.strip()[-1500:]}", flush=True)
        elif step[0] == "install":
            break
    return find_chromium()


def main() -> int:
    found = find_chromium() or install_chromium()
    if found:
        print(f"browser tests: Chromium at {found}")
    elif os.environ.get(SKIP_ENV) == "1":
        print(f"browser tests: no Chromium; skipped ({SKIP_ENV}=1)")
    else:
        print(f"browser tests will FAIL: {missing_message()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
