"""The whitespace normalisation rules, in one place: the ``whitespace`` cleaner applies them, and PII
detection (:func:`curation.filter.pii.whitespace_view`) reads a text as they will leave it, since that
cleaner runs after the ``pii`` one and a rule can join a number to the context word that makes it PII."""

from __future__ import annotations

import re
from collections.abc import Callable

WHITESPACE_RULES: tuple[tuple[re.Pattern[str], str, str, Callable[[str], bool]], ...] = (
    # Each with a test every text the rule changes passes (substrings, far cheaper than searching).
    (re.compile(r"\r\n?"), "\n", "CR line endings", lambda text: "\r" in text),
    # No-break and narrow no-break spaces are scraping residue in instruction data; zero-width
    # space and BOM are invisible noise. ZWJ/ZWNJ are kept: they matter in emoji and Persian.
    (re.compile(r"[\u00a0\u202f]"), " ", "no-break spaces", lambda text: not text.isascii()),
    (re.compile(r"[\u200b\ufeff]"), "", "zero-width characters", lambda text: not text.isascii()),
    (
        re.compile(r"[ \t]+$", re.MULTILINE),
        "",
        "trailing spaces",
        lambda text: " \n" in text or "\t\n" in text or text.endswith((" ", "\t")),
    ),
    (re.compile(r"\n{3,}"), "\n\n", "runs of blank lines", lambda text: "\n\n\n" in text),
)
"""(pattern, replacement, label in the edit's description, cheap test every text it changes passes)."""
WHITESPACE_UNICODE = re.compile(r"[\u00a0\u202f\u200b\ufeff]")


def needs_whitespace_rules(text: str) -> bool:
    """Whether one of :data:`WHITESPACE_RULES` would fire; substring tests, far cheaper than searching."""
    return (
        "\r" in text
        or " \n" in text
        or "\t\n" in text
        or "\n\n\n" in text
        or (not text.isascii() and WHITESPACE_UNICODE.search(text) is not None)
    )
