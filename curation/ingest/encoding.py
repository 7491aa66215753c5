"""A mapped row's JSON, written the way :mod:`curation.core.schema` writes it, faster.

Every ingested row is written as JSON twice: its content key (:func:`~curation.core.schema.content_key`:
sorted keys, compact) and its message columns (:func:`~curation.core.schema.encode_row`: insertion order,
``", "`` and ``": "``). Both hold the same message texts, escaped the same way, and escaping them is most of
the work; with ``json.dumps`` each text is escaped once per form. :func:`content_json` escapes each text
once and writes both forms around it, for messages that are plain ``{"role", "content"}`` string pairs (what
every built-in mapping makes, tool calls aside); anything else goes through ``json.dumps`` as before. The
strings are escaped by the function the standard encoder itself uses, and tests compare the output with
``json.dumps`` on every shape.
"""

from __future__ import annotations

import json
import json.encoder
from typing import Any

_ESCAPED = json.encoder.encode_basestring
"""How ``json.dumps(..., ensure_ascii=False)`` writes a string (the C function when available)."""

KEY_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode
""":func:`~curation.core.schema.content_key`'s ``json.dumps`` settings, built once."""
COLUMN_JSON = json.JSONEncoder(ensure_ascii=False).encode
"""What :func:`~curation.core.schema.encode_row` writes a JSON column with, built once."""


_NULL = ("null", None)


def _messages(messages: Any) -> tuple[str, str | None] | None:
    """``messages`` as the content key and as its column write it (``_NULL`` for None), when every turn is a
    plain ``{"role": str, "content": str}`` (in that order); None otherwise."""
    if messages is None:
        return _NULL
    if type(messages) is not list:
        return None
    keyed, columns = [], []
    for message in messages:
        if type(message) is not dict or tuple(message) != ("role", "content"):
            return None
        role, content = message["role"], message["content"]
        if type(role) is not str or type(content) is not str:
            return None
        role, content = _ESCAPED(role), _ESCAPED(content)
        keyed.append(f'{{"content":{content},"role":{role}}}')
        columns.append(f'{{"role": {role}, "content": {content}}}')
    return f"[{','.join(keyed)}]", f"[{', '.join(columns)}]"


def content_json(
    kind: Any, messages: Any, chosen: Any, rejected: Any, score: Any, text: Any
) -> tuple[str, str | None, str | None, str | None]:
    """The content key of a row with these content columns, and its ``messages``, ``chosen`` and ``rejected``
    columns as JSON (None for None): ``content_key(row)`` and ``encode_row(row)``'s, to the character."""
    turns, best, worst = _messages(messages), _messages(chosen), _messages(rejected)
    if (
        turns is None
        or best is None
        or worst is None
        or type(kind) is not str
        or not (text is None or type(text) is str)
    ):
        payload = {"kind": kind, "messages": messages, "chosen": chosen, "rejected": rejected, "score": score}
        columns = [None if value is None else COLUMN_JSON(value) for value in (messages, chosen, rejected)]
        return KEY_JSON(payload | {"text": text}), columns[0], columns[1], columns[2]
    score_json = "null" if score is None else KEY_JSON(score)
    text_json = "null" if text is None else _ESCAPED(text)
    key = (
        f'{{"chosen":{best[0]},"kind":{_ESCAPED(kind)},"messages":{turns[0]},"rejected":{worst[0]},'
        f'"score":{score_json},"text":{text_json}}}'
    )
    return key, turns[1], best[1], worst[1]
