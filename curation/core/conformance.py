"""Does a dataset table hold canonical rows (docs/architecture.md §3)? Each rule is one SQL count of violations,
all counted in one scan."""

from __future__ import annotations

import duckdb

from curation.core.schema import COLUMN_SPECS, KINDS, ORIGINS, ROLES
from curation.core.warehouse import fetch_one, quote, sample_sql


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
    # json_array_length is 0 for anything but an array. A lambda, not a correlated EXISTS over unnest:
    # DuckDB evaluates it row by row in the scan, 6x faster.
    "messages is not a non-empty list": "kind <> 'text' AND (messages IS NULL OR json_array_length(messages) = 0)",
    "message role is not system/user/assistant/tool": (
        "kind <> 'text' AND len(list_filter(CAST(json_extract_string(messages, '$[*].role') AS VARCHAR[]), "
        f"lambda role: role IS NULL OR role NOT IN {_in(ROLES)})) > 0"
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


JSON_RULES: frozenset[str] = frozenset(rule for rule, condition in RULES.items() if "messages" in condition)
"""Rules that parse every row's messages: ~1.5 s per million rows each, where all the others together
take 0.5 s. :func:`violations` may judge them on a sample."""


def violations(connection: duckdb.DuckDBPyConnection, table: str, sample_rows: int | None = None) -> dict[str, int]:
    """Rule → number of rows breaking it (only rules with violations), in one scan per pass. With
    ``sample_rows``, the :data:`JSON_RULES` count the rows of a seeded sample of that many (all rows of a
    smaller table); the other rules always count every row."""
    quoted = quote(table)

    def count(rules: list[str], source: str) -> dict[str, int]:
        counts = ", ".join(f"count(*) FILTER (WHERE {RULES[rule].format(table=quoted)})" for rule in rules)
        return {
            rule: int(n) for rule, n in zip(rules, fetch_one(connection, f"SELECT {counts} FROM {source}"), strict=True)
        }

    if sample_rows is None:
        found = count(list(RULES), quoted)
    else:
        found = count([r for r in RULES if r not in JSON_RULES], quoted)
        found |= count(sorted(JSON_RULES), f"({sample_sql(table, sample_rows)})")
    return {rule: found[rule] for rule in RULES if found[rule]}
