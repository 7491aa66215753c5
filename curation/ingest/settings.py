"""What a source's rows depend on besides its files' bytes: its settings in the project file and the code
that maps its records. ``ingested_files`` keeps the :func:`settings_fingerprint` each file was read with, and
ingestion carries a file over unread only when both its content hash and this fingerprint are unchanged:
a new licence, mapping, field name, origin, generator, kind, annotator field, mapping option, format or
``ingest.max_record_bytes`` reads that source's files again, and only its files (``max_record_bytes`` is
the one project-wide setting, so it reads every source again).

The fingerprint hashes the settings *normalised*: canonical JSON (sorted keys), with defaults applied (the
mapping's default field names under the source's renames, the mapping's options model with its defaults),
so writing out a default, reordering keys or editing comments reads nothing again. Settings that do not
change rows (:data:`NOT_ROW_SETTINGS`: which files a glob names, the languages the filter allows) are left
out. :data:`INGEST_CODE_VERSION` and the mapping's own ``version`` stand for the code: bump them when a
change to the readers or to a mapping changes the rows of files already ingested.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from curation.core.config import ProjectConfig, SourceConfig
from curation.ingest.mappings import mapping_spec

INGEST_CODE_VERSION = 1
"""Bumped when the code every source shares (the readers, how :mod:`curation.ingest.sources` builds a row
from what a mapping returns) changes the rows of an unchanged file under unchanged settings: every file is
then read again. A change to one mapping bumps that mapping's ``@mapping(version=...)`` instead."""

ROW_SETTINGS = frozenset(
    {"name", "format", "mapping", "fields", "options", "kind", "license", "origin", "generator", "annotator_field"}
)
"""The settings of a source (:class:`~curation.core.config.SourceConfig`) that decide its rows."""

NOT_ROW_SETTINGS = frozenset({"path", "allowed_languages"})
"""Settings of a source that do not change its rows: ``path`` chooses the files, and each file is known by
its own name and hash (a path written differently that names the same files reads nothing again);
``allowed_languages`` is read by the ``filtered`` stage. Every setting is in exactly one of the two sets
(a test holds them to :class:`~curation.core.config.SourceConfig`), so a new setting is classified when
it is added."""


def source_settings(project: ProjectConfig, source: SourceConfig) -> dict[str, Any]:
    """The normalised settings ``source``'s rows are made with: :data:`ROW_SETTINGS` with the mapping's
    defaults filled in, the project-wide ingest settings that change rows and the code versions."""
    spec = mapping_spec(source.mapping)
    settings = source.model_dump(mode="json", include=set(ROW_SETTINGS - {"fields", "options"}))
    settings["fields"] = {**spec.fields, **source.fields}  # a field renamed to its default name is no change
    settings["options"] = spec.parse_options(source.options).model_dump(mode="json")
    settings["ingest"] = {"max_record_bytes": project.ingest.max_record_bytes}  # batch_rows only splits work
    settings["code"] = {"ingest": INGEST_CODE_VERSION, "mapping": spec.version}
    return settings


def settings_fingerprint(project: ProjectConfig, source: SourceConfig) -> str:
    """A short hash of :func:`source_settings` in canonical JSON (sorted keys, no spaces, UTF-8)."""
    canonical = json.dumps(source_settings(project, source), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]
