"""Does a dataset table hold canonical rows (docs/architecture.md §3)? Each rule is one SQL count of violations,
all counted in one scan.

Two rules judge the structure of a conversation, not just its columns (issue 15, deliverable 3): a row never
has two assistant turns in a row, and no assistant-side text carries a transcript role marker. Both are what
a transcript split in the wrong place leaves behind, and both would train a model to speak for the user.
The ingester quarantines such records (:func:`structure_problem`, called for every mapped row), so these
rules are the net that catches them at every later stage too.
"""

from __future__ import annotations

import itertools
import re

import duckdb

from curation.core.schema import COLUMN_SPECS, KINDS, ORIGINS, ROLES, Message
from curation.core.warehouse import fetch_one, quote, sample_sql


def _in(values: tuple[str, ...]) -> str:
    return "(" + ", ".join("'" + v + "'" for v in values) + ")"


# --- Conversation structure ------------------------------------------------------------------------------
#
# Two assistant turns in a row: one reply split in two, or a lost user turn between them; either way a
# template renders a conversation that never happened. The source "says so" only by naming the speakers:
# adjacent assistant turns whose `name`s differ (two agents of a multi-agent conversation; a named turn next
# to an unnamed one is two speakers too) are allowed. Tool, system and user turns all break a run.
#
# A role marker in assistant-side text (assistant turns, chosen, rejected): the HH turn markers "Human:" /
# "Assistant:" after a blank line (the HH layout), "Assistant:" opening the reply (a speaker prefix left on
# it; a reply may well open a dialogue it writes with "Human:"), or an Alpaca template header
# ("### Instruction:", "### Input:", "### Response:") at a line start, outside fenced code. User turns are
# not judged: people paste transcripts into questions (13 OASST threads do, "User : … Agent : …"), and a
# reply that writes a dialogue puts one speaker a line (no blank line), as 1 self-instruct output and the
# OASST reply that quotes a prompt in a code block do. Measured on every dataset in ../shared/data: no hit.

ROLE_MARKER = r"\AAssistant:|\n\n(?:Human|Assistant):|(?m:^)###[ \t]*(?:Instruction|Input|Response):"
"""A transcript role marker inside assistant text; the same pattern in Python ``re`` and DuckDB's RE2."""
_FENCED_CODE = r"(?s)```.*?```"
_MARKER_WORDS = ("Human:", "Assistant:", "Instruction:", "Input:", "Response:")
"""A text without one of these substrings has no marker: the SQL rule parses only rows that contain one."""
_ROLE_MARKER_RE = re.compile(ROLE_MARKER)
_FENCED_CODE_RE = re.compile(_FENCED_CODE)


def _speakers(message: Message) -> str:
    name = message.get("name")
    return message["role"] + (f":{name}" if name is not None else "")


def structure_problem(messages: list[Message], *completions: list[Message] | None) -> str | None:
    """Why a conversation breaks the structure rules, or None. ``completions`` are the chosen and rejected
    continuations of a preference row's ``messages`` (each judged as ``messages + completion``).

    The Python twin of the two SQL rules below, for the ingester; keep them in step (tests/core/test_conformance
    runs both on the same rows)."""
    for completion in completions or (None,):
        turns = [*messages, *(completion or [])]
        for index, (first, second) in enumerate(itertools.pairwise(turns)):
            if first["role"] == second["role"] == "assistant" and _speakers(first) == _speakers(second):
                return (
                    f"two assistant turns in a row (turns {index} and {index + 1}): one reply split in two or a "
                    "user turn lost; name the speakers (`name`) if they are different agents"
                )
    for part in (messages, *(c for c in completions if c)):
        for message in part:
            content = message.get("content") or ""
            if message["role"] != "assistant" or not any(word in content for word in _MARKER_WORDS):
                continue
            marker = _ROLE_MARKER_RE.search(_FENCED_CODE_RE.sub("", content))
            if marker:
                return (
                    f"a role marker ({marker.group().strip()!r}) inside assistant text: a transcript turn "
                    "boundary was not split"
                )
    return None


def _role_list(column: str) -> str:
    return f"coalesce(CAST(json_extract_string({column}, '$[*].role') AS VARCHAR[]), [])"


def _speaker_list(column: str) -> str:
    return (
        f"list_transform(coalesce(CAST(json_extract({column}, '$[*]') AS JSON[]), []), lambda m: "
        "json_extract_string(m, '$.role') || coalesce(':' || json_extract_string(m, '$.name'), ''))"
    )


def _repeated_assistant(sequence: str) -> str:
    return f"len(list_filter({sequence}, lambda s, i: s LIKE 'assistant%' AND s = ({sequence})[i + 1])) > 0"


_SEQUENCES = [("messages", "chosen"), ("messages", "rejected")]
"""A preference row continues its messages with either completion; other rows have neither."""
# Cheap first: the roles alone (no names) must show 'assistant,assistant' for a row to be parsed in full;
# CASE evaluates its THEN branch only for the rows that pass (AND would parse every row). No test of `kind`:
# text rows have no messages, and naming the column doubles the cost of the scan.
_CONSECUTIVE_ASSISTANTS = (
    "CASE WHEN "
    + " OR ".join(
        f"strpos(array_to_string(list_concat({_role_list(a)}, {_role_list(b)}), ','), 'assistant,assistant') > 0"
        for a, b in _SEQUENCES
    )
    + " THEN "
    + " OR ".join(_repeated_assistant(f"list_concat({_speaker_list(a)}, {_speaker_list(b)})") for a, b in _SEQUENCES)
    + " ELSE false END"
)
_ROLE_MARKER_IN_REPLY = (
    "CASE WHEN kind <> 'text' AND ("
    + " OR ".join(
        f"contains({column}, '{word}')" for column in ("messages", "chosen", "rejected") for word in _MARKER_WORDS
    )
    + ") THEN len(list_filter(list_concat("
    + ", ".join(f"coalesce(CAST(json_extract({c}, '$[*]') AS JSON[]), [])" for c in ("messages", "chosen", "rejected"))
    + "), lambda m: json_extract_string(m, '$.role') = 'assistant' AND regexp_matches(regexp_replace("
    f"json_extract_string(m, '$.content'), '{_FENCED_CODE}', '', 'g'), '{ROLE_MARKER}'))) > 0 ELSE false END"
)


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
    "two assistant turns in a row": _CONSECUTIVE_ASSISTANTS,
    "role marker inside assistant text": _ROLE_MARKER_IN_REPLY,
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
