"""What changed in the sources' landing files since the last look (for the landing sensor)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from curation.config import ProjectConfig


def file_states(project: ProjectConfig) -> dict[str, str]:
    """``source:path`` → ``size:mtime_ns`` for every file the sources match now."""
    states: dict[str, str] = {}
    for source in project.sources:
        for path in project.source_files(source):
            stat = Path(path).stat()
            states[f"{source.name}:{path}"] = f"{stat.st_size}:{stat.st_mtime_ns}"
    return states


def changed_files(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Files added or changed (removed files need no new run of their own)."""
    return sorted(key for key, state in current.items() if previous.get(key) != state)


def state_key(current: dict[str, str]) -> str:
    """A short id of the whole landing state: the run key, so one state never starts two runs."""
    return hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]
