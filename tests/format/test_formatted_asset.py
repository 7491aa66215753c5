"""The formatted asset, its blocking checks and the exports asset, run through Dagster on a small warehouse
(the Dagster run takes ~10 s: those tests are marked slow)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow as pa
import pytest

from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import LINEAGE_DDL, canonical_ddl
from curation.dedup.clusters import CLUSTERS_DDL
from curation.format.split import assign_splits, plan_splits, split_groups, split_leaks
from tests.conftest import REPO

BENCHMARK_QUESTION = "Which planet in our solar system has the largest number of confirmed moons today?"


def _links_db(edges: list[tuple[str, str]], clusters: list[tuple[str, str]]) -> duckdb.DuckDBPyConnection:
    """An in-memory warehouse with lineage edges ``(child, parent)`` and cluster members ``(row, cluster)``."""
    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
    _insert(
        connection, "lineage (child_id, parent_id, asset, operation)", [(*e, "synthetic", "perturb") for e in edges]
    )
    connection.execute("CREATE TABLE dedup_clusters (cluster_id VARCHAR, row_id VARCHAR)")
    _insert(connection, "dedup_clusters (row_id, cluster_id)", clusters)
    return connection


def _insert(connection: duckdb.DuckDBPyConnection, target: str, rows: list[tuple]) -> None:
    """Rows of strings (or None) into ``target`` (a table with its column list), through one Arrow table."""
    columns = list(zip(*rows, strict=True)) if rows else []
    connection.register("incoming", pa.table({f"c{i}": pa.array(c, pa.string()) for i, c in enumerate(columns)}))
    connection.execute(f"INSERT INTO {target} SELECT * FROM incoming")
    connection.unregister("incoming")


def _groups(connection: duckdb.DuckDBPyConnection, row_ids: list[str]) -> dict[str, str]:
    connection.execute("CREATE OR REPLACE TABLE rows (row_id VARCHAR)")
    _insert(connection, "rows", [(r,) for r in row_ids])
    connection.execute("DROP TABLE IF EXISTS groups")
    split_groups(connection, "rows", "groups")
    return dict(connection.execute("SELECT row_id, grp FROM groups").fetchall())


def test_split_groups_join_every_parent_and_every_near_duplicate_cluster() -> None:
    edges = [("p1", "a1"), ("p2", "a1"), ("s", "x"), ("s", "y")]  # s was made from both x and y
    clusters = [("c1", "k"), ("c2", "k"), ("c2", "m"), ("c3", "m")]  # c2 is in an exact and a near cluster
    row_ids = ["a1", "p1", "p2", "x", "y", "s", "c1", "c2", "c3", "lone"]
    groups = _groups(_links_db(edges, clusters), row_ids)
    assert groups["a1"] == groups["p1"] == groups["p2"]
    assert groups["x"] == groups["y"] == groups["s"]
    assert groups["c1"] == groups["c2"] == groups["c3"]
    assert len({groups[r] for r in ("a1", "x", "c1", "lone")}) == 4
    # The split hashes the group id, so it must be the smallest member key whatever the edge order:
    # otherwise re-running on the same rows could move a group to the other split.
    assert (groups["a1"], groups["s"], groups["c1"], groups["lone"]) == ("r:a1", "r:s", "c:k", "r:lone")
    assert _groups(_links_db(edges[::-1], clusters[::-1]), row_ids[::-1]) == groups


def test_planned_splits_in_duckdb_equal_the_splits_in_memory() -> None:
    draw = random.Random(7)
    row_ids = [f"r{k:04d}" for k in range(3000)]
    edges = [(draw.choice(row_ids), draw.choice(row_ids)) for _ in range(400)]
    clusters = [(draw.choice(row_ids), f"cl{draw.randrange(150)}") for _ in range(600)]
    connection = _links_db(edges, clusters)
    groups = _groups(connection, row_ids)
    rows = [
        {"row_id": r, "kind": draw.choice(["sft", "chat", None]), "source": f"s{draw.randrange(5)}"} for r in row_ids
    ]
    connection.execute("CREATE TABLE mixed (row_id VARCHAR, kind VARCHAR, source VARCHAR)")
    _insert(connection, "mixed", [(r["row_id"], r["kind"], r["source"]) for r in rows])
    for fraction, seed in ((0.1, 0), (0.3, 5)):
        connection.execute("DROP TABLE IF EXISTS splits")
        plan_splits(connection, "mixed", "splits", fraction, seed)
        in_duckdb = dict(connection.execute("SELECT row_id, split FROM splits").fetchall())
        assert in_duckdb == assign_splits(rows, fraction, seed, group_key=groups)
        assert 0 < list(in_duckdb.values()).count("eval") < len(rows)
    assert [t for (t,) in connection.execute("SHOW TABLES").fetchall() if t.startswith("_stage_")] == []


def test_split_leaks_name_the_shared_ancestor_or_cluster() -> None:
    connection = _links_db([("p1", "a1"), ("p2", "a1")], [("c1", "k"), ("c2", "k")])
    connection.execute("CREATE TABLE formatted (row_id VARCHAR, parent_id VARCHAR, split VARCHAR)")
    connection.execute(
        "INSERT INTO formatted VALUES ('f1', 'p1', 'train'), ('f2', 'p2', 'train'), ('f3', 'c1', 'train'), "
        "('f4', 'c2', 'train')"
    )
    assert split_leaks(connection) == (0, [])
    connection.execute("UPDATE formatted SET split = 'eval' WHERE row_id IN ('f2', 'f4')")
    assert split_leaks(connection) == (
        2,
        [
            {"shared": "cluster k", "eval": ["f4"], "train": ["f3"]},
            {"shared": "row a1", "eval": ["f2"], "train": ["f1"]},
        ],
    )
    assert split_leaks(connection, sample=1)[0] == 2


def test_split_leaks_stay_within_duckdbs_memory_limit_and_stop_on_a_lineage_cycle(tmp_path) -> None:
    # At 1M rows the check ran out of DuckDB's 512 MB limit (a recursive UNION cannot spill, and every shared
    # node's rows were listed before filtering). The same walk over 400k rows (every row with a lineage edge and a
    # cluster) ran out of 256 MB that way; it must now fit in 128 MB.
    connection = duckdb.connect(str(tmp_path / "w.duckdb"), config={"memory_limit": "128MB"})
    rows = 400_000
    connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
    connection.execute(
        "INSERT INTO lineage SELECT 'p' || i, 'r' || i, 'filtered', 'clean', NULL FROM range(?) t(i)", [rows]
    )
    connection.execute(
        "CREATE TABLE dedup_clusters AS SELECT 'k' || (i // 2) AS cluster_id, 'r' || i AS row_id FROM range(?) t(i)",
        [rows],
    )
    connection.execute(
        "CREATE TABLE formatted AS SELECT 'f' || i AS row_id, 'p' || i AS parent_id, "
        "CASE WHEN i % 10 = 0 THEN 'eval' ELSE 'train' END AS split FROM range(?) t(i)",
        [rows],
    )
    # Rows 2k and 2k+1 share cluster k<k>: a leak wherever exactly one of the pair is eval (i % 10 == 0).
    leaks, sample = split_leaks(connection, sample=2)
    assert leaks == rows // 10
    assert sample[0] == {"shared": "cluster k0", "eval": ["f0"], "train": ["f1"]}
    connection.execute("INSERT INTO lineage VALUES ('r0', 'p0', 'filtered', 'clean', NULL)")  # p0 -> r0 -> p0
    assert split_leaks(connection, sample=1)[0] == rows // 10


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
    connection.execute(f"CREATE TABLE dedup_clusters ({CLUSTERS_DDL})")
    connection.execute(
        "INSERT INTO dedup_clusters BY NAME SELECT * FROM (VALUES ('k', 'c1', 'c1', 'near', 0.8, false, ''), "
        "('k', 'c2', 'c2', 'near', 0.8, false, '')) v(cluster_id, row_id, kept_row_id, method, jaccard, removed, "
        "reason)"
    )
    connection.close()


def _write_project(folder: Path, template: str | None = None, extra: tuple[str, ...] = ()) -> Path:
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
    lines += extra
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
        from assets.compliance import compliance_report
        from assets.exports import exports
        from assets.formatted import formatted
        from checks.formatted import FORMATTED_CHECKS

        resources = _resources(config, base / "warehouse.duckdb")
        with dg.instance_for_test() as instance:
            first = dg.materialize(
                [formatted, compliance_report, exports, *FORMATTED_CHECKS],
                instance=instance,
                resources=resources,
                raise_on_error=False,
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
    materialized = {e.asset_key.to_user_string() for e in first.get_asset_materialization_events()}
    assert materialized == {"formatted", "compliance_report", "exports"}
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
def test_formatted_tables_are_the_same_with_one_or_two_workers(tmp_path, monkeypatch) -> None:
    import curation.core.parallel
    from curation.core.config import load_project
    from curation.core.warehouse import Warehouse, content_hash
    from curation.format.render import load_format_tokenizer
    from curation.format.stage import format_rows

    monkeypatch.setattr(curation.core.parallel, "MIN_ROWS_PER_WORKER", 1)  # two workers even for a few rows
    versions = {}
    for workers in (1, 2):
        folder = tmp_path / f"workers{workers}"
        folder.mkdir()
        _write_warehouse(folder / "warehouse.duckdb")
        # Batches of three rows: several batches in flight, results must come back in input order.
        config = load_project(
            _write_project(folder / "project", extra=(f"compute: {{workers: {workers}}}", "ingest: {batch_rows: 3}"))
        )
        with Warehouse(folder / "warehouse.duckdb").write("formatted") as staged:
            format_rows(staged, config, load_format_tokenizer(config))
        with duckdb.connect(str(folder / "warehouse.duckdb"), read_only=True) as connection:
            tables = ("formatted", "format_rejections", "contamination", "lineage")
            versions[workers] = {table: content_hash(connection, table) for table in tables}
            versions[workers]["order"] = connection.execute("SELECT list(row_id) FROM formatted").fetchone()
    assert versions[1] == versions[2]


def _append_and_edit(path: Path) -> None:
    """What a user's next run brings: one new row, and one row whose answer was corrected."""
    with duckdb.connect(str(path)) as connection:
        connection.register("incoming", rows_to_table([_sft("n1", "Name a prime number.", "Seven.")]))
        connection.execute("INSERT INTO synthetic_mixed SELECT * FROM incoming")
        corrected = [{"role": "user", "content": "Boiling point of water?"}, {"role": "assistant", "content": "100 C."}]
        connection.execute("UPDATE synthetic_mixed SET messages = ? WHERE row_id = 'a1'", [json.dumps(corrected)])


