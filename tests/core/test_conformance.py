"""The conversation-structure rules of canonical_schema (issue 15, deliverable 3): two assistant turns in a
row and transcript role markers inside assistant text are caught in SQL at every stage, and the Python twin
the ingester uses agrees with the SQL on every case."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from checks.datasets import DATASETS, conformance_check
from curation.core.conformance import structure_problem, violations
from curation.core.schema import Message, new_row, rows_to_table
from curation.core.warehouse import canonical_ddl
from resources import WarehouseResource


def _u(text: str) -> Message:
    return {"role": "user", "content": text}


def _a(text: str, name: str | None = None) -> Message:
    return {"role": "assistant", "content": text} | ({"name": name} if name else {})


def _row(row_id: str, messages: list[Message], chosen: list[Message] | None = None, rejected=None) -> dict:
    return new_row(
        row_id=row_id,
        kind="preference" if chosen is not None else "chat",
        messages=messages,
        chosen=chosen,
        rejected=rejected,
        source="s",
        source_uri=f"s.jsonl#{row_id}",
        license="MIT",
        origin="human",
    )


CONSECUTIVE = "two assistant turns in a row"
MARKER = "role marker inside assistant text"

# (row, the structure rule it breaks or None)
CASES: list[tuple[dict, str | None]] = [
    (_row("ok_chat", [_u("Hi"), _a("Hello"), _u("Bye?"), _a("Bye")]), None),
    (_row("two_replies", [_u("Hi"), _a("Hello"), _a("Anything else?")]), CONSECUTIVE),
    # The HH failure: the prompt already ends with an assistant turn and the completion adds another.
    (_row("pref_glued", [_u("Hi"), _a("Hello")], chosen=[_a("A")], rejected=[_a("B")]), CONSECUTIVE),
    (_row("pref_rejected_glued", [_u("Hi")], chosen=[_a("A")], rejected=[_a("B"), _a("C")]), CONSECUTIVE),
    (_row("pref_ok", [_u("Hi"), _a("Hello"), _u("Colour?")], chosen=[_a("Blue")], rejected=[_a("Red")]), None),
    # The source says so: two named agents speaking in turn are two speakers.
    (_row("named_agents", [_u("Debate"), _a("Yes", "pro"), _a("No", "con")]), None),
    (_row("same_agent_twice", [_u("Debate"), _a("Yes", "pro"), _a("And more", "pro")]), CONSECUTIVE),
    (
        _row(
            "tool_between",
            [_u("Weather?"), _a("Checking"), {"role": "tool", "content": "sunny"}, _a("Sunny")],
        ),
        None,
    ),
    (_row("hh_marker", [_u("Hi"), _a("Hello!\n\nHuman: and then?\n\nAssistant: more")]), MARKER),
    (_row("hh_empty_marker", [_u("Hi"), _a("Hello!\n\nHuman:")]), MARKER),
    (_row("marker_at_start", [_u("Hi"), _a("Assistant: Hello")]), MARKER),
    (_row("alpaca_header", [_u("Hi"), _a("Sure.\n### Instruction:\nDo more")]), MARKER),
    (_row("marker_in_chosen", [_u("Hi")], chosen=[_a("A\n\nHuman: B")], rejected=[_a("C")]), MARKER),
    # Legitimate text: users paste transcripts; a reply writing a dialogue puts one speaker a line; code
    # blocks may hold anything; "Instructions" as a heading is not the Alpaca header.
    (_row("user_pastes", [_u("Fix this:\n\nHuman: hi\n\nAssistant: yo"), _a("Done")]), None),
    (_row("dialogue_reply", [_u("Write a dialogue"), _a("Human: Hi\nAI: Hello\nHuman: Bye")]), None),
    (_row("fenced", [_u("Prompt format?"), _a("Like this:\n```\n\nHuman: hello\n\nAssistant:\n```\nDone")]), None),
    (_row("heading", [_u("Recipe?"), _a("### Ingredients\nEggs\n### Instructions\nBoil")]), None),
]


def _table(path: Path, table: str, rows: list[dict]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(str(path))
    connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
    connection.register("_rows", rows_to_table(rows))
    connection.execute(f"INSERT INTO {table} SELECT * FROM _rows")
    return connection


@pytest.mark.parametrize(("row", "broken"), CASES, ids=[row["row_id"] for row, _ in CASES])
def test_sql_rule_and_python_twin_agree(tmp_path: Path, row: dict, broken: str | None) -> None:
    with _table(tmp_path / "w.duckdb", "raw", [row]) as connection:
        found = violations(connection, "raw")
    assert found == ({broken: 1} if broken else {})
    completions = [row["chosen"], row["rejected"]] if row["kind"] == "preference" else []
    problem = structure_problem(row["messages"], *completions)
    assert (problem is not None) == (broken is not None), problem
    if broken:
        assert (CONSECUTIVE if "assistant turns" in problem else MARKER) == broken


@pytest.mark.parametrize("asset", DATASETS)
def test_canonical_schema_catches_structure_at_every_stage(tmp_path: Path, asset: str) -> None:
    rows = [row for row, _ in CASES]
    path = tmp_path / "w.duckdb"
    _table(path, asset, rows).close()
    result = conformance_check(asset)(dg.build_op_context(), warehouse=WarehouseResource(path=str(path)))
    expected = {rule: sum(b == rule for _, b in CASES) for rule in (CONSECUTIVE, MARKER)}
    assert not result.passed
    assert result.metadata["violations"].value == expected


def test_json_columns_as_written_by_sql_stages_are_judged_the_same(tmp_path: Path) -> None:
    """Stages that rewrite rows in SQL serialise JSON without spaces; the rules parse, not pattern-match."""
    with _table(tmp_path / "w.duckdb", "raw", [row for row, _ in CASES]) as connection:
        connection.execute("UPDATE raw SET messages = CAST(json(messages) AS JSON), chosen = json(chosen)")
        assert json.loads(connection.execute("SELECT messages FROM raw LIMIT 1").fetchone()[0])
        assert violations(connection, "raw") == {CONSECUTIVE: 4, MARKER: 5}
