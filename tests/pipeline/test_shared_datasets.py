"""Every dataset in ../shared/data through the default pipeline (issue 15, deliverable 8).

One project holds every dataset as a source with its natural mapping and nothing else set: default dedup,
filters, synthesis and mix; the bundled demo tokenizer is the only format setting (it is required). It runs
through the real Dagster materialize path, every asset and every check. Each dataset is then judged on its
own: its records all offered, each one a row or quarantined with a reason, and each of its rows accounted
for at every stage. One run for all (about a minute and a half on 2 cores) instead of one per dataset: the
sources do not conflict, and a crash in any of them fails the run, which the first test names. The one
dataset with two natural mappings of one file, OASST (threads for chat, ranked siblings for preference
pairs), has a second, smaller run for its pairs (about a minute).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml

from curation.core.accounting import STAGES
from tests.conftest import REPO, SHARED_DATA, needs_shared_data

pytestmark = [pytest.mark.slow, needs_shared_data]


@dataclass(frozen=True)
class Dataset:
    """One shared dataset as a new user would declare it: its file, natural mapping and licence."""

    folder: str
    file: str
    mapping: str
    license: str
    records: int  # records in the file, from the dataset's README
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.folder.replace("-", "_")


DATASETS = [
    Dataset("awesome-chatgpt-prompts", "prompts.csv", "prompts", "CC0-1.0", 224),
    Dataset("code-alpaca-2k", "code_alpaca_2k.json", "alpaca", "CC-BY-NC-4.0", 2017),
    Dataset("fastchat-dummy-conversation", "dummy_conversation.json", "sharegpt", "Apache-2.0", 500),
    Dataset("gsm8k-train", "train.jsonl", "gsm8k", "MIT", 7473),
    Dataset(
        "humaneval",
        "HumanEval.jsonl.gz",
        "alpaca",
        "MIT",
        164,
        {"fields": {"instruction": "prompt", "output": "canonical_solution"}},
    ),
    Dataset(
        "llms-from-scratch-preference",
        "instruction-data-with-preference.json",
        "preference",
        "Apache-2.0",
        1100,
        {"fields": {"prompt": ["instruction", "input"]}, "origin": "synthetic", "generator": "Llama-3.1-70B"},
    ),
    # mt-bench's other file, reference_answer_gpt-4.jsonl, holds answers keyed by question id: no mapping
    # reads that shape, and it is a benchmark's key, not training data.
    Dataset("mt-bench", "question.jsonl", "prompts", "Apache-2.0", 80, {"fields": {"prompt": "turns"}}),
    Dataset("oasst-en-100-trees", "en_100_tree.jsonl", "oasst", "Apache-2.0", 100),
    Dataset("presidio-synth-pii", "synth_dataset_v2.json", "text", "MIT", 1500, {"fields": {"text": "full_text"}}),
    Dataset("self-instruct-seed-tasks", "seed_tasks.jsonl", "self_instruct", "Apache-2.0", 175),
    Dataset("self-instruct-user-oriented", "user_oriented_instructions.jsonl", "self_instruct", "Apache-2.0", 252),
    Dataset("stanford-alpaca-seed-tasks", "seed_tasks.jsonl", "self_instruct", "CC-BY-NC-4.0", 175),
    Dataset("vicuna-bench", "question.jsonl", "prompts", "Apache-2.0", 80, {"fields": {"prompt": "turns"}}),
    Dataset(
        "wizardlm-testset",
        "WizardLM_testset.jsonl",
        "prompts",
        "CC-BY-NC-4.0",
        218,
        {"fields": {"prompt": "Instruction"}},
    ),
]


def test_every_shared_dataset_is_in_the_project() -> None:
    """A dataset added to ../shared/data must be added here too, or this test would stop covering it."""
    folders = sorted(p.name for p in SHARED_DATA.iterdir() if p.is_dir())
    assert folders == sorted(d.folder for d in DATASETS)


OASST = next(d for d in DATASETS if d.folder == "oasst-en-100-trees")
RUNS: dict[str, list[Dataset]] = {
    "all": DATASETS,
    "oasst-pairs": [replace(OASST, settings={"options": {"mode": "preference"}})],
}
CASES = [(run, dataset) for run, datasets in RUNS.items() for dataset in datasets]
CASE_IDS = [f"{run}:{dataset.folder}" for run, dataset in CASES]


def _project(directory: Path, datasets: list[Dataset]) -> Path:
    sources = [
        {
            "name": d.source,
            "path": str(SHARED_DATA / d.folder / d.file),
            "mapping": d.mapping,
            "license": d.license,
            **d.settings,
        }
        for d in datasets
    ]
    path = directory / "distillery.yaml"
    path.write_text(
        yaml.safe_dump(
            {"name": "shared-data", "sources": sources, "format": {"tokenizer": str(REPO / "demo" / "tokenizer")}}
        ),
        encoding="utf-8",
    )
    return path


Built = tuple[dg.ExecuteInProcessResult, duckdb.DuckDBPyConnection]


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], Built]]:
    """``build(run)``: the run's result and a read-only connection to its warehouse, materialized on first use."""
    from definitions import ASSETS, CHECKS
    from resources import ProjectResource, WarehouseResource
    from resources.teachers import TeacherResource
    from resources.tokenizer import TokenizerResource

    built: dict[str, Built] = {}
    with contextlib.ExitStack() as stack:
        patch = stack.enter_context(pytest.MonkeyPatch.context())
        patch.delenv("DISTILLERY_CONFIG", raising=False)

        def run(name: str) -> Built:
            if name not in built:
                home = tmp_path_factory.mktemp(f"home-{name}")
                patch.setenv("DISTILLERY_HOME", str(home))
                resources = {
                    "project": ProjectResource(config_path=str(_project(home, RUNS[name]))),
                    "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
                    "teacher": TeacherResource(),
                    "tokenizer": TokenizerResource(),
                }
                instance = stack.enter_context(dg.instance_for_test())
                result = dg.materialize(
                    [*ASSETS, *CHECKS], instance=instance, resources=resources, raise_on_error=False
                )
                connection = stack.enter_context(duckdb.connect(str(home / "warehouse.duckdb"), read_only=True))
                built[name] = (result, connection)
            return built[name]

        yield run


