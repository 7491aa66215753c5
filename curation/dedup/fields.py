"""What dedup compares: the field sets of a row (``first_prompt``, ``prompt``, ``prompt_response``,
``conversation``; for a preference row ``prompt_response`` is the prompt, the chosen and the rejected
answer), as pieces for the exact key or as one text for near-duplicate shingles, and the normalised form
of a text that every comparison uses (:func:`normalized`)."""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Callable
from typing import Literal

from curation.core.normalize import NormalizeOptions, normalize_text
from curation.core.schema import Row
from curation.core.texts import prompt_text, response_text

FieldSet = Literal["first_prompt", "prompt", "prompt_response", "conversation"]
FIELD_SETS: tuple[str, ...] = ("first_prompt", "prompt", "prompt_response", "conversation")


_FOLDED = NormalizeOptions(unicode_nfkc=True, lowercase=True, collapse_whitespace=True, strip_punctuation=False)
"""The options :func:`normalizer` has a fast path for (the defaults, what every stage setting gives unless
``strip_punctuation`` is on)."""


def fold(text: str) -> str:
    """:func:`~curation.core.normalize.normalize_text` under the default options (what :func:`normalizer`
    gives for them). NFKC leaves ASCII as it is and ``casefold()`` is ``lower()`` on it, so only other text
    takes the Unicode steps."""
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


@functools.lru_cache(maxsize=16)
def normalizer(options: NormalizeOptions) -> Callable[[str], str]:
    """:func:`~curation.core.normalize.normalize_text` under ``options`` as a one-argument function, for
    loops over every paragraph of every row: the options are looked at once, not per text, and ASCII text
    skips the Unicode steps that cannot change it (tests compare it with ``normalize_text``)."""
    if options == _FOLDED:
        return fold
    return functools.partial(normalize_text, options=options)


@functools.lru_cache(maxsize=512)
def normalized(text: str, options: NormalizeOptions) -> str:
    """:func:`~curation.core.normalize.normalize_text`, remembered for the texts of the last few rows: a
    row's paragraphs are normalised for in-row repeats and again for boilerplate, its prompt and
    response for the exact key and again for conflicts."""
    return normalizer(options)(text)


def _first_user(row: Row) -> str:
    if row.get("kind") == "text":
        return row.get("text") or ""
    for message in row.get("messages") or []:
        if message.get("role") == "user":
            return message.get("content") or ""
    return ""


def field_parts(row: Row, fields: FieldSet, prompt: str | None = None, response: str | None = None) -> list[str]:
    """The pieces of a row that a field set compares, in a fixed order. ``prompt`` and ``response`` are the
    row's :func:`~curation.core.texts.prompt_text` and :func:`~curation.core.texts.response_text` when the
    caller has them already."""
    if fields == "first_prompt":
        return [_first_user(row)]
    if fields == "prompt":
        return [prompt_text(row) if prompt is None else prompt]
    if fields == "prompt_response":
        pair = [prompt_text(row) if prompt is None else prompt, response_text(row) if response is None else response]
        # A preference row's response is the comparison, not the chosen side alone: two pairs that share
        # a prompt and a chosen answer but reject different answers are different data.
        return [*pair, rejected_text(row)] if row.get("kind") == "preference" else pair
    if fields == "conversation":
        parts = [row.get("kind") or "", row.get("text") or ""]
        for column in ("messages", "chosen", "rejected"):
            for message in row.get(column) or []:
                parts.append(f"{column}:{message.get('role')}")
                parts.append(message.get("content") or "")
        return parts
    raise ValueError(f"unknown dedup field set {fields!r}; use one of {', '.join(FIELD_SETS)}")


def rejected_text(row: Row) -> str:
    """The rejected completion of a preference row (its contents joined, as ``response_text`` joins the
    chosen one); empty for other kinds."""
    if row.get("kind") != "preference":
        return ""
    return "\n".join(m.get("content") or "" for m in (row.get("rejected") or []))


def dedup_text(row: Row, fields: FieldSet) -> str:
    """The compared text of a row as one string (what near-duplicate shingles are taken from):
    contents only, without the kind and role labels the exact key includes."""
    return compared_text(field_parts(row, fields), fields)


def compared_text(parts: list[str], fields: FieldSet) -> str:
    """:func:`dedup_text` from the row's :func:`field_parts` (when they are at hand already)."""
    if fields == "conversation":
        parts = parts[1:2] + parts[3::2]
    return "\n".join(p for p in parts if p)
