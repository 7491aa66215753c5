"""Cleaners: each edit on hand-made cases, and no damage to legitimate HTML in code-alpaca."""

from __future__ import annotations

import copy
import json
import re

import pytest

from curation.core.schema import new_row
from curation.filter.chain import build_cleaners
from curation.filter.cleaners import FixEncoding, HtmlToText, MarkdownResidue, NormalizeWhitespace
from tests.conftest import SHARED_DATA


def sft(prompt: str, response: str, row_id: str = "r1") -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    )


def response_of(row: dict) -> str:
    return row["messages"][1]["content"]


# --- ftfy -----------------------------------------------------------------------------------


def test_fix_encoding_repairs_mojibake_and_records_how():
    row = sft("Translate", "SÃ£o Paulo Ã© grande")
    cleaned, edits = FixEncoding()(row)
    assert response_of(cleaned) == "São Paulo é grande"
    assert [(e.cleaner, e.where) for e in edits] == [("fix_encoding", "messages[1].content")]
    assert "latin-1" in edits[0].description
    assert response_of(row) == "SÃ£o Paulo Ã© grande"  # input not mutated


def test_fix_encoding_leaves_correct_text_and_typography_alone():
    row = sft("Quote it", "She said “café” — fine. &amp; stays for the HTML cleaner.")
    cleaned, edits = FixEncoding()(row)
    assert cleaned is row and edits == []


def test_fix_encoding_removes_control_characters_from_ascii():
    cleaned, edits = FixEncoding()(sft("Q", "bell\x07 here"))
    assert response_of(cleaned) == "bell here" and len(edits) == 1


# --- HTML -----------------------------------------------------------------------------------


def test_html_residue_around_prose_becomes_text():
    row = sft(
        "What is the capital of France?",
        "The capital is <b>Paris</b>.<br>It has &amp; more:<ul><li>museums</li><li>caf&eacute;s</li></ul>",
    )
    cleaned, edits = HtmlToText()(row)
    assert response_of(cleaned) == "The capital is Paris.\nIt has & more:\n- museums\n- cafés"
    assert len(edits) == 1 and "tags removed" in edits[0].description


def test_html_in_code_spans_and_fences_is_kept():
    text = "Use the `<br>` tag:\n```html\n<p>Hello</p>\n```\nand <b>bold</b> text."
    cleaned, _ = HtmlToText()(sft("How do I break a line?", text))
    assert response_of(cleaned) == "Use the `<br>` tag:\n```html\n<p>Hello</p>\n```\nand bold text."


def test_html_kept_when_the_prompt_is_about_markup():
    row = sft("Write an HTML snippet with a bold word", "Here: <b>word</b>")
    cleaned, edits = HtmlToText()(row)
    assert cleaned is row and edits == []


@pytest.mark.parametrize(
    "prompt",
    [
        "How do I write a <div> on my page?",  # an element named in the question: opened, never closed
        "How do I center a `<div>` horizontally?",  # a tag quoted as code
        "Write an HTML email with a greeting in a box",  # "email", but the HTML is named
    ],
)
def test_html_kept_when_the_user_asks_about_an_element(prompt):
    row = sft(prompt, 'Like this: <div style="margin: auto">Hello</div>')
    cleaned, edits = HtmlToText()(row)
    assert cleaned is row and edits == []


def test_scraped_residue_is_cleaned_though_the_row_mentions_email():
    """Issue 15: "email" made a row look like a markup topic, so its scraped residue was kept."""
    row = sft(
        "Write a short email to my landlord about the broken heater.",
        "Dear Mr. Smith,<br><br>The heater has been broken since Monday.&nbsp;Could you send someone?<br>Ana",
    )
    cleaned, edits = HtmlToText()(row)
    assert response_of(cleaned) == (
        "Dear Mr. Smith,\n\nThe heater has been broken since Monday. Could you send someone?\nAna"
    )
    assert len(edits) == 1


def test_scraped_page_is_not_about_markup_because_of_its_own_markup():
    """A text row is its own prompt: words of the page (newsletter, email) and of its tags' attributes
    (class="tags") say nothing about what the row is for."""
    page = new_row(
        row_id="t1",
        kind="text",
        text='<div class="post-tags"><p>Subscribe to our newsletter for weekly deals.</p>'
        "<p>Questions? Email us at the front desk&nbsp;anytime.</p></div>",
    )
    cleaned, edits = HtmlToText()(page)
    assert (
        cleaned["text"]
        == "Subscribe to our newsletter for weekly deals.\n\nQuestions? Email us at the front desk anytime."
    )
    assert len(edits) == 1


@pytest.mark.parametrize(
    "text",
    [
        "if a<b and c>d then print <br> done",  # the parser would eat "b and c" as a tag
        "List<String> names = new ArrayList<>();",  # generics
        "Use a List<String> here, <b>not</b> an array",  # prose with residue and a generic: ambiguous
        "48/2 = <<48/2=24>>24 clips",  # gsm8k calculator annotations
        "<!DOCTYPE html><html><body><p>x</p></body></html>",
        "#include <iostream>\nint main() { return 0; }",
    ],
)
def test_html_cleaner_does_not_touch_code_or_math(text):
    row = sft("Explain", text)
    cleaned, edits = HtmlToText()(row)
    assert cleaned is row and edits == []


