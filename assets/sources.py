"""source_files: the sources' landing files as Dagster sees them, so its staleness knows when they change.

An observable source asset: Dagster does not make these files, it observes them. An observation's data version
is :func:`~curation.core.freshness.source_fingerprint` (every file each source matches now, with its sha256, and
each source's settings that shape its rows): the same input ``distillery run`` compares to decide whether
``raw`` is up to date. ``raw`` depends on it, so once an observation records a new version the UI marks ``raw``
*Unsynced* ("has a new dependency data version"), and after ``raw`` is materialized again with different
content, each asset whose input changed in turn.

Observations come from three places: the UI's "Observe sources" (or this asset's "Observe" button), which runs
:func:`source_files`; each tick of ``landing_files_sensor`` whose files or source settings changed; and every
materialization of ``raw``, which records the version it actually ingested (:func:`ingested_events`).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetObservation,
    AssetSpec,
    BetaWarning,
    DagsterInstance,
    DataVersion,
    ObserveResult,
    multi_observable_source_asset,
)

# Dagster's own names for the data-version tags of an event, as its REST endpoint for external assets writes
# them (dagster_webserver.external_assets): AssetObservation takes no data version argument.
from dagster._core.definitions.data_version import (
    DATA_VERSION_IS_USER_PROVIDED_TAG,
    DATA_VERSION_TAG,
    get_input_data_version_tag,
)

from curation.core.config import ProjectConfig
from curation.core.freshness import source_fingerprint
from curation.ingest.landing import files_fingerprint
from curation.ingest.settings import settings_fingerprint
from resources import ProjectResource

SOURCE_FILES = AssetKey("source_files")
WATCH_KEY = "distillery/watch_key"
"""Observation metadata the sensor writes: a cheap key of what it watched (file hashes it already knows from its
cursor, source settings), so a tick where nothing changed computes no fingerprint, which reads every file."""


def observation_tags(version: str) -> dict[str, str]:
    """The tags that make an observation carry ``version`` as its data version."""
    return {DATA_VERSION_TAG: version, DATA_VERSION_IS_USER_PROVIDED_TAG: "true"}


def source_observation(
    config: ProjectConfig, version: str, metadata: Mapping[str, Any] | None = None
) -> AssetObservation:
    """An observation of :data:`SOURCE_FILES` at ``version`` (a :func:`source_fingerprint` of ``config``)."""
    return AssetObservation(
        SOURCE_FILES,
        metadata={"sources": len(config.sources), **(metadata or {})},
        tags=observation_tags(version),
    )


def ingested_events(config: ProjectConfig, version: str) -> tuple[AssetObservation, dict[str, str]]:
    """What ``raw`` records about the sources it read at ``version``: an observation of :data:`SOURCE_FILES` at that
    version, and the tags that make its materialization's provenance name that version as its input.

    Dagster looks up the inputs' versions when a step starts, before ``raw`` has looked at the files: left alone,
    a run that ingests files nobody observed yet records the previous observation as its input, and ``raw``
    turns *Unsynced* at the next observation of the very files it read. Both events name what was read."""
    return source_observation(config, version), {get_input_data_version_tag(SOURCE_FILES): version}


def watch_key(config: ProjectConfig, states: Mapping[str, str]) -> str:
    """A key of what a :func:`source_fingerprint` depends on, from the landing sensor's file states (``source:path``
    → ``size:mtime:sha256``, hashes reused while size and mtime stay) and each source's settings fingerprint."""
    settings = {source.name: settings_fingerprint(config, source) for source in config.sources}
    content = json.dumps({"files": files_fingerprint(states), "settings": settings}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def latest_watch_key(instance: DagsterInstance) -> str | None:
    """The watch key of the latest observation of :data:`SOURCE_FILES` (None when it came from elsewhere)."""
    records = instance.fetch_observations(SOURCE_FILES, limit=1).records
    observation = records[0].asset_observation if records else None
    value = observation.metadata.get(WATCH_KEY) if observation is not None else None
    return str(value.value) if value is not None else None


# The decorators of observable assets carry Dagster's beta label; without this every import of the code location
# (every `distillery` command, every run worker) would print a BetaWarning. The multi-asset form with one spec:
# the single-asset @observable_source_asset makes a SourceAsset, whose conversion warns a DeprecationWarning.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)

    @multi_observable_source_asset(
        specs=[
            AssetSpec(
                SOURCE_FILES,
                group_name="datasets",
                description="The landing files of every source in the project file, with each source's "
                "settings. Observed, not materialized: its data version is their fingerprint, and raw is "
                "Unsynced when it changes.",
                kinds={"file"},
            )
        ],
        name="observe_source_files",
    )
    def source_files(project: ProjectResource) -> ObserveResult:
        config = project.load()
        files = sum(len(config.source_files(source)) for source in config.sources)
        return ObserveResult(
            data_version=DataVersion(source_fingerprint(config)),
            metadata={"sources": len(config.sources), "files": files},
        )
