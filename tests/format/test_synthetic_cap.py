"""The synthetic cap holds where training reads it (issue 12, deliverable 5).

The mix meets ``mix.synthetic_cap`` over ``synthetic_mixed``; formatting then removes rows. The situation
reported: 36 human and 35 model-made rows (49.3%, under a 50% cap), two human rows too long for
``max_tokens`` — without rebalancing the train split came out 35 of 69 model-made, 50.7%, every check green.
Formatting now leaves out model-made train rows past the cap in SQL, each recorded in ``format_rejections``
(stage ``synthetic_cap``), and the blocking check ``formatted:synthetic_share_within_cap`` fails any table
over it."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl
from curation.dedup.clusters import CLUSTERS_DDL
from tests.conftest import REPO

HUMAN, MODEL_MADE, TOO_LONG = 36, 35, 2
CAP = 0.5


def _row(row_id: str, origin: str, question: str, answer: str) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        source="qa" if origin == "human" else "synth",
        license="MIT",
        origin=origin,
        generator=None if origin == "human" else "procedural",
        source_uri=f"data/qa.jsonl#{row_id}",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    )


def _rows() -> list[dict]:
    human = [_row(f"h{i:02d}", "human", f"What is {i} times three?", f"It is {3 * i}.") for i in range(HUMAN)]
    for row in human[:TOO_LONG]:  # over max_tokens: the length policy drops them
        row["messages"][1]["content"] = " ".join(["and so on"] * 60)
    model = [_row(f"m{i:02d}", "augmented", f"Waht is {i} plus seven?", f"It is {i + 7}.") for i in range(MODEL_MADE)]
    return human + model


def _write_warehouse(path: Path) -> None:
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"CREATE TABLE synthetic_mixed ({canonical_ddl()})")
        connection.register("incoming", rows_to_table(_rows()))
        connection.execute("INSERT INTO synthetic_mixed SELECT * FROM incoming")
        connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
        connection.execute(f"CREATE TABLE dedup_clusters ({CLUSTERS_DDL})")


def _write_project(folder: Path, *extra: str, eval_fraction: float = 0.0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "name: cap-test",
        "sources:",
        "  - {name: qa, path: data/qa.jsonl, mapping: alpaca, license: MIT}",
        f"mix: {{synthetic_cap: {CAP}}}",
        "format:",
        f"  tokenizer: {REPO / 'demo' / 'tokenizer'}",
        "  max_tokens: 64",
        f"  eval_fraction: {eval_fraction}",
        *extra,
    ]
    (folder / "distillery.yaml").write_text("\n".join(lines) + "\n")
    return folder / "distillery.yaml"


def _format(folder: Path, *extra: str, eval_fraction: float = 0.0, fresh: bool = True):
    from curation.core.config import load_project
    from curation.core.warehouse import Warehouse
    from curation.format.render import load_format_tokenizer
    from curation.format.stage import format_rows

    if fresh:
        folder.mkdir(parents=True, exist_ok=True)
        _write_warehouse(folder / "warehouse.duckdb")
    config = load_project(_write_project(folder / "project", *extra, eval_fraction=eval_fraction))
    with Warehouse(folder / "warehouse.duckdb").write("formatted") as staged:
        return format_rows(staged, config, load_format_tokenizer(config))


def _train_share(connection: duckdb.DuckDBPyConnection) -> tuple[int, int]:
    return connection.execute(
        "SELECT count(*) FILTER (origin <> 'human'), count(*) FROM formatted WHERE split = 'train'"
    ).fetchone()


@pytest.fixture(scope="module")
def formatted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("cap")
    return folder, _format(folder)


def test_length_drops_that_would_break_the_cap_leave_out_model_made_rows(formatted) -> None:
    folder, result = formatted
    with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as db:
        model_made, rows = _train_share(db)
        # Without rebalancing: 35 of 69 (50.7%). Budget with 34 human rows under 50%: 34 model-made rows.
        assert (model_made, rows) == (34, 68) and model_made / rows <= CAP
        rejected = db.execute(
            "SELECT r.stage, r.reason, r.detail, m.origin FROM format_rejections r "
            "JOIN synthetic_mixed m USING (row_id) ORDER BY r.stage, r.row_id"
        ).fetchall()
        assert [(stage, origin) for stage, _, _, origin in rejected] == [("length", "human")] * TOO_LONG + [
            ("synthetic_cap", "augmented")
        ]
        _, reason, detail, _ = rejected[-1]
        assert "over the synthetic cap of 50% (mix.synthetic_cap) in the train split" in reason
        assert detail == "34 of 35 model-made rows kept beside 34 human rows"
        # Conservation: every input row is formatted or rejected with a reason, once.
        (unaccounted,) = db.execute(
            "SELECT count(*) FROM synthetic_mixed m WHERE (SELECT count(*) FROM formatted f WHERE f.parent_id = "
            "m.row_id) + (SELECT count(*) FROM format_rejections r WHERE r.row_id = m.row_id) <> 1"
        ).fetchone()
        assert unaccounted == 0
        # The left-out row has no lineage edge, and no memo entry: whether it fits depends on the other rows.
        (dropped,) = db.execute("SELECT row_id FROM format_rejections WHERE stage = 'synthetic_cap'").fetchone()
        assert db.execute("SELECT count(*) FROM lineage WHERE parent_id = ?", [dropped]).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM format_memo WHERE row_id = ?", [dropped]).fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM lineage").fetchone()[0] == rows
    assert result.rejected_by_stage == {"length": TOO_LONG, "synthetic_cap": 1}


@pytest.mark.slow
@pytest.mark.parametrize("patched", [False, True], ids=["copied", "patched"])
def test_the_rebalanced_tables_are_the_same_for_any_worker_count_and_on_a_rerun(
    formatted, tmp_path, monkeypatch, patched
):
    import curation.core.parallel
    from curation.core import memo
    from curation.core.warehouse import content_hash

    tables = ("formatted", "format_rejections", "contamination", "lineage")

    def versions(path: Path) -> dict[str, object]:
        with duckdb.connect(str(path), read_only=True) as db:
            found: dict[str, object] = {table: content_hash(db, table) for table in tables}
            # The memo's fingerprint names the settings (workers, batch size): its rows and digests must agree.
            found["memo"] = db.execute("SELECT list(row_id ORDER BY row_id), sum(digest) FROM format_memo").fetchone()
            return found

    expected = versions(formatted[0] / "warehouse.duckdb")
    monkeypatch.setattr(curation.core.parallel, "MIN_ROWS_PER_WORKER", 1)  # two workers even for a few rows
    _format(tmp_path / "two", "compute: {workers: 2}", "ingest: {batch_rows: 7}")
    assert versions(tmp_path / "two" / "warehouse.duckdb") == expected
    # A re-run copies every row it kept or rejected for its own sake and renders the capped row again, whether
    # it writes a new table or changes the current one in place.
    monkeypatch.setattr(memo, "PATCH_MAX_CHANGE", 1.0 if patched else 0.0)
    again = _format(formatted[0], fresh=False)
    assert again.rows_reused == HUMAN + MODEL_MADE - 1
    assert versions(formatted[0] / "warehouse.duckdb") == expected


def test_the_eval_split_is_not_capped(tmp_path) -> None:
    """Only what training reads is held to the cap: eval rows are never trained on, and capping a small eval
    split would only shrink it by the luck of the split draw."""
    result = _format(tmp_path, eval_fraction=0.5)
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
        model_made, rows = _train_share(db)
        assert model_made / rows <= CAP
        (eval_dropped,) = db.execute(
            "SELECT count(*) FROM format_rejections r JOIN (SELECT parent_id FROM formatted WHERE split = 'eval') f "
            "ON f.parent_id = r.row_id"
        ).fetchone()
    assert eval_dropped == 0 and result.rejected_by_stage.get("length") == TOO_LONG


def test_the_blocking_check_reads_the_train_split_and_fails_over_the_cap(formatted, tmp_path) -> None:
    import shutil

    from checks.compliance import formatted_synthetic_share_within_cap
    from resources import ProjectResource, WarehouseResource

    folder, _ = formatted
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(folder / "warehouse.duckdb", copy)
    project = ProjectResource(config_path=str(folder / "project" / "distillery.yaml"))
    warehouse = WarehouseResource(path=str(copy))
    context = dg.build_asset_check_context()
    result = formatted_synthetic_share_within_cap(context, project=project, warehouse=warehouse)
    assert result.passed
    assert result.metadata["synthetic_share"].value == 0.5 and result.metadata["left_out_for_the_cap"].value == 1
    # What the stage did before: the length drops alone, 35 model-made of 69 train rows.
    with duckdb.connect(str(copy)) as db:
        db.execute(
            "INSERT INTO formatted SELECT * REPLACE (row_id || 'x' AS row_id) FROM formatted "
            "WHERE origin <> 'human' LIMIT 1"
        )
    result = formatted_synthetic_share_within_cap(context, project=project, warehouse=warehouse)
    assert not result.passed
    assert result.metadata["synthetic_share"].value == round(35 / 69, 4)
    assert result.metadata["by_split"].value == {"train": {"model_made": 35, "rows": 69, "share": 0.5072}}


@pytest.mark.slow
def test_the_exports_check_reads_the_train_files_a_trainer_reads(formatted, tmp_path, monkeypatch) -> None:
    """``exports:synthetic_share_within_cap`` counts the rows of the export folder itself (each row once, by
    id, across the layouts it is written in, and across a split's shards), so an export of a table over the
    cap fails it."""
    import shutil

    import curation.format.export
    from assets.compliance import compliance_report
    from assets.exports import exports
    from checks.compliance import exports_synthetic_share_within_cap
    from resources import ProjectResource, WarehouseResource

    folder, _ = formatted
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(folder / "warehouse.duckdb", copy)
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    resources = {
        "project": ProjectResource(config_path=str(folder / "project" / "distillery.yaml")),
        "warehouse": WarehouseResource(path=str(copy)),
    }
    monkeypatch.setattr(curation.format.export, "_SHARD_ROWS", 8)  # the train split in several shards
    with dg.instance_for_test() as instance:
        gated = [compliance_report, exports, exports_synthetic_share_within_cap]  # exports need the version's report
        within = dg.materialize(gated, instance=instance, resources=resources)
        [evaluation] = within.get_asset_check_evaluations()
        assert evaluation.passed and evaluation.metadata["by_split"].value == {
            "train": {"model_made": 34, "rows": 68, "share": 0.5}
        }
        exported = Path(within.asset_materializations_for_node("exports")[0].metadata["dagster/uri"].value)
        assert len(list((exported / "sft_tokenized").glob("train-*-of-*.parquet"))) > 2
        with duckdb.connect(str(copy)) as db:  # a formatted table the cap was never applied to
            db.execute(
                "INSERT INTO formatted SELECT * REPLACE (row_id || 'x' AS row_id, parent_id || 'x' AS parent_id) "
                "FROM formatted WHERE origin <> 'human' LIMIT 1"
            )
        over = dg.materialize(gated, instance=instance, resources=resources, raise_on_error=False)
        [evaluation] = over.get_asset_check_evaluations()
    assert not over.success and not evaluation.passed
    assert evaluation.metadata["synthetic_share"].value == round(35 / 69, 4)
