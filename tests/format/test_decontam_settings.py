"""The project file's ``format.decontamination`` settings reach the formatted stage, its metadata and its
``no_contamination_left`` check (issue 15: responses optionally checked, the setting recorded)."""

from __future__ import annotations

import dagster as dg
import duckdb
import pyarrow as pa

from curation.core.config import FormatConfig, load_project
from curation.core.schema import ARROW_SCHEMA, encode_row, new_row, rows_to_table
from curation.core.warehouse import Warehouse
from curation.format.decontam import BenchmarkItem, ContaminationIndex, index_for
from curation.format.render import load_format_tokenizer, load_tokenizer
from curation.format.stage import format_records, format_rows, start_worker
from tests.conftest import REPO
from tests.format.test_formatted_asset import BENCHMARK_QUESTION, _resources, _write_project, _write_warehouse

QUESTION = "Which planet in our solar system has the largest number of confirmed moons today?"


def _batch(rows: list[dict]) -> pa.RecordBatch:
    table = pa.Table.from_pylist([encode_row(row) for row in rows], schema=ARROW_SCHEMA)
    table = table.append_column("split_row_id", pa.array([row["row_id"] for row in rows]))
    return table.append_column("split", pa.array(["train"] * len(rows))).to_batches()[0]


def test_the_stage_checks_responses_when_the_project_says_so() -> None:
    tokenizer = load_tokenizer(REPO / "demo" / "tokenizer")
    leak = new_row(
        row_id="leak",
        kind="sft",
        messages=[{"role": "user", "content": "Ask me a quiz question."}, {"role": "assistant", "content": QUESTION}],
    )
    kept = {}
    for fields in ("prompt", "all"):
        settings = FormatConfig(tokenizer="demo/tokenizer", decontamination={"fields": fields})
        index = index_for([BenchmarkItem("bench", "7", QUESTION)], settings.decontamination)
        start_worker(tokenizer, settings, index)
        result = format_records(_batch([leak]))
        kept[fields] = result.formatted.num_rows
        if fields == "all":
            assert result.rejections.column("stage").to_pylist() == ["decontamination"]
            assert result.contamination.column("item_id").to_pylist() == ["7"]
    assert kept == {"prompt": 1, "all": 0}


def test_settings_are_recorded_and_the_check_rescans_with_them(tmp_path) -> None:
    from checks.formatted import formatted_no_contamination_left

    assert QUESTION == BENCHMARK_QUESTION
    warehouse = tmp_path / "warehouse.duckdb"
    _write_warehouse(warehouse)
    quiz = new_row(
        row_id="quiz",
        kind="sft",
        source="qa",
        license="MIT",
        messages=[
            {"role": "user", "content": f"Quick quiz: {QUESTION} One word."},
            {"role": "assistant", "content": "Saturn."},
        ],
    )
    with duckdb.connect(str(warehouse)) as connection:
        connection.register("incoming", rows_to_table([quiz]))
        connection.execute("INSERT INTO synthetic_mixed SELECT * FROM incoming")
    # 20-word n-grams, whole items of at least 15 words: the 14-word question matches only exactly, so the
    # quiz row (the question inside a longer prompt) is kept; the default 13-gram rule would remove it.
    assert ContaminationIndex([BenchmarkItem("bench", "7", QUESTION)]).check(f"Quick quiz: {QUESTION} One word.")
    path = _write_project(tmp_path / "project", extra=("  decontamination: {n: 20, min_n: 15, fields: all}",))
    config = load_project(path)
    with Warehouse(warehouse).write("formatted") as staged:
        result = format_rows(staged, config, load_format_tokenizer(config))
    assert result.decontamination["fields"] == "all" and result.decontamination["n"] == 20
    assert result.decontamination["benchmark_items"] == 1
    assert result.contamination_markdown().startswith("Checked every message (`fields: all`) against 1 benchmark")
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM formatted WHERE parent_id = 'quiz'").fetchone() == (1,)
    # The check re-scans with the project's settings, so it agrees with the stage.
    resources = _resources(path, warehouse)
    check = formatted_no_contamination_left(
        dg.build_asset_check_context(), project=resources["project"], warehouse=resources["warehouse"]
    )
    assert check.passed, check.metadata
    assert check.metadata["fields"].value == "all"
