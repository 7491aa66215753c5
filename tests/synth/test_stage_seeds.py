"""The synthetic stage's seed rows: ranked in DuckDB, only the top of each method's ranking read."""

from __future__ import annotations

import random

import duckdb

from curation.core.schema import Row, new_row, rows_to_table
from curation.core.warehouse import canonical_ddl, table_rows
from curation.synth.methods import select_seeds
from curation.synth.stage import seed_rows


def row(i: int, rng: random.Random) -> Row:
    kind = rng.choice(["sft", "sft", "prompt", "chat", "text"])
    long = rng.random() < 0.02  # few rows can seed reverse_instruction: its pages must grow
    words = " ".join(["word"] * (130 if long else 5))
    if kind == "text":
        return new_row(row_id=f"r{i:05d}", kind=kind, text=words, source="s", license="MIT", origin="human")
    messages = [{"role": "user", "content": f"Question {i}?"}]
    if kind != "prompt":
        messages.append({"role": "assistant", "content": words})
    return new_row(row_id=f"r{i:05d}", kind=kind, messages=messages, source="s", license="MIT", origin="human")


def test_seed_rows_are_what_the_streaming_selection_picks_from_the_whole_table() -> None:
    rng = random.Random(0)
    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE filtered ({canonical_ddl()})")
    connection.register("batch", rows_to_table([row(i, rng) for i in range(3000)]))
    connection.execute("INSERT INTO filtered SELECT * FROM batch")
    connection.unregister("batch")
    methods = {
        "perturbation": {"count": 40},
        "responses": {"count": 7},
        "reverse_instruction": {"count": 30},
        "arithmetic": {"count": 3},  # no seed rows
    }
    for seed in (0, 5):
        expected = select_seeds(table_rows(connection, "filtered"), methods, seed)
        assert seed_rows(connection, "filtered", methods, seed) == expected
        assert len(expected) > 40
    functions = "SELECT count(*) FROM duckdb_functions() WHERE function_name LIKE '_stable_unit%'"
    assert connection.execute(functions).fetchone() == (0,)  # the draw's SQL function is removed
    assert seed_rows(connection, "filtered", {"arithmetic": {"count": 3}}, 0) == []
