"""Content digests of the source files, without reading an unchanged file again.

Every run decides from the sources' SHA-256 whether ``raw`` is up to date, and ``raw`` decides from them
which files to read again. Hashing a million-row mix (570 MB) right after a run had pushed it out of the
page cache took 30-50 s of a re-run that then had nothing to do; with the files cached, 5 s.

So a file's digest is kept in the Distillery home (:data:`DIGESTS_FILE`) with the file's size, mtime
and inode, and trusted while all three are unchanged: what the landing sensor
(:mod:`curation.ingest.landing`) already trusts to skip re-reading a file. One exception, as git's
"racily clean" entries: a file modified less than :data:`SETTLE_NS` before it was hashed may have been
written again within the same mtime tick, so its digest is not trusted and it is hashed again next time.
A missing or unreadable record means hashing everything. Without a home folder (a library call outside a
run) nothing is kept.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from curation.core.home import distillery_home, write_record
from curation.ingest.readers import digest_or_reason

DIGESTS_FILE = "source_digests.json"
"""In the Distillery home: absolute path → ``[size, mtime_ns, inode, digest]``."""
SETTLE_NS = 2_000_000_000
"""A file modified this recently before it was hashed is hashed again next time (coarse file-system clocks)."""


def _stamp(path: Path) -> list[int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino]


def _load(record: Path) -> dict[str, Any]:
    try:
        loaded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def source_digests(paths: Iterable[Path]) -> dict[Path, str]:
    """:func:`~curation.ingest.readers.digest_or_reason` of each path, reusing the recorded digest of a file
    whose size, mtime and inode are unchanged (module docstring)."""
    home = distillery_home()
    record = home / DIGESTS_FILE
    known = _load(record) if home.is_dir() else {}
    paths = list(paths)
    asked = {str(Path(path).absolute()) for path in paths}
    # Other files' entries stay while the file exists (another caller may ask for them).
    kept = {key: entry for key, entry in known.items() if key not in asked and Path(key).exists()}
    result: dict[Path, str] = {}
    for path in paths:
        key = str(Path(path).absolute())
        stamp = _stamp(path)
        entry = known.get(key)
        if stamp is not None and isinstance(entry, list) and len(entry) == 4 and entry[:3] == stamp:
            result[path] = str(entry[3])
            kept[key] = entry
            continue
        hashed_at = time.time_ns()
        result[path] = digest_or_reason(path)
        after = _stamp(path)
        # Kept only if the file did not change while it was read and had settled before.
        readable = not result[path].startswith("unreadable")
        if after is not None and after == stamp and after[1] < hashed_at - SETTLE_NS and readable:
            kept[key] = [*after, result[path]]
    if home.is_dir() and kept != known:  # a read-only home: hashed again next time, nothing else changes
        write_record(record, json.dumps(kept))
    return result
