"""Quality heuristics for instruction, chat and preference data (each a filter; see curation/filter/base.py).

Sources of the defaults:

* **Gopher** — Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
  Training Gopher", Appendix A.1.1 (quality filters) and Table A1 (repetition thresholds).
  Written for web documents; applied here as they are to ``text`` rows, and with the
  adaptations noted at each filter to instruction responses.
* **C4** — Raffel et al. 2020, "Exploring the Limits of Transfer Learning …", §2.2. Of its
  rules only "lorem ipsum" fits instruction data (a placeholder response, see
  :class:`EmptyFilter`). Its curly-brace rule would drop every code answer, and its
  terminal-punctuation and 3-word-line rules would drop lists, code and one-word answers, so
  they are not used.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from ftfy.badness import BADNESS_RE

from curation.core.normalize import NormalizeOptions, normalize_text, words
from curation.core.schema import Row
from curation.core.texts import CODE_SPANS, all_text, prompt_text, response_text, text_fields
from curation.filter.base import Filter, Verdict
from curation.filter.batch import BatchTexts, Screen
from curation.filter.compiled import ASCII_WORD_BYTES, loop_screen, worth_compiling
from curation.filter.prefilter import any_of, matches_empty, passing, wider_re2

RESPONSE_KINDS = frozenset({"sft", "chat", "preference", "reward", "tool"})


def _turns(row: Row) -> list[str]:
    """Each model turn on its own (chosen completion of preference rows), or the text/prompt.

    Judged per turn: in a multi-turn chat, later answers legitimately repeat earlier ones
    (a revised essay, the same code again "in a code block"), which is not degeneration.
    """
    kind = row.get("kind")
    if kind == "text":
        return [row.get("text") or ""]
    if kind == "prompt":
        return [prompt_text(row)]
    messages = (
        row.get("chosen")
        if kind == "preference"
        else [m for m in row.get("messages") or [] if m.get("role") == "assistant"]
    )
    return [m.get("content") or "" for m in messages or []]


def row_sides(row: Row) -> tuple[str, str, list[str]]:
    """``(prompt_text(row), response_text(row), _turns(row))`` from one walk of the row's messages: what
    most steps read of a row, derived once per batch (:meth:`BatchTexts.derived` ``"sides"``)."""
    kind = row.get("kind")
    users: list[str] = []
    assistants: list[str] = []
    for message in row.get("messages") or []:
        role = message.get("role")
        if role == "user":
            users.append(message.get("content") or "")
        elif role == "assistant":
            assistants.append(message.get("content") or "")
    if kind == "text":
        text = row.get("text") or ""
        return text, "\n".join(assistants), [text]
    prompt = "\n".join(users)
    if kind == "preference":
        chosen = [message.get("content") or "" for message in row.get("chosen") or []]
        return prompt, "\n".join(chosen), chosen
    return prompt, "\n".join(assistants), [prompt] if kind == "prompt" else assistants


def _sides(fields: BatchTexts) -> list[tuple[str, str, list[str]]]:
    """:func:`row_sides` of each row of the batch."""
    return fields.derived("sides", row_sides)


def _main_text(row: Row) -> str:
    """The text a quality judgement is about: the response, or the text/prompt where there is none."""
    kind = row.get("kind")
    if kind == "text":
        return row.get("text") or ""
    if kind == "prompt":
        return prompt_text(row)
    return response_text(row)


# ---------------------------------------------------------------------------------------------
# Empty and placeholder content
# ---------------------------------------------------------------------------------------------

# Whole-response placeholders seen in public instruction sets (Alpaca's "<noinput>"/"<nooutput>",
# generator stubs) and C4's "lorem ipsum". "None", "null" and "NA" are left out: they are real answers
# ("NA" is sodium).
DEFAULT_PLACEHOLDERS: tuple[str, ...] = (
    r"n/a",
    r"todo",
    r"tbd",
    r"<no ?(?:input|output)>",
    r"no (?:output|response|answer)",
    r"(?:\.|…|-|\?|_)+",
    r"lorem ipsum\b.*",
    r"(?:insert|your) (?:answer|response|text) here",
)


@dataclass(frozen=True)
class EmptyFilter(Filter):
    """Empty instruction, empty/placeholder response, empty assistant turn, empty text."""

    name = "empty"
    cost = 0.1
    default = True
    placeholders: Sequence[str] = DEFAULT_PLACEHOLDERS

    _placeholder: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pattern = re.compile(r"\s*(?:" + "|".join(self.placeholders) + r")\s*", re.IGNORECASE | re.DOTALL)
        object.__setattr__(self, "_placeholder", pattern)

    def _check_response(self, text: str, what: str) -> Verdict:
        if not text or text.isspace():  # not text.strip(), without copying the text
            return f"empty {what}"
        if len(text) < 200 and self._placeholder.fullmatch(text):
            return (f"placeholder {what}", text.strip()[:80])
        return None

    def decide(self, row: Row) -> Verdict:
        return self._decide(row, row_sides(row))

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        decide = self._decide
        return [decide(row, sides) for row, sides in zip(rows, _sides(fields), strict=True)]

    def _decide(self, row: Row, sides: tuple[str, str, list[str]]) -> Verdict:
        """:meth:`decide`, with the row's :func:`row_sides`."""
        kind = row.get("kind")
        if kind == "text":
            text = row.get("text") or ""
            return None if text and not text.isspace() else "empty text"
        prompt, response, turns = sides
        if kind != "chat" and (not prompt or prompt.isspace()):
            return "empty instruction"
        if kind == "prompt":
            return None
        if kind == "preference":
            found = self._check_response(response, "chosen response")  # the chosen completion, joined
            if found:
                return found
            rejected = "\n".join(m.get("content") or "" for m in row.get("rejected") or [])
            return self._check_response(rejected, "rejected response")
        # The turns are the assistant messages' contents (row_sides); a turn is judged unless its
        # message is a tool call, which carries no content by design.
        if kind in RESPONSE_KINDS and not turns:
            return "no assistant turn"
        for i, text in enumerate(turns):
            if text and not text.isspace() and (len(text) >= 200 or not self._placeholder.fullmatch(text)):
                continue  # the usual case, decided without looking at the message
            message = [m for m in row.get("messages") or [] if m.get("role") == "assistant"][i]
            if message.get("tool_calls"):
                continue
            found = self._check_response(text, "response" if len(turns) == 1 else f"assistant turn {i + 1}")
            if found:
                return found
        return None


