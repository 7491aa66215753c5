"""The synthetic and synthetic_mixed assets and their checks through real Dagster runs: the procedural
teacher on the demo with every method, and a tiny random transformers model whose gibberish verification
must reject. Also the teacher resource (cache, secrets)."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml

from tests.conftest import DEMO_CONFIG, SHARED_DATA, require_shared_data

HUMANEVAL = SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz"


def project_file(directory: Path, synthesis: dict, policy: dict | None = None) -> Path:
    """The demo project with other synthesis settings, written elsewhere (demo paths made absolute)."""
    config = yaml.safe_load(DEMO_CONFIG.read_text())
    base = DEMO_CONFIG.parent
    for source in config["sources"]:
        source["path"] = str(base / source["path"])
    config["format"]["tokenizer"] = str(base / config["format"]["tokenizer"])
    for bench in config["format"].get("benchmarks", []):
        bench["path"] = str(base / bench["path"])
    config["synthesis"] = synthesis
    config["policy"] = {**config.get("policy", {}), **(policy or {})}
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "distillery.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_pipeline(home: Path, config: Path, cache: Path) -> dg.ExecuteInProcessResult:
    import definitions
    from checks import ALL_CHECKS
    from resources import ProjectResource, WarehouseResource
    from resources.teachers import TeacherResource
    from resources.tokenizer import TokenizerResource

    assets = definitions.DATASETS  # the datasets; not exports or reports
    keys = {a.key for a in assets}
    checks = [c for c in ALL_CHECKS if all(k.asset_key in keys for k in c.check_keys)]
    resources = {
        "project": ProjectResource(config_path=str(config)),
        "tokenizer": TokenizerResource(),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "teacher": TeacherResource(cache_path=str(cache)),
    }
    with dg.instance_for_test() as instance:
        return dg.materialize([*assets, *checks], instance=instance, resources=resources, raise_on_error=False)


def metadata_of(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return next(
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == asset
    )


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {f"{e.asset_key.to_user_string()}:{e.check_name}": e.passed for e in result.get_asset_check_evaluations()}


@pytest.fixture(scope="module")
def procedural_run(tmp_path_factory: pytest.TempPathFactory):
    require_shared_data(HUMANEVAL)  # the code method's problems
    root = tmp_path_factory.mktemp("procedural")
    synthesis = {
        "teacher": {"backend": "procedural"},
        "seed": 0,
        "methods": {
            "perturbation": {"count": 12},
            "arithmetic": {"count": 8},
            "units": {"count": 8},
            "responses": {"count": 6},
            "instructions": {"count": 2, "topics": ["tides"], "task_types": ["explain", "compare"]},
            "code": {"count": 2, "problems": str(HUMANEVAL), "license": "MIT"},
        },
    }
    config = project_file(root / "project", synthesis)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_HOME", str(root / "home"))
        result = run_pipeline(root / "home", config, root / "cache.duckdb")
    connection = duckdb.connect(str(root / "home" / "warehouse.duckdb"), read_only=True)
    yield result, connection, root
    connection.close()


@pytest.mark.slow
def test_procedural_run_passes_every_check_and_records_each_verdict(procedural_run) -> None:
    result, db, _ = procedural_run
    assert result.success
    assert [k for k, ok in check_results(result).items() if not ok] == []
    assert {
        "synthetic:provenance_complete",
        "synthetic:code_rows_passed_tests",
        "synthetic:licence_and_terms_allow_use",
        "synthetic_mixed:licence_and_terms_allow_use",
        "synthetic_mixed:synthetic_share_within_cap",
    } <= set(check_results(result))
    methods = dict(db.execute("SELECT method, count(*) FROM provenance GROUP BY 1").fetchall())
    assert methods["template:arithmetic"] == 8 and methods["template:units"] == 8
    assert methods["perturbation"] >= 10 and "code" not in methods
    # Every accepted row has its verdicts; judged rows name the judge.
    assert (
        db.execute("SELECT count(*) FROM provenance WHERE verification IS NULL OR verification = '{}'").fetchone()[0]
        == 0
    )
    # What the procedural teacher cannot do is rejected with that reason, never faked, never lost.
    reasons = dict(db.execute("SELECT method, any_value(reason) FROM synthetic_rejections GROUP BY 1").fetchall())
    assert reasons["instructions"].startswith("teacher cannot do this")
    assert reasons["code"].startswith("teacher produced no code")
    rejected = db.execute("SELECT candidate, verification FROM synthetic_rejections LIMIT 1").fetchone()
    assert json.loads(rejected[0])["row_id"] and "method_checks" in json.loads(rejected[1])


@pytest.mark.slow
def test_mix_metadata_shows_target_vs_actual_with_a_plot(procedural_run) -> None:
    result, db, _ = procedural_run
    mixed = metadata_of(result, "synthetic_mixed")
    assert mixed["synthetic_share"].value <= 0.3
    assert "data:image/png;base64," in mixed["mix"].value and "| model-made |" in mixed["mix"].value
    share = db.execute("SELECT avg(CASE WHEN origin <> 'human' THEN 1 ELSE 0 END) FROM synthetic_mixed").fetchone()[0]
    assert share == pytest.approx(mixed["synthetic_share"].value)
    synthetic = metadata_of(result, "synthetic")
    assert "| template:arithmetic | 8 | 8 | 0 |" in synthetic["rows_by_method"].value
    assert synthetic["teacher"].value["model"] == "distillery-procedural"


@pytest.fixture(scope="module")
def tiny_model_run(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    from tests.model_fixtures import build_tiny_chat_model

    root = tmp_path_factory.mktemp("tiny")
    model_dir = build_tiny_chat_model(root / "tiny-model")
    synthesis = {
        "teacher": {
            "backend": "transformers",
            "model_dir": str(model_dir),
            "license": "Apache-2.0",
            "model_id": "tiny-random-llama",
        },
        "seed": 0,
        "methods": {
            "arithmetic": {"count": 3, "max_new_tokens": 24},
            "responses": {"count": 4, "max_new_tokens": 24},
            "instructions": {"count": 2, "topics": ["tides"], "task_types": ["explain"], "max_new_tokens": 24},
        },
    }
    # The registry says the demo's model-written preference source may not be used for research.
    policy = {"teachers": {"demo-writer-v1": {"terms": "no-research", "forbids": ["research"]}}}
    config = project_file(root / "project", synthesis, policy)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_HOME", str(root / "home"))
        result = run_pipeline(root / "home", config, root / "cache.duckdb")
    connection = duckdb.connect(str(root / "home" / "warehouse.duckdb"), read_only=True)
    yield result, connection, root / "cache.duckdb"
    connection.close()


@pytest.mark.slow
def test_a_tiny_random_model_is_cached_and_its_gibberish_is_mostly_rejected(tiny_model_run) -> None:
    result, db, cache = tiny_model_run
    accepted = db.execute("SELECT count(*) FROM synthetic").fetchone()[0]
    rejected = db.execute("SELECT count(*) FROM synthetic_rejections").fetchone()[0]
    assert rejected >= 6 and accepted <= rejected // 4
    assert (
        db.execute(
            "SELECT count(*) FROM synthetic_rejections WHERE reason LIKE 'answer does not contain%' "
            "AND method = 'template:arithmetic'"
        ).fetchone()[0]
        >= 2
    )
    teacher = metadata_of(result, "synthetic")["teacher"].value
    assert teacher["backend"] == "transformers" and teacher["revision"].startswith("sha256:")
    with duckdb.connect(str(cache), read_only=True) as c:
        assert c.execute("SELECT count(*) FROM generation_cache WHERE model = 'tiny-random-llama'").fetchone()[0] > 0


@pytest.mark.slow
def test_rows_whose_generator_terms_forbid_the_use_are_dropped_by_the_licence_filter(tiny_model_run) -> None:
    """Issue 12: the licence filter applies ``policy.teachers`` to ingested model-made rows, so they are dropped at
    ``filtered`` with the reason (and a provenance-ready generator), instead of halting the build at the mix."""
    result, db, _ = tiny_model_run
    checks = check_results(result)
    assert checks["synthetic_mixed:licence_and_terms_allow_use"] is True
    assert checks["synthetic:licence_and_terms_allow_use"] is True
    reached = db.execute("SELECT count(*) FROM deduped WHERE generator = 'demo-writer-v1'").fetchone()[0]
    reasons = db.execute(
        "SELECT f.filter, f.reason, count(*) FROM filter_rejections f JOIN deduped d USING (row_id) "
        "WHERE d.generator = 'demo-writer-v1' GROUP BY 1, 2"
    ).fetchall()
    assert reached > 0
    assert reasons == [("license", "terms of demo-writer-v1 (no-research) forbid research use", reached)]
    assert db.execute("SELECT count(*) FROM synthetic_mixed WHERE generator = 'demo-writer-v1'").fetchone()[0] == 0


def test_teacher_resource_overrides_the_project_spec_and_keeps_the_key_out_of_sight(tmp_path) -> None:
    from curation.synth.judges import ProceduralJudge
    from resources.teachers import TeacherResource

    resource = TeacherResource(
        backend="openai-compatible",
        base_url="http://127.0.0.1:9/v1",
        model="m",
        license="Apache-2.0",
        api_key="sk-very-secret",
        cache_path=str(tmp_path / "c.duckdb"),
    )
    spec = resource.teacher_spec({"backend": "procedural", "seed": 3})
    assert spec == {
        "backend": "openai-compatible",
        "base_url": "http://127.0.0.1:9/v1",
        "model": "m",
        "license": "Apache-2.0",
    }
    with resource.open({"backend": "procedural"}) as (teacher, judge):
        assert "sk-very-secret" not in repr(teacher) and "sk-very-secret" not in json.dumps(teacher.info.as_dict())
        assert isinstance(judge, ProceduralJudge)
    with (
        pytest.raises(ValueError, match=r"synthesis\.judge"),
        TeacherResource().open({"backend": "procedural"}, "gpt-judge"),
    ):
        pass


def test_teacher_resource_caches_model_generations_across_runs(tmp_path) -> None:
    pytest.importorskip("torch")
    from curation.synth.teachers import ChatRequest, GenerationParams
    from resources.teachers import TeacherResource
    from tests.model_fixtures import build_tiny_chat_model

    model_dir = build_tiny_chat_model(tmp_path / "m")
    spec = {"backend": "transformers", "model_dir": str(model_dir), "license": "Apache-2.0", "revision": "r1"}
    request = ChatRequest(({"role": "user", "content": "hello"},), GenerationParams(max_new_tokens=8))
    resource = TeacherResource(cache_path=str(tmp_path / "cache.duckdb"))
    with resource.open(spec) as (teacher, _):
        first = teacher.generate([request])[0]
    with resource.open(spec, "teacher") as (teacher, judge):  # a new run: the cache file is reopened
        second = teacher.generate([request])[0]
        assert judge.info.model == teacher.info.model
    assert not first.cached and second.cached and second.text == first.text


@pytest.mark.slow
def test_the_checks_fail_on_tampered_synthetic_data(procedural_run, tmp_path) -> None:
    import shutil

    from checks.synthetic import code_rows_passed_tests, synthetic_provenance_complete, synthetic_share_within_cap
    from resources import ProjectResource, WarehouseResource

    _, _, root = procedural_run
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(root / "home" / "warehouse.duckdb", copy)
    warehouse = WarehouseResource(path=str(copy))
    project = ProjectResource(config_path=str(root / "project" / "distillery.yaml"))
    context = dg.build_asset_check_context()
    for check in (synthetic_provenance_complete, code_rows_passed_tests):
        assert check(context, warehouse=warehouse).passed
    assert synthetic_share_within_cap(context, project=project, warehouse=warehouse).passed
    with duckdb.connect(str(copy)) as db:
        child = db.execute("SELECT child_id FROM lineage WHERE asset = 'synthetic' LIMIT 1").fetchone()[0]
        db.execute("DELETE FROM lineage WHERE child_id = ?", [child])
        db.execute(
            "DELETE FROM provenance WHERE row_id = (SELECT min(row_id) FROM provenance WHERE method LIKE 'template:%')"
        )
        db.execute(
            "INSERT INTO provenance (row_id, method, verification) VALUES "
            "('c1', 'code', '{\"method_checks\": {\"tests_passed\": false}}')"
        )
        db.execute(
            "INSERT INTO synthetic_mixed SELECT * REPLACE (row_id || 'x' AS row_id, 'synthetic' AS origin) "
            "FROM synthetic_mixed"
        )
    result = synthetic_provenance_complete(context, warehouse=warehouse)
    assert not result.passed
    assert result.metadata["parents_without_lineage"].value == 1
    assert result.metadata["without_complete_provenance"].value == 1
    assert result.metadata["provenance_without_row"].value == 1  # the stray code record
    code = code_rows_passed_tests(context, warehouse=warehouse)
    assert not code.passed and code.metadata["without_passing_tests"].value == 1
    assert not synthetic_share_within_cap(context, project=project, warehouse=warehouse).passed