@pytest.mark.slow
@pytest.mark.parametrize("patched", [False, True], ids=["copied", "patched"])
def test_a_rerun_formats_only_new_and_changed_rows_and_matches_a_fresh_run(tmp_path, monkeypatch, patched) -> None:
    from curation.core import memo
    from curation.core.config import load_project
    from curation.core.warehouse import StagedWrite, Warehouse, content_hash
    from curation.format.render import load_format_tokenizer
    from curation.format.stage import format_rows

    # The re-run either copies the reused rows into a new `formatted` or changes the current one in place.
    monkeypatch.setattr(memo, "PATCH_MAX_CHANGE", 1.0 if patched else 0.0)
    patches = []
    original_patch = StagedWrite.patch
    monkeypatch.setattr(
        StagedWrite, "patch", lambda self, *args: patches.append(original_patch(self, *args)) or patches[-1]
    )

    tables = ("formatted", "format_rejections", "contamination", "lineage")
    memo = "SELECT row_id, digest FROM format_memo ORDER BY row_id"  # its fingerprint names the project folder

    def format_once(folder: Path, *extra: str, template: str | None = None):
        config = load_project(_write_project(folder / "project", template=template, extra=extra))
        with Warehouse(folder / "warehouse.duckdb").write("formatted") as staged:
            return format_rows(staged, config, load_format_tokenizer(config))

    again, fresh = tmp_path / "again", tmp_path / "fresh"
    for folder in (again, fresh):
        folder.mkdir()
        _write_warehouse(folder / "warehouse.duckdb")
    assert format_once(again).rows_reused == 0
    with duckdb.connect(str(again / "warehouse.duckdb")) as connection:  # marks what a re-run copies
        connection.execute("UPDATE formatted SET text = text || ' [copied]'")
        connection.execute("UPDATE format_rejections SET reason = reason || ' [copied]'")
    _append_and_edit(again / "warehouse.duckdb")
    _append_and_edit(fresh / "warehouse.duckdb")

    rerun = format_once(again)
    assert [patch is not None for patch in patches] == ([True] if patched else [])
    with duckdb.connect(str(again / "warehouse.duckdb")) as connection:
        copied = {
            row_id
            for (row_id,) in connection.execute(
                "SELECT parent_id FROM formatted WHERE text LIKE '% [copied]' "
                "UNION ALL SELECT row_id FROM format_rejections WHERE reason LIKE '% [copied]'"
            ).fetchall()
        }
        connection.execute("UPDATE formatted SET text = replace(text, ' [copied]', '')")
        connection.execute("UPDATE format_rejections SET reason = replace(reason, ' [copied]', '')")
        rerun_versions = {table: content_hash(connection, table) for table in tables}
        rerun_memo = connection.execute(memo).fetchall()
    # Every row but the new and the corrected one (and any whose split moved with the new row) is copied,
    # rejected ones (a benchmark match, a leak, an over-long row) with their reasons and matches.
    assert rerun.rows_reused == len(copied)
    assert "a1" not in copied and "n1" not in copied and {"bench1", "leak1", "long1"} <= copied
    assert len(copied) >= len(ROWS) - 3

    first_run = format_once(fresh)
    assert first_run.rows_reused == 0
    with duckdb.connect(str(fresh / "warehouse.duckdb"), read_only=True) as connection:
        assert rerun_versions == {table: content_hash(connection, table) for table in tables}
        assert rerun_memo == connection.execute(memo).fetchall() and len(rerun_memo) == len(ROWS) + 1
    assert rerun.contamination == first_run.contamination and rerun.contamination["bench"]["rows_hit"] == 1
    assert (rerun.rejected_by_stage, rerun.split_counts, rerun.tokens) == (
        first_run.rejected_by_stage,
        first_run.split_counts,
        first_run.tokens,
    )

    # The number of workers does not change a row's result; another chat template changes every row's.
    assert format_once(fresh, "compute: {workers: 2}").rows_reused == len(ROWS) + 1
    assert format_once(fresh, template="llama3").rows_reused == 0


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
def test_budget_check_fails_on_an_over_long_or_miscounted_row(tampered, monkeypatch) -> None:
    import checks.formatted
    from checks.formatted import formatted_within_token_budget

    connection, check = tampered
    connection.execute("UPDATE formatted SET n_tokens = 65 WHERE parent_id = 'b1'")
    (rows,) = connection.execute("SELECT count(*) FROM formatted").fetchone()
    connection.close()
    result = check(formatted_within_token_budget)
    assert not result.passed
    assert result.metadata["over_budget"].value == 1
    assert result.metadata["count_differs_from_ids_or_mask"].value == 1  # 65 is not the number of ids either
    assert result.metadata["ids_and_mask_counted"].value == f"all {rows}"
    # Counting ids parses every row's lists: beyond COUNTED_ROWS a fixed sample is counted; the budget is
    # still held over every row's count.
    monkeypatch.setattr(checks.formatted, "COUNTED_ROWS", 2)
    sampled = check(formatted_within_token_budget)
    assert not sampled.passed and sampled.metadata["over_budget"].value == 1
    assert sampled.metadata["ids_and_mask_counted"].value == f"sampled 2 of {rows}"


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
    connection.execute("UPDATE formatted SET generation_prompt_ok = false WHERE parent_id = 'b5'")
    connection.close()
    result = check(formatted_round_trip_ok)
    assert not result.passed
    assert result.metadata["failures"].value == {
        "special_tokens_in_content": 1,
        "round_trip": 1,  # the control token in b3 also splits its turn when parsed back
        "stored_tokens": 1,
        "recorded_generation_prompt": 1,
    }
    assert result.metadata["rendered_again"].value == f"all {len(ROWS) - 3}"


@pytest.mark.slow
def test_checks_that_compute_again_take_a_fixed_sample(tampered, monkeypatch) -> None:
    import checks.formatted
    from checks.formatted import formatted_no_contamination_left, formatted_round_trip_ok

    connection, check = tampered
    connection.close()
    monkeypatch.setattr(checks.formatted, "RESCANNED_ROWS", 4)
    rendered = check(formatted_round_trip_ok)
    rescanned = check(formatted_no_contamination_left)
    assert rendered.passed and rescanned.passed
    assert rendered.metadata["rendered_again"].value == f"sampled 4 of {len(ROWS) - 3}"
    assert rescanned.metadata["rescanned"].value == f"sampled 4 of {len(ROWS) - 3}"
    assert rescanned.metadata["rows_scanned"].value == 4


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
