"""Phone numbers without a context word and street addresses beyond the English "12 Baker Street"
form: found, screened exactly, and never at the cost of maths, dates, versions or prose."""

from __future__ import annotations

import random

import pytest

from benchmarks.pii_eval import evaluate, load_presidio, split_records
from curation.filter.batch import BatchTexts
from curation.filter.pii import REGEX_ENTITIES, batch_candidates, find_pii, pii_candidates
from tests.conftest import SHARED_DATA


def found(text: str) -> list[tuple[str, str]]:
    return [(m.entity, m.text) for m in find_pii(text)]


@pytest.mark.parametrize(
    "text, phone",
    [
        ("(231) 232-2334", "(231) 232-2334"),
        ("231-232-2334", "231-232-2334"),
        ("231.232.2334", "231.232.2334"),
        ("(231) 232 2334", "(231) 232 2334"),
        ("(231)-232-2334", "(231)-232-2334"),
        ("(231) 232.2334 after hours", "(231) 232.2334"),
        ("1-231-232-2334", "1-231-232-2334"),
    ],
)
def test_north_american_phones_need_no_context_word(text: str, phone: str) -> None:
    assert found(text) == [("PHONE", phone)]


@pytest.mark.parametrize(
    "text",
    [
        "231 232 2334",  # space-grouped digits are how large numbers are written
        "(2+3) 232-2334 = ?",
        "2021-03-04 2022-05-06",
        "v1.2.3.4 and 10.15.30",
        "x = (12) 345",
        "She bought 3 boxes (each 12) for $345.",
    ],
)
def test_number_shapes_that_are_not_phones(text: str) -> None:
    assert [entity for entity, _ in found(text)] == []


@pytest.mark.parametrize(
    "text, address",
    [
        ("She lives at Rue de Piétrain 371.", "Rue de Piétrain 371"),
        ("Send it to Via Roma 131, please", "Via Roma 131"),
        ("Paseo del Atlántico 81", "Paseo del Atlántico 81"),
        ("ul. Zamkowa 33", "ul. Zamkowa 33"),
        ("Wingertweg 126", "Wingertweg 126"),
        ("Our office: Loorenstrasse 149", "Loorenstrasse 149"),
        ("Koepenicker Str. 74", "Koepenicker Str. 74"),
        ("Wesselényi u. 94.", "Wesselényi u. 94"),
        ("P.O. Box 149", "P.O. Box 149"),
        ("PSC 6477, Box 2981", "PSC 6477, Box 2981"),
        ("APO AE 83700", "APO AE 83700"),
        ("Apt. 322", "Apt. 322"),
        ("Suite 578", "Suite 578"),
    ],
)
def test_continental_and_postal_addresses(text: str, address: str) -> None:
    assert found(text) == [("STREET_ADDRESS", address)]


@pytest.mark.parametrize(
    "text",
    [
        "In Spring 2020 the Committee 3 met.",
        "Smith et al. 2019 showed it.",
        "Via 3 routes we reach the goal.",
        "Send it via email to the team 2 days later.",
        "The test suite 12 passed; apartment prices rose.",
        "Chapter 3: Boxes 12 and 14",
    ],
)
def test_prose_with_street_words_is_not_an_address(text: str) -> None:
    assert [entity for entity, _ in found(text)] == []


def test_street_addresses_on_the_held_out_templates() -> None:
    """Measured on the `test` split (odd template ids): the rules were written from the `dev` split only
    (benchmarks/pii_eval.py). Before: recall 0.101."""
    records = split_records(load_presidio(SHARED_DATA / "presidio-synth-pii" / "synth_dataset_v2.json"), "test")
    score = evaluate(records)["STREET_ADDRESS"]
    assert score.precision >= 0.95, score
    assert score.recall >= 0.45, score


def test_screens_pass_every_text_with_a_new_shape() -> None:
    """Both candidate screens (one list of texts, a filter batch) name every entity the detectors find,
    for the new phone and address shapes and for text the whitespace cleaner will rewrite."""
    rng = random.Random(7)
    pieces = ["(231) 232 2334", "(231)-232-2334", "Rue de Piétrain 371", "Wingertweg 126", "Koepenicker Str. 74"]
    pieces += ["Wesselényi u. 94.", "P.O. Box 149", "APO AE 83700", "Suite 578", "call 555\u200b1234", "x\u00a0@b.io"]
    pieces += ["mail: joe\u200b@corp.com", "(231)\u00a0232-2334", "12 Baker Street", "Phone:" + " " * 50 + "\n467 3395"]
    filler = ["The answer is 42.", "Add 600+950+1250 = 2800.", "Released 2021-03-04.", "Use v1.2.3 here", ""]
    texts = [f"{rng.choice(filler)} {rng.choice(pieces)} {rng.choice(filler)}" for _ in range(600)]
    texts += [rng.choice(filler) for _ in range(200)]
    candidates = pii_candidates(texts)
    rows = [{"row_id": str(i), "kind": "sft", "text": text} for i, text in enumerate(texts)]
    in_batch = batch_candidates(BatchTexts(rows))
    assert sum(1 for c in candidates if c) < len(texts)  # the screen does screen
    for position, (text, entities) in enumerate(zip(texts, candidates, strict=True)):
        expected = find_pii(text, REGEX_ENTITIES)
        assert find_pii(text, entities) == expected, text
        assert find_pii(text, in_batch.get(position, ())) == expected if in_batch.get(position) else expected == []