# ---------------------------------------------------------------------------------------------
# Preference pairs
# ---------------------------------------------------------------------------------------------

_LOOSE = NormalizeOptions(unicode_nfkc=True, lowercase=True, collapse_whitespace=True)


@dataclass(frozen=True)
class ChosenEqualsRejected(Filter):
    """Preference rows whose chosen and rejected completions are the same (no signal to learn)."""

    name = "chosen_equals_rejected"
    cost = 0.2
    default = True
    # Case and whitespace differences carry no preference either.
    ignore_case_and_spacing: bool = True

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        return self.decide_rows(rows, (i for i, row in enumerate(rows) if row.get("kind") == "preference"))

    def decide(self, row: Row) -> Verdict:
        if row.get("kind") != "preference":
            return None
        chosen = "\n".join(m.get("content") or "" for m in row.get("chosen") or [])
        rejected = "\n".join(m.get("content") or "" for m in row.get("rejected") or [])
        if self.ignore_case_and_spacing:
            chosen, rejected = normalize_text(chosen, _LOOSE), normalize_text(rejected, _LOOSE)
        if chosen == rejected:
            return "chosen identical to rejected"
        return None


# ---------------------------------------------------------------------------------------------
# Chat-template tokens leaking into content
# ---------------------------------------------------------------------------------------------

# Special tokens of common chat templates (ChatML, Llama 2/3, Mistral, Gemma, Phi, Zephyr, GPT-2)
# and sentencepiece control tokens. A row containing one was rendered with a template upstream
# and would teach the model to emit control tokens as text.
DEFAULT_CHAT_TOKENS: tuple[str, ...] = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|pad|>",
    "<unk>",
)


@dataclass(frozen=True)
class ChatTokens(Filter):
    """Special chat-template tokens (<|im_start|>, [INST], <|eot_id|>, …) inside any content."""

    name = "chat_tokens"
    cost = 1.0
    default = True
    tokens: Sequence[str] = DEFAULT_CHAT_TOKENS
    extra_tokens: Sequence[str] = ()
    # <s> and </s> are also HTML (strikethrough), so they count only where a tokenizer puts them:
    # at the very start or end of a message.
    sentence_markers: bool = True

    _pattern: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _screen: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        alternatives = [re.escape(t) for t in (*self.tokens, *self.extra_tokens)]
        if self.sentence_markers:
            alternatives += [r"\A\s*</?s>", r"</?s>\s*\Z"]
        pattern = re.compile("|".join(alternatives)) if alternatives else None
        object.__setattr__(self, "_pattern", pattern)
        object.__setattr__(self, "_screen", wider_re2(pattern) if pattern else None)

    def screens(self) -> list[Screen]:
        return [Screen(self._screen)]

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        return self.decide_rows(rows, fields.passing_rows(self._screen))

    def decide(self, row: Row) -> Verdict:
        pattern = self._pattern
        if pattern is None:
            return None
        for text_field in text_fields(row):
            text = text_field.text
            if "<" not in text and "[" not in text:
                continue
            match = pattern.search(text)
            if match:
                return ("chat template token in content", match.group(0).strip())
        return None


# ---------------------------------------------------------------------------------------------
# Length bounds
# ---------------------------------------------------------------------------------------------


def measured_sides(row: Row) -> tuple[str | None, str | None]:
    """The instruction and the response whose lengths ``length`` bounds (``None`` where a kind has no
    such side: ``text`` rows have no instruction, ``prompt`` rows no response)."""
    kind = row.get("kind")
    if kind == "text":
        return None, _main_text(row)
    return prompt_text(row), response_text(row) if kind in RESPONSE_KINDS else None


def _batch_sides(rows: Sequence[Row], fields: BatchTexts) -> list[tuple[str | None, str | None]]:
    """:func:`measured_sides` of each row, from the batch's prompts and responses (derived once)."""
    return [
        (None, _main_text(row))
        if (kind := row.get("kind")) == "text"
        else (prompt, response if kind in RESPONSE_KINDS else None)
        for row, (prompt, response, _) in zip(rows, _sides(fields), strict=True)
    ]


