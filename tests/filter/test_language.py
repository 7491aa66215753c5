"""Offline language identification and the language filter."""

from __future__ import annotations

import json
import socket

import pytest

from curation.core.schema import new_row
from curation.filter import language
from curation.filter.language import LanguageFilter, detect_language, language_sample
from tests.conftest import SHARED_DATA


def sft(prompt: str, response: str = "ok", source: str = "s") -> dict:
    return new_row(
        row_id="r",
        kind="sft",
        source=source,
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    )


FRENCH = "Pouvez-vous m'expliquer comment fonctionne la photosynthèse chez les plantes vertes ?"
GERMAN = "Bitte erkläre mir, wie die Photosynthese bei grünen Pflanzen funktioniert und warum sie wichtig ist."
ENGLISH = "Can you explain how photosynthesis works in green plants and why it matters?"


def test_detects_common_languages():
    assert detect_language(FRENCH)[0][0] == "fr"
    assert detect_language(GERMAN)[0][0] == "de"
    assert detect_language(ENGLISH)[0][0] == "en"


def test_model_loads_without_network(monkeypatch):
    # The model ships inside the package: loading it must not open a socket.
    def no_network(*args, **kwargs):
        raise AssertionError("language identification tried to use the network")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    language._detector.cache_clear()
    try:
        assert detect_language(FRENCH)[0][0] == "fr"
    finally:
        language._detector.cache_clear()


def test_filter_rejects_other_languages_with_the_language_as_value():
    flt = LanguageFilter(allowed=["en"])
    assert flt(sft(ENGLISH)) is None
    rejection = flt(sft(FRENCH))
    assert rejection.filter == "language" and rejection.value == "fr" and "allowed: en" in rejection.reason


def test_allowed_languages_per_source_override_the_global_list():
    flt = LanguageFilter(allowed=["en"], by_source={"fr_forum": ["fr"], "anything": []})
    assert flt(sft(FRENCH, source="fr_forum")) is None
    assert flt(sft(ENGLISH, source="fr_forum")).value == "en"
    assert flt(sft(GERMAN, source="anything")) is None  # empty list: no restriction


def test_code_and_short_prompts_are_undecidable_and_kept():
    flt = LanguageFilter(allowed=["en"])
    assert flt(sft("```python\ndef f(x):\n    return x + 1\n```")) is None
    assert flt(sft("2+2=?")) is None
    assert "def" not in language_sample(sft("Fix `def f(): pass` please"))


def test_translation_answers_do_not_count_by_default():
    row = sft(
        "Translate to French: Good morning, how are you today my friend?",
        "Bonjour, comment vas-tu aujourd'hui mon ami ?",
    )
    assert LanguageFilter(allowed=["en"])(row) is None
    assert LanguageFilter(allowed=["en"], fields="response")(row).value == "fr"


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="fields must be"):
        LanguageFilter(fields="everything")
    with pytest.raises(ValueError, match="list of language codes"):
        LanguageFilter(by_source={"x": "en"})


def test_gsm8k_questions_are_all_english():
    lines = (SHARED_DATA / "gsm8k-train" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    flt = LanguageFilter(allowed=["en"])
    rejected = [i for i, line in enumerate(lines) if flt(sft(json.loads(line)["question"])) is not None]
    assert len(lines) == 7473 and rejected == []
