"""Repeated text: a paragraph (or line) repeated inside one row, and boilerplate paragraphs shared by
many rows (each row's :func:`paragraph_keys`, counted across rows in SQL by the stage). The row is kept
and the text removed from it; each removal is a :class:`RemovedText`. Fenced code blocks are never
edited (``x = 1`` twice in a program is not an accident)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import xxhash

from curation.core.normalize import DEFAULT_OPTIONS, NormalizeOptions
from curation.core.schema import Row
from curation.core.texts import FENCE_MARKERS, TextField, fenced_blocks, text_fields, with_texts
from curation.dedup.fields import normalized


@dataclass(frozen=True)
class RemovedText:
    """Text removed from a kept row (repeated paragraph inside it, or cross-document boilerplate)."""

    row_id: str
    location: str  # "text" or "messages[2]" / "chosen[0]" / "rejected[0]"
    operation: str  # "repeated_paragraph", "repeated_line" or "boilerplate"
    removed: str


def _location(text_field: TextField) -> str:
    """How a removal names its field (in ``RemovedText.location`` and so in lineage): ``text`` or
    ``messages[2]``, without the ``.content`` that :attr:`TextField.where` adds."""
    return text_field.column if text_field.index is None else f"{text_field.column}[{text_field.index}]"


_PARAGRAPH_SPLIT = re.compile(r"\n[ \t]*\n")
_LINE_SPLIT = re.compile(r"\n")
UNIT_SPLIT: dict[str, re.Pattern[str]] = {"paragraph": _PARAGRAPH_SPLIT, "line": _LINE_SPLIT}
"""Where a text's units (``WithinConfig.unit``) end; boilerplate is counted in paragraphs."""


def _blocks(text: str) -> list[tuple[str, bool]]:
    """The text as (block, is_code) pieces; fenced code blocks are never edited."""
    if not any(marker in text for marker in FENCE_MARKERS):  # most texts: no regex search needed
        return [(text, False)] if text else []
    out: list[tuple[str, bool]] = []
    pos = 0
    for block in fenced_blocks(text):
        if block.start < pos:  # inside the rest of the previous block's closing line
            continue
        end = text.find("\n", block.end)  # the closing fence's line belongs to the block
        end = len(text) if end < 0 else end + 1
        out.append((text[pos : block.start], False))
        out.append((text[block.start : end], True))
        pos = end
    out.append((text[pos:], False))
    return [(b, code) for b, code in out if b]


def _key(unit: str, options: NormalizeOptions) -> str:
    return normalized(unit, options)


_FENCE_A, _FENCE_B = FENCE_MARKERS


def has_fence(text: str) -> bool:
    """Whether ``text`` holds a code-fence marker (without one it is a single prose block)."""
    return _FENCE_A in text or _FENCE_B in text


def prose_units(text: str, unit: str = "paragraph") -> list[str]:
    """The units (``paragraph`` or ``line``) of ``text`` outside fenced code, in order: what in-row repeats
    compare and boilerplate counts."""
    split = UNIT_SPLIT[unit]
    if not has_fence(text):
        # One prose block; neither unit can end in a text without a newline.
        return split.split(text) if "\n" in text else [text] if text else []
    return [piece for block, is_code in _blocks(text) if not is_code for piece in split.split(block)]