@pytest.mark.parametrize("run", RUNS)
def test_every_asset_is_built_and_every_blocking_check_passes(build: Callable[[str], Built], run: str) -> None:
    from definitions import CHECKS

    result, _ = build(run)
    failures = [str(e) for e in result.all_events if e.is_failure]
    assert result.success, failures[:3]
    blocking = {
        f"{spec.asset_key.to_user_string()}:{spec.name}"
        for definition in CHECKS
        for spec in definition.check_specs
        if spec.blocking
    }
    evaluations = {f"{e.asset_key.to_user_string()}:{e.check_name}": e for e in result.get_asset_check_evaluations()}
    assert blocking - set(evaluations) == set(), "blocking checks that never ran"
    assert sorted(key for key, e in evaluations.items() if not e.passed) == []


@pytest.mark.parametrize(("run", "dataset"), CASES, ids=CASE_IDS)
def test_every_record_becomes_rows_or_is_quarantined(build: Callable[[str], Built], run: str, dataset: Dataset) -> None:
    _, db = build(run)
    read, quarantined = db.execute(
        "SELECT sum(records), sum(quarantined) FROM ingested_files WHERE source = ?", [dataset.source]
    ).fetchone()
    assert read == dataset.records
    # file#record, or file#record/part for the rows of one record (an OASST tree's threads)
    (with_rows,) = db.execute(
        "SELECT count(DISTINCT split_part(split_part(source_uri, '#', 2), '/', 1)) FROM raw WHERE source = ?",
        [dataset.source],
    ).fetchone()
    (in_quarantine,) = db.execute(
        "SELECT count(DISTINCT record_no) FROM quarantine WHERE source = ?", [dataset.source]
    ).fetchone()
    assert with_rows + in_quarantine == read and in_quarantine == quarantined
    # With the defaults, no record of a well-known public dataset is refused.
    assert quarantined == 0


def _stage_rows_unaccounted(db: duckdb.DuckDBPyConnection, asset: str, source: str) -> int:
    """Input rows of ``asset`` from ``source`` that are neither kept (through lineage or parent_id) nor in one
    of the stage's side tables: :func:`curation.core.accounting.unaccounted`, one source at a time."""
    stage = STAGES[asset]
    inputs = " UNION ALL ".join(f"SELECT row_id FROM {t} WHERE source = $source" for t in stage.inputs)
    if stage.parent_column:
        kept = f"SELECT {stage.parent_column} AS row_id FROM {asset}"
    else:
        kept = (
            f"SELECT coalesce(l.parent_id, o.row_id) AS row_id FROM {asset} o LEFT JOIN lineage l "
            f"ON l.child_id = o.row_id AND l.asset = '{asset}'"
        )
    removed = " UNION ".join(f"SELECT row_id FROM {t} WHERE {condition}" for t, condition in stage.side_tables)
    (missing,) = db.execute(
        f"WITH input AS ({inputs}), kept AS ({kept}), removed AS ({removed}) SELECT count(*) FROM input "
        "WHERE row_id NOT IN (SELECT row_id FROM kept) AND row_id NOT IN (SELECT row_id FROM removed)",
        {"source": source},
    ).fetchone()
    return int(missing)


@pytest.mark.parametrize(("run", "dataset"), CASES, ids=CASE_IDS)
def test_each_stage_accounts_for_every_row(build: Callable[[str], Built], run: str, dataset: Dataset) -> None:
    _, db = build(run)
    assert {asset: _stage_rows_unaccounted(db, asset, dataset.source) for asset in STAGES} == dict.fromkeys(STAGES, 0)


@pytest.mark.parametrize("run", RUNS)
def test_no_preference_pair_is_removed_as_a_same_prompt_conflict(build: Callable[[str], Built], run: str) -> None:
    """Several comparisons for one prompt are what preference data is (issue 15): OASST's ranked siblings and
    llms-from-scratch's pairs never order two answers both ways, so none is a conflict. Before dedup judged
    conflicts per kind (commit cfc8279), 208 of the 754 OASST pairs were removed as same-prompt conflicts."""
    _, db = build(run)
    (removed,) = db.execute(
        "SELECT count(*) FROM dedup_clusters c JOIN raw r USING (row_id) "
        "WHERE c.removed AND r.kind = 'preference' AND c.method LIKE 'same_prompt:%'"
    ).fetchone()
    assert removed == 0