# Tag names of HTML elements (written independently of the cleaner's own list).
_HTML_TAG = re.compile(
    r"</?(?:html|head|body|title|div|span|p|br|hr|a|b|i|u|em|strong|h[1-6]|ul|ol|li|table|tr|"
    r"td|th|thead|tbody|img|center|font|pre|code|small|sub|sup|blockquote|nav|header|"
    r"footer|main|section|article|aside|figure|caption|mark|s|q|del|ins|dl|dt|dd|big|"
    r"abbr|address|cite|details|summary|figcaption|kbd|strike|tfoot|tt)(?:\s[^<>]*)?/?>",
    re.IGNORECASE,
)


def _code_alpaca_rows() -> list[dict]:
    records = json.loads((SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    rows = []
    for i, rec in enumerate(records):
        prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec["input"] else "")
        rows.append(sft(prompt, rec["output"], row_id=f"ca{i}"))
    return rows


def test_code_alpaca_legitimate_html_is_never_edited():
    rows = _code_alpaca_rows()
    with_html = [r for r in rows if _HTML_TAG.search(json.dumps(r["messages"], ensure_ascii=False))]
    assert len(with_html) == 106  # README: 106 rows carry HTML as legitimate code
    cleaner = HtmlToText()
    for row in rows:  # all 2,017, the 106 included
        cleaned, edits = cleaner(row)
        assert edits == [] and cleaned is row, row["row_id"]


# --- Markdown -------------------------------------------------------------------------------


def test_markdown_residue_removed_outside_code():
    text = (
        "# Title\n**Bold** and *it* with [a link](https://x.org). a*b*c, snake_case_name, __init__, "
        "`**kept**`\n```\n# comment\n```"
    )
    cleaned, edits = MarkdownResidue()(sft("Q", text))
    assert response_of(cleaned) == (
        "Title\nBold and it with a link. a*b*c, snake_case_name, __init__, `**kept**`\n```\n# comment\n```"
    )
    assert edits[0].description.startswith("markdown removed:")


def test_markdown_cleaner_is_not_in_the_default_chain():
    assert "markdown" not in [c.name for c in build_cleaners()]
    assert "markdown" in [c.name for c in build_cleaners({"markdown": True})]


# --- whitespace -----------------------------------------------------------------------------


def test_whitespace_normalised():
    cleaned, edits = NormalizeWhitespace()(sft("Q", "  Hello  \r\n\n\n\nworld\u00a0!\u200b \n"))
    assert response_of(cleaned) == "Hello\n\nworld !"
    for label in ("CR line endings", "trailing spaces", "runs of blank lines", "no-break spaces"):
        assert label in edits[0].description


def test_whitespace_keeps_code_indentation():
    code = "    def f():\n        return 1\n\n"
    cleaned, _ = NormalizeWhitespace()(sft("Q", code))
    assert response_of(cleaned) == "    def f():\n        return 1"


def test_whitespace_clean_row_is_returned_as_is():
    row = sft("Q", "Already clean.\n\nTwo paragraphs.")
    assert NormalizeWhitespace()(row) == (row, [])


# --- field walking -------------------------------------------------------------------------


def test_a_cleaner_edits_every_text_field_and_copies_only_what_changed():
    row = new_row(
        row_id="p",
        kind="preference",
        messages=[{"role": "user", "content": "q "}],
        chosen=[{"role": "assistant", "content": " a"}],
        rejected=[{"role": "assistant", "content": "b"}],
    )
    before = copy.deepcopy(row)
    cleaned, edits = NormalizeWhitespace()(row)
    assert [e.where for e in edits] == ["messages[0].content", "chosen[0].content"]
    assert cleaned["messages"][0]["content"] == "q" and cleaned["chosen"][0]["content"] == "a"
    assert cleaned["rejected"] is row["rejected"]
    assert row == before
    text_row = new_row(row_id="t", kind="text", text="  body  ")
    assert NormalizeWhitespace()(text_row)[0]["text"] == "body"


def test_tilde_fenced_code_is_left_alone_like_backtick_fenced_code():
    for fence in ("```", "~~~"):
        text = f"Use **bold** here.\n{fence}md\n**kept** <b>kept</b>\n{fence}\nand <b>this</b> too."
        cleaned, _ = MarkdownResidue()(sft("Q", text))
        assert response_of(cleaned) == f"Use bold here.\n{fence}md\n**kept** <b>kept</b>\n{fence}\nand <b>this</b> too."
        cleaned, _ = HtmlToText()(sft("Q", text))
        assert response_of(cleaned) == f"Use **bold** here.\n{fence}md\n**kept** <b>kept</b>\n{fence}\nand this too."