def paragraph_digest(key: str) -> str:
    """The key of a normalised paragraph among the boilerplate counts (:func:`paragraph_keys`): 128 bits of
    XXH3, several times cheaper than a cryptographic digest and as unlikely to collide by chance (the
    keys live only while the stage runs)."""
    return xxhash.xxh3_128_hexdigest(key.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# Repeats inside one row.


@dataclass(frozen=True)
class WithinConfig:
    """Repeated units inside one text: ``paragraph`` (blank-line separated) or ``line``.
    Units shorter than ``min_chars`` (after normalisation) are never removed: short lines such as
    ``}`` or list bullets repeat legitimately."""

    unit: Literal["paragraph", "line"] = "paragraph"
    min_chars: int = 20
    normalize: NormalizeOptions = DEFAULT_OPTIONS


def remove_repeats(text: str, config: WithinConfig = WithinConfig()) -> tuple[str, list[str]]:
    """``text`` with later repeats of a paragraph (or line) removed; returns (text, removed units)."""
    seen: set[str] = set()
    removed: list[str] = []
    pieces: list[str] = []
    splitter = _PARAGRAPH_SPLIT if config.unit == "paragraph" else _LINE_SPLIT
    joiner = "\n\n" if config.unit == "paragraph" else "\n"
    blocks = _blocks(text)
    if len(blocks) < 2 and not splitter.search(text):  # one unit: nothing can repeat
        return text, []
    for block, is_code in blocks:
        if is_code:
            pieces.append(block)
            continue
        kept_units = []
        for unit in splitter.split(block):
            key = _key(unit, config.normalize)
            if len(key) >= config.min_chars and key in seen:
                removed.append(unit)
                continue
            seen.add(key)
            kept_units.append(unit)
        pieces.append(joiner.join(kept_units))
    return ("".join(pieces), removed) if removed else (text, [])


def remove_repeats_in_row(
    row: Row, config: WithinConfig = WithinConfig(), fields: Iterable[TextField] | None = None
) -> tuple[Row, list[RemovedText]]:
    """Apply :func:`remove_repeats` to each text field and message of a row (row kept, removals recorded).
    ``fields`` are the row's :func:`~curation.core.texts.text_fields` when the caller has them already."""
    removals: list[RemovedText] = []
    replacements: dict[tuple[str, int | None], str] = {}
    for text_field in text_fields(row) if fields is None else fields:
        new_text, removed = remove_repeats(text_field.text, config)
        if removed:
            replacements[text_field.key] = new_text
            removals.extend(
                RemovedText(row["row_id"], _location(text_field), f"repeated_{config.unit}", r) for r in removed
            )
    return with_texts(row, replacements), removals


# ---------------------------------------------------------------------------------------------
# Boilerplate across rows.


@dataclass(frozen=True)
class BoilerplateConfig:
    """A paragraph is boilerplate when it occurs in at least ``min_docs`` rows and in at least
    ``min_fraction`` of all rows (the C4 cleaning removed repeated spans across documents the same
    way; these thresholds are ours and configurable)."""

    min_docs: int = 10
    min_fraction: float = 0.001
    min_chars: int = 30
    normalize: NormalizeOptions = DEFAULT_OPTIONS
    # Only model-side text and documents: in instruction data a prompt shared by many rows ("Multiply the
    # two numbers.") with different inputs is the task itself, while boilerplate — sign-offs, disclaimers,
    # "I hope this helps!" — lives in responses and scraped documents.
    roles: tuple[str, ...] = ("assistant",)


def _boilerplate_fields(
    row: Row, config: BoilerplateConfig, fields: Iterable[TextField] | None = None
) -> Iterator[TextField]:
    """Text rows' text and the messages whose role is in ``config.roles`` (chosen/rejected are assistant)."""
    for text_field in text_fields(row) if fields is None else fields:
        if text_field.column != "messages" or text_field.role in config.roles:
            yield text_field


def _paragraph_keys(text: str, config: BoilerplateConfig) -> Iterable[tuple[str, str]]:
    for unit in prose_units(text):
        key = _key(unit, config.normalize)
        if len(key) >= config.min_chars:
            yield unit, paragraph_digest(key)


def paragraph_keys(
    row: Row, config: BoilerplateConfig = BoilerplateConfig(), fields: Iterable[TextField] | None = None
) -> list[str]:
    """The distinct (normalised, hashed) paragraphs of a row's boilerplate fields, sorted: a paragraph is
    boilerplate when the keys of enough rows contain it (:func:`boilerplate_floor`). ``fields`` are the
    row's :func:`~curation.core.texts.text_fields` when the caller has them already."""
    return sorted(
        {
            key
            for text_field in _boilerplate_fields(row, config, fields)
            for _, key in _paragraph_keys(text_field.text, config)
        }
    )


def boilerplate_floor(n_rows: int, config: BoilerplateConfig = BoilerplateConfig()) -> int:
    """How many of ``n_rows`` rows a paragraph must occur in to be boilerplate."""
    return max(config.min_docs, math.ceil(config.min_fraction * n_rows))


def strip_boilerplate(
    row: Row,
    keys: Collection[str],
    config: BoilerplateConfig = BoilerplateConfig(),
    fields: Iterable[TextField] | None = None,
) -> tuple[Row, list[RemovedText]]:
    """Remove boilerplate paragraphs from a row. A field made only of boilerplate is left as it is
    (a stock answer that is the whole response is content, not decoration; filters judge it). ``fields``
    are the row's :func:`~curation.core.texts.text_fields` when the caller has them already."""
    removals: list[RemovedText] = []
    replacements: dict[tuple[str, int | None], str] = {}
    for text_field in _boilerplate_fields(row, config, fields):
        text = text_field.text
        hits = [unit for unit, key in _paragraph_keys(text, config) if key in keys]
        if not hits:
            continue
        pieces = []
        removed = []
        for block, is_code in _blocks(text):
            if is_code:
                pieces.append(block)
                continue
            units = _PARAGRAPH_SPLIT.split(block)
            kept = []
            for unit in units:
                key = _key(unit, config.normalize)
                if len(key) >= config.min_chars and paragraph_digest(key) in keys:
                    removed.append(unit)
                else:
                    kept.append(unit)
            pieces.append("\n\n".join(kept))
        new_text = "".join(pieces)
        if not new_text.strip():
            continue
        replacements[text_field.key] = new_text.strip("\n") if new_text != text else text
        removals.extend(RemovedText(row["row_id"], _location(text_field), "boilerplate", r) for r in removed)
    return with_texts(row, replacements), removals
