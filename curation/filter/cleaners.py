"""Cleaners: edits that repair a row instead of dropping it, each recorded as an :class:`Edit`.

Each is a :class:`curation.filter.base.Cleaner` editing one text at a time (``clean_text``); the
base applies it to every text of the row. Default cleaners run in the order they are defined here
(encoding repair before HTML), whitespace last.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import ftfy
from ftfy import chardata
from selectolax.lexbor import LexborHTMLParser

from curation.core.normalize import words
from curation.core.schema import Row
from curation.core.texts import CODE_SPANS, prompt_text
from curation.filter.base import Cleaner, Edit
from curation.filter.batch import BatchTexts, Screen
from curation.filter.pii import REGEX_ENTITIES, batch_candidates, batch_screens, redact
from curation.filter.prefilter import wider_re2
from curation.filter.quality import looks_like_mojibake, mojibake_flags
from curation.filter.whitespace import WHITESPACE_RULES, WHITESPACE_UNICODE, needs_whitespace_rules

# ---------------------------------------------------------------------------------------------
# Mojibake and Unicode repair (ftfy)
# ---------------------------------------------------------------------------------------------

# Control characters ftfy removes; pure-ASCII text without them has nothing for ftfy to fix, and
# skipping it keeps this cleaner nearly free on English data.
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# Every character one of ftfy's fixers (other than the mojibake repair and NFC) replaces or removes:
# C1 and other control characters, ligatures, line separators, surrogates, terminal escapes.
_FTFY_EDITS = re.compile(
    "["
    + "".join(f"\\U{code:08x}" for code in sorted({*chardata.CONTROL_CHARS, *chardata.LIGATURES}))
    + r"\x80-\x9f\r\u2028\u2029\x1b\ud800-\udfff]"
)


# What the first test of clean_text passes: text that is not ASCII, or has a control character.
_FIX_ENCODING_SCREEN = wider_re2(re.compile(rf"[^\x00-\x7f]|{_ASCII_CONTROL.pattern}"))


def _unchanged_by_ftfy(text: str, mojibake: bool) -> bool:
    """True when ftfy (default fixers, no HTML, quote or width changes) would return ``text`` as it is:
    no mojibake (``mojibake`` is :func:`looks_like_mojibake` of it), nothing its fixers replace, already
    NFC. Much cheaper than running it."""
    return not mojibake and not _FTFY_EDITS.search(text) and unicodedata.is_normalized("NFC", text)


@dataclass(frozen=True)
class FixEncoding(Cleaner):
    """Repair mojibake, broken surrogates and control characters with ftfy (Speer 2019)."""

    name = "fix_encoding"
    default = True
    # Off by default: these change legitimate text rather than repair it. HTML entities are the
    # HTML cleaner's business (and are meaningful inside code); curly quotes and full-width
    # characters are correct typography in many languages.
    unescape_html: bool = False
    uncurl_quotes: bool = False
    fix_character_width: bool = False

    def _config(self) -> ftfy.TextFixerConfig:
        return ftfy.TextFixerConfig(
            unescape_html=self.unescape_html,
            uncurl_quotes=self.uncurl_quotes,
            fix_character_width=self.fix_character_width,
            explain=True,
        )

    def screen(self) -> str | None:
        return _FIX_ENCODING_SCREEN

    def clean_text(self, text: str) -> tuple[str, str | None]:
        return self._clean(text, looks_like_mojibake(text))

    def clean_screened(self, texts: Sequence[str]) -> list[tuple[str, str | None]]:
        return [self._clean(text, mojibake) for text, mojibake in zip(texts, mojibake_flags(texts), strict=True)]

    def _clean(self, text: str, mojibake: bool) -> tuple[str, str | None]:
        if text.isascii():
            if not _ASCII_CONTROL.search(text):
                return text, None
        elif not (self.unescape_html or self.uncurl_quotes or self.fix_character_width) and _unchanged_by_ftfy(
            text, mojibake
        ):
            return text, None
        fixed, explanation = ftfy.fix_and_explain(text, config=self._config())
        if fixed == text:
            return text, None
        steps = ", ".join(f"{op} {arg}" for op, arg in explanation or []) or "unicode repair"
        return fixed, f"ftfy: {steps}"


# ---------------------------------------------------------------------------------------------
# HTML residue → text (selectolax), leaving code and rows about markup alone
# ---------------------------------------------------------------------------------------------

_ELEMENT_NAMES = (
    "a abbr address article aside b big blockquote body br caption center cite code dd del details div "
    "dl dt em figcaption figure font footer h1 h2 h3 h4 h5 h6 head header hr i img ins kbd li main mark "
    "nav ol p pre q s small span strike strong sub summary sup table tbody td tfoot th thead tr tt u ul"
)
_HTML_ELEMENTS = frozenset(_ELEMENT_NAMES.split())
_RESIDUE_TAG = re.compile(r"</?(?:" + "|".join(sorted(_HTML_ELEMENTS)) + r")(?:\s[^<>]*)?/?>", re.IGNORECASE)
_ENTITY = re.compile(r"&(?:nbsp|amp|lt|gt|quot|apos|#\d{1,6}|#x[0-9a-fA-F]{1,6});")
# Markup that means "this is a document or program", not residue around prose.
_HTML_IS_CODE = re.compile(
    r"<!DOCTYPE|<html|<head|<body|<script|<style|<\?php|<\?xml|<%|<form|<input"
    r"|<template|\{\{|\{%",
    re.IGNORECASE,
)
# Lines that look like program text (C-family, Python, shell); one is enough to leave a message alone.
_CODE_LINE = re.compile(
    r"[{};]\s*$|^\s*(?:#include|import |from \S+ import|def |class |function |"
    r"const |let |var |public |private |return |SELECT |<\?)",
    re.MULTILINE,
)
# Prompts about markup: the HTML in the answer is the point (code-alpaca "create an HTML page …"). Only words
# that name markup or the tools that write it; "email" and "newsletter" name kinds of prose, and scraped pages
# mention them as often as any other word (issue 15: a scraped row with "email" in it escaped cleaning).
_MARKUP_TOPIC = re.compile(
    r"\b(?:html5?|xhtml|xml|css|svg|dom|jsx|tsx|react|vue|angular|markup|tags?|"
    r"web ?pages?|websites?|templates?|php|jsp|jinja|django|flask|bootstrap|jquery|"
    r"javascript|js|scrap(?:e|ing)|beautifulsoup|selectolax|parser|elements?|markdown)\b",
    re.IGNORECASE,
)
# Elements whose end tag HTML requires: a page (or residue cut from one) closes them, so an opening tag of one
# that is never closed in the user's text is an element named in a question ("how do I write a <div>?").
_END_TAG_REQUIRED = _HTML_ELEMENTS - {"br", "hr", "img", "p", "li", "dt", "dd", "tr", "td", "th"}
_OPENING_TAG = re.compile(r"<([a-z][a-z0-9]*)(?:\s[^<>]*)?>", re.IGNORECASE)
_CLOSING_TAG = re.compile(r"</([a-z][a-z0-9]*)\s*>", re.IGNORECASE)


def about_markup(prompt: str) -> bool:
    """Does the user's text ask about markup, so that tags in the row are its subject and not residue?

    Judged on what the user writes, not on the markup around it: words inside tags (``class="email-signup"``,
    ``href="/tags/…"``) do not count, so a scraped page is not "about markup" because of its own residue.
    A tag quoted in a code span, or an element opened and never closed, is an element named in a question."""
    pieces = CODE_SPANS.split(prompt)
    if any(_RESIDUE_TAG.search(code) or _HTML_IS_CODE.search(code) for code in pieces[1::2]):
        return True
    prose = " ".join(pieces[0::2])
    if _MARKUP_TOPIC.search(_RESIDUE_TAG.sub(" ", prose)):
        return True
    opened = {m.group(1).lower() for m in _OPENING_TAG.finditer(prose)} & _END_TAG_REQUIRED
    return bool(opened - {m.group(1).lower() for m in _CLOSING_TAG.finditer(prose)})


# The first test of clean_text: a known tag or an entity somewhere.
_HTML_SCREEN = wider_re2(re.compile(f"{_RESIDUE_TAG.pattern}|{_ENTITY.pattern}", re.IGNORECASE))
_BLOCK_TAGS = "p,div,tr,h1,h2,h3,h4,h5,h6,blockquote,pre,table,hr,dt,dd,section,article,header,footer"


def _html_fragment_to_text(fragment: str) -> str:
    tree = LexborHTMLParser(f"<body>{fragment}</body>")
    body = tree.body
    if body is None:
        return fragment
    for node in body.css(_BLOCK_TAGS):
        node.insert_before("\n")
        node.insert_after("\n")
    for node in body.css("br,ul,ol,dl"):  # lists: each <li> starts its own line below
        node.insert_after("\n")
    for node in body.css("li"):
        node.insert_before("\n- ")
    text = body.text(separator="")
    # HTML collapses runs of spaces when rendering; do the same so "&nbsp; " leaves one space.
    text = re.sub(r"[ \t\xa0]{2,}", " ", text.replace("\xa0", " "))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n")


def _expected_words(fragment: str) -> list[str]:
    # Only known HTML tags may disappear: "List<String>" next to a <b> must survive intact.
    return words(html.unescape(_RESIDUE_TAG.sub(" ", fragment)))


@dataclass(frozen=True)
class HtmlToText(Cleaner):
    """Turn HTML residue around prose into text; code, code blocks and rows about markup are kept."""

    name = "html_to_text"
    default = True
    respect_topic: bool = True

    def clean_text(self, text: str) -> tuple[str, str | None]:
        if ("<" not in text or not _RESIDUE_TAG.search(text)) and ("&" not in text or not _ENTITY.search(text)):
            return text, None
        if _HTML_IS_CODE.search(text) or _CODE_LINE.search(text):
            return text, None
        pieces = CODE_SPANS.split(text)
        changed, tags = False, 0
        for i in range(0, len(pieces), 2):  # even indices are prose; odd ones are code spans
            prose = pieces[i]
            n_tags = len(_RESIDUE_TAG.findall(prose))
            if not n_tags and not _ENTITY.search(prose):
                continue
            converted = _html_fragment_to_text(prose)
            # Guard: a real parser may read "a<b" or "List<T>" as markup. Accept the result only if
            # it keeps exactly the words of the input minus its tags, so no prose is ever lost.
            if words(converted) != _expected_words(prose):
                return text, None
            # Keep the spacing that joined this piece to its neighbouring code spans.
            lead = prose[: len(prose) - len(prose.lstrip())]
            trail = prose[len(prose.rstrip()) :]
            pieces[i] = lead + converted.strip() + trail if converted.strip() else lead + trail
            changed, tags = True, tags + n_tags
        if not changed:
            return text, None
        return "".join(pieces), f"HTML residue to text ({tags} tags removed, entities decoded)"

    def screen(self) -> str | None:
        return _HTML_SCREEN

    def clean(self, row: Row) -> tuple[Row, list[Edit]]:
        return self._about_markup(row, *super().clean(row))

    def clean_batch(self, rows: Sequence[Row], fields: BatchTexts) -> dict[int, tuple[Row, list[Edit]]]:
        changes = {}
        for position, cleaned in self.clean_texts(rows, fields).items():
            new, edits = self._about_markup(rows[position], *cleaned)
            if edits:
                changes[position] = (new, edits)
        return changes

    def _about_markup(self, row: Row, cleaned: Row, edits: list[Edit]) -> tuple[Row, list[Edit]]:
        """``row`` unchanged when its prompt is about markup, else the cleaned row."""
        # Checked only for rows with residue: the topic regex is the costly part on clean data.
        if edits and self.respect_topic and about_markup(prompt_text(row)):
            return row, []
        return cleaned, edits


# ---------------------------------------------------------------------------------------------
# Markdown residue (opt-in: for targets that must be plain text)
# ---------------------------------------------------------------------------------------------

_MD_RULES: tuple[tuple[re.Pattern[str], str, str], ...] = (
    (re.compile(r"!\[([^\]\n]*)\]\([^)\s]+(?:\s+\"[^\"]*\")?\)"), r"\1", "images"),
    (re.compile(r"\[([^\]\n]+)\]\([^)\s]+(?:\s+\"[^\"]*\")?\)"), r"\1", "links"),
    (re.compile(r"^#{1,6}[ \t]+", re.MULTILINE), "", "headings"),
    (re.compile(r"\*\*(?=\S)([^\n]*?\S)\*\*"), r"\1", "bold"),
    # Single * only between non-word characters, so a*b*c survives. Underscore emphasis is left
    # alone: outside code spans it is far more often __init__ or snake_case than formatting.
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])"), r"\1", "italics"),
    (re.compile(r"^[ \t]*(?:-{3,}|\*{3,}|_{3,})[ \t]*$", re.MULTILINE), "", "rules"),
)


@dataclass(frozen=True)
class MarkdownResidue(Cleaner):
    """Strip Markdown formatting (links, emphasis, headings) outside code; opt-in."""

    name = "markdown"

    def screen(self) -> str | None:
        return r"[*#\[\-_]"

    def clean_text(self, text: str) -> tuple[str, str | None]:
        if not any(ch in text for ch in "*#[-_"):
            return text, None
        pieces = CODE_SPANS.split(text)
        fired: list[str] = []
        for i in range(0, len(pieces), 2):
            for pattern, replacement, label in _MD_RULES:
                new, n = pattern.subn(replacement, pieces[i])
                if n:
                    pieces[i] = new
                    if label not in fired:
                        fired.append(label)
        if not fired:
            return text, None
        return "".join(pieces), "markdown removed: " + ", ".join(fired)


# ---------------------------------------------------------------------------------------------
# PII and secrets (detection in curation.filter.pii)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PiiRedactor(Cleaner):
    """Replace personal data and secrets with typed placeholders such as [EMAIL] (curation.filter.pii).

    ``entities`` limits which types are redacted (default: every regex-detected type). Types to drop
    instead of redact go to the ``pii`` filter and are left out here."""

    name = "pii"
    default = True
    entities: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        chosen = tuple(self.entities) if self.entities is not None else REGEX_ENTITIES
        unknown = sorted(set(chosen) - set(REGEX_ENTITIES))
        if unknown:
            raise ValueError(f"cleaner pii: unknown entities {unknown}; known: {', '.join(REGEX_ENTITIES)}")
        object.__setattr__(self, "entities", tuple(e for e in chosen if e not in set(self.exclude)))

    def clean_text(self, text: str) -> tuple[str, str | None]:
        return self._redact(text, self.entities or ())

    def _redact(self, text: str, entities: Collection[str]) -> tuple[str, str | None]:
        redacted, matches = redact(text, entities)
        if not matches:
            return text, None
        counts: dict[str, int] = {}
        for match in matches:
            counts[match.entity] = counts.get(match.entity, 0) + 1
        return redacted, "redacted " + ", ".join(f"{n} {entity}" for entity, n in sorted(counts.items()))

    def screens(self) -> list[Screen]:
        return batch_screens(self.entities)

    def clean_batch(self, rows: Sequence[Row], fields: BatchTexts) -> dict[int, tuple[Row, list[Edit]]]:
        # Screened first: only the texts that may hold PII are searched, each for what it may hold.
        by_row: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
        owner = fields.owner
        for position, entities in batch_candidates(fields, self.entities).items():
            by_row.setdefault(int(owner[position]), []).append((position, entities))
        changes = {}
        for row, flagged in by_row.items():
            row_fields, first = fields[row], fields.starts[row]
            cleaned = [
                (row_fields[position - first], self._redact(fields.texts[position], entities))
                for position, entities in flagged
            ]
            new, edits = self.edit_texts(rows[row], cleaned)
            if edits:
                changes[row] = (new, edits)
        return changes


# ---------------------------------------------------------------------------------------------
# Whitespace normalisation
# ---------------------------------------------------------------------------------------------

_INDENTED_START = re.compile(r"\A\n*[ \t]+\S[^\n]*\n(?:[ \t]*\n)*[ \t]+\S")

# The first test of clean_text: one of the substrings of `needs_whitespace_rules`, or white space at either end.
_WHITESPACE_SCREEN = wider_re2(re.compile(rf"\r| \n|\t\n|\n\n\n|{WHITESPACE_UNICODE.pattern}|\A\s|\s\Z"))


@dataclass(frozen=True)
class NormalizeWhitespace(Cleaner):
    """Unify line endings, drop trailing spaces and extra blank lines, trim the ends (indent kept)."""

    name = "whitespace"
    default = True

    def screen(self) -> str | None:
        return _WHITESPACE_SCREEN

    def clean_text(self, text: str) -> tuple[str, str | None]:
        if not needs_whitespace_rules(text) and not text[:1].isspace() and not text[-1:].isspace():
            return text, None  # fast path: most rows are already clean
        fired: list[str] = []
        for pattern, replacement, label, may_fire in WHITESPACE_RULES:
            if not may_fire(text):
                continue
            new, n = pattern.subn(replacement, text)
            if n:
                text = new
                fired.append(label)
        # Leading indentation of a code answer is meaningful; otherwise trim both ends.
        trimmed = text.strip("\n").rstrip() if _INDENTED_START.match(text) else text.strip()
        if trimmed != text:
            text = trimmed
            fired.append("leading/trailing whitespace")
        return text, ("whitespace: " + ", ".join(fired)) if fired else None
