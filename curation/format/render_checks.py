"""What a rendering of one row guarantees: no control token inside message content, a render-then-parse
round trip that gives the messages back, a generation prompt that is exactly what precedes the reply, and
(sft / chat rows) a loss mask whose tokens decode to exactly what the assistant wrote (:func:`mask_problem`).

The ``formatted`` stage runs :func:`verify_row` on every rendered row (a failure is a rejection), and the
asset checks run it again (:func:`verify_rows`), with :func:`stored_tokens_problem`, on a sample of the
stored rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from curation.core.schema import Row
from curation.format.render import (
    control_tokens,
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
    loss_mask: str | None = None
    """Why the stored loss mask does not cover exactly the assistant content (:func:`mask_problem`), or None."""

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
        if self.loss_mask:
            return "loss_mask", self.loss_mask
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
    return Verification(leaked, reason, passed, generation, mask_problem(row, tokenizer))


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


MASKED_KINDS = ("sft", "chat")
"""Kinds whose every row must carry loss on what the assistant wrote (:func:`mask_problem`)."""


def mask_problem(row: Row, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Does the loss mask of a rendered sft / chat row cover exactly what the assistant wrote?

    A row without stored token ids (an input row, not rendered yet) and rows of other kinds pass (None).
    What is compared: each run of consecutive masked tokens, decoded, is one assistant message of the
    rendered ``messages``, in order: its ``content`` followed by nothing but control tokens of the template
    (the end-of-turn marker ``<|im_end|>`` / ``<|eot_id|>`` is inside the mask by design, so the model
    learns to stop; a template that leaves it out passes too). No header, no other role's text, no
    whitespace of the layout may be under the mask, and every assistant message must have its run, so a
    reply the mask-building could not find in the rendering (no loss at all) is caught. A row whose last
    assistant turn was cut by the length policy (``truncated_last_assistant``) ends on a non-empty prefix
    of that turn's content instead. Assistant messages with tool calls are rendered as template-specific
    text, so for them only the number of runs is compared."""
    if row.get("kind") not in MASKED_KINDS or row.get("input_ids") is None:
        return None
    ids = _json_list(row.get("input_ids"))
    mask = _json_list(row.get("assistant_mask"))
    replies = [m for m in row.get("messages") or [] if m.get("role") == "assistant"]
    if len(mask) != len(ids):
        return f"{len(mask)} mask entries for {len(ids)} input_ids"
    runs = _masked_runs(mask)
    if not runs:
        return (
            f"no loss token: none of the {len(replies)} assistant turn(s) was found in the rendering "
            f"(mask source {row.get('mask_source')!r}), so the row would teach nothing"
        )
    if len(runs) != len(replies):
        return f"{len(runs)} masked run(s) of tokens for {len(replies)} assistant turn(s)"
    cut = str(row.get("truncation") or "").startswith("truncated_last_assistant")
    markers = control_tokens(tokenizer)
    for number, ((start, end), reply) in enumerate(zip(runs, replies, strict=True), start=1):
        if reply.get("tool_calls"):
            continue
        content = reply.get("content") if isinstance(reply.get("content"), str) else ""
        masked = decode(tokenizer, ids[start:end])
        if cut and number == len(runs):
            # The cut may split a character's bytes: the last token then decodes to U+FFFD.
            if not masked or not content.startswith(masked.rstrip("\ufffd")):
                return f"assistant turn {number}: masked tokens {masked[:80]!r} are not a prefix of its content"
            continue
        rest = masked[len(content) :]
        for marker in markers:
            rest = rest.replace(marker, "")
        if not masked.startswith(content) or rest:
            return (
                f"assistant turn {number}: masked tokens decode to {masked[:80]!r}, not its content "
                f"{content[:80]!r} followed by the template's end-of-turn marker"
            )
    return None


_MASKED_RUN = re.compile(rb"[^\x00]+")


def _masked_runs(mask: list[Any]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive non-zero entries of a loss mask; found in the mask's bytes by
    the regex engine when every entry fits a byte (a 0/1 mask), else entry by entry."""
    try:
        packed = bytes(mask)
    except (TypeError, ValueError):
        packed = bytes(1 if value else 0 for value in mask)
    return [found.span() for found in _MASKED_RUN.finditer(packed)]


def _json_list(value: Any) -> list[Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return list(value or [])
