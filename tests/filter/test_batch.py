"""The batch the filter steps share (curation/filter/batch.py) and the shortcuts the steps take with it:
each must give exactly what the plain, one-row or one-text computation gives.

A batch walks its rows' texts once, screens them once per pattern (and, with ``prefetch``, all patterns in
one union pass), derives per-row values once, and carries all of that along when a cleaner replaces rows
or a filter drops them. Every test here compares against the same thing made from scratch.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from curation.core.normalize import words
from curation.core.schema import ARROW_SCHEMA, iter_rows, new_row, rows_to_table
from curation.core.texts import prompt_text, response_text, text_fields
from curation.filter import batch as batch_module
from curation.filter.base import FilterStats
from curation.filter.batch import BatchTexts, Screen
from curation.filter.chain import build_cleaners, build_filters
from curation.filter.quality import (
    Echo,
    Refusal,
    _turns,
    _word_keys,
    ascii_word_counts,
    row_sides,
)
from curation.filter.runner import _loads, decode_batch, filter_batch
from tests.filter import one_at_a_time

# Characters where RE2, Python and the steps' shortcuts may disagree: cases, spaces, digits, separators.
TRICKY = list("aAbBiIkKsS_ \n\t\r\x0b\x1c\x85\xa0\u2028İıſ0123456789٣.-:@<>[]`~'’\"éß\ufffd\x07")


def _text(rng: random.Random, longest: int = 40) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(rng.randrange(0, longest)))


def _message(rng: random.Random, role: str) -> dict:
    content = rng.choice([_text(rng), _text(rng), "", None, 7, "\ud800 lone surrogate", "  "])
    message: dict = {"role": role, "content": content}
    if rng.random() < 0.1:
        message.pop("content")
    if role == "assistant" and rng.random() < 0.1:
        message["tool_calls"] = [{"name": "f", "arguments": "{}"}]
    return message


def _odd_rows(n: int = 300, seed: int = 3) -> list[dict]:
    """Rows of every kind and shape text_fields must cope with: no messages, empty and missing contents,
    non-string contents, tool calls, texts that are not UTF-8."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = rng.choice(["sft", "chat", "preference", "text", "prompt", "reward", "tool", None])
        messages = [_message(rng, rng.choice(["user", "assistant", "system", "tool"])) for _ in range(rng.randrange(4))]
        rows.append(
            new_row(
                row_id=f"r{i}",
                kind=kind,
                text=rng.choice([_text(rng), "", None]),
                messages=rng.choice([messages, None, []]),
                chosen=[_message(rng, "assistant")] if kind == "preference" else None,
                rejected=[_message(rng, "assistant")] if kind == "preference" else None,
            )
        )
    return rows


def _string_rows(rows: list[dict]) -> list[dict]:
    """The rows with every content a string or None (what prompt_text and the filters can join)."""
    out = []
    for row in rows:
        row = dict(row)
        for column in ("messages", "chosen", "rejected"):
            if row[column]:
                row[column] = [
                    {**m, "content": m.get("content") if not isinstance(m.get("content"), int) else "7"}
                    for m in row[column]
                ]
        out.append(row)
    return out


def _one_by_one(pattern: str, texts: list[str], replace: tuple[str, str] | None = None) -> list[bool]:
    """Each text screened on its own; a text that is not UTF-8 passes."""
    found = []
    for text in texts:
        if replace is not None:
            text = text.replace(*replace)
        try:
            array = pa.array([text], pa.string())
        except UnicodeEncodeError:
            found.append(True)
            continue
        found.append(bool(pc.match_substring_regex(array, pattern)[0].as_py()))
    return found


