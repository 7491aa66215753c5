"""Checks that stay cheap on large tables: what they find, and that their metadata says what they looked at
(every row, or a seeded sample of how many)."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import pytest

import checks.datasets as datasets_checks
from checks.datasets import conformance_check, deduped_no_exact_duplicates
from checks.expectations import raw_expectations
from checks.synthetic import terms_check
from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import canonical_ddl
from resources import ProjectResource, WarehouseResource
from tests.conftest import DEMO_CONFIG, REPO


def _sft(row_id: str, prompt: str, answer: str, **fields) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        source=fields.pop("source", "demo_sft"),
        source_uri=f"data/a.jsonl#{row_id}",
        license=fields.pop("license", "Apache-2.0"),
        origin=fields.pop("origin", "human"),
        **fields,
    )


def _warehouse(path: Path, table: str, rows: list[dict]) -> WarehouseResource:
    with duckdb.connect(str(path)) as connection:
        connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
        connection.register("_rows", rows_to_table(rows))
        connection.execute(f"INSERT INTO {table} SELECT * FROM _rows")
    return WarehouseResource(path=str(path))


def _run(check: dg.AssetChecksDefinition, **resources) -> dg.AssetCheckResult:
    return check(dg.build_op_context(), **resources)


def _distinct(n: int) -> list[dict]:
    return [_sft(f"r{i:04d}", f"Question number {i} about topic {i * 7}?", f"Answer {i}.") for i in range(n)]


def test_no_exact_duplicates_finds_rows_equal_once_normalised(tmp_path: Path) -> None:
    rows = [*_distinct(5), _sft("dup", "QUESTION number 3   about topic 21?", "answer 3.")]
    warehouse = _warehouse(tmp_path / "w.duckdb", "deduped", rows)
    result = _run(
        deduped_no_exact_duplicates, project=ProjectResource(config_path=str(DEMO_CONFIG)), warehouse=warehouse
    )
    assert not result.passed
    assert result.metadata["sample"].value == [["dup", "r0003"]]
    assert result.metadata["coverage"].value == "identical rows: all 6 rows; normalised key: all 6 rows"


def test_no_exact_duplicates_finds_identical_rows_outside_its_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [*_distinct(50), _sft("copy", "Question number 17 about topic 119?", "Answer 17.")]
    warehouse = _warehouse(tmp_path / "w.duckdb", "deduped", rows)
    monkeypatch.setattr(datasets_checks, "EXACT_SAMPLE_ROWS", 3)
    result = _run(
        deduped_no_exact_duplicates, project=ProjectResource(config_path=str(DEMO_CONFIG)), warehouse=warehouse
    )
    assert not result.passed and result.metadata["sample"].value == [["copy", "r0017"]]
    assert result.metadata["sampled"].value is True
    assert "normalised key: sampled 3 of 51 rows" in result.metadata["coverage"].value


def test_canonical_schema_counts_every_rule_in_one_pass_and_samples_only_the_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _distinct(40)
    rows[3]["license"] = None
    rows[5]["messages"] = [{"role": "robot", "content": "beep"}]
    rows[6]["messages"] = []
    warehouse = _warehouse(tmp_path / "w.duckdb", "raw", rows)
    result = _run(conformance_check("raw"), warehouse=warehouse)
    assert not result.passed
    assert result.metadata["violations"].value == {
        "license is missing": 1,
        "messages is not a non-empty list": 1,
        "message role is not system/user/assistant/tool": 1,
    }
    monkeypatch.setattr(datasets_checks, "STRUCTURE_SAMPLE_ROWS", 10)
    sampled = _run(conformance_check("raw"), warehouse=warehouse)
    assert sampled.metadata["violations"].value["license is missing"] == 1  # every row, whatever the sample
    assert sampled.metadata["coverage"].value.startswith("messages parsed: sampled 10 of 40 rows")


def test_terms_check_judges_each_licence_and_terms_combination_once(tmp_path: Path) -> None:
    terms = {"terms": {"forbids": ["commercial"], "terms": ["no-competing-models"], "models": ["teacher-x"]}}
    rows = [
        *_distinct(4),
        *[_sft(f"s{i}", f"q{i}", "a", origin="synthetic", generator="teacher-x", extra=terms) for i in range(3)],
        _sft("nc", "q", "a", license="CC-BY-NC-4.0"),
    ]
    warehouse = _warehouse(tmp_path / "w.duckdb", "synthetic_mixed", rows)
    project = tmp_path / "distillery.yaml"
    project.write_text(
        "sources:\n- {name: demo_sft, path: a.jsonl, mapping: alpaca, license: Apache-2.0}\n"
        f"format: {{tokenizer: {REPO / 'demo' / 'tokenizer'}}}\npolicy: {{intended_use: commercial}}\n",
        encoding="utf-8",
    )
    result = _run(
        terms_check("synthetic_mixed"), project=ProjectResource(config_path=str(project)), warehouse=warehouse
    )
    assert not result.passed
    assert result.metadata["violations"].value == 4
    sample = result.metadata["sample"].value
    assert [line.split("|")[1].strip() for line in sample.splitlines()[2:]] == ["nc", "s0", "s1", "s2"]
    assert "terms of teacher-x forbid commercial use" in sample


def test_expectations_validate_a_bounded_sample_and_say_so(tmp_path: Path) -> None:
    warehouse = _warehouse(tmp_path / "w.duckdb", "raw", _distinct(30))
    result = raw_expectations(
        dg.build_op_context(op_config={"sample_rows": 12}),
        project=ProjectResource(config_path=str(DEMO_CONFIG)),
        warehouse=warehouse,
    )
    metadata = result.metadata
    assert metadata["rows_validated"].value == 12 and metadata["rows_total"].value == 30
    assert metadata["coverage"].value == "sampled 12 of 30 rows (seeded reservoir)"
