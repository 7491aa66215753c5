"""Screening a batch of texts at once: a wider RE2 pattern run by Arrow over a whole column.

Python's ``re`` tries a pattern at every position of a text, a few microseconds per hundred
characters; with a dozen patterns per row that is most of the filter chain's time, although almost no
text matches. Arrow's ``match_substring_regex`` runs RE2 (linear time, a DFA) over a whole column in
one call. A step screens its batch with it and runs its own Python code only on the texts the screen
passed, so its results are exactly those of running it on every text, provided the screen is *wider*
than the step: every text the step could act on must pass.

:func:`wider_re2` makes such a screen from any Python pattern: the same regular language with the
assertions (``\\b``, lookarounds, anchors) dropped, back-references replaced by what their group
matches, and every character class widened to what Python's Unicode semantics may match (Unicode
digits, ``\\s`` as ``str.isspace``, case-insensitive letters with Python's extra case pairs). A
pattern it cannot translate gets no screen (``None``), so every text is searched.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

ANY = r"(?s:.)"
DIGIT = r"\p{Nd}"
"""Every character Python's ``\\d`` matches (RE2's Unicode tables are at least as recent)."""
WORD = r"\p{L}\p{N}\p{M}_"
"""Inside a class: every character Python's ``\\w`` matches (``str.isalnum`` or ``_``)."""
SPACE = r"\s\p{Z}\x{0b}\x{1c}-\x{1f}\x{85}"
"""Inside a class: every character Python's ``\\s`` matches (``str.isspace``)."""
OTHER_CASES = {"i": "\u0130\u0131", "k": "\u212a", "s": "\u017f"}
"""Characters besides a letter's two cases that ``re.IGNORECASE`` takes for an ASCII letter."""

# What a negated class may exclude for a category: only characters Python's category surely holds
# (ASCII ones), so that the negated class stays wider than Python's.
_NARROW = {
    sre.CATEGORY_DIGIT: "0-9",
    sre.CATEGORY_WORD: "0-9A-Za-z_",
    sre.CATEGORY_SPACE: r"\t\n\x{0b}\f\r ",
    sre.CATEGORY_NOT_DIGIT: r"\x{0}-\x{2f}\x{3a}-\x{7f}",
    sre.CATEGORY_NOT_WORD: r"\x{0}-\x{2f}\x{3a}-\x{40}\x{5b}-\x{5e}\x{60}\x{7b}-\x{7f}",
    sre.CATEGORY_NOT_SPACE: r"\x{0}-\x{8}\x{e}-\x{1b}\x{21}-\x{7f}",
}
_WIDE = {
    sre.CATEGORY_DIGIT: DIGIT,
    sre.CATEGORY_WORD: WORD,
    sre.CATEGORY_SPACE: SPACE,
}
_RE2_MAX_REPEAT = 1000
_ANCHORS = 1 << 30  # a flag of our own among re's: keep \A and \Z


class _Untranslatable(Exception):
    pass


def _char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else f"\\x{{{code:x}}}"


def _cases(code: int) -> list[int]:
    """``code`` and every character ``re.IGNORECASE`` may take for it; raises for non-ASCII letters,
    whose case pairs are not worth listing (the caller widens to any character)."""
    char = chr(code)
    if not char.isascii() or not char.isalpha():
        if char.lower() != char.upper():
            raise _Untranslatable
        return [code]
    return [ord(c) for c in char.lower() + char.upper() + OTHER_CASES.get(char.lower(), "")]


def _class(items: list[tuple[Any, Any]], ignore_case: bool) -> str:
    negated = bool(items) and items[0][0] is sre.NEGATE
    members = items[1:] if negated else items
    parts: list[str] = []
    for op, av in members:
        if op is sre.LITERAL:
            # A negated class may exclude only the character itself; a plain one takes every case.
            parts += [_char(c) for c in ([av] if negated or not ignore_case else _cases(av))]
        elif op is sre.RANGE:
            low, high = av
            if ignore_case and not negated and any(chr(c).lower() != chr(c).upper() for c in range(low, high + 1)):
                if high > 0x7F:
                    raise _Untranslatable
                cased = {case for c in range(low, high + 1) for case in _cases(c)}
                parts += [_char(c) for c in sorted(cased)]
            else:
                parts.append(f"{_char(low)}-{_char(high)}")
        elif op is sre.CATEGORY:
            table = _NARROW if negated else _WIDE
            if av not in table:  # \D, \W or \S in a plain class: nearly anything, so anything
                return ANY
            parts.append(table[av])
        else:
            raise _Untranslatable
    return _class_of("".join(parts), negated)


def _class_of(body: str, negated: bool) -> str:
    if not body:
        return ANY if negated else "[^\\x{0}-\\x{10ffff}]"  # an empty class matches nothing
    return f"[^{body}]" if negated else f"[{body}]"


def _sequence(pattern: Any, flags: int, groups: dict[int, str]) -> str:
    return "".join(_node(op, av, flags, groups) for op, av in pattern)


