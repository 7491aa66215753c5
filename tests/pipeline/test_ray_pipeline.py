"""The whole demo graph with ``compute.engine: ray`` (a Ray of 2 CPUs started by the run): every dataset
table has the data version of the local engine's run, and the row-wise work really ran as Ray tasks."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.core.ray_engine import RayEngine
from curation.core.warehouse import content_hash
from tests.conftest import DEMO_CONFIG
from tests.pipeline.test_kill_recovery import REFERENCE

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]


def _ray_demo(tmp_path: Path, intermediates: str | None) -> Path:
    """The demo project (same files, same relative paths, so the same row ids) on the ray engine."""
    project = tmp_path / "demo"
    shutil.copytree(DEMO_CONFIG.parent, project, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    config = project / "distillery.yaml"
    compute = "\ncompute:\n  engine: ray\n  workers: 2\n"
    if intermediates:
        compute += f"  intermediates: {intermediates}\n"
    config.write_text(config.read_text() + compute)
    return config


@pytest.mark.parametrize("intermediates", [None, "parts"], ids=["object-store", "parquet-intermediates"])
def test_the_demo_on_ray_has_the_local_data_versions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, intermediates: str | None
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    maps: Counter[str] = Counter()
    original = RayEngine.map_ordered

    def counted(self: RayEngine, function, *args, **kwargs):  # type: ignore[no-untyped-def]
        maps[function.__module__] += 1
        return original(self, function, *args, **kwargs)

    monkeypatch.setattr(RayEngine, "map_ordered", counted)
    from definitions import ASSETS, CHECKS
    from resources import ProjectResource, WarehouseResource
    from resources.teachers import TeacherResource
    from resources.tokenizer import TokenizerResource

    resources = {
        "project": ProjectResource(config_path=str(_ray_demo(tmp_path, intermediates))),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "teacher": TeacherResource(),
        "tokenizer": TokenizerResource(),
    }
    import ray

    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize([*ASSETS, *CHECKS], instance=instance, resources=resources, raise_on_error=False)
    finally:
        ray.shutdown()  # the run started a Ray in this test worker's process
    assert result.success
    failed = [e.asset_check_key for e in result.get_asset_check_evaluations() if not e.passed]
    assert not failed
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        versions = {table: content_hash(connection, table) for table in REFERENCE}
    assert versions == REFERENCE
    # Ingestion, dedup, the filter chain, rendering and the exports' encoding each ran on Ray.
    assert {"curation.ingest.sources", "curation.filter.runner", "curation.format.stage"} <= set(maps)
    assert any(module.startswith("curation.dedup") for module in maps)
    assert "curation.format.export" in maps
    if intermediates:  # relative: inside the home; every map's folder removed when the map ended
        assert (home / intermediates).is_dir() and list((home / intermediates).iterdir()) == []


def test_a_dagster_ray_resource_provides_the_cluster_the_stages_run_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ProjectResource(ray_cluster=...)`: dagster-ray's resource connects the run to its Ray before the
    steps (here `LocalRay`; `KubeRayCluster` in a deployment), and the stages run on that connection — not
    on a Ray of their own — with the local engine's data versions."""
    from dagster_ray import LocalRay

    home = tmp_path / "home"
    monkeypatch.setenv("DISTILLERY_HOME", str(home))
    monkeypatch.delenv("DISTILLERY_CONFIG", raising=False)
    from definitions import ASSETS
    from resources import ProjectResource, WarehouseResource

    # One CPU: the project file's `workers: 2` would start a Ray of two, so the count says whose Ray it is.
    cluster = LocalRay(ray_init_options={"num_cpus": 1, "include_dashboard": False})
    resources = {
        "project": ProjectResource(config_path=str(_ray_demo(tmp_path, None)), ray_cluster=cluster),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
    }
    import ray

    selected = [a for a in ASSETS if a.key.to_user_string() in ("raw", "deduped")]
    try:
        with dg.instance_for_test() as instance:
            result = dg.materialize(selected, instance=instance, resources=resources)
    finally:
        ray.shutdown()
    assert result.success
    materialized = {
        event.asset_key.to_user_string(): event.step_materialization_data.materialization.metadata
        for event in result.get_asset_materialization_events()
    }
    for asset in ("raw", "deduped"):
        compute = materialized[asset]["compute"].value
        # The resource's Ray (1 CPU, named by its address), not one the engine started (2 CPUs, "started here").
        assert compute.startswith("ray (") and compute.endswith(", 1 CPUs)") and "started here" not in compute
    with duckdb.connect(str(home / "warehouse.duckdb"), read_only=True) as connection:
        assert {t: content_hash(connection, t) for t in ("raw", "deduped")} == {
            t: REFERENCE[t] for t in ("raw", "deduped")
        }


def test_a_ray_cluster_resource_with_a_local_project_is_one_clear_error(tmp_path: Path) -> None:
    from dagster_ray import LocalRay

    from resources import ProjectResource

    project = ProjectResource(config_path=str(DEMO_CONFIG), ray_cluster=LocalRay())
    with pytest.raises(ValueError, match=r"has no compute.engine: ray.*remove ray_cluster"):
        project.load()
