"""One batch through the ``formatted`` stage's worker function (the asset tests run the whole stage)."""

from __future__ import annotations

import gc

import pyarrow as pa
import pytest

from curation.core.config import FormatConfig
from curation.core.schema import ARROW_SCHEMA, encode_row, new_row
from curation.format.render import load_tokenizer
from curation.format.stage import format_records, start_worker
from tests.conftest import REPO


def _batch(rows: list[dict], planned_for: list[str] | None = None) -> pa.RecordBatch:
    table = pa.Table.from_pylist([encode_row(row) for row in rows], schema=ARROW_SCHEMA)
    table = table.append_column("split_row_id", pa.array(planned_for or [row["row_id"] for row in rows]))
    return table.append_column("split", pa.array(["train"] * len(rows))).to_batches()[0]


def test_a_batch_is_formatted_with_the_collector_paused_and_restored() -> None:
    tokenizer = load_tokenizer(REPO / "demo" / "tokenizer")
    start_worker(tokenizer, FormatConfig(tokenizer="demo/tokenizer", max_tokens=64), None)
    rows = [
        new_row(
            row_id="a", kind="sft", messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
        ),
        new_row(row_id="b", kind="chat", messages=[{"role": "user", "content": "long " * 200}]),
    ]
    assert gc.isenabled()
    result = format_records(_batch(rows))
    assert gc.isenabled()
    assert result.rows_in == 2 and result.formatted.column("parent_id").to_pylist() == ["a"]
    assert result.rejections.column("stage").to_pylist() == ["length"]
    with pytest.raises(RuntimeError, match="lined up with the split of"):
        format_records(_batch(rows, planned_for=["a", "x"]))
    assert gc.isenabled()
    gc.disable()  # a caller that paused it itself gets it back paused
    try:
        format_records(_batch(rows[:1]))
        assert not gc.isenabled()
    finally:
        gc.enable()
