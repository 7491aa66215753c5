"""Ingestion of each common shape, on the real public files in ../shared/data (counts from their READMEs)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from curation.core.config import SourceConfig
from curation.core.schema import utcnow
from curation.ingest.sources import Quarantined, ingest_file
from tests.conftest import SHARED_DATA, require_shared_data


def ingest(relative: str, mapping: str, **settings) -> tuple[list[dict], list[Quarantined]]:
    source = SourceConfig(
        name=relative.split("/")[0],
        path=relative,
        mapping=mapping,
        license=settings.pop("license", "Apache-2.0"),
        **settings,
    )
    require_shared_data(SHARED_DATA / relative)  # a missing file would be quarantined, not raised
    items = list(ingest_file(SHARED_DATA / relative, relative, source, utcnow(), 1_000_000))
    rows = [i for i in items if not isinstance(i, Quarantined)]
    return rows, [i for i in items if isinstance(i, Quarantined)]


def roles(row: dict) -> list[str]:
    return [m["role"] for m in row["messages"]]


def test_self_instruct_seed_tasks_flatten_instances() -> None:
    rows, quarantined = ingest("self-instruct-seed-tasks/seed_tasks.jsonl", "self_instruct")
    assert len(rows) == 175 and not quarantined
    assert {r["kind"] for r in rows} == {"sft"}
    assert all(roles(r) == ["user", "assistant"] for r in rows)
    # instruction + input joined, unmapped keys kept in extra
    first = rows[0]
    assert first["extra"]["id"] == "seed_task_0" and "is_classification" in first["extra"]
    assert first["source_uri"] == "self-instruct-seed-tasks/seed_tasks.jsonl#1"
    assert len({r["row_id"] for r in rows}) == 175


def test_code_alpaca_json_array_keeps_empty_outputs_for_the_filter() -> None:
    rows, quarantined = ingest("code-alpaca-2k/code_alpaca_2k.json", "alpaca", license="CC-BY-NC-4.0")
    assert len(rows) == 2017 and not quarantined
    empty = [i for i, r in enumerate(rows) if not r["messages"][1]["content"].strip()]
    assert empty == [237, 1859]  # README: rows 237 and 1859 (0-based) have an empty output
    assert rows[237]["source_uri"].endswith("#238")
    assert {r["license"] for r in rows} == {"CC-BY-NC-4.0"}


def test_fastchat_sharegpt_conversations_become_role_content_messages() -> None:
    rows, quarantined = ingest("fastchat-dummy-conversation/dummy_conversation.json", "sharegpt")
    assert len(rows) == 500 and not quarantined
    turns = Counter(len(r["messages"]) // 2 for r in rows)
    assert turns == {1: 167, 2: 166, 3: 167}
    assert all(r["messages"][0]["role"] == "user" for r in rows)
    assert len({r["messages"][0]["content"] for r in rows}) == 52
    assert rows[0]["extra"] == {"id": "identity_0"}


def test_llms_from_scratch_preference_prompt_from_instruction_and_input() -> None:
    rows, quarantined = ingest(
        "llms-from-scratch-preference/instruction-data-with-preference.json",
        "preference",
        fields={"prompt": ["instruction", "input"]},
        origin="synthetic",
        generator="Llama-3.1-70B",
    )
    assert len(rows) == 1100 and not quarantined
    assert {r["kind"] for r in rows} == {"preference"}
    same = [i for i, r in enumerate(rows) if r["chosen"] == r["rejected"]]
    assert same == [122, 226, 400, 566, 628, 676]
    assert all("output" in r["extra"] for r in rows)  # the third response is kept, not treated as a pair
    assert {r["generator"] for r in rows} == {"Llama-3.1-70B"}


def test_oasst_trees_flatten_to_threads_and_ranked_pairs() -> None:
    threads, quarantined = ingest("oasst-en-100-trees/en_100_tree.jsonl", "oasst")
    assert len(threads) == 626 and not quarantined  # README: 626 root-to-leaf threads
    synthetic = [r for r in threads if r["origin"] == "synthetic"]
    assert synthetic and all(r["generator"] == "chip20b" for r in synthetic)
    pairs, _ = ingest("oasst-en-100-trees/en_100_tree.jsonl", "oasst", options={"mode": "preference"})
    assert len(pairs) == 754  # README: 754 pairwise (chosen = lower rank) pairs
    best, _ = ingest("oasst-en-100-trees/en_100_tree.jsonl", "oasst", options={"mode": "best"})
    assert len(best) == 100


def test_gsm8k_question_answer_with_final_answer_kept() -> None:
    rows, quarantined = ingest("gsm8k-train/train.jsonl", "gsm8k", license="MIT")
    assert len(rows) == 7473 and not quarantined
    assert rows[0]["extra"]["final_answer"] == "72"


def test_awesome_chatgpt_prompts_csv_is_prompt_only() -> None:
    rows, quarantined = ingest(
        "awesome-chatgpt-prompts/prompts.csv", "prompts", license="CC0-1.0", annotator_field="contributor"
    )
    assert len(rows) == 224 and not quarantined
    assert {r["kind"] for r in rows} == {"prompt"}
    assert all(roles(r) == ["user"] for r in rows)
    assert sum(1 for r in rows if r["annotator"]) > 200
    assert all("contributor" not in (r["extra"] or {}) for r in rows)
    acts = Counter(r["extra"]["act"] for r in rows)
    assert sum(1 for n in acts.values() if n == 2) == 4  # README: 4 act names appear twice


def test_humaneval_gzip_read_transparently() -> None:
    rows, quarantined = ingest(
        "humaneval/HumanEval.jsonl.gz",
        "alpaca",
        license="MIT",
        fields={"instruction": "prompt", "output": "canonical_solution"},
    )
    assert len(rows) == 164 and not quarantined
    assert rows[0]["extra"]["task_id"] == "HumanEval/0" and "test" in rows[0]["extra"]


@pytest.mark.parametrize(
    ("relative", "field", "count"),
    [
        ("mt-bench/question.jsonl", "turns", 80),
        ("vicuna-bench/question.jsonl", "turns", 80),
        ("wizardlm-testset/WizardLM_testset.jsonl", "Instruction", 218),
    ],
)
def test_prompt_only_benchmark_files(relative: str, field: str, count: int) -> None:
    rows, quarantined = ingest(relative, "prompts", fields={"prompt": field})
    assert len(rows) == count and not quarantined
    if relative.startswith("mt-bench"):
        assert all(len(r["messages"]) == 2 for r in rows)  # both turns of each question


def test_row_ids_are_stable_across_runs() -> None:
    first, _ = ingest("vicuna-bench/question.jsonl", "prompts", fields={"prompt": "turns"})
    second, _ = ingest("vicuna-bench/question.jsonl", "prompts", fields={"prompt": "turns"})
    assert [r["row_id"] for r in first] == [r["row_id"] for r in second]


def test_shared_data_exists() -> None:
    assert Path(SHARED_DATA / "README.md").is_file(), f"expected the shared datasets at {SHARED_DATA}"
