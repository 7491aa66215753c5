"""What a rendering of one row guarantees: no control token inside message content, a render-then-parse
round trip that gives the messages back, and a generation prompt that is exactly what precedes the reply.

The ``formatted`` stage runs :func:`verify_row` on every rendered row (a failure is a rejection), and the
asset checks run it again (:func:`verify_rows`), with :func:`stored_tokens_problem`, on a sample of the
stored rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.core.schema import Row
from curation.format.render import (
    decode,
    generation_prompt_matches,
    reusing_renderings,
    round_trip_ok,
    special_tokens_in_content,
    tokenize_for_round_trip,
)

if TYPE_CHECKING:  # transformers is slow to import; only the type checker needs it here
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Verification:
    """What a rendering of one row guarantees; ``problem`` is the first blocking failure, if any."""

    leaked_tokens: tuple[str, ...]
    round_trip: str
    round_trip_passed: bool
    generation_prompt_ok: bool | None
    """None where the row has no assistant reply to check against (text and prompt rows)."""

    @property
    def problem(self) -> tuple[str, str] | None:
        """(stage, reason) of the failure that keeps the row out of training, or None."""
        if self.leaked_tokens:
            return (
                "special_tokens",
                "message content contains the template's control tokens "
                f"{list(self.leaked_tokens)}; the model would read a turn boundary where the author wrote text",
            )
        if not self.round_trip_passed:
            return "round_trip", self.round_trip
        return None


def _conversation(row: Row) -> list[dict[str, Any]]:
    messages = list(row.get("messages") or [])
    if row.get("kind") == "preference":
        messages += list(row.get("chosen") or [])
    return messages


def verify_row(row: Row, tokenizer: PreTrainedTokenizerBase) -> Verification:
    """Control tokens in content, render-then-parse round trip and generation prompt for one row.

    Works on an input row and on a stored ``formatted`` row alike: a formatted row's ``text`` is the
    rendering (full of control tokens by design), so it is only searched for text rows."""
    content = row if row.get("kind") == "text" else {**row, "text": None}
    leaked = tuple(special_tokens_in_content(content, tokenizer))
    passed, reason = round_trip_ok(row, tokenizer)
    conversation = _conversation(row)
    generation: bool | None = None
    replies = [i for i, m in enumerate(conversation) if m.get("role") == "assistant"]
    if row.get("kind") != "text" and replies and replies[-1] > 0:
        tools = (row.get("extra") or {}).get("tools") if isinstance(row.get("extra"), dict) else None
        if isinstance(tools, str):
            tools = json.loads(tools)
        generation = generation_prompt_matches(conversation, tokenizer, tools=tools or None)
    return Verification(leaked, reason, passed, generation)


def verify_rows(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase) -> list[Verification]:
    """:func:`verify_row` for each row, with renderings reused and tokenized in one call."""
    with reusing_renderings():
        tokenize_for_round_trip(rows, tokenizer)
        return [verify_row(row, tokenizer) for row in rows]


def stored_tokens_problem(row: Row, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Do the stored ``input_ids`` / ``assistant_mask`` / ``n_tokens`` / ``text`` of a formatted row
    agree? (what a trainer reading the tokenized export gets is what was counted and checked)."""
    ids = _json_list(row.get("input_ids"))
    mask = _json_list(row.get("assistant_mask"))
    if row.get("kind") == "preference":
        return None if not ids and not mask else "preference row carries input_ids or a mask"
    if len(ids) != row.get("n_tokens") or len(mask) != len(ids):
        return f"n_tokens {row.get('n_tokens')}, {len(ids)} input_ids and {len(mask)} mask entries differ"
    if decode(tokenizer, ids) != row.get("text"):
        return "decode(input_ids) differs from the stored text"
    return None


def _json_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])
