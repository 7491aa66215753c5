"""Loss masks end to end (issue 15, deliverable 6): the formatted stage stores sft/chat rows of real data whose
masked tokens are their assistant contents, and a stored row whose mask was tampered with afterwards (no loss
token, shifted, a reply left out, the loss on the user's words) makes the blocking ``round_trip_ok`` check fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.core.config import load_project
from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import Warehouse
from curation.format.render import load_format_tokenizer
from curation.format.render_checks import MASKED_KINDS, mask_problem
from curation.format.stage import format_rows
from curation.format.table import iter_formatted_rows
from tests.conftest import SHARED_DATA
from tests.format.test_formatted_asset import _resources, _write_project, _write_warehouse


def _gsm8k_rows(count: int) -> list[dict]:
    """Real gsm8k pairs: ``count`` one-turn sft rows, and chats of two of them in a row."""
    with open(SHARED_DATA / "gsm8k-train" / "train.jsonl", encoding="utf-8") as handle:
        pairs = [json.loads(next(handle)) for _ in range(count)]
    turns = [[{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}] for p in pairs]
    sft = [
        new_row(row_id=f"gsm{k}", kind="sft", source="qa", license="MIT", origin="human", messages=t)
        for k, t in enumerate(turns)
    ]
    chats = [
        new_row(
            row_id=f"chat{k}", kind="chat", source="qa", license="MIT", origin="human", messages=turns[k] + turns[k + 1]
        )
        for k in range(0, count, 2)
    ]
    return sft + chats


@pytest.fixture(scope="module")
def formatted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A warehouse whose ``formatted`` table the stage wrote (the formatted-asset test rows plus real gsm8k
    sft and chat rows), and its project file (demo tokenizer, chatml)."""
    base = tmp_path_factory.mktemp("masks")
    warehouse = base / "warehouse.duckdb"
    _write_warehouse(warehouse)
    with duckdb.connect(str(warehouse)) as connection:
        connection.register("incoming", rows_to_table(_gsm8k_rows(20)))
        connection.execute("INSERT INTO synthetic_mixed SELECT * FROM incoming")
    project = _write_project(base / "project")
    project.write_text(project.read_text().replace("max_tokens: 64", "max_tokens: 1024"))  # room for gsm8k
    config = load_project(project)
    with Warehouse(warehouse).write("formatted") as staged:
        format_rows(staged, config, load_format_tokenizer(config))
    return warehouse, project


def _round_trip_check(warehouse: Path, project: Path):
    from checks.formatted import formatted_round_trip_ok

    resources = _resources(project, warehouse)
    return formatted_round_trip_ok(dg.build_asset_check_context(), **resources)


def test_every_stored_sft_and_chat_row_learns_exactly_its_replies(formatted: tuple[Path, Path]) -> None:
    warehouse, project = formatted
    tokenizer = load_format_tokenizer(load_project(project))
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        rows = [row for row in iter_formatted_rows(connection) if row["kind"] in MASKED_KINDS]
    assert len(rows) >= 40 and {r["kind"] for r in rows} == {"sft", "chat"}
    assert all(1 in row["assistant_mask"] for row in rows)
    assert [row["parent_id"] for row in rows if mask_problem(row, tokenizer)] == []
    result = _round_trip_check(warehouse, project)
    assert result.passed, result.metadata["failures_sample"].value


def _silenced(mask: list[int]) -> list[int]:
    return [0] * len(mask)


def _shifted(mask: list[int]) -> list[int]:
    return [0, *mask[:-1]]  # the role header's last token in, the end-of-turn token out


def _first_reply_left_out(mask: list[int]) -> list[int]:
    end = mask.index(0, mask.index(1))
    return [0] * end + mask[end:]


def _on_the_user_turn(mask: list[int]) -> list[int]:
    start = mask.index(1)
    moved = [0] * len(mask)
    moved[3 : start - 5] = [1] * (start - 8)  # one run over the question, before the reply's header
    return moved


@pytest.mark.parametrize(
    ("row", "tamper", "failures"),
    [
        ("gsm3", _silenced, {"no_loss_token": 1, "loss_mask": 1}),
        ("gsm4", _shifted, {"loss_mask": 1}),
        ("chat2", _first_reply_left_out, {"loss_mask": 1}),
        ("gsm5", _on_the_user_turn, {"loss_mask": 1}),
    ],
)
def test_a_tampered_mask_fails_the_blocking_check(formatted, tmp_path: Path, row: str, tamper, failures) -> None:
    warehouse, project = formatted
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(warehouse, copy)
    with duckdb.connect(str(copy)) as connection:
        row_id, mask = connection.execute(
            "SELECT row_id, assistant_mask FROM formatted WHERE parent_id = ?", [row]
        ).fetchone()
        mask = json.loads(mask)
        tampered = tamper(mask)
        assert len(tampered) == len(mask) and tampered != mask
        connection.execute("UPDATE formatted SET assistant_mask = ? WHERE parent_id = ?", [json.dumps(tampered), row])
    result = _round_trip_check(copy, project)
    assert not result.passed
    assert result.metadata["failures"].value == failures
    assert f"| {row_id} |" in result.metadata["failures_sample"].value
