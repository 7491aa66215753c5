"""docs/filters.md is the registry's own description of every filter and cleaner (`distillery reference`)."""

from __future__ import annotations

from curation.filter.base import CLEANERS, FILTERS, reference_markdown


def test_reference_lists_every_step_with_its_default_and_parameters() -> None:
    text = reference_markdown()
    for name in [*FILTERS, *CLEANERS]:
        assert f"| `{name}`<br>" in text
    assert (
        "| `length`<br>[`quality.LengthBounds`](../curation/filter/quality.py) | on | 0.5 | "
        "`min_prompt_words` = `1`<br>`max_prompt_words` = `100000`"
    ) in text
    assert "(../curation/filter/language.py) | off | 5 | `allowed` = `('en',)`" in text
    assert (
        "(../curation/filter/cleaners.py) | off | — | Strip Markdown formatting (links, emphasis, headings) "
        "outside code; opt-in. |"
    ) in text
