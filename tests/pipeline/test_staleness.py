"""Dagster's staleness sees the sources (issue 13): ``source_files`` is an observable source asset whose data
version is the sources' fingerprint and ``raw`` depends on it, so a changed landing file or source setting, once
observed, makes ``raw`` Unsynced in the UI, a new ``raw`` makes ``deduped`` Unsynced, and materializing them
makes them fresh again. Staleness is read here as the UI's GraphQL reads it (``staleStatus``,
``staleCauses``: Dagster's stale-status resolver); tests/pipeline/test_ui_browser.py looks at the pages."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

# The resolver behind the GraphQL fields staleStatus and staleCauses (dagster_graphql's stale_status_loader).
from dagster._core.definitions.data_version import CachingStaleStatusResolver
from dagster._core.loader import LoadingContextForTest

from assets.sources import SOURCE_FILES, WATCH_KEY, source_files
from curation.core.config import load_project
from curation.core.freshness import source_fingerprint
from resources import ProjectResource
from sensors.automation import landing_files_sensor
from tests.conftest import run_cli

ROWS = '{"instruction": "Name a colour.", "output": "Blue."}\n{"instruction": "Add 2 and 3.", "output": "5"}\n'
PROJECT = "sources:\n  - {name: mine, path: 'x.jsonl', mapping: alpaca, license: MIT}\nformat: {tokenizer: t}\n"


def _project(folder: Path) -> Path:
    """A one-source project; only ``raw`` and ``deduped`` are run (``format.tokenizer`` names no tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "x.jsonl").write_text(ROWS)
    config = folder / "distillery.yaml"
    config.write_text(PROJECT)
    return config


def _staleness(home: Path) -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """``{asset: (status, [(asset of a root cause, reason)])}`` of source_files, raw and deduped, as the UI has them."""
    from definitions import defs

    graph = defs.resolve_asset_graph()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        resolver = CachingStaleStatusResolver(instance, graph, LoadingContextForTest(instance))
        return {
            name: (
                resolver.get_status(dg.AssetKey(name)).value,
                [(c.asset_key.to_user_string(), c.reason) for c in resolver.get_stale_root_causes(dg.AssetKey(name))],
            )
            for name in ("source_files", "raw", "deduped")
        }


def _observed_version(home: Path) -> str | None:
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        records = instance.fetch_observations(SOURCE_FILES, limit=1).records
        return records[0].asset_observation.tags.get("dagster/data_version") if records else None


def _observe(home: Path, config: Path) -> None:
    """What the UI's "Observe sources" launches: the observation of source_files, run in this process."""
    definitions = dg.Definitions(assets=[source_files], resources={"project": ProjectResource(config_path=str(config))})
    job = definitions.resolve_implicit_global_asset_job_def()
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        assert job.execute_in_process(instance=instance, asset_selection=[SOURCE_FILES]).success


FRESH = ("FRESH", [])


@pytest.mark.slow
def test_a_changed_source_is_unsynced_in_the_ui_until_materialized(tmp_path: Path) -> None:
    home, config = tmp_path / "home", _project(tmp_path / "project")

    def run(select: str) -> None:
        done = run_cli("run", "--config", str(config), "--select", select, home=home)
        assert done.returncode == 0, done.stderr[-3000:]

    run("raw,deduped")
    # raw records the sources it read, observed or not: right after a run nothing is Unsynced. (Dagster alone
    # records the previous observation as raw's input, here none, and the next observation made raw Unsynced.)
    assert _observed_version(home) == source_fingerprint(load_project(config))
    assert _staleness(home) == {"source_files": FRESH, "raw": FRESH, "deduped": FRESH}
    _observe(home, config)  # the same files: still nothing to do
    assert _staleness(home) == {"source_files": FRESH, "raw": FRESH, "deduped": FRESH}

    with (config.parent / "x.jsonl").open("a") as handle:
        handle.write('{"instruction": "New?", "output": "Yes."}\n')
    _observe(home, config)
    assert _observed_version(home) == source_fingerprint(load_project(config))
    assert _staleness(home) == {
        "source_files": FRESH,
        "raw": ("STALE", [("source_files", "has a new data version")]),
        "deduped": FRESH,  # Dagster's staleness moves one materialization at a time: raw has not changed yet
    }

    run("raw")
    assert _staleness(home) == {
        "source_files": FRESH,
        "raw": FRESH,
        "deduped": ("STALE", [("raw", "has a new data version")]),
    }
    run("deduped")
    assert _staleness(home) == {"source_files": FRESH, "raw": FRESH, "deduped": FRESH}

    # A setting that shapes the rows is part of the sources' version too, with no file changed.
    config.write_text(PROJECT.replace("license: MIT", "license: Apache-2.0"))
    _observe(home, config)
    assert _staleness(home)["raw"] == ("STALE", [("source_files", "has a new data version")])


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> tuple[dg.SensorResult, str | None]:
    """One sensor tick as the daemon runs it, its observations recorded as the daemon records them."""
    data = landing_files_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
    for event in data.asset_events:
        instance.report_runless_asset_event(event)
    return data, data.cursor


