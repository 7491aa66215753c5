"""Which files the sources read: their globs expanded once per real directory, and each file read once.

``glob.glob(recursive=True)`` follows links to directories, so a ``**`` over a link to an ancestor walks the
same tree again at every level until the path is too long (ELOOP), and two such links multiply the walk at
every level: :func:`expand_glob` matches the same names but walks each real directory once. A file
reached by several names (a link beside its target, ``latest.jsonl -> v3.jsonl``; a hard link; a
directory reached through a link; two sources with the same mapping whose globs overlap) is one file:
:func:`project_files` plans it once, by its resolved path and device/inode, for the first source (in
project-file order) that matches it and reads it the same way.

What a glob matches that is not a regular file is planned too when it looks like data, so that ingestion
reports it as one file-level quarantine entry instead of skipping it silently or hanging on it: a device
or pipe (``/dev/zero`` never ends), a link to nothing, and a directory named like a data file
(``x.jsonl/``) none of whose files the glob matches. Other directories are only the folders a glob
passes through, as for ``glob``.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from curation.core.config import ProjectConfig, SourceConfig
from curation.ingest.readers import format_from_extension


def expand_glob(pattern: str) -> list[Path]:
    """What ``glob.glob(pattern, recursive=True)`` matches (hidden names only when the pattern names them,
    ``**`` any depth of folders), sorted, except that a ``**`` walks each real directory once: a link loop
    or a link to a folder already walked adds nothing (the files under it are the same files)."""
    parts = Path(pattern).parts
    literal = 0
    while literal < len(parts) and not glob.has_magic(parts[literal]):
        literal += 1
    if literal == len(parts):
        return [Path(pattern)] if os.path.lexists(pattern) else []
    base = Path(*parts[:literal]) if literal else Path()
    matches = sorted(set(_match(base, parts[literal:])))
    return [p for p in matches if p.is_dir()] if pattern.endswith(os.sep) else matches  # "dir/*/": folders


def _match(folder: Path, parts: tuple[str, ...]) -> Iterator[Path]:
    part, rest = parts[0], parts[1:]
    if part == "**":
        for walked in _walk(folder):
            if rest:
                yield from _match(walked, rest)
            else:  # a last ``**`` matches everything under the folder, folders included, as glob's does
                yield from (walked / name for name in _names(walked) if not name.startswith("."))
    elif glob.has_magic(part):
        for name in _names(folder):
            if (name.startswith(".") and not part.startswith(".")) or not fnmatch.fnmatchcase(name, part):
                continue
            if not rest:
                yield folder / name
            elif (folder / name).is_dir():
                yield from _match(folder / name, rest)
    elif not rest:
        if os.path.lexists(folder / part):
            yield folder / part
    elif (folder / part).is_dir():
        yield from _match(folder / part, rest)


def _names(folder: Path) -> list[str]:
    """The names in a folder; none when it cannot be listed (as glob: an unlistable folder matches nothing)."""
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _walk(top: Path) -> Iterator[Path]:
    """``top`` and every folder under it, through links, hidden ones left out as ``**`` does, each real
    directory once."""
    seen: set[str] = set()
    pending = [top]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        yield folder
        for name in sorted(_names(folder), reverse=True):
            if not name.startswith(".") and (folder / name).is_dir():
                pending.append(folder / name)


@dataclass(frozen=True)
class PlannedFile:
    """A file a source reads; ``read_by`` names the source that reads it instead when an earlier source's glob
    matched the same file (it is then one file-level quarantine entry of this source, saying so)."""

    source: SourceConfig
    path: Path
    read_by: str | None = None


def _identity(path: Path) -> tuple[object, ...]:
    """What makes two names one file: its device and inode (links, hard links, folders reached twice), or its
    resolved path when it cannot be looked at."""
    try:
        info = path.stat()
    except OSError:
        return ("path", os.path.realpath(path))
    return ("inode", info.st_dev, info.st_ino)


def source_files(project: ProjectConfig, source: SourceConfig) -> list[Path]:
    """The files a source's path or glob matches now, sorted, each file once (the first of its names in sorted
    order), with what is not a regular file but looks like data (see the module's docstring)."""
    matches = expand_glob(str(project.resolve(source.path)))
    folders = [p for p in matches if p.is_dir()]
    data_folders = {p for p in folders if format_from_extension(p) is not None}
    # A data-named folder whose files the glob matches too (``out.parquet/part-0.parquet``, as Spark writes)
    # is read through those files; only one whose files the glob misses is worth an entry.
    covered = {parent for p in matches for parent in p.parents if parent in data_folders}
    files: list[Path] = []
    seen: set[tuple[object, ...]] = set()
    for path in matches:
        if path.is_dir() and path not in data_folders - covered:
            continue
        identity = _identity(path)
        if identity not in seen:
            seen.add(identity)
            files.append(path)
    return files


READING = {"format", "mapping", "fields", "options", "kind", "annotator_field"}
"""The settings of a source that decide which rows a file becomes (the others label the rows)."""


def project_files(project: ProjectConfig) -> list[PlannedFile]:
    """:func:`source_files` of every source, in project-file order. A file that an earlier source reads the
    same way (same :data:`READING` settings: two globs that overlap) is marked with that source's name: it
    is read once, by that source. Sources that read one file in different ways each read it (an OASST file's
    threads and its preference pairs are two sources)."""
    first_reader: dict[tuple[object, ...], str] = {}
    planned = []
    for source in project.sources:
        reading = source.model_dump_json(include=READING)
        for path in source_files(project, source):
            reader = first_reader.setdefault((*_identity(path), reading), source.name)
            planned.append(PlannedFile(source, path, None if reader == source.name else reader))
    return planned