@dataclass(frozen=True)
class LengthBounds(Filter):
    """Instruction and response length bounds, in words (and optionally characters).

    Defaults: at least 1 word each side — instruction data has legitimate one-word answers
    (labels, numbers), so Gopher's 50-word minimum applies only to ``text`` rows (see
    ``gopher_quality``); at most 100,000 words, Gopher's upper bound. Tokens are counted later,
    at formatting, against the target tokenizer. ``prompt`` rows have no response and ``text``
    rows no instruction; the response of a preference row is its chosen completion.
    """

    name = "length"
    cost = 0.5
    default = True
    min_prompt_words: int | None = 1
    max_prompt_words: int | None = 100_000
    min_response_words: int | None = 1
    max_response_words: int | None = 100_000
    min_prompt_chars: int | None = None
    max_prompt_chars: int | None = None
    min_response_chars: int | None = None
    max_response_chars: int | None = None

    def _check(
        self,
        text: str,
        side: str,
        min_words: int | None,
        max_words: int | None,
        min_chars: int | None,
        max_chars: int | None,
    ) -> Verdict:
        n_chars = len(text)
        if min_chars is not None and n_chars < min_chars:
            return (f"{side} shorter than {min_chars} characters", n_chars)
        if max_chars is not None and n_chars > max_chars:
            return (f"{side} longer than {max_chars} characters", n_chars)
        if min_words is None and max_words is None:
            return None
        # Counting means splitting the whole text; skip it when the bounds cannot be crossed: a text
        # of n characters has at most (n + 1) // 2 words, and one with a non-space character has one.
        at_least = 1 if text and not text.isspace() else 0
        if (min_words is None or min_words <= at_least) and (max_words is None or (n_chars + 1) // 2 <= max_words):
            return None
        n_words = len(text.split())
        if min_words is not None and n_words < min_words:
            return (f"{side} shorter than {min_words} words", n_words)
        if max_words is not None and n_words > max_words:
            return (f"{side} longer than {max_words} words", n_words)
        return None

    def decide(self, row: Row) -> Verdict:
        return self._decide(row, *measured_sides(row))

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        decide = self._decide
        return [decide(row, *sides) for row, sides in zip(rows, _batch_sides(rows, fields), strict=True)]

    def _decide(self, row: Row, prompt: str | None, response: str | None) -> Verdict:
        if prompt is not None:
            found = self._check(
                prompt,
                "instruction",
                self.min_prompt_words,
                self.max_prompt_words,
                self.min_prompt_chars,
                self.max_prompt_chars,
            )
            if found:
                return found
        if response is not None:
            return self._check(
                response,
                "response" if row.get("kind") != "text" else "text",
                self.min_response_words,
                self.max_response_words,
                self.min_response_chars,
                self.max_response_chars,
            )
        return None


# ---------------------------------------------------------------------------------------------
# Broken encodings
# ---------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# ftfy's mojibake detector is one large pattern, slow on long texts (~150 µs for 500 characters).
# Every one of its matches is at most MOJIBAKE_WIDTH characters long, holds a non-ASCII character
# and looks at nothing around it (tests/filter/test_quality.py checks all three on ftfy's pattern),
# so searching the stretches around the non-ASCII characters finds a match exactly when searching the
# whole text would.
MOJIBAKE_WIDTH = 7
_NON_ASCII_RUN = re.compile(r"[^\x00-\x7f]+")


def looks_like_mojibake(text: str) -> bool:
    """ftfy's ``is_bad(text)`` (text that looks like mojibake), searched only near non-ASCII characters."""
    if text.isascii():
        return False
    stretches: list[list[int]] = []
    for run in _NON_ASCII_RUN.finditer(text):
        start, stop = max(run.start() - MOJIBAKE_WIDTH, 0), run.end() + MOJIBAKE_WIDTH
        if stretches and start <= stretches[-1][1]:
            stretches[-1][1] = stop
        else:
            stretches.append([start, stop])
    return any(BADNESS_RE.search(text, start, stop) for start, stop in stretches)


_MOJIBAKE_SCREEN = wider_re2(BADNESS_RE)


def mojibake_flags(texts: Sequence[str]) -> list[bool]:
    """:func:`looks_like_mojibake` of each text; RE2 screens them all first, so the search runs only
    where ftfy's pattern may match."""
    flags = [False] * len(texts)
    for position in passing(texts, _MOJIBAKE_SCREEN):
        flags[position] = looks_like_mojibake(texts[position])
    return flags


# What decide can reject: text that is not ASCII, or has a control character.
_ENCODING_SCREEN = wider_re2(re.compile(rf"[^\x00-\x7f]|{_CONTROL.pattern}"))


@dataclass(frozen=True)
class BrokenEncoding(Filter):
    """U+FFFD replacement characters, control characters or mojibake that ftfy could not repair."""

    name = "encoding"
    cost = 2.0
    default = True
    max_replacement_chars: int = 0

    def screens(self) -> list[Screen]:
        return [Screen(_ENCODING_SCREEN)]

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        # Only a row with a non-ASCII or a control character can be rejected, and only those rows'
        # texts are searched for mojibake (screened together first).
        suspects = fields.passing_rows(_ENCODING_SCREEN)
        texts = ["\n".join(fields.row_texts(position)) for position in suspects]  # all_text of each
        verdicts: list[Verdict] = [None] * len(rows)
        for position, text, mojibake in zip(suspects, texts, mojibake_flags(texts), strict=True):
            verdicts[position] = self._judge(text, mojibake)
        return verdicts

    def decide(self, row: Row) -> Verdict:
        text = all_text(row)
        return self._judge(text, looks_like_mojibake(text))

    def _judge(self, text: str, mojibake: bool) -> Verdict:
        if text.isascii():
            control = _CONTROL.search(text)
            return ("control character", repr(control.group(0))) if control else None
        n_bad = text.count("\ufffd")
        if n_bad > self.max_replacement_chars:
            return ("U+FFFD replacement characters (lost bytes)", n_bad)
        control = _CONTROL.search(text)
        if control:
            return ("control character", repr(control.group(0)))
        if mojibake:  # ftfy's detector; the fix_encoding cleaner already tried to repair
            return "mojibake"
        return None


# ---------------------------------------------------------------------------------------------
# Refusals, AI-identity boilerplate and user-defined behaviour patterns
# ---------------------------------------------------------------------------------------------

# Self-descriptions a distilled model should not learn (phrases from public ShareGPT-cleaning
# lists, e.g. the "unfiltered" WizardLM/Vicuna dataset scripts; written out here by us). Anywhere.
DEFAULT_IDENTITY_PATTERNS: tuple[str, ...] = (
    r"\bas an? (?:ai|artificial intelligence)(?: language)? model\b",
    r"\bas an? (?:large )?language model\b",
    r"\bas an? ai(?: assistant| chatbot)?,",
    r"\bi(?:'m| am) (?:just )?an? (?:ai|artificial intelligence)(?: language model| assistant)?\b",
    r"\bi (?:was|am|'m) (?:\w+ )?(?:trained|developed|created|made) by openai\b",
    r"\bmy (?:knowledge )?cut-?off (?:date)?\b",
)
# Boilerplate refusals; counted only at the start of a response, where a refusal sits (an
# apology later in a long answer is usually legitimate).
DEFAULT_REFUSAL_PATTERNS: tuple[str, ...] = (
    r"i(?:'m| am) sorry,? but (?:i|as)\b",
    r"i apologi[sz]e,? but (?:i|as)\b",
    r"i (?:cannot|can't|can not|am unable to|'m unable to|am not able to) "
    r"(?:fulfill|comply|assist|help|provide|answer|complete|generate|create)\b",
    r"(?:unfortunately, )?i(?:'m| am) not (?:able|allowed|permitted) to\b",
    r"it is not (?:appropriate|ethical) (?:for me )?to\b",
)


def _compile(patterns: Sequence[str] | Mapping[str, str], where: str) -> list[tuple[str, re.Pattern[str]]]:
    items = list(patterns.items()) if isinstance(patterns, Mapping) else [(p, p) for p in patterns]
    compiled = []
    for label, pattern in items:
        try:
            compiled.append((label, re.compile(pattern, re.IGNORECASE)))
        except re.error as error:
            raise ValueError(f"{where}: pattern {pattern!r} is not a valid regular expression: {error}") from error
    return compiled


_APOSTROPHE = ("\u2019", "'")
"""What :class:`Refusal` replaces in a turn before searching it."""


PREFERENCE_REFUSAL_MODES = ("both", "chosen", "off")
"""What :class:`Refusal` does with a preference pair whose chosen completion is flagged (its ``preference``)."""


@dataclass(frozen=True)
class Refusal(Filter):
    """Boilerplate refusals and "As an AI" phrases in responses; a preference pair only when both sides refuse.

    SFT, chat, reward and tool rows are dropped when any model turn is flagged. A preference pair is
    judged on what it teaches, per ``preference``:

    - ``both`` (default): dropped only when the chosen *and* the rejected completion are flagged. A
      refusing chosen answer over a complying rejected one (chosen "I can't provide that", rejected a
      made-up SSN) is what harmlessness data exists to teach, so it is kept; two refusals carry no
      preference signal about refusing and teach the boilerplate either way.
    - ``chosen``: dropped when the chosen completion is flagged, whatever the rejected one says (for
      helpfulness-only data where a refusal is never the wanted answer).
    - ``off``: preference rows are never judged by this filter.

    The same flag (a refusal opener in the first ``refusal_window`` characters, or an identity phrase
    anywhere) is used on both sides: "As an AI, I can't…" is a refusal in harmlessness data too.
    """

    name = "refusal"
    cost = 3.0
    default = True
    identity_patterns: Sequence[str] = DEFAULT_IDENTITY_PATTERNS
    refusal_patterns: Sequence[str] = DEFAULT_REFUSAL_PATTERNS
    refusal_window: int = 200  # characters from the start of the response
    preference: str = "both"  # both, chosen or off: see the class docstring

    _identity: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _refusal: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _screen: str | None = field(init=False, repr=False, compare=False)
    _kinds: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.preference not in PREFERENCE_REFUSAL_MODES:
            raise ValueError(
                f"filter refusal: preference must be one of {', '.join(PREFERENCE_REFUSAL_MODES)}, "
                f"got {self.preference!r}"
            )
        _compile(self.identity_patterns, "filter refusal, identity_patterns")  # clear error per pattern
        _compile(self.refusal_patterns, "filter refusal, refusal_patterns")
        # One alternation per group: a single regex scan instead of one per pattern.
        identity = "|".join(f"(?:{p})" for p in self.identity_patterns) or r"(?!)"
        refusal = "|".join(f"(?:{p})" for p in self.refusal_patterns) or r"(?!)"
        object.__setattr__(self, "_identity", re.compile(identity, re.IGNORECASE))
        object.__setattr__(self, "_refusal", re.compile(refusal, re.IGNORECASE))
        # Screened on whole turns: the refusal patterns search only a window, so their ends are not the text's.
        screen = any_of((wider_re2(self._identity), wider_re2(self._refusal, anchors=False)))
        # A screen that matches nothing at all would pass no empty turn: no screen then.
        object.__setattr__(self, "_screen", None if screen is None or matches_empty(screen) else screen)
        # The kinds judged at all: with ``preference: off`` the batch never hands preference rows to decide.
        kinds = RESPONSE_KINDS - {"preference"} if self.preference == "off" else RESPONSE_KINDS
        object.__setattr__(self, "_kinds", kinds)

    def screens(self) -> list[Screen]:
        return [Screen(self._screen, _APOSTROPHE)]

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        # Each turn as decide reads it (curly apostrophes straightened) is one of the row's texts, or
        # empty; screened with every other text of the batch, which only lets more rows through. A pair
        # dropped under ``both`` has a flagged chosen turn, so the same row screen is enough for it too.
        screened = set(fields.passing_rows(self._screen, _APOSTROPHE)) if self._screen is not None else None
        kinds = self._kinds
        return self.decide_rows(
            rows,
            (
                position
                for position, row in enumerate(rows)
                if row.get("kind") in kinds and (screened is None or position in screened)
            ),
        )

    def decide(self, row: Row) -> Verdict:
        kind = row.get("kind")
        if kind not in self._kinds:
            return None
        verdict = self._flag(_turns(row))  # the chosen completion of a preference pair
        if verdict is None or kind != "preference" or self.preference == "chosen":
            return verdict
        # ``both``: the pair is dropped only when the rejected completion is flagged too.
        rejected = [m.get("content") or "" for m in row.get("rejected") or []]
        return verdict if self._flag(rejected) is not None else None

    def _flag(self, turns: Sequence[str]) -> Verdict:
        """The first refusal opener or identity phrase in ``turns``, as a verdict."""
        for turn in turns:
            text = turn.replace("\u2019", "'")
            match = self._refusal.search(text, 0, self.refusal_window)
            if match:
                return ("boilerplate refusal", match.group(0))
            match = self._identity.search(text)
            if match:
                return ("AI-identity boilerplate", match.group(0))
        return None


# Ready-made behaviour sets for ``patterns: {preset: …}``: closing offers and sign-offs that a
# teacher adds unasked and a student would learn to repeat.
PRESETS: dict[str, dict[str, str]] = {
    "unsolicited_suggestions": {
        "offer more help": r"\b(?:let me know|feel free to ask) if you (?:have|need|would like)\b",
        "hope this helps": r"\bi hope (?:this|that) (?:helps|was helpful)\b",
        "anything else": r"\bis there anything else (?:i can|you)\b",
        "follow-up offer": r"\bwould you like me to\b",
    },
}


@dataclass(frozen=True)
class BehaviourPatterns(Filter):
    """User-defined behaviour patterns (regular expressions) to remove, e.g. unsolicited suggestions."""

    name = "patterns"
    cost = 3.0
    patterns: Sequence[str] | Mapping[str, str] = ()
    preset: str | Sequence[str] | None = None
    where: str = "response"  # response, prompt or all

    _compiled: list[tuple[str, re.Pattern[str]]] = field(default_factory=list, init=False, repr=False)
    _screen: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.where not in ("response", "prompt", "all"):
            raise ValueError(f"filter patterns: where must be response, prompt or all, got {self.where!r}")
        presets = [self.preset] if isinstance(self.preset, str) else list(self.preset or [])
        compiled = _compile(self.patterns, "filter patterns")
        for preset in presets:
            if preset not in PRESETS:
                raise ValueError(f"filter patterns: unknown preset {preset!r}; known: {sorted(PRESETS)}")
            compiled += _compile(PRESETS[preset], f"filter patterns, preset {preset}")
        if not compiled:
            raise ValueError(
                "filter patterns: give at least one pattern (patterns: [...]) or a preset "
                f"({', '.join(sorted(PRESETS))})"
            )
        object.__setattr__(self, "_compiled", compiled)
        object.__setattr__(self, "_screen", any_of(wider_re2(pattern) for _, pattern in compiled))

    def _text(self, row: Row) -> str:
        if self.where == "response":
            text = response_text(row)
        elif self.where == "prompt":
            text = prompt_text(row)
        else:
            text = all_text(row)
        return text.replace("\u2019", "'")

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        return self.decide_screened(rows, [[self._text(row)] for row in rows], self._screen)

    def decide(self, row: Row) -> Verdict:
        text = self._text(row)
        for label, pattern in self._compiled:
            match = pattern.search(text)
            if match:
                return (f"behaviour pattern: {label}", match.group(0))
        return None


# ---------------------------------------------------------------------------------------------
# Response that echoes the instruction
# ---------------------------------------------------------------------------------------------


_WORD_BYTES = np.zeros(256, dtype=np.uint8)
_WORD_BYTES[[ord(ch) for ch in "0123456789_ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"]] = 1


def ascii_word_counts(texts: Sequence[str]) -> list[int]:
    r"""``len(words(text))`` of each ASCII text, for a whole batch at once: the word starts of all texts
    (a word byte after a non-word byte; ``\w`` is ``[A-Za-z0-9_]`` in ASCII) counted by numpy."""
    if not texts:
        return []
    # One newline after each text: no word runs from one text into the next, and no text is empty.
    data = np.frombuffer(("\n".join(texts) + "\n").encode("ascii"), dtype=np.uint8)
    word = _WORD_BYTES[data]
    starts = word.copy()
    starts[1:] &= word[1:] > word[:-1]
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
    return np.add.reduceat(starts.astype(np.int64), np.cumsum(lengths) - lengths).tolist()


def _similar_lengths(prompt: str, response: str) -> bool:
    """Loose early exit on raw lengths (the exact bound of :class:`Echo` needs tokenising both sides)."""
    return min(len(prompt), len(response)) >= 0.5 * max(len(prompt), len(response))


def _shingles(tokens: Sequence[str | bytes], n: int) -> set[tuple[str | bytes, ...]]:
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return set(zip(*(tokens[i:] for i in range(n)), strict=False))  # each n-gram, made in C


@dataclass(frozen=True)
class Echo(Filter):
    """Response that repeats the instruction instead of answering it.

    Rejects when the normalised response equals the instruction, or when their word 3-gram
    sets have Jaccard similarity ≥ ``threshold`` (0.9: near-verbatim; rewriting tasks such as
    "fix the grammar" change enough 3-grams to stay well below it).
    """

    name = "echo"
    cost = 4.0
    default = True
    threshold: float = 0.9
    ngram: int = 3

    def decide(self, row: Row) -> Verdict:
        if row.get("kind") not in RESPONSE_KINDS:
            return None
        prompt, response = prompt_text(row), response_text(row)
        if not _similar_lengths(prompt, response):
            return None
        return self._judge(prompt, response)

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        sides = [
            (position, prompt, response)
            for position, (row, (prompt, response, _)) in enumerate(zip(rows, _sides(fields), strict=True))
            if row.get("kind") in RESPONSE_KINDS and _similar_lengths(prompt, response)
        ]
        # Word counts of ASCII texts, counted for the whole batch at once: sides whose counts differ by
        # more than the Jaccard bound below allows are kept without tokenising them in Python.
        ascii_sides = [side for side in sides if side[1].isascii() and side[2].isascii()]
        counts = ascii_word_counts([text for _, prompt, response in ascii_sides for text in (prompt, response)])
        kept = {
            position
            for (position, _, _), a, b in zip(ascii_sides, counts[0::2], counts[1::2], strict=True)
            if not a or not b or (a != b and min(a, b) < self.threshold * max(a, b))
        }
        verdicts: list[Verdict] = [None] * len(rows)
        for position, prompt, response in sides:
            if position not in kept:
                verdicts[position] = self._judge(prompt, response)
        return verdicts

    def _judge(self, prompt: str, response: str) -> Verdict:
        # Both sides' words as bytes when both are ASCII (the same comparisons, cheaper), else as str.
        tokens = _word_keys if prompt.isascii() and response.isascii() else words
        prompt_words, response_words = tokens(prompt), tokens(response)
        if not prompt_words or not response_words:
            return None
        if prompt_words == response_words:
            return ("response repeats the instruction", 1.0)
        # Cheap bound: Jaccard ≤ min/max of the set sizes, so very different lengths cannot echo.
        small, large = sorted((len(prompt_words), len(response_words)))
        if small < self.threshold * large:
            return None
        # Cheaper than the n-grams: a word on one side only is in none of the other side's n-grams, and
        # an n-gram holds at most n words, so the one-sided words put at least (their number) / n
        # n-grams outside the intersection, among at most len(prompt) + len(response) n-grams in all.
        if self.ngram >= 1:
            one_sided = len(set(prompt_words).symmetric_difference(response_words))
            bound = 1 - one_sided / (self.ngram * (len(prompt_words) + len(response_words)))
            if bound < self.threshold - 1e-9:
                return None
        a, b = _shingles(prompt_words, self.ngram), _shingles(response_words, self.ngram)
        jaccard = len(a & b) / len(a | b)
        if jaccard >= self.threshold:
            return ("response repeats the instruction", round(jaccard, 3))
        return None


# ---------------------------------------------------------------------------------------------
# Repetition (Gopher Table A1)
# ---------------------------------------------------------------------------------------------

# Gopher Table A1: maximum fraction of characters in the most frequent 2/3/4-gram …
GOPHER_TOP_NGRAM: dict[int, float] = {2: 0.20, 3: 0.18, 4: 0.16}
# … and in any duplicated 5-…10-gram.
GOPHER_DUP_NGRAM: dict[int, float] = {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}


def _duplicate_fraction(parts: list[str]) -> tuple[float, float]:
    """(fraction of parts that repeat an earlier one, fraction of characters in those repeats)."""
    seen: set[str] = set()
    dup_count = dup_chars = total_chars = 0
    for part in parts:
        total_chars += len(part)
        if part in seen:
            dup_count += 1
            dup_chars += len(part)
        else:
            seen.add(part)
    return dup_count / len(parts), (dup_chars / total_chars if total_chars else 0.0)


@dataclass(frozen=True)
class Repetition(Filter):
    """Degenerate loops in any row; Gopher's repeated lines/paragraphs/n-grams rules on documents.

    Gopher Table A1's thresholds were set on web pages. On instruction answers they reject
    legitimate structure — a song's chorus, a weekly plan repeating "Warm-up: …", an outline,
    a revised draft — so by default they apply to ``text`` rows only (``gopher_kinds``).
    Measured on answers: with a 50-word floor they reject 22% of gsm8k answers and 4% of
    code-alpaca outputs (short correct answers exceed the n-gram shares by construction); even
    with a 200-word floor, 41 of 167 long OASST assistant turns (25%).

    Every row is checked for degenerate loops ("I like it. I like it. …", one paragraph over
    and over): more than ``max_loop_share`` (80%) of the prose characters inside repeated
    10-grams, from 30 words on — zero false positives on gsm8k, code-alpaca,
    llms-from-scratch, self-instruct and fastchat, 4 of 687 OASST turns. Judged per model turn;
    n-grams are counted on prose (code spans and tags removed — gsm8k's <<48/2=24>> calculator
    annotations repeat every number); lines and paragraphs without a letter ("}", "</div>")
    are ignored, since code repeats them legitimately.
    """

    name = "repetition"
    cost = 10.0
    default = True
    gopher_kinds: Sequence[str] = ("text",)
    min_words: int = 50  # Gopher's minimum document length; raise it if you add instruction kinds
    loop_min_words: int = 30
    max_loop_share: float = 0.8
    loop_ngram: int = 10
    max_duplicate_lines: float = 0.30
    max_duplicate_paragraphs: float = 0.30
    max_duplicate_line_chars: float = 0.20
    max_duplicate_paragraph_chars: float = 0.20
    top_ngram: Mapping[int, float] = field(default_factory=lambda: dict(GOPHER_TOP_NGRAM))
    duplicate_ngram: Mapping[int, float] = field(default_factory=lambda: dict(GOPHER_DUP_NGRAM))

    def decide(self, row: Row) -> Verdict:
        return self._decide(row, _turns(row))

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        sides = _sides(fields)
        if not worth_compiling(len(rows)):
            return [self._decide(row, turns) for row, (_, _, turns) in zip(rows, sides, strict=True)]
        # Outside gopher_kinds a turn is only judged for a loop: the ASCII turns of the whole batch go
        # through the compiled screen (curation.filter.compiled.loop_screen) first, and a row is judged
        # here only when one of its turns passes it, is not ASCII, or the Gopher rules apply.
        judge: set[int] = set()
        screened: list[tuple[int, str]] = []
        for position, (row, (_, _, turns)) in enumerate(zip(rows, sides, strict=True)):
            if row.get("kind") in self.gopher_kinds:
                judge.add(position)
                continue
            for turn in turns:
                prose = self._loop_prose(turn)
                if prose is None:
                    continue
                if prose.isascii():
                    screened.append((position, prose))
                else:
                    judge.add(position)
        passed = loop_screen(
            [prose for _, prose in screened], self.loop_min_words, self.max_loop_share, self.loop_ngram
        )
        judge.update(position for (position, _), flag in zip(screened, passed, strict=True) if flag)
        verdicts: list[Verdict] = [None] * len(rows)
        for position in sorted(judge):
            verdicts[position] = self._decide(rows[position], sides[position][2])
        return verdicts

    def _loop_prose(self, text: str) -> str | None:
        """The prose whose words the loop check counts, or ``None`` when the text is too short to be
        checked at all (then :meth:`_check` keeps it whatever the rules)."""
        # Gate on whitespace-separated words, so one long token (a regex, a URL) is not "a text";
        # splitting off that many words is enough to know. N-grams are counted on prose: code spans and
        # tags (and gsm8k's <<48/2=24>> calculator annotations, which repeat every number) are removed.
        floor = min(self.loop_min_words, self.min_words)
        if floor > 0 and len(text.split(None, floor - 1)) < floor:
            return None
        if "`" in text or "~~~" in text:
            return _CODE_OR_TAG.sub(" ", text)
        if "<" in text:  # no code span can start: only tags to remove
            return _TAG.sub(" ", text)
        return text

    def _decide(self, row: Row, turns: list[str]) -> Verdict:
        gopher = row.get("kind") in self.gopher_kinds
        for turn in turns:
            found = self._check(turn, gopher)
            if found:
                return found
        return None

    def _check(self, text: str, gopher: bool) -> Verdict:
        prose_text = self._loop_prose(text)
        if prose_text is None:
            return None
        prose = _word_keys(prose_text)
        if len(prose) >= self.loop_min_words and _may_cover_more(prose, self.max_loop_share):
            share = _duplicated_ngram_share(prose, self.loop_ngram)
            if share > self.max_loop_share:
                return (
                    f"degenerate loop: repeated {self.loop_ngram}-grams cover > {self.max_loop_share} of the text",
                    round(share, 3),
                )
        tokens = prose
        if not gopher or len(tokens) < self.min_words:
            return None
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if _has_letter(p)]
        lines = [line.strip() for line in text.split("\n") if _has_letter(line)]
        for parts, label, max_frac, max_chars in (
            (paragraphs, "paragraphs", self.max_duplicate_paragraphs, self.max_duplicate_paragraph_chars),
            (lines, "lines", self.max_duplicate_lines, self.max_duplicate_line_chars),
        ):
            if len(parts) < 2:
                continue
            frac, chars = _duplicate_fraction(parts)
            if frac > max_frac:
                return (f"duplicate {label} fraction > {max_frac}", round(frac, 3))
            if chars > max_chars:
                return (f"duplicate {label} character fraction > {max_chars}", round(chars, 3))
        total = sum(map(len, tokens))
        for n, limit in sorted(self.top_ngram.items()):
            counts = Counter(zip(*(tokens[i:] for i in range(n)), strict=False))
            gram, count = counts.most_common(1)[0]
            if count > 1:
                share = count * sum(len(t) for t in gram) / total
                if share > limit:
                    return (f"top {n}-gram character fraction > {limit}", round(share, 3))
        for n, limit in sorted(self.duplicate_ngram.items()):
            share = _duplicated_ngram_share(tokens, n)
            if share == 0.0:
                break  # no repeated n-gram means no repeated longer n-gram either
            if share > limit:
                return (f"duplicate {n}-gram character fraction > {limit}", round(share, 3))
        return None