def _node(op: Any, av: Any, flags: int, groups: dict[int, str]) -> str:
    ignore_case = bool(flags & re.IGNORECASE)
    if op is sre.LITERAL:
        if not ignore_case:
            return _char(av)
        try:
            cases = _cases(av)
        except _Untranslatable:
            return ANY
        return _char(av) if len(cases) == 1 else "[" + "".join(_char(c) for c in cases) + "]"
    if op is sre.NOT_LITERAL:
        return f"[^{_char(av)}]"
    if op is sre.ANY:
        return ANY
    if op is sre.IN:
        try:
            return _class(av, ignore_case)
        except _Untranslatable:
            return ANY
    if op is sre.AT:
        # The start and end of the text are kept (RE2 has them), unless the caller screens more text
        # than the pattern sees; other assertions are dropped, which only ever widens the pattern.
        if not flags & _ANCHORS:
            return ""
        if av is sre.AT_BEGINNING_STRING or (av is sre.AT_BEGINNING and not flags & re.MULTILINE):
            return r"\A"
        return r"\z" if av is sre.AT_END_STRING else ""
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return ""
    if op is sre.BRANCH:
        return "(?:" + "|".join(_sequence(branch, flags, groups) for branch in av[1]) + ")"
    if op is sre.SUBPATTERN:
        group, add_flags, del_flags, body = av
        translated = "(?:" + _sequence(body, (flags | add_flags) & ~del_flags, groups) + ")"
        if group is not None:
            groups[group] = translated
        return translated
    if op is sre.ATOMIC_GROUP:
        return "(?:" + _sequence(av, flags, groups) + ")"
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, high, body = av
        inner = "(?:" + _sequence(body, flags, groups) + ")"
        low = min(low, _RE2_MAX_REPEAT)  # x{1500} is within x{1000,}
        if high is sre.MAXREPEAT or high > _RE2_MAX_REPEAT:
            return f"{inner}{{{low},}}"
        return f"{inner}{{{low},{high}}}"
    if op is sre.GROUPREF:
        if av not in groups:
            raise _Untranslatable
        return groups[av]  # the same text again: within what the group can match
    if op is sre.GROUPREF_EXISTS:
        _, yes, no = av
        return "(?:" + _sequence(yes, flags, groups) + "|" + (_sequence(no, flags, groups) if no else "") + ")"
    raise _Untranslatable


def wider_re2(pattern: re.Pattern[str], anchors: bool = True) -> str | None:
    """An RE2 pattern that matches every text in which ``pattern`` finds a match (and maybe others);
    ``None`` when the pattern cannot be translated or RE2 refuses the translation. ``anchors=False``
    drops the start and end of the text too, for a screen of a longer text than the pattern searches
    (e.g. ``pattern.search(text, 0, 200)`` screened on the whole text)."""
    try:
        parsed = _parser.parse(pattern.pattern, pattern.flags)
        translated = _sequence(parsed, pattern.flags | (_ANCHORS if anchors else 0), {})
        pc.match_substring_regex(pa.array([""]), translated)  # RE2 compiles it, or says why not
    except (_Untranslatable, pa.ArrowException, re.error, RecursionError):
        return None
    return translated


def matches_empty(pattern: str) -> bool:
    """Whether the RE2 ``pattern`` matches the empty text (then a screen cannot tell empty texts apart)."""
    return bool(pc.match_substring_regex(pa.array([""]), pattern)[0].as_py())


def any_of(screens: Iterable[str | None]) -> str | None:
    """One RE2 screen for several (``None`` when one of them is ``None``: no screen at all)."""
    screens = list(screens)
    if any(screen is None for screen in screens):
        return None
    return "|".join(f"(?:{screen})" for screen in screens)


def text_array(texts: Sequence[str]) -> tuple[pa.Array, list[int]]:
    """``texts`` as an Arrow string array, and the positions of those that are not UTF-8 (a lone
    surrogate): they are empty in the array, and a screen must pass them."""
    try:
        return pa.array(texts, pa.string()), []
    except UnicodeEncodeError:
        bad = [i for i, text in enumerate(texts) if not _is_utf8(text)]
        skip = set(bad)
        return pa.array(["" if i in skip else text for i, text in enumerate(texts)], pa.string()), bad


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def passing(texts: Sequence[str], pattern: str | None) -> list[int]:
    """The positions of the texts that the RE2 ``pattern`` matches, in order; a text that cannot be
    screened always passes, and every text when there is no pattern."""
    if pattern is None:
        return list(range(len(texts)))
    if not texts:
        return []
    array, unscreened = text_array(texts)
    found: list[int] = pc.indices_nonzero(pc.match_substring_regex(array, pattern)).to_pylist()
    return sorted({*found, *unscreened}) if unscreened else found


def passing_rows(texts: Sequence[Sequence[str]], pattern: str | None) -> list[int]:
    """The positions of the rows (each a list of texts) one of whose texts ``pattern`` matches."""
    flat = [text for row_texts in texts for text in row_texts]
    owner = [row for row, row_texts in enumerate(texts) for _ in row_texts]
    return list(dict.fromkeys(owner[position] for position in passing(flat, pattern)))
