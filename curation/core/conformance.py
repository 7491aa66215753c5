"""Does a dataset table hold canonical rows (docs/architecture.md §3)? Each rule is one SQL count of violations."""

from __future__ import annotations

import duckdb

from curation.core.schema import COLUMN_SPECS, KINDS, ORIGINS, ROLES
from curation.core.warehouse import fetch_one, quote


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + v + "'" for v in values) + ")"


RULES: dict[str, str] = {
    "row_id is missing": "row_id IS NULL OR row_id = ''",
    "row_id is not unique": "row_id IN (SELECT row_id FROM {table} GROUP BY row_id HAVING count(*) > 1)",
    "kind is not a known kind": f"kind IS NULL OR kind NOT IN {_in(KINDS)}",
    "origin is not human/synthetic/augmented": f"origin IS NULL OR origin NOT IN {_in(ORIGINS)}",
    "source or source_uri is missing": "source IS NULL OR source_uri IS NULL",
    "license is missing": "license IS NULL OR license = ''",
    "model-made row without generator": "origin <> 'human' AND generator IS NULL",
    "messages is not a non-empty list": "kind <> 'text' AND (messages IS NULL OR json_type(messages) <> 'ARRAY' "
    "OR json_array_length(messages) = 0)",
    "message role is not system/user/assistant/tool": (
        "kind <> 'text' AND EXISTS (SELECT 1 FROM unnest(CAST(json_extract_string(messages, '$[*].role') "
        f"AS VARCHAR[])) AS r(role) WHERE role IS NULL OR role NOT IN {_in(ROLES)})"
    ),
    "preference row without chosen and rejected": "kind = 'preference' AND (chosen IS NULL OR rejected IS NULL)",
    "text row without text": "kind = 'text' AND (text IS NULL OR text = '')",
}


def column_problems(connection: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    actual = dict(
        connection.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
    )
    problems = []
    for name, sql_type, _ in COLUMN_SPECS:
        if name not in actual:
            problems.append(f"column {name} is missing")
        elif actual[name] != sql_type:
            problems.append(f"column {name} is {actual[name]}, expected {sql_type}")
    return problems


def violations(connection: duckdb.DuckDBPyConnection, table: str) -> dict[str, int]:
    """Rule → number of rows breaking it (only rules with violations)."""
    quoted = quote(table)
    found = {}
    for rule, condition in RULES.items():
        (count,) = fetch_one(connection, f"SELECT count(*) FROM {quoted} WHERE {condition.format(table=quoted)}")
        if count:
            found[rule] = int(count)
    return found
