"""What dedup compares: the field sets of a row (``first_prompt``, ``prompt``, ``prompt_response``,
``conversation``), as pieces for the exact key or as one text for near-duplicate shingles."""

from __future__ import annotations

from typing import Literal

from curation.core.schema import Row
from curation.core.texts import prompt_text, response_text

FieldSet = Literal["first_prompt", "prompt", "prompt_response", "conversation"]
FIELD_SETS: tuple[str, ...] = ("first_prompt", "prompt", "prompt_response", "conversation")


def _first_user(row: Row) -> str:
    if row.get("kind") == "text":
        return row.get("text") or ""
    for message in row.get("messages") or []:
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def field_parts(row: Row, fields: FieldSet) -> list[str]:
    """The pieces of a row that a field set compares, in a fixed order."""
    if fields == "first_prompt":
        return [_first_user(row)]
    if fields == "prompt":
        return [prompt_text(row)]
    if fields == "prompt_response":
        return [prompt_text(row), response_text(row)]
    if fields == "conversation":
        parts = [row.get("kind") or "", row.get("text") or ""]
        for column in ("messages", "chosen", "rejected"):
            for message in row.get(column) or []:
                parts.append(f"{column}:{message.get('role')}")
                parts.append(message.get("content") or "")
        return parts
    raise ValueError(f"unknown dedup field set {fields!r}; use one of {', '.join(FIELD_SETS)}")


def dedup_text(row: Row, fields: FieldSet) -> str:
    """The compared text of a row as one string (what near-duplicate shingles are taken from):
    contents only, without the kind and role labels the exact key includes."""
    parts = field_parts(row, fields)
    if fields == "conversation":
        parts = parts[1:2] + parts[3::2]
    return "\n".join(p for p in parts if p)
