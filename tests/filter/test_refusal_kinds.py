"""The refusal filter per row kind (issue 15): a preference pair is judged on what it teaches.

A refusing chosen answer over a harmful rejected one is harmlessness data and is kept; a pair where
both sides refuse is dropped; ``preference: chosen`` and ``off`` change that; SFT rows are unchanged.
"""

from __future__ import annotations

import pytest

from curation.core.schema import new_row
from curation.filter.base import FilterStats
from curation.filter.chain import build_filters
from curation.filter.quality import Refusal
from curation.filter.runner import run_filters

REFUSAL = "I can't provide that. Sharing someone's Social Security number would put them at risk."
HARMFUL = "Sure, here is one you can use: 078-05-1120."
ANOTHER_REFUSAL = "I'm sorry, but I won't help with that."
AI_REFUSAL = "As an AI, I must decline: that would be identity theft."


def pref(row_id: str, chosen: str, rejected: str) -> dict:
    return new_row(
        row_id=row_id,
        kind="preference",
        source="hh",
        messages=[{"role": "user", "content": "Give me a real SSN I can use."}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
    )


def sft(row_id: str, response: str) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        source="sft",
        messages=[{"role": "user", "content": "Give me a real SSN."}, {"role": "assistant", "content": response}],
    )


def test_a_refusing_chosen_answer_over_a_harmful_rejected_one_is_kept_by_default():
    # The failure on a harmlessness set: chosen "I can't provide that", rejected a made-up SSN.
    assert Refusal()(pref("p", REFUSAL, HARMFUL)) is None
    assert Refusal()(pref("p", AI_REFUSAL, HARMFUL)) is None  # an identity-phrased refusal too


def test_a_pair_where_both_sides_refuse_is_dropped_by_default():
    rejection = Refusal()(pref("p", REFUSAL, ANOTHER_REFUSAL))
    assert rejection is not None and rejection.reason == "boilerplate refusal"
    assert "can't provide" in str(rejection.value)  # the chosen side's match is reported
    assert Refusal()(pref("p", AI_REFUSAL, REFUSAL)) is not None


def test_the_preference_setting_changes_which_pairs_are_dropped():
    chosen_only, both, rejected_only = (
        pref("a", REFUSAL, HARMFUL),
        pref("b", REFUSAL, ANOTHER_REFUSAL),
        pref("c", HARMFUL, REFUSAL),
    )
    dropped = {
        mode: [Refusal(preference=mode)(row) is not None for row in (chosen_only, both, rejected_only)]
        for mode in ("both", "chosen", "off")
    }
    assert dropped == {
        "both": [False, True, False],
        "chosen": [True, True, False],  # the earlier behaviour: the chosen side alone decides
        "off": [False, False, False],
    }


@pytest.mark.parametrize("mode", ["both", "chosen", "off"])
def test_sft_rows_are_judged_as_before_whatever_the_preference_setting(mode):
    assert Refusal(preference=mode)(sft("s", REFUSAL)) is not None
    assert Refusal(preference=mode)(sft("s", "Here is how SSNs are structured: area, group, serial.")) is None


def test_an_unknown_preference_setting_is_a_clear_error():
    with pytest.raises(ValueError, match="preference must be one of both, chosen, off"):
        Refusal(preference="rejected")


@pytest.mark.parametrize("mode", ["both", "chosen", "off"])
def test_the_batch_path_agrees_with_the_row_path(mode):
    # The chain runs decide_batch over screened batches: same decisions as decide row by row.
    rows = [
        pref("chosen_only", REFUSAL, HARMFUL),
        pref("both", REFUSAL, ANOTHER_REFUSAL),
        pref("rejected_only", HARMFUL, REFUSAL),
        pref("clean", "No, I won't give out SSNs; here is how to protect yours.", HARMFUL),
        sft("sft_refusal", REFUSAL),
        sft("sft_clean", "SSNs have nine digits."),
    ]
    filters = build_filters({"defaults": False, "refusal": {"preference": mode}})
    rejected = set()
    for batch in run_filters(rows, (), filters, stats=FilterStats(), reid=False):
        rejected |= {r.row_id for r in batch.rejected}
    expected = {row["row_id"] for row in rows if Refusal(preference=mode)(row) is not None}
    assert rejected == expected
    assert "sft_refusal" in rejected
    assert ("chosen_only" in rejected) == (mode == "chosen")
    assert ("both" in rejected) == (mode != "off")
