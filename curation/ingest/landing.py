"""What changed in the sources' landing files since the last look (for the landing sensor).

A file's state is ``size:mtime_ns:sha256``. The content hash is what decides "changed": size and
mtime only say when it is worth re-reading a file, so an unchanged file is never read again and a
file that was merely touched (same bytes, new mtime) starts no run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from curation.core.config import ProjectConfig
from curation.ingest.files import source_files
from curation.ingest.readers import digest_or_reason


def _split(state: str | None) -> tuple[str, str]:
    """``(size:mtime, sha)`` of a stored state; older cursors held ``size:mtime`` only."""
    if not state:
        return "", ""
    if state.count(":") < 2:
        return state, ""
    size, mtime, sha = state.split(":", 2)  # the hash may be a reason with colons ("unreadable: ...")
    return f"{size}:{mtime}", sha


def file_states(project: ProjectConfig, previous: Mapping[str, str] | None = None) -> dict[str, str]:
    """``source:path`` → ``size:mtime_ns:sha256`` for every file the sources match now. Files whose size
    and mtime equal the previous state keep its hash without being read."""
    previous = previous or {}
    states: dict[str, str] = {}
    for source in project.sources:
        for path in source_files(project, source):
            key = f"{source.name}:{path}"
            try:
                stat = path.stat()
                stamp = f"{stat.st_size}:{stat.st_mtime_ns}"
            except OSError:  # a link to nothing: ingestion quarantines it, and a new target is a change
                stamp = "-:-"
            old_stamp, old_sha = _split(previous.get(key))
            sha = old_sha if old_stamp == stamp and old_sha else digest_or_reason(Path(path))
            states[key] = f"{stamp}:{sha}"
    return states


def changed_files(previous: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """Files added or whose content changed (removed files need no new run of their own)."""
    return sorted(key for key, state in current.items() if _split(previous.get(key))[1] != _split(state)[1])


def changed_sources(changed: list[str]) -> list[str]:
    """Source names of ``source:path`` keys."""
    return sorted({key.split(":", 1)[0] for key in changed})


def files_fingerprint(states: Mapping[str, str]) -> str:
    """A short id of the landing content (paths and hashes, not mtimes)."""
    content = {key: _split(state)[1] for key, state in states.items()}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def state_key(current: Mapping[str, str], previous: Mapping[str, str] | None = None) -> str:
    """The run key of a change from ``previous`` to ``current``: the same change never starts two runs,
    while going back to an earlier content (A → B → A) is a new change and does start one."""
    return f"{files_fingerprint(previous or {})}-{files_fingerprint(current)}"