def _all_at_once(pattern: str, texts: list[str], replace: tuple[str, str] | None = None) -> list[bool]:
    """:func:`_one_by_one` in one Arrow call (for long patterns, which RE2 compiles once per call)."""
    texts = [text.replace(*replace) if replace else text for text in texts]
    utf8 = [text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") == text for text in texts]
    hits = pc.match_substring_regex(pa.array([t if ok else "" for t, ok in zip(texts, utf8, strict=True)]), pattern)
    return [hit or not ok for hit, ok in zip(hits.to_pylist(), utf8, strict=True)]


PATTERNS = [r"[aA]\s", r"\x{2019}|'", r"(?i)s$", r"^\s", r"\p{Nd}{2}", r"zzz", r"[^\x{0}-\x{7f}]", r"(?:I'm|I am)"]


# ------------------------------------------------------------------ walking and screening


def test_the_walk_is_text_fields() -> None:
    rows = _odd_rows()
    batch = BatchTexts(rows)
    assert batch.texts == [field.text for row in rows for field in text_fields(row)]
    for position, row in enumerate(rows):
        assert batch.row_texts(position) == [field.text for field in text_fields(row)]
        assert batch[position] == list(text_fields(row))
        assert batch.owner[batch.starts[position] : batch.starts[position + 1]].tolist() == [position] * len(
            batch.row_texts(position)
        )
    assert list(batch) == [list(text_fields(row)) for row in rows]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_screen_is_each_text_screened_on_its_own(pattern: str) -> None:
    rows = _odd_rows()
    batch = BatchTexts(rows)
    expected = _one_by_one(pattern, batch.texts)
    assert batch.screen(pattern).tolist() == expected
    assert batch.passing(pattern) == [i for i, hit in enumerate(expected) if hit]
    assert batch.passing_rows(pattern) == sorted({int(batch.owner[i]) for i, hit in enumerate(expected) if hit})
    replaced = _one_by_one(pattern, batch.texts, ("’", "'"))
    assert BatchTexts(rows).screen(pattern, ("’", "'")).tolist() == replaced
    # Within a wider screen (here, a union the pattern is part of) the result is the same.
    within = f"(?:{pattern})|zzz"
    assert BatchTexts(rows).screen(pattern, within=within).tolist() == expected
    assert BatchTexts(rows).screen(None).all()


def test_prefetch_runs_the_screens_asked_for_later() -> None:
    rows = _odd_rows()
    chain = [*build_cleaners(), *build_filters()]
    screens = [screen for step in chain for screen in step.screens()]
    screens += [Screen(pattern) for pattern in PATTERNS] + [Screen(PATTERNS[0], ("’", "'"))]
    assert any(screen.within for screen in screens) and any(screen.alone for screen in screens)
    prefetched = BatchTexts(rows)
    prefetched.prefetch(screens)
    for screen in screens:
        expected = BatchTexts(rows).screen(screen.pattern, screen.replace, screen.within)
        assert prefetched.screen(screen.pattern, screen.replace, screen.within).tolist() == expected.tolist()
        assert expected.tolist() == _all_at_once(screen.pattern, prefetched.texts, screen.replace)  # type: ignore[arg-type]


def test_a_screen_re2_refuses_is_refused_when_asked_for_not_when_prefetched() -> None:
    batch = BatchTexts(_odd_rows(20))
    batch.prefetch([Screen("(unclosed"), Screen(PATTERNS[0]), Screen("(unclosed", within=PATTERNS[0])])
    assert batch.screen(PATTERNS[0]).tolist() == _one_by_one(PATTERNS[0], batch.texts)
    for _ in range(2):  # nothing half-made is kept
        with pytest.raises(pa.ArrowInvalid):
            batch.screen("(unclosed")


def _same(batch: BatchTexts, rows: list[dict], screens: list[Screen], exact: bool) -> None:
    fresh = BatchTexts(rows)
    assert batch.rows == rows and batch.texts == fresh.texts and batch.starts == fresh.starts
    assert batch.owner.tolist() == fresh.owner.tolist()
    for screen in screens:
        carried, expected = batch.screen(*screen[:3]), fresh.screen(*screen[:3])
        if exact:
            assert carried.tolist() == expected.tolist(), screen
        else:  # a few texts a cleaner changed may pass unscreened: never fewer
            assert (carried | ~expected).all(), screen
    assert batch.derived("sides", row_sides) == [row_sides(row) for row in rows]
    assert list(batch) == list(fresh)


@pytest.mark.parametrize("few", [0, batch_module.FEW_CHANGED, 10**6])
def test_a_batch_changed_by_cleaners_and_narrowed_by_filters_is_the_batch_made_afresh(
    few: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_module, "FEW_CHANGED", few)
    rng = random.Random(8)
    rows = _string_rows(_odd_rows(seed=9))
    screens = [Screen(pattern) for pattern in PATTERNS] + [
        Screen(PATTERNS[1], ("’", "'")),
        Screen(PATTERNS[0], within=f"{PATTERNS[0]}|zzz"),
    ]
    batch = BatchTexts(rows)
    batch.prefetch(screens[:4])  # some screens carried along, the others asked for only at the end
    batch.derived("sides", row_sides)
    _ = batch[3], batch[10]
    for step in range(12):
        if step % 3 == 2:
            keep = sorted(rng.sample(range(len(rows)), k=len(rows) * 4 // 5))
            batch, rows = batch.subset(keep), [rows[i] for i in keep]
        else:
            changes = {
                position: {**rows[position], "text": _text(rng), "messages": [{"role": "user", "content": _text(rng)}]}
                for position in rng.sample(range(len(rows)), k=len(rows) // 6)
            }
            batch = batch.replaced(changes)
            rows = [changes.get(position, row) for position, row in enumerate(rows)]
        _same(batch, rows, screens[: 4 + step % 4], exact=not few)
    _same(batch, rows, screens, exact=not few)
    assert batch.replaced({}) is batch


# ------------------------------------------------------------------ what the steps derive


def test_row_sides_are_the_prompt_the_response_and_the_turns() -> None:
    for row in _string_rows(_odd_rows()):
        assert row_sides(row) == (prompt_text(row), response_text(row), _turns(row)), row


def test_words_of_ascii_text_are_the_regex_words() -> None:
    rng = random.Random(4)
    texts = ["".join(chr(rng.randrange(128)) for _ in range(rng.randrange(60))) for _ in range(20_000)]
    texts += ["".join(chr(code) for code in range(128)), "Hello, World_42 foo-bar", ""]
    for text in texts:
        expected = re.findall(r"\w+", unicodedata.normalize("NFKC", text).casefold())
        assert words(text) == expected
        assert [key.decode() if isinstance(key, bytes) else key for key in _word_keys(text)] == expected
    assert ascii_word_counts(texts) == [len(words(text)) for text in texts]
    assert ascii_word_counts([]) == []
    assert _word_keys("Straße ǅ x") == words("Straße ǅ x")  # not ASCII: words() itself


def test_decode_batch_is_iter_rows() -> None:
    rows = [row for row in _odd_rows(80) if "\ud800" not in json.dumps(row, ensure_ascii=False)]  # Arrow holds UTF-8
    for i, row in enumerate(rows):
        row["ingested_at"] = datetime(2024, 1, 1 + i % 3, 12) if i % 7 else None
        row["extra"] = {"k": i} if i % 2 else None
        row["score"] = i / 7
    table = rows_to_table([{**row, "messages": row["messages"]} for row in _string_rows(rows)])
    for batch in table.to_batches(max_chunksize=25):
        assert decode_batch(batch) == list(iter_rows([batch]))
    every_day = rows_to_table([{**row, "ingested_at": datetime(2024, 2, 2)} for row in _string_rows(rows)])
    batch = every_day.to_batches()[0]
    assert decode_batch(batch) == list(iter_rows([batch]))
    narrow = pa.RecordBatch.from_pylist([{"row_id": "a", "kind": "sft"}])  # missing columns are None
    assert decode_batch(narrow) == list(iter_rows([narrow]))
    assert ARROW_SCHEMA.names == list(decode_batch(batch)[0])


@pytest.mark.parametrize(
    "text",
    [
        "[1, 2]",
        " [1]",
        "[1] ",
        '{"a": [1, {"b": null}]}',
        '"x"',
        "null",
        "1e400",
        "NaN",
        "[1]x",
        "",
        " ",
        "nul",
        '"\\ud800"',
    ],
)
def test_loads_is_json_loads(text: str) -> None:
    def outcome(loads):  # the value, or the error's type and message
        try:
            return repr(loads(text))
        except ValueError as error:
            return f"{type(error).__name__}: {error}"

    assert outcome(_loads) == outcome(json.loads)


def _echo_reference(echo: Echo, prompt: str, response: str) -> object:
    """Echo's judgement as first written: words, then the Jaccard similarity of their n-gram sets."""

    def grams(tokens: list[str]) -> set[tuple[str, ...]]:
        if len(tokens) < echo.ngram:
            return {tuple(tokens)} if tokens else set()
        return {tuple(tokens[i : i + echo.ngram]) for i in range(len(tokens) - echo.ngram + 1)}

    a_words, b_words = words(prompt), words(response)
    if not a_words or not b_words:
        return None
    if a_words == b_words:
        return ("response repeats the instruction", 1.0)
    small, large = sorted((len(a_words), len(b_words)))
    if small < echo.threshold * large:
        return None
    a, b = grams(a_words), grams(b_words)
    jaccard = len(a & b) / len(a | b)
    return ("response repeats the instruction", round(jaccard, 3)) if jaccard >= echo.threshold else None


@pytest.mark.parametrize(("threshold", "ngram"), [(0.9, 3), (0.5, 1), (0.7, 2), (0.95, 5), (1.0, 3), (0.0, 3)])
def test_echo_judges_as_first_written(threshold: float, ngram: int) -> None:
    rng = random.Random(int(threshold * 100) + ngram)
    vocabulary = ["the", "cat", "Cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "über", "x1"]
    echo = Echo(threshold=threshold, ngram=ngram)
    verdicts = []
    for _ in range(3000):
        prompt = [rng.choice(vocabulary) for _ in range(rng.randrange(0, 30))]
        response = list(prompt)
        for _ in range(rng.randrange(0, 4)):  # a few edits: near the threshold either way
            spot = rng.randrange(len(response) + 1)
            response[spot : spot + rng.randrange(2)] = [rng.choice(vocabulary)] * rng.randrange(2)
        a, b = " ".join(prompt), rng.choice([" ", ", "]).join(response)
        verdicts.append(echo._judge(a, b))
        assert verdicts[-1] == _echo_reference(echo, a, b), (a, b)
    assert 0 < sum(verdict is not None for verdict in verdicts) < len(verdicts)


# ------------------------------------------------------------------ the steps' batch paths


PROSE = (
    "Every morning the baker walks to the market before sunrise, buys flour and butter from two old friends, "
    "then returns home to light the oven while the city is still quiet and the streets are empty of traffic."
)
PROSE_2 = (
    "By noon the shop is full: students want rolls, a teacher orders cakes for a party, and tourists ask "
    "for directions to the museum, which the baker gives gladly with a map drawn on the back of a receipt."
)


def _edge_rows() -> list[dict]:
    """Rows for every shortcut of the default filters: tool calls, placeholders in later turns, curly
    apostrophes, echoes in ASCII and not, loops, edits."""
    loop = "I like it very much. " * 30
    rows = [
        new_row(
            row_id="tool",
            kind="tool",
            messages=[
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "w"}]},
                {"role": "tool", "content": "sunny"},
                {"role": "assistant", "content": "Sunny."},
            ],
        ),
        new_row(
            row_id="tool-empty",
            kind="tool",
            messages=[
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [{"name": "w"}]},
                {"role": "assistant", "content": "  "},
            ],
        ),
        new_row(
            row_id="later-placeholder",
            kind="chat",
            messages=[
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "More?"},
                {"role": "assistant", "content": " TBD "},
            ],
        ),
        new_row(
            row_id="one-placeholder",
            kind="sft",
            messages=[
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "n/a"},
            ],
        ),
        new_row(row_id="no-assistant", kind="sft", messages=[{"role": "user", "content": "Q"}]),
        new_row(row_id="chat-no-prompt", kind="chat", messages=[{"role": "assistant", "content": "Hi"}]),
        new_row(
            row_id="pref-empty-rejected",
            kind="preference",
            messages=[{"role": "user", "content": "Q"}],
            chosen=[{"role": "assistant", "content": "A"}],
            rejected=[{"role": "assistant", "content": " "}],
        ),
        new_row(
            row_id="pref-placeholder",
            kind="preference",
            messages=[{"role": "user", "content": "Q"}],
            chosen=[{"role": "assistant", "content": "..."}],
            rejected=[{"role": "assistant", "content": "B"}],
        ),
        new_row(
            row_id="curly",
            kind="sft",
            messages=[
                {"role": "user", "content": "Help"},
                {"role": "assistant", "content": "I’m sorry, but I can’t do that."},
            ],
        ),
        new_row(
            row_id="echo",
            kind="sft",
            messages=[
                {"role": "user", "content": "Repeat after me: the quick brown fox jumps"},
                {"role": "assistant", "content": "Repeat after me: the quick brown fox jumps!"},
            ],
        ),
        new_row(
            row_id="echo-unicode",
            kind="sft",
            messages=[
                {"role": "user", "content": "Répète: le renard brun saute très haut"},
                {"role": "assistant", "content": "RÉPÈTE: le renard brun saute très haut"},
            ],
        ),
        new_row(
            row_id="loop",
            kind="sft",
            messages=[
                {"role": "user", "content": "Talk"},
                {"role": "assistant", "content": loop},
            ],
        ),
        new_row(
            row_id="loop-unicode",
            kind="chat",
            messages=[
                {"role": "user", "content": "Talk"},
                {"role": "assistant", "content": "Ça va très bien. " * 30},
            ],
        ),
        new_row(row_id="doc", kind="text", text="The cat sat on the mat and that was the end of it. " * 8),
        # Its duplicate lines are all code: the prose the n-grams count has none, the lines the Gopher
        # rules count have them.
        new_row(
            row_id="doc-code", kind="text", text=PROSE + "\n```\n" + "x = compute(value)\n" * 20 + "```\n<b>" + PROSE_2
        ),
        new_row(
            row_id="ws",
            kind="sft",
            messages=[
                {"role": "user", "content": "Q \r\n"},
                {"role": "assistant", "content": "A\t\nB\n\n\n\nC\u00a0 "},
            ],
        ),
    ]
    return [{**row, "source": "s", "license": "MIT"} for row in rows]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"refusal": {"refusal_patterns": [r"x*"]}},  # a pattern that matches nothing at all: every row
        {"license": {"intended_use": "commercial"}, "gopher_quality": {"kinds": ["text", "sft"]}},
    ],
    ids=["defaults", "refusal_matching_empty", "licence_and_gopher"],
)
def test_each_default_filter_decides_a_batch_as_it_decides_each_row(settings: dict) -> None:
    rows = _edge_rows() + _string_rows(_odd_rows(200, seed=12))
    rows = [row for row in rows if all(isinstance(t, str) or t is None for t in (row["text"],))]
    cleaners, filters = build_cleaners(), build_filters(settings)
    batch = filter_batch(rows, cleaners, filters, FilterStats(), reid=False)
    rejected = {item.row_id: item.rejection for item in batch.rejected}
    kept = {row["row_id"]: json.dumps(row, sort_keys=True) for row in batch.kept}
    edits = {item.parent_id: item.edits for item in batch.edited}
    for row, (cleaned, row_edits, rejection) in zip(rows, one_at_a_time(rows, cleaners, filters), strict=True):
        assert rejected.get(row["row_id"]) == rejection, row["row_id"]
        if rejection is None:
            assert kept[row["row_id"]] == cleaned and edits.get(row["row_id"], ()) == row_edits, row["row_id"]
    named = {row_id: rejection.filter for row_id, rejection in rejected.items() if not row_id.startswith("r")}
    if not settings:
        assert named == {
            "tool-empty": "empty",
            "chat-no-prompt": "length",
            "doc": "gopher_quality",
            "doc-code": "repetition",
            "later-placeholder": "empty",
            "one-placeholder": "empty",
            "no-assistant": "empty",
            "pref-empty-rejected": "empty",
            "pref-placeholder": "empty",
            "curly": "refusal",
            "echo": "echo",
            "echo-unicode": "echo",
            "loop": "repetition",
            "loop-unicode": "repetition",
        }
    if "refusal" in settings:
        assert Refusal(refusal_patterns=[r"x*"])._screen is None
        assert {r.filter for r in rejected.values()} >= {"refusal"}