# Code (the shared fence rule: ``` and ~~~ blocks, inline spans) and tags, which n-gram counts skip.
_CODE_OR_TAG = re.compile(rf"{CODE_SPANS.pattern}|<[^<>]*>", re.DOTALL)
_TAG = re.compile(r"<[^<>]*>")
""":data:`_CODE_OR_TAG` for a text without a backtick or ``~~~``, where none of its code spans can start."""


def _has_letter(text: str) -> bool:
    return any(ch.isalpha() for ch in text)


def _word_keys(text: str) -> list[str] | list[bytes]:
    """:func:`words` of ``text``, as bytes for ASCII text: the same words in the same order, equal where
    they are equal and of the same lengths, made and hashed in half the time. For counting and comparing
    words, never for showing them."""
    if text.isascii():
        return text.encode("ascii").translate(ASCII_WORD_BYTES).split()
    return words(text)


def _may_cover_more(tokens: Sequence[str | bytes], share: float) -> bool:
    """False when repeated n-grams (of any n) cannot cover more than ``share`` of the characters. Each
    token of a repeated n-gram occurs at least twice, so the distinct tokens hold at most
    total × (1 − covered/2) characters: an upper bound found in C, cheaper than the n-grams."""
    empty = tokens[0][:0] if tokens else ""  # lengths summed by joining: str or bytes alike
    return len(empty.join(set(tokens))) < (1 - share / 2) * len(empty.join(tokens))  # type: ignore[arg-type]


