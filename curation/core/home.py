"""Where Distillery keeps its state: ``$DISTILLERY_HOME`` (default ``./.distillery``).

The home holds the warehouse (``warehouse.duckdb``), the Dagster instance (``dagster/``),
exports and reports. The project file comes from ``$DISTILLERY_CONFIG`` or the bundled demo.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "demo" / "distillery.yaml"


def distillery_home() -> Path:
    return Path(os.environ.get("DISTILLERY_HOME", ".distillery")).expanduser().resolve()


def write_record(path: Path, text: str) -> bool:
    """Replace ``path`` with ``text`` atomically (a temporary file beside it, then a rename), for a record the
    next run reads back; False, and nothing left behind, where the folder cannot be written (the record is
    then missing, which its readers take as "start over")."""
    temporary = path.with_name(f".{path.name}-{uuid.uuid4().hex[:8]}")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        return False
    return True


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


def run_lock_path() -> Path:
    return distillery_home() / "run.lock"


class HomeBusy(RuntimeError):
    """Another live process holds the lock (the message names its pid)."""


@contextlib.contextmanager
def exclusive_lock(
    path: Path, wait: bool = True, on_wait: Callable[[str], None] | None = None, poll_s: float = 0.5
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` for the block. The kernel drops it when the holder dies,
    however it dies, so a lock is never stale after a crash and whatever a holder leaves behind (staging,
    temp folders) is debris once the lock is ours. The holder's pid is written into the file for the
    message of whoever waits. With ``wait``, ``on_wait`` is called once with that message and the wait
    polls in Python, so SIGINT and SIGTERM stop it as usual; without, :class:`HomeBusy` is raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # noqa: SIM115 - held open for the whole block: closing it releases the lock
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                message = f"{path.parent} is in use by another process ({holder})"
                if not wait:
                    raise HomeBusy(message) from None
                if on_wait and not told:
                    on_wait(message)
                    told = True
                time.sleep(poll_s)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def remove_dead_export_temps(root: Path) -> list[Path]:
    """Remove ``root/.tmp-*`` folders: half-written exports of runs that died. Call it holding
    :func:`exclusive_lock` on ``exports.lock`` beside ``root`` (every export is written under it), so none of them
    belongs to a live writer."""
    removed = sorted(p for p in root.glob(".tmp-*") if p.is_dir() and not p.is_symlink()) if root.is_dir() else []
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed
