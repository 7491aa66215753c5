"""The texts of a canonical row and the code inside them: one walker, one code-fence rule.

Every stage that reads or edits a row's texts (cleaners, PII redaction and scanning, in-row
repeats, quality heuristics, decontamination) goes through :func:`text_fields` and
:func:`with_texts` (or the views built on them: :func:`all_text`, :func:`prompt_text`,
:func:`response_text`), so "which fields hold text" and "how an edit is written back" are decided
once. Only code that needs a message's structure rather than its text — the exact-duplicate key
(roles of empty tool-call turns) and the control-token leak check (tool-call arguments) — reads
messages directly. Likewise every stage that must
leave code alone (HTML and Markdown cleaners, language ID, repetition heuristics, in-row repeats,
code extraction from a teacher's reply) recognises code with the patterns built here from
:data:`FENCE_MARKERS`, so they agree on what counts as code.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from curation.core.schema import Row

MESSAGE_COLUMNS: tuple[str, ...] = ("messages", "chosen", "rejected")
"""Columns holding message lists (``{role, content, ...}``), in the order they are walked."""

FENCE_MARKERS: tuple[str, ...] = ("```", "~~~")
"""CommonMark's two code-fence markers: a block opened by one is closed by the same."""

_FENCED_BLOCK = "|".join(rf"{re.escape(m)}.*?(?:{re.escape(m)}|\Z)" for m in FENCE_MARKERS)

FENCED_CODE = re.compile(_FENCED_BLOCK, re.DOTALL)
"""A fenced code block, unterminated blocks running to the end of the text."""

CODE_SPANS = re.compile(rf"({_FENCED_BLOCK}|`[^`\n]+`)", re.DOTALL)
"""Fenced blocks and inline code spans. One capturing group, so ``CODE_SPANS.split(text)``
alternates prose (even indices) and code (odd indices)."""


@dataclass(frozen=True)
class FencedBlock:
    """One fenced code block of a text: ``text[start:end]`` is the block with its fences."""

    start: int
    end: int
    info: str  # what follows the opening fence on its line, e.g. "python"
    body: str  # the code between the fences


def fenced_blocks(text: str) -> Iterator[FencedBlock]:
    """The fenced blocks of ``text`` in order (:data:`FENCED_CODE`). Blocks are found one after the
    other, so a closing fence is never taken for the opening fence of another block."""
    for match in FENCED_CODE.finditer(text):
        block = match.group(0)
        marker = block[:3]
        inner = block[3:-3] if len(block) >= 6 and block.endswith(marker) else block[3:]
        info, newline, body = inner.partition("\n")
        if not newline:  # a one-line block such as ```code```: no info string
            info, body = "", inner
        yield FencedBlock(match.start(), match.end(), info.strip(), body)


def first_fenced_block(text: str, languages: tuple[str, ...] = ()) -> str | None:
    """The body of the first fenced block in ``text`` whose info string is empty or one of
    ``languages`` (any info string when none are given); ``None`` when there is no such block."""
    for block in fenced_blocks(text):
        if not languages or block.info.lower() in ("", *languages):
            return block.body
    return None


@dataclass(frozen=True)
class TextField:
    """One text of a row: ``column`` is ``text`` or a message column, ``index`` the message position."""

    column: str
    index: int | None
    text: str
    role: str | None = None  # the message's role; None for ``text``

    @property
    def key(self) -> tuple[str, int | None]:
        return (self.column, self.index)

    @property
    def where(self) -> str:
        """``text`` or ``messages[1].content``: how edits and rejections name the field."""
        return self.column if self.index is None else f"{self.column}[{self.index}].content"


def text_fields(row: Mapping[str, Any]) -> Iterator[TextField]:
    """Every non-empty text of ``row``: ``text``, then each message's string ``content`` in
    ``messages``, ``chosen`` and ``rejected`` order."""
    text = row.get("text")
    if isinstance(text, str) and text:
        yield TextField("text", None, text)
    for column in MESSAGE_COLUMNS:
        for index, message in enumerate(row.get(column) or []):
            content = message.get("content")
            if isinstance(content, str) and content:
                yield TextField(column, index, content, message.get("role"))


def with_texts(row: Row, replacements: Mapping[tuple[str, int | None], str]) -> Row:
    """A copy of ``row`` with the texts at ``replacements``' keys (:attr:`TextField.key`) replaced.
    Only the changed columns and messages are copied; ``row`` itself is never mutated, and with no
    replacements it is returned as is."""
    if not replacements:
        return row
    out = dict(row)
    for (column, index), text in replacements.items():
        if index is None:
            out[column] = text
            continue
        if out[column] is row[column]:
            out[column] = list(row[column])
        out[column][index] = {**out[column][index], "content": text}
    return out


def prompt_text(row: Row) -> str:
    """The user-side text of a row: all user turns (or the text of a text row)."""
    if row.get("kind") == "text":
        return row.get("text") or ""
    return "\n".join(m.get("content") or "" for m in (row.get("messages") or []) if m.get("role") == "user")


def response_text(row: Row) -> str:
    """The model-side text: assistant turns, or the chosen completion of preference rows."""
    if row.get("kind") == "preference":
        return "\n".join(m.get("content") or "" for m in (row.get("chosen") or []))
    return "\n".join(m.get("content") or "" for m in (row.get("messages") or []) if m.get("role") == "assistant")


def all_text(row: Mapping[str, Any]) -> str:
    """Every text of the row (:func:`text_fields`) joined by newlines, for scanning (PII, blocklists, …)."""
    return "\n".join(field.text for field in text_fields(row))
