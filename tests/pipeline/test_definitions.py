"""The code location loads as the UI and daemon load it."""

from __future__ import annotations

import dagster as dg

from definitions import defs


def test_definitions_validate() -> None:
    dg.Definitions.validate_loadable(defs)


def test_five_dataset_versions_in_order_with_checks() -> None:
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {"raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted"} <= keys
    upstream = {
        k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()
    }
    assert upstream["deduped"] == {"raw"} and upstream["filtered"] == {"deduped"}
    assert upstream["synthetic_mixed"] == {"filtered", "synthetic"} and upstream["formatted"] == {"synthetic_mixed"}
    checked = {key.asset_key.to_user_string() for key in graph.asset_check_keys}
    assert checked >= {"raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted"}


def test_every_asset_writes_through_the_single_writer_pool() -> None:
    """Every asset a run materializes; the observation of source_files reads files only and takes no slot."""
    from definitions import ASSETS, SOURCES

    for asset in ASSETS:
        assert asset.op.pool == "duckdb_writer", asset.key
    assert [source.op.pool for source in SOURCES] == [None]


def test_the_distill_job_runs_its_steps_in_one_process() -> None:
    """A UI launch of `distill` costs what a CLI run costs: no process (and import) per step."""
    import dagster as dg

    from definitions import defs

    job = defs.resolve_job_def("distill")
    assert job.executor_def is dg.in_process_executor
