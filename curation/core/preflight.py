"""Checks of the files a project file names, made before a run starts.

A source whose file is missing used to be found only inside ``raw``: the step replaced the table with an
empty one, every later step failed, and the terminal filled with tracebacks. Checked here first, a
mistake in the project file is one message naming each source and path, and no table is touched.

The files are the ones ingestion reads (:meth:`ProjectConfig.source_files`, the same glob expansion), so
the check and the run never disagree about what a pattern matches.
"""

from __future__ import annotations

import glob
import stat
from dataclasses import dataclass
from pathlib import Path

from curation.core.config import ProjectConfig


@dataclass(frozen=True)
class PathProblem:
    """One path of the project file that a run could not read: who names it, the path, and why."""

    owner: str
    """``source 'name'`` or ``benchmark 'name'``: the entry of the project file that names the path."""
    path: Path
    message: str
    """What is wrong, naming the path."""

    def __str__(self) -> str:
        return f"{self.owner}: {self.message}"


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None when it can. Only regular files are opened:
    opening a pipe would block until a writer comes."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return "is a link to nothing" if path.is_symlink() else "is not there (file not found)"
    except OSError as error:  # a link loop (ELOOP), a folder on the way that cannot be searched (EACCES)
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISDIR(info.st_mode):
        return "is a folder, not a data file (a glob such as folder/*.jsonl reads the files in it)"
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file (a device, a pipe or a socket)"
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    return None


def source_path_problems(project: ProjectConfig, sources: list[str] | None = None) -> list[PathProblem]:
    """Every source path (of ``sources``, default all) that matches nothing or names something a run cannot
    read: a missing file, a glob that matches no file, a folder, a device or pipe, an unreadable file. The
    files a glob matches are not judged here: ingestion quarantines an unreadable one and reads the rest."""
    problems: list[PathProblem] = []
    for source in project.sources:
        if sources is not None and source.name not in sources:
            continue
        owner = f"source {source.name!r}"
        files = project.source_files(source)
        if not files:
            pattern = project.resolve(source.path)
            if glob.has_magic(source.path):
                message = f"no file matches {source.path!r} (the pattern {pattern})"
            else:
                message = f"{pattern} {_unreadable(pattern) or 'is not there (file not found)'}"
            problems.append(PathProblem(owner, pattern, message))
            continue
        if glob.has_magic(source.path):
            # A pattern's matches are read file by file: one that cannot be read is a quarantine entry with
            # its reason and the others are ingested (curation.ingest.sources), so it does not stop the run.
            continue
        for path in files:
            reason = _unreadable(path)
            if reason:
                problems.append(PathProblem(owner, path, f"{path} {reason}"))
    return problems


def benchmark_path_problems(project: ProjectConfig) -> list[PathProblem]:
    """``format.benchmarks`` files that are missing or unreadable (``formatted`` reads each one)."""
    problems = []
    for benchmark in project.format.benchmarks:
        path = project.resolve(benchmark.path)
        reason = _unreadable(path)
        if reason:
            problems.append(PathProblem(f"benchmark {benchmark.name!r}", path, f"{path} {reason}"))
    return problems


def describe(config_path: Path, problems: list[PathProblem]) -> str:
    """One message for all of ``problems``: the project file, then a line per path."""
    count = f"{len(problems)} path{'s' if len(problems) != 1 else ''}"
    lines = [f"{config_path}: {count} of the project file cannot be read; no table was touched:"]
    lines += [f"  - {problem}" for problem in problems]
    return "\n".join(lines)
