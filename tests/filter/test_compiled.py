"""The compiled loop screen (curation/filter/compiled.py) in front of the repetition filter's loop check:
it must pass every text the Python check would reject, and stay narrow enough to be worth running."""

from __future__ import annotations

import random

import pytest

from curation.core.schema import new_row
from curation.filter import compiled
from curation.filter.base import FilterStats
from curation.filter.batch import BatchTexts
from curation.filter.compiled import loop_screen
from curation.filter.quality import Repetition, _duplicated_ngram_share, _may_cover_more, _word_keys

VOCABULARY = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "and",
    "dog",
    "ran",
    "far",
    "away",
    "Cat",
    "THE",
    "x_1",
    "42",
    "it's",
    "don't",
    "well-known",
]


def _texts(seed: int, count: int = 3000) -> list[str]:
    """ASCII texts from loops (a phrase again and again, with noise around it) to plain prose."""
    rng = random.Random(seed)
    texts = []
    for _ in range(count):
        phrase = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randrange(1, 25)))
        separator = rng.choice([" ", ". ", "\n", ", ", "!!! "])
        loop = separator.join([phrase] * rng.randrange(1, 8))
        noise = " ".join(rng.choice(VOCABULARY) for _ in range(rng.randrange(0, 80)))
        texts.append(rng.choice([loop, f"{noise} {loop}", f"{loop} {noise}", noise, f"{noise}\t{loop}\n{noise}"]))
    return [*texts, "", " ", "word", "a " * 29, "a " * 30, "a b " * 15, "one two three four five " * 4 * 2]


def _python_rejects(text: str, min_words: int, share: float, n: int) -> bool:
    """The loop check of Repetition._check on a text that is already prose."""
    words = _word_keys(text)
    return len(words) >= min_words and _may_cover_more(words, share) and _duplicated_ngram_share(words, n) > share


@pytest.mark.skipif(not compiled.HAVE_JIT, reason="numba not installed: every text passes")
@pytest.mark.parametrize(("min_words", "share", "n"), [(30, 0.8, 10), (5, 0.5, 3), (1, 0.0, 1), (40, 0.95, 12)])
def test_the_screen_passes_every_text_the_check_rejects_and_few_others(min_words: int, share: float, n: int) -> None:
    texts = _texts(seed=min_words)
    passed = loop_screen(texts, min_words, share, n)
    rejected = [_python_rejects(text, min_words, share, n) for text in texts]
    assert [text for text, flag, reject in zip(texts, passed, rejected, strict=True) if reject and not flag] == []
    assert 0 < sum(rejected) < len(texts)  # the texts do exercise both outcomes
    # Hashes only merge different words or n-grams by rare accident: the screen passes next to nothing more.
    assert sum(passed) - sum(rejected) <= len(texts) // 100


def test_the_screens_start_once_a_process_has_filtered_enough_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "_rows_seen", 0)
    monkeypatch.setattr(compiled, "JIT_AFTER_ROWS", 10_000)
    assert [compiled.worth_compiling(5_000) for _ in range(3)] == [False, False, compiled.HAVE_JIT]
    monkeypatch.setattr(compiled, "HAVE_JIT", False)
    assert not compiled.worth_compiling(5_000)
    assert loop_screen([], 30, 0.8, 10) == [] and loop_screen(["a b"], 30, 0.8, 0) == [True]


@pytest.mark.parametrize("jit", [True, False])
def test_repetition_decides_a_batch_as_it_decides_each_row(jit: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compiled, "HAVE_JIT", compiled.HAVE_JIT and jit)
    monkeypatch.setattr(compiled, "JIT_AFTER_ROWS", 0)
    rng = random.Random(7)
    texts = [*_texts(seed=3, count=600), "Ça va très bien. " * 30, "```\ncode\n```\n" + "I like it. " * 40]
    rows = []
    for i, text in enumerate(texts):
        kind = rng.choice(["sft", "chat", "preference", "text"])
        answer = [{"role": "assistant", "content": text}]
        rows.append(
            new_row(
                row_id=f"r{i}",
                kind=kind,
                text=text if kind == "text" else None,
                messages=[{"role": "user", "content": "Talk"}] + (answer if kind in ("sft", "chat") else []),
                chosen=answer if kind == "preference" else None,
                rejected=answer if kind == "preference" else None,
            )
        )
    for repetition in (Repetition(), Repetition(gopher_kinds=("text", "chat"), loop_min_words=5, loop_ngram=3)):
        batch = repetition.run(rows, BatchTexts(rows), FilterStats())
        one_by_one = [repetition(row) for row in rows]
        assert batch == one_by_one
        assert 0 < sum(rejection is not None for rejection in one_by_one) < len(rows)