def test_the_landing_sensor_observes_source_files_when_files_or_settings_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _project(tmp_path / "project")
    monkeypatch.setenv("DISTILLERY_CONFIG", str(config))
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    fingerprints: list[str] = []

    def counted(project):
        fingerprints.append(value := source_fingerprint(project))
        return value

    monkeypatch.setattr("sensors.automation.source_fingerprint", counted)

    def versions(data: dg.SensorResult) -> list[str]:
        assert all(e.asset_key == SOURCE_FILES for e in data.asset_events)
        return [e.tags["dagster/data_version"] for e in data.asset_events]

    with dg.instance_for_test() as instance:
        first, cursor = _tick(instance, None)
        assert len(first.run_requests) == 1 and versions(first) == [source_fingerprint(load_project(config))]
        assert WATCH_KEY in first.asset_events[0].metadata

        # Nothing changed: no observation, and no file read for a fingerprint.
        fingerprints.clear()
        same, cursor = _tick(instance, cursor)
        assert same.run_requests == [] and same.skip_message and versions(same) == [] and fingerprints == []

        # A source setting changed, no file did: no run is started by the sensor, but source_files has a new version.
        config.write_text(PROJECT.replace("license: MIT", "license: CC-BY-4.0"))
        settings, cursor = _tick(instance, cursor)
        assert settings.run_requests == [] and versions(settings) == [source_fingerprint(load_project(config))]
        assert versions(settings) != versions(first)

        # A file changed: a run, and the observation of its new version.
        (config.parent / "x.jsonl").write_text(ROWS + '{"instruction": "New?", "output": "Yes."}\n')
        changed, cursor = _tick(instance, cursor)
        assert len(changed.run_requests) == 1
        assert versions(changed) == [source_fingerprint(load_project(config))] != versions(settings)
        assert json.loads(cursor or "{}"), "the cursor still holds the file states"

        # Observed elsewhere (a run of raw records no watch key): the next tick observes once more, same version.
        instance.report_runless_asset_event(
            dg.AssetObservation(SOURCE_FILES, tags={"dagster/data_version": versions(changed)[0]})
        )
        again, cursor = _tick(instance, cursor)
        assert versions(again) == versions(changed)
        assert _tick(instance, cursor)[0].asset_events == []


def test_source_files_is_observed_never_run_by_the_distill_job_or_a_selection() -> None:
    """`distillery run` and its `--select` subsets materialize the datasets only: source_files is no step of the
    `distill` job (it has nothing to materialize) and no part of the CLI's up-to-date graph; the UI's buttons run
    their jobs in one process, as `distill` does."""
    from definitions import ASSETS, defs
    from distillery_cli import _asset_graph, _parse_select

    graph = _asset_graph(ASSETS)
    assert "source_files" not in graph and graph["raw"] == []
    assert {key.to_user_string() for key in _parse_select("+deduped", set(graph)).resolve(ASSETS)} == {"raw", "deduped"}
    job = defs.resolve_job_def("distill")
    assert SOURCE_FILES not in job.asset_layer.executable_asset_keys
    assert defs.resolve_asset_graph().get(dg.AssetKey("raw")).parent_keys == {SOURCE_FILES}
    assert defs.resolve_implicit_global_asset_job_def().executor_def is dg.in_process_executor