def _duplicated_ngram_share(tokens: Sequence[str | bytes], n: int) -> float:
    """Share of word characters covered by n-grams that occur more than once (overlaps once)."""
    grams = list(zip(*(tokens[i:] for i in range(n)), strict=False))
    if len(set(grams)) == len(grams):  # the usual case, found in C: no n-gram occurs twice
        return 0.0
    first: dict[tuple[str, ...], int] = {}
    covered = bytearray(len(tokens))
    for i, gram in enumerate(grams):
        j = first.setdefault(gram, i)
        if j != i:
            covered[i : i + n] = b"\x01" * n
            covered[j : j + n] = b"\x01" * n
    total = sum(map(len, tokens))
    return sum(len(token) for token, c in zip(tokens, covered, strict=True) if c) / total if total else 0.0


# ---------------------------------------------------------------------------------------------
# Gopher document quality (text rows)
# ---------------------------------------------------------------------------------------------

GOPHER_STOP_WORDS = frozenset({"the", "be", "to", "of", "and", "that", "have", "with"})


@dataclass(frozen=True)
class GopherQuality(Filter):
    """Gopher App. A document-quality rules, for ``text`` rows (web-like documents) by default.

    50–100,000 words; mean word length 3–10 characters; "#" and "…" each at most 0.1 per word;
    at most 90% of lines starting with a bullet and 30% ending in an ellipsis; at least 80% of
    words containing a letter; at least 2 of the stop words {the, be, to, of, and, that, have,
    with}. Not on for instruction responses by default: code, math and short answers break the
    stop-word and letter rules by design (add kinds to apply it to them).
    """

    name = "gopher_quality"
    cost = 6.0
    default = True
    kinds: Sequence[str] = ("text",)
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1
    max_bullet_lines: float = 0.9
    max_ellipsis_lines: float = 0.3
    min_alpha_words: float = 0.8
    min_stop_words: int = 2

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        return self.decide_rows(rows, (i for i, row in enumerate(rows) if row.get("kind") in self.kinds))

    def decide(self, row: Row) -> Verdict:
        if row.get("kind") not in self.kinds:
            return None
        text = _main_text(row)
        tokens = text.split()
        n = len(tokens)
        if n < self.min_words:
            return (f"fewer than {self.min_words} words", n)
        if n > self.max_words:
            return (f"more than {self.max_words} words", n)
        mean = sum(len(t) for t in tokens) / n
        if not self.min_mean_word_length <= mean <= self.max_mean_word_length:
            return (f"mean word length outside {self.min_mean_word_length}–{self.max_mean_word_length}", round(mean, 2))
        for symbol in ("#", "..."):
            ratio = (text.count(symbol) + (text.count("…") if symbol == "..." else 0)) / n
            if ratio > self.max_symbol_word_ratio:
                return (f"'{symbol}' per word > {self.max_symbol_word_ratio}", round(ratio, 3))
        lines = [line.strip() for line in text.split("\n") if line.strip()]
        if lines:
            bullets = sum(line.startswith(("•", "-", "*", "‣", "◦")) for line in lines) / len(lines)
            if bullets > self.max_bullet_lines:
                return (f"bullet lines > {self.max_bullet_lines}", round(bullets, 3))
            ellipsis = sum(line.endswith(("...", "…")) for line in lines) / len(lines)
            if ellipsis > self.max_ellipsis_lines:
                return (f"lines ending in an ellipsis > {self.max_ellipsis_lines}", round(ellipsis, 3))
        alpha = sum(_has_letter(t) for t in tokens) / n
        if alpha < self.min_alpha_words:
            return (f"words with a letter < {self.min_alpha_words}", round(alpha, 3))
        stops = len(GOPHER_STOP_WORDS.intersection(w.lower().strip(".,;:!?\"'()") for w in tokens))
        if stops < self.min_stop_words:
            return (f"fewer than {self.min_stop_words} distinct stop words", stops)
        return None
