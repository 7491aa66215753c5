"""The one walker over a row's texts and the one code-fence rule every stage shares."""

from __future__ import annotations

from curation.core.schema import new_row
from curation.core.texts import CODE_SPANS, first_fenced_block, text_fields, with_texts
from curation.dedup.repeats import WithinConfig, remove_repeats


def test_the_walker_visits_every_text_in_a_fixed_order_and_edits_copy_on_write() -> None:
    row = new_row(
        kind="preference",
        messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "tool_calls": [], "content": None}],
        chosen=[{"role": "assistant", "content": "good"}],
        rejected=[{"role": "assistant", "content": "bad"}],
    )
    assert [(f.where, f.text) for f in text_fields(row)] == [
        ("messages[0].content", "Q"),
        ("chosen[0].content", "good"),
        ("rejected[0].content", "bad"),
    ]
    edited = with_texts(row, {("chosen", 0): "better"})
    assert edited["chosen"][0]["content"] == "better" and row["chosen"][0]["content"] == "good"
    assert edited["messages"] is row["messages"]  # untouched columns are shared, not copied
    assert with_texts(row, {}) is row


def test_both_fence_markers_and_inline_code_count_as_code() -> None:
    text = "prose `x` more\n~~~\ncode\n~~~\nafter ```py\nmore code\n``` end"
    assert CODE_SPANS.split(text)[1::2] == ["`x`", "~~~\ncode\n~~~", "```py\nmore code\n```"]


def test_a_closing_fence_is_never_taken_for_an_opening_one() -> None:
    reply = "```js\nlet x = 1\n```\nThen in Python:\n```python\nprint(1)\n```"
    assert first_fenced_block(reply, ("python", "py")) == "print(1)\n"
    assert first_fenced_block("~~~py\nz = 2\n~~~", ("python", "py")) == "z = 2\n"
    assert first_fenced_block("no code here", ("python",)) is None


def test_in_row_repeats_never_touch_code_even_an_unterminated_block() -> None:
    repeated = "This paragraph is long enough to count as a unit."
    code = "```python\n\nresult = compute_everything()\n\nresult = compute_everything()\n"
    cleaned, removed = remove_repeats(f"{repeated}\n\n{repeated}\n\n{code}", WithinConfig())
    assert removed == [repeated]
    assert cleaned.endswith(code)  # the repeated line of code is kept
