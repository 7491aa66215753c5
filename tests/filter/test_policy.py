"""Blocklist and licence policy filters."""

from __future__ import annotations

import pytest

from curation.core.schema import new_row
from curation.filter.chain import build_filters
from curation.filter.policy import Blocklist, LicenseFilter


def sft(prompt: str, response: str, license: str | None = "MIT") -> dict:
    return new_row(
        row_id="r",
        kind="sft",
        license=license,
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    )


def test_blocklist_matches_whole_words_case_insensitively():
    flt = Blocklist(terms=["ass", "credit card dump"])
    assert flt(sft("Q", "Python class with an Ass attribute")).value == "Ass"
    assert flt(sft("Q", "A Python class, assert it passes")) is None  # no substring matches
    assert flt(sft("Where to buy a Credit Card Dump?", "No.")).value == "Credit Card Dump"


def test_blocklist_patterns_and_scope():
    flt = Blocklist(patterns=[r"\bkill (?:yourself|urself)\b"], where="response")
    assert flt(sft("Q", "just kill yourself")).reason.startswith("blocked pattern")
    assert flt(sft("how do I kill yourself-made processes?", "use kill -9")) is None  # prompt not scanned


def test_blocklist_terms_file(tmp_path):
    terms = tmp_path / "terms.txt"
    terms.write_text("# one per line\nfoo bar\n\nbaz\n", encoding="utf-8")
    flt = Blocklist(terms_file=str(terms))
    assert flt(sft("Q", "this has Foo \n Bar")).value == "Foo \n Bar"  # any spacing between words
    assert flt(sft("Q", "this has foobar")) is None
    assert flt(sft("Q", "BAZ!")).value == "BAZ"


def test_blocklist_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="give terms"):
        Blocklist()
    with pytest.raises(ValueError, match="does not exist"):
        Blocklist(terms_file=str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="not a valid regular expression"):
        Blocklist(patterns=["[unclosed"])


def test_license_filter_follows_intended_use():
    nc = sft("Q", "A", license="CC-BY-NC-4.0")
    assert LicenseFilter(intended_use="research")(nc) is None
    rejection = LicenseFilter(intended_use="commercial")(nc)
    assert rejection.filter == "license" and rejection.value == "CC-BY-NC-4.0"
    assert "commercial" in rejection.reason
    assert LicenseFilter(intended_use="commercial")(sft("Q", "A", license="MIT")) is None


def test_license_filter_project_overrides_and_bad_use():
    row = sft("Q", "A", license="LicenseRef-inhouse")
    assert LicenseFilter(intended_use="commercial")(row) is not None  # unknown licence: not for commercial
    allowed = LicenseFilter(intended_use="commercial", licenses={"LicenseRef-inhouse": {"commercial": True}})
    assert allowed(row) is None
    with pytest.raises(ValueError, match="intended_use"):
        LicenseFilter(intended_use="fun")


def test_policy_filters_are_built_from_config_and_run_first_by_cost():
    filters = build_filters({"blocklist": {"terms": ["xyz"]}, "license": {"intended_use": "commercial"}})
    names = [f.name for f in filters]
    assert names[0] == "license" and "blocklist" in names
