"""The formatted asset, its blocking checks and the exports asset, run through Dagster on a small warehouse
(the Dagster run takes ~10 s: those tests are marked slow)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl
from curation.format.split import split_groups, split_leaks
from tests.conftest import REPO

BENCHMARK_QUESTION = "Which planet in our solar system has the largest number of confirmed moons today?"


def test_split_groups_join_every_parent_and_near_duplicate_cluster() -> None:
    edges = [("p1", "a1"), ("p2", "a1"), ("s", "x"), ("s", "y")]  # s was made from both x and y
    row_ids = ["a1", "p1", "p2", "x", "y", "s", "c1", "c2", "lone"]
    groups = split_groups(row_ids, edges, {"c1": "k", "c2": "k"})
    assert groups["a1"] == groups["p1"] == groups["p2"]
    assert groups["x"] == groups["y"] == groups["s"]
    assert groups["c1"] == groups["c2"]
    assert len({groups[r] for r in ("a1", "x", "c1", "lone")}) == 4
    # The split hashes the group id, so it must be the smallest member key whatever the edge order:
    # otherwise re-running on the same rows could move a group to the other split.
    assert (groups["a1"], groups["s"], groups["c1"], groups["lone"]) == ("r:a1", "r:s", "c:k", "r:lone")
    assert split_groups(row_ids, edges[::-1], {"c2": "k", "c1": "k"}) == groups


def test_split_leaks_name_the_shared_ancestor_or_cluster() -> None:
    edges = [("p1", "a1"), ("p2", "a1")]
    rows = {"f1": ("p1", "train"), "f2": ("p2", "train"), "f3": ("c1", "train"), "f4": ("c2", "train")}
    assert split_leaks(rows, edges, {"c1": "k", "c2": "k"}) == []
    leaks = split_leaks({**rows, "f2": ("p2", "eval"), "f4": ("c2", "eval")}, edges, {"c1": "k", "c2": "k"})
    assert leaks == [
        {"shared": "cluster k", "eval": ["f4"], "train": ["f3"]},
        {"shared": "row a1", "eval": ["f2"], "train": ["f1"]},
    ]


def _sft(row_id: str, question: str, answer: str, **fields) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        source=fields.pop("source", "qa"),
        license="MIT",
        origin="human",
        source_uri=f"data/qa.jsonl#{row_id}",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
        **fields,
    )


ROWS = [
    _sft("a1", "What is the boiling point of water at sea level?", "100 degrees Celsius."),
    new_row(
        row_id="p1",
        kind="sft",
        source="qa",
        license="MIT",
        origin="augmented",
        generator="procedural",
        source_uri="data/qa.jsonl#a1",
        messages=[
            {"role": "user", "content": "Waht is the boiling point?"},
            {"role": "assistant", "content": "100 degrees Celsius."},
        ],
    ),
    new_row(
        row_id="p2",
        kind="sft",
        source="qa",
        license="MIT",
        origin="augmented",
        generator="procedural",
        source_uri="data/qa.jsonl#a1",
        messages=[
            {"role": "user", "content": "What is teh boiling point?"},
            {"role": "assistant", "content": "100 degrees Celsius."},
        ],
    ),
    _sft("c1", "Name a primary colour.", "Red is a primary colour."),
    _sft("c2", "Name one primary colour.", "Blue is a primary colour."),
    *[_sft(f"b{i}", f"What is {i} plus {i}?", f"{i} plus {i} is {2 * i}.") for i in range(8)],
    _sft("leak1", "Finish this: <|im_end|><|im_start|>system", "I cannot."),
    _sft("bench1", BENCHMARK_QUESTION, "Saturn, at last count."),
    _sft("long1", "Tell me a long story.", " ".join(["once upon a time"] * 60)),
]


def _write_warehouse(path: Path) -> None:
    connection = duckdb.connect(str(path))
    connection.execute(f"CREATE TABLE synthetic_mixed ({canonical_ddl()})")
    connection.register("incoming", rows_to_table(ROWS))
    connection.execute("INSERT INTO synthetic_mixed SELECT * FROM incoming")
    connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
    connection.execute(
        "INSERT INTO lineage VALUES ('p1', 'a1', 'synthetic', 'perturb', NULL), "
        "('p2', 'a1', 'synthetic', 'perturb', NULL)"
    )
    connection.execute(
        "CREATE TABLE dedup_clusters (cluster_id VARCHAR, row_id VARCHAR, kept_row_id VARCHAR, "
        "method VARCHAR, jaccard DOUBLE, reason VARCHAR)"
    )
    connection.execute(
        "INSERT INTO dedup_clusters VALUES ('k', 'c1', 'c1', 'near', 0.8, ''), ('k', 'c2', 'c2', 'near', 0.8, '')"
    )
    connection.close()


def _write_project(folder: Path, template: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bench.jsonl").write_text(json.dumps({"question_id": 7, "turns": [BENCHMARK_QUESTION]}) + "\n")
    lines = [
        "name: formatted-test",
        "sources:",
        "  - {name: qa, path: data/qa.jsonl, mapping: alpaca, license: MIT}",
        "format:",
        f"  tokenizer: {REPO / 'demo' / 'tokenizer'}",
        "  max_tokens: 64",
        "  eval_fraction: 0.4",
        "  benchmarks:",
        "    - {name: bench, path: bench.jsonl, text_fields: [turns], id_field: question_id}",
    ]
    if template:
        lines.insert(6, f"  chat_template: {template}")
    (folder / "distillery.yaml").write_text("\n".join(lines) + "\n")
    return folder / "distillery.yaml"


def _resources(config: Path, warehouse: Path) -> dict:
    from resources import ProjectResource, WarehouseResource
    from resources.tokenizer import TokenizerResource

    return {
        "project": ProjectResource(config_path=str(config)),
        "warehouse": WarehouseResource(path=str(warehouse)),
        "tokenizer": TokenizerResource(),
    }


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("formatted")
    _write_warehouse(base / "warehouse.duckdb")
    config = _write_project(base / "project")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_HOME", str(base))
        from assets.exports import exports
        from assets.formatted import formatted
        from checks.formatted import FORMATTED_CHECKS

        resources = _resources(config, base / "warehouse.duckdb")
        with dg.instance_for_test() as instance:
            first = dg.materialize(
                [formatted, exports, *FORMATTED_CHECKS], instance=instance, resources=resources, raise_on_error=False
            )
            again = dg.materialize([exports], instance=instance, resources=resources, raise_on_error=False)
            yield first, again, base, config


@pytest.fixture
def db(run):
    connection = duckdb.connect(str(run[2] / "warehouse.duckdb"), read_only=True)
    yield connection
    connection.close()


@pytest.mark.slow
def test_formatted_and_exports_materialize_and_every_check_passes(run) -> None:
    first, again, _, _ = run
    assert first.success and again.success
    assert {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()} == {"formatted", "exports"}
    evaluations = {e.check_name: e for e in first.get_asset_check_evaluations()}
    assert set(evaluations) == {
        "every_row_within_token_budget",
        "no_contamination_left",
        "splits_disjoint_by_cluster",
        "round_trip_ok",
        "published_versions_unchanged",
    }
    assert [name for name, e in evaluations.items() if not e.passed] == []
    assert evaluations["no_contamination_left"].metadata["rows_scanned"].value == len(ROWS) - 3


@pytest.mark.slow
def test_rejected_rows_are_recorded_with_their_reason(db) -> None:
    rejected = {
        r: (stage, reason)
        for r, stage, reason in db.execute("SELECT row_id, stage, reason FROM format_rejections").fetchall()
    }
    assert set(rejected) == {"leak1", "bench1", "long1"}
    assert rejected["leak1"][0] == "special_tokens" and "<|im_end|>" in rejected["leak1"][1]
    assert rejected["bench1"][0] == "decontamination"
    assert rejected["long1"][0] == "length" and rejected["long1"][1].startswith("dropped_too_long")
    assert db.execute("SELECT count(*) FROM formatted").fetchone()[0] == len(ROWS) - 3


@pytest.mark.slow
def test_derived_rows_and_near_duplicates_share_a_split(db) -> None:
    split = dict(db.execute("SELECT parent_id, split FROM formatted").fetchall())
    assert split["a1"] == split["p1"] == split["p2"]
    assert split["c1"] == split["c2"]
    assert set(split.values()) == {"train", "eval"}


@pytest.mark.slow
def test_formatted_rows_carry_tokens_masks_and_verification(db) -> None:
    rows = db.execute(
        "SELECT n_tokens, json_array_length(input_ids), json_array_length(assistant_mask), "
        "round_trip, generation_prompt_ok, mask_source FROM formatted"
    ).fetchall()
    assert all(n == ids == mask and n <= 64 for n, ids, mask, *_ in rows)
    assert {(rt, gp, ms) for *_, rt, gp, ms in rows} == {("ok", True, "generation")}


@pytest.mark.slow
def test_exports_are_written_once_and_reused(run) -> None:
    first, again, base, _ = run
    [event] = [e for e in first.get_asset_materialization_events() if e.asset_key.to_user_string() == "exports"]
    metadata = event.materialization.metadata
    version = metadata["data_version"].value
    folder = base / "exports" / version
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"]["sft"]["train"] + manifest["rows"]["sft"].get("eval", 0) == len(ROWS) - 3
    assert manifest["rows_removed_at_formatting"] == {"decontamination": 1, "length": 1, "special_tokens": 1}
    assert metadata["reused_existing_version"].value is False
    assert f"| sft | train | {manifest['rows']['sft']['train']} |" in metadata["rows"].value
    assert "| sft/train.jsonl |" in metadata["files"].value
    [second] = again.get_asset_materialization_events()
    assert second.materialization.metadata["data_version"].value == version
    assert second.materialization.metadata["reused_existing_version"].value is True
    assert [p.name for p in (base / "exports").iterdir() if not p.name.startswith("LATEST")] == [version]


@pytest.fixture
def tampered(run, tmp_path):
    """A copy of the good warehouse to break, and a function running one check on it."""
    _, _, base, config = run
    path = tmp_path / "warehouse.duckdb"
    shutil.copy(base / "warehouse.duckdb", path)

    def check(check_def, config_path: Path = config):
        resources = _resources(config_path, path)
        return check_def(
            dg.build_asset_check_context(),
            **{k: v for k, v in resources.items() if k in check_def.required_resource_keys},
        )

    return duckdb.connect(str(path)), check


@pytest.mark.slow
def test_budget_check_fails_on_an_over_long_or_miscounted_row(tampered) -> None:
    from checks.formatted import formatted_within_token_budget

    connection, check = tampered
    connection.execute("UPDATE formatted SET n_tokens = 65 WHERE parent_id = 'b1'")
    connection.close()
    result = check(formatted_within_token_budget)
    assert not result.passed
    assert result.metadata["over_budget"].value == 1
    assert result.metadata["count_differs_from_ids_or_mask"].value == 1  # 65 is not the number of ids either


@pytest.mark.slow
def test_contamination_check_rescans_the_rows(tampered) -> None:
    from checks.formatted import formatted_no_contamination_left

    connection, check = tampered
    messages = json.dumps([{"role": "user", "content": BENCHMARK_QUESTION}, {"role": "assistant", "content": "?"}])
    connection.execute("UPDATE formatted SET messages = ? WHERE parent_id = 'b2'", [messages])
    connection.close()
    result = check(formatted_no_contamination_left)
    assert not result.passed and result.metadata["matches_left"].value == 1
    assert result.metadata["flagged_rows_left"].value == 0  # not flagged by the asset: only the rescan finds it


@pytest.mark.slow
def test_split_check_fails_when_a_derived_row_crosses_the_split(tampered) -> None:
    from checks.formatted import formatted_splits_disjoint

    connection, check = tampered
    connection.execute(
        "UPDATE formatted SET split = CASE split WHEN 'train' THEN 'eval' ELSE 'train' END WHERE parent_id = 'p2'"
    )
    connection.close()
    result = check(formatted_splits_disjoint)
    assert not result.passed and result.metadata["shared_across_splits"].value == 1
    assert "row a1" in result.metadata["leaks_sample"].value


@pytest.mark.slow
def test_round_trip_check_finds_control_tokens_and_broken_stored_tokens(tampered) -> None:
    from checks.formatted import formatted_round_trip_ok

    connection, check = tampered
    messages = json.dumps([{"role": "user", "content": "Hi<|im_end|>"}, {"role": "assistant", "content": "Hello"}])
    connection.execute("UPDATE formatted SET messages = ? WHERE parent_id = 'b3'", [messages])
    connection.execute(
        "UPDATE formatted SET input_ids = '[1, 2]', assistant_mask = '[0, 1]', n_tokens = 2 WHERE parent_id = 'b4'"
    )
    connection.close()
    result = check(formatted_round_trip_ok)
    assert not result.passed
    failures = result.metadata["failures"].value
    assert failures["special_tokens_in_content"] == 1 and failures["stored_tokens"] == 1


@pytest.mark.slow
def test_round_trip_check_fails_when_the_generation_prompt_differs_from_training(run, tampered, tmp_path) -> None:
    from checks.formatted import formatted_round_trip_ok
    from curation.format.tokenizers import load_template

    connection, check = tampered
    connection.close()
    # Inference would send "<|im_start|>assistant" without the newline training saw after the role.
    template = load_template("chatml").replace("{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant' }}")
    assert template != load_template("chatml")
    (tmp_path / "short_prompt.jinja").write_text(template)
    config = _write_project(tmp_path / "project", template=str(tmp_path / "short_prompt.jinja"))
    result = check(formatted_round_trip_ok, config)
    assert not result.passed
    assert result.metadata["failures"].value == {"generation_prompt": len(ROWS) - 3}


@pytest.mark.slow
def test_formatted_metadata_reports_tokens_and_rejections(run, db) -> None:
    first = run[0]
    [event] = [e for e in first.get_asset_materialization_events() if e.asset_key.to_user_string() == "formatted"]
    metadata = event.materialization.metadata
    assert metadata["rows_rejected_by_stage"].value == {"decontamination": 1, "special_tokens": 1, "length": 1}
    assert 0 < metadata["tokens_p50"].value <= metadata["tokens_max"].value <= 64
    assert metadata["tokens_total"].value == db.execute("SELECT sum(n_tokens) FROM formatted").fetchone()[0]


@pytest.mark.slow
def test_export_check_flags_a_published_version_edited_in_place(run, tmp_path, monkeypatch) -> None:
    from checks.formatted import exports_unchanged

    base = run[2]
    copy = tmp_path / "exports"
    shutil.copytree(base / "exports", copy)
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path))
    assert exports_unchanged(dg.build_asset_check_context()).passed
    [manifest] = copy.glob("*/manifest.json")
    (manifest.parent / "sft" / "train.jsonl").write_text("")
    result = exports_unchanged(dg.build_asset_check_context())
    assert not result.passed and "sft/train.jsonl: content differs" in result.metadata["problems"].value
