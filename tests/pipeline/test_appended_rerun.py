"""The daily case: records appended to a source, then a re-run. The re-run reads only what was appended, patches
the tables it changes little and updates their data versions from the rows it changed; every dataset must
come out as a fresh run on the grown sources makes it, and report the content hash of its table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.core.warehouse import content_hash
from tests.conftest import DEMO_CONFIG

pytestmark = pytest.mark.slow

DATASETS = ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted")


def _materialize(project: Path, home: Path) -> dict[str, str]:
    """The datasets materialized in a real Dagster run; the data version each reported."""
    from definitions import ASSETS
    from resources import ProjectResource, WarehouseResource
    from resources.teachers import TeacherResource
    from resources.tokenizer import TokenizerResource

    resources = {
        "project": ProjectResource(config_path=str(project)),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "teacher": TeacherResource(),
        "tokenizer": TokenizerResource(),
    }
    selected = [asset for asset in ASSETS if asset.key.to_user_string() in DATASETS]
    with pytest.MonkeyPatch.context() as env, dg.instance_for_test() as instance:
        env.setenv("DISTILLERY_HOME", str(home))
        result = dg.materialize(selected, instance=instance, resources=resources)
    return {
        event.asset_key.to_user_string(): str(event.materialization.metadata["data_version"].value)
        for event in result.get_asset_materialization_events()
    }


def test_a_rerun_after_appending_records_reports_what_a_fresh_run_does(
    tmp_path: Path, patched_tables: list[str]
) -> None:
    project = tmp_path / "project"
    shutil.copytree(DEMO_CONFIG.parent, project, ignore=shutil.ignore_patterns("__pycache__", "*.py"))
    config = project / DEMO_CONFIG.name
    first = _materialize(config, tmp_path / "home")
    patched_tables.clear()

    sft = project / "data" / "alpaca_sft.jsonl"
    earlier = sft.read_bytes().splitlines()[3]  # a second copy of a record: numbered on
    assert json.loads(earlier)["output"]
    new = {"instruction": "Name the largest planet.", "input": "", "output": "Jupiter is the largest planet."}
    with sft.open("ab") as handle:
        handle.write(json.dumps(new).encode() + b"\n" + earlier + b"\n")
    rerun = _materialize(config, tmp_path / "home")
    assert {"raw", "filtered"} <= set(patched_tables)
    fresh = _materialize(config, tmp_path / "fresh")

    assert rerun == fresh and rerun["raw"] != first["raw"]
    with duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True) as connection:
        assert rerun == {name: content_hash(connection, name) for name in DATASETS}
