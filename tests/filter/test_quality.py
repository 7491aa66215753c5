"""Quality filters on hand-made rows with known answers, and on public data with known defects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from curation.core.schema import new_row
from curation.filter.quality import (
    BehaviourPatterns,
    BrokenEncoding,
    ChatTokens,
    ChosenEqualsRejected,
    Echo,
    EmptyFilter,
    GopherQuality,
    LengthBounds,
    Refusal,
    Repetition,
)
from tests.conftest import SHARED_DATA


def sft(prompt: str, response: str, row_id: str = "r") -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    )


def pref(prompt: str, chosen: str, rejected: str, row_id: str = "p") -> dict:
    return new_row(
        row_id=row_id,
        kind="preference",
        messages=[{"role": "user", "content": prompt}],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
    )


def text_row(text: str) -> dict:
    return new_row(row_id="t", kind="text", text=text)


def prompt_row(prompt: str) -> dict:
    return new_row(row_id="q", kind="prompt", messages=[{"role": "user", "content": prompt}])


def alpaca_rows(file: Path) -> list[dict]:
    rows = []
    for i, rec in enumerate(json.loads(file.read_text(encoding="utf-8"))):
        prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        if "chosen" in rec:
            rows.append(pref(prompt, rec["chosen"], rec["rejected"], row_id=str(i)))
        else:
            rows.append(sft(prompt, rec["output"], row_id=str(i)))
    return rows


# --- empty / placeholder --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        (sft("Say hi", ""), "empty response"),
        (sft("Say hi", "   \n"), "empty response"),
        (sft("", "Hello"), "empty instruction"),
        (sft("Say hi", "<nooutput>"), "placeholder response"),
        (sft("Say hi", "N/A"), "placeholder response"),
        (sft("Write filler", "Lorem ipsum dolor sit amet"), "placeholder response"),
        (pref("Q", "", "bad"), "empty chosen response"),
        (text_row("  "), "empty text"),
        (prompt_row(""), "empty instruction"),
    ],
)
def test_empty_filter_rejects(row, reason):
    rejection = EmptyFilter()(row)
    assert rejection is not None and rejection.reason == reason and rejection.filter == "empty"


@pytest.mark.parametrize(
    "row",
    [
        sft("What is 2+2?", "4"),
        sft("What does print(None) show?", "None"),
        sft("Chemical symbol of sodium?", "Na"),
        prompt_row("Write a poem"),
    ],
)
def test_empty_filter_keeps_short_real_answers(row):
    assert EmptyFilter()(row) is None


def test_empty_filter_flags_an_empty_turn_inside_a_chat():
    row = new_row(
        row_id="c",
        kind="chat",
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "and?"},
            {"role": "assistant", "content": ""},
        ],
    )
    assert EmptyFilter()(row).reason == "empty assistant turn 2"


def test_code_alpaca_empty_outputs_are_exactly_rows_237_and_1859():
    rows = alpaca_rows(SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json")
    rejected = {int(r["row_id"]): EmptyFilter()(r) for r in rows}
    rejected = {i: rej for i, rej in rejected.items() if rej is not None}
    assert sorted(rejected) == [237, 1859]
    assert all(rej.reason == "empty response" for rej in rejected.values())


# --- preference pairs -----------------------------------------------------------------------


def test_chosen_equals_rejected_ignores_case_and_spacing_only():
    flt = ChosenEqualsRejected()
    assert flt(pref("Q", "Yes, sure.", "yes,  sure.")).reason == "chosen identical to rejected"
    assert flt(pref("Q", "Yes, sure.", "No.")) is None
    assert flt(sft("Q", "A")) is None


def test_llms_from_scratch_degenerate_pairs_are_the_six_known_rows():
    rows = alpaca_rows(SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json")
    assert len(rows) == 1100
    flagged = sorted(int(r["row_id"]) for r in rows if ChosenEqualsRejected()(r) is not None)
    assert flagged == [122, 226, 400, 566, 628, 676]


# --- chat tokens ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "token"),
    [
        ("Sure!<|im_end|>", "<|im_end|>"),
        ("[INST] do it [/INST]", "[INST]"),
        ("Answer<|eot_id|>", "<|eot_id|>"),
        ("<s> Hello", "<s>"),
        ("The end.</s>", "</s>"),
    ],
)
def test_chat_tokens_leaking(content, token):
    rejection = ChatTokens()(sft("Q", content))
    assert rejection is not None and rejection.value == token


def test_chat_tokens_html_strikethrough_and_gsm8k_annotations_are_fine():
    flt = ChatTokens()
    assert flt(sft("Q", "Price: <s>$10</s> now $8, see <<10-2=8>>8")) is None


def test_chat_tokens_configurable():
    flt = ChatTokens(tokens=(), extra_tokens=("<|custom|>",), sentence_markers=False)
    assert flt(sft("Q", "x <|custom|>")).value == "<|custom|>"
    assert flt(sft("Q", "x <|im_end|>")) is None


# --- length ---------------------------------------------------------------------------------


def test_length_defaults_keep_one_word_answers_and_bounds_are_configurable():
    assert LengthBounds()(sft("What is 2+2?", "4")) is None
    strict = LengthBounds(min_response_words=3, max_prompt_chars=20)
    assert strict(sft("What is 2+2?", "4")).reason == "response shorter than 3 words"
    assert strict(sft("What is 2+2? " * 3, "It is four.")).value == 39


def test_length_is_kind_aware():
    flt = LengthBounds(min_response_words=5)
    assert flt(prompt_row("Write a poem")) is None  # prompt rows have no response
    assert flt(text_row("short text")).reason == "text shorter than 5 words"
    assert flt(pref("Q", "a b c d e", "no")) is None  # response = chosen


# --- encoding -------------------------------------------------------------------------------


def test_broken_encoding():
    flt = BrokenEncoding()
    assert flt(sft("Q", "caf\ufffd au lait")).value == 1
    assert flt(sft("Q", "naÃ¯ve cafÃ©")).reason == "mojibake"
    assert flt(sft("Q", "nul\x00byte")).reason == "control character"
    assert flt(sft("Q", "naïve café, 東京")) is None


# --- refusals and behaviour patterns --------------------------------------------------------


@pytest.mark.parametrize(
    "response",
    [
        "As an AI language model, I don't have opinions.",
        "I'm sorry, but I cannot help with that request.",
        "I cannot fulfill this request.",
        "Sure. Note that I am an AI developed by a lab and trained by OpenAI on data.",
    ],
)
def test_refusal_and_identity_boilerplate(response):
    assert Refusal()(sft("Tell me", response)) is not None


def test_refusal_only_at_the_start_and_not_on_prompts():
    long_answer = "Paris is the capital. " * 20 + "I'm sorry, but I cannot say more."
    assert Refusal()(sft("Capital of France?", long_answer)) is None
    assert Refusal()(prompt_row("As an AI language model, what do you think?")) is None
    assert Refusal()(sft("What is ChatGPT?", "ChatGPT is a model created by OpenAI.")) is None


def test_user_behaviour_patterns_and_presets():
    flt = BehaviourPatterns(preset="unsolicited_suggestions")
    rejection = flt(sft("2+2?", "4. Let me know if you have any other questions!"))
    assert rejection.reason == "behaviour pattern: offer more help"
    assert flt(sft("2+2?", "4.")) is None
    custom = BehaviourPatterns(patterns={"emoji sign-off": r"😊\s*$"})
    assert custom(sft("Hi", "Hello 😊")).reason == "behaviour pattern: emoji sign-off"


def test_behaviour_patterns_explain_bad_config():
    with pytest.raises(ValueError, match="at least one pattern"):
        BehaviourPatterns()
    with pytest.raises(ValueError, match="not a valid regular expression"):
        BehaviourPatterns(patterns=["(unclosed"])
    with pytest.raises(ValueError, match="unknown preset"):
        BehaviourPatterns(preset="nope")


# --- echo -----------------------------------------------------------------------------------


def test_echo():
    flt = Echo()
    prompt = "Write a sentence about the weather in London during the winter months."
    assert flt(sft(prompt, prompt.upper())).value == 1.0
    assert flt(sft(prompt, prompt + " Thanks")) is not None
    assert flt(sft("Correct the grammar: he go to school every days.", "He goes to school every day.")) is None
    assert flt(sft(prompt, "London winters are cold, grey and wet, with short days.")) is None


# --- repetition -----------------------------------------------------------------------------


def test_repetition_catches_loops_and_duplicated_lines():
    flt = Repetition()
    loop = sft("Tell me a story", "I like the sea and the sand. " * 12)
    assert flt(loop).reason.startswith("degenerate loop")
    unique = [" ".join(f"w{i}x{j}" for j in range(8)) for i in range(40)]
    lines = "\n".join(unique + ["Bake the bread for half an hour."] * 30)
    rejection = flt(text_row(lines))
    assert rejection.reason == "duplicate lines fraction > 0.3" and rejection.value == round(29 / 70, 3)
    assert flt(sft("Recipe?", lines)) is None  # Gopher's rules are for documents by default …
    assert Repetition(gopher_kinds=["sft"])(sft("Recipe?", lines)) == rejection  # … unless asked


def test_repetition_judges_each_chat_turn_on_its_own():
    answer = (
        "Dogs are loyal companions. They guard the house, play with children and love long walks. "
        "Cats are independent animals that hunt mice, sleep most of the day and purr when happy."
    )
    row = new_row(
        row_id="c",
        kind="chat",
        messages=[
            {"role": "user", "content": "Write about pets"},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Again please"},
            {"role": "assistant", "content": answer},
        ],
    )
    assert Repetition()(row) is None  # the whole chat is 100% repeated 10-grams, each turn is not
    looping = new_row(
        row_id="c",
        kind="chat",
        messages=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Story?"},
            {"role": "assistant", "content": "Once upon a time. " * 20},
        ],
    )
    assert Repetition()(looping).reason.startswith("degenerate loop")


def test_repetition_keeps_code_and_short_repetitive_answers():
    html = "<table>\n" + "  <tr>\n    <td></td><td></td>\n  </tr>\n" * 10 + "</table>"
    assert Repetition()(sft("Make an HTML table", html)) is None
    math = "\n".join(f"Day {d}: 2 * {d} = {2 * d} amoebae." for d in range(1, 6))
    assert Repetition()(sft("How many amoebae?", math)) is None


def test_repetition_counts_tilde_fenced_code_as_code_like_backtick_fenced_code():
    body = "print('hello world from the loop body of this demo')\n" * 12
    assert Repetition()(sft("Print it twelve times", "Run this:\n" + body)).reason.startswith("degenerate loop")
    for fence in ("```", "~~~"):  # CommonMark's two fences: the same code, fenced, is not a loop
        assert Repetition()(sft("Print it twelve times", f"Run this:\n{fence}python\n{body}{fence}")) is None


def test_repetition_on_public_data_has_few_false_positives():
    rows = alpaca_rows(SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json")
    rows += alpaca_rows(SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json")
    flagged = [r["row_id"] for r in rows if Repetition()(r) is not None]
    assert flagged == []


# --- Gopher document rules ------------------------------------------------------------------


def test_gopher_quality_on_text_rows():
    flt = GopherQuality()
    good = (
        "The history of the town is long and varied. It was founded by farmers who came to the valley "
        "with their families, and over the years they built a church, a school and a market. "
    ) * 3
    assert flt(text_row(good)) is None
    assert flt(text_row("too short to be a document")).reason == "fewer than 50 words"
    assert flt(text_row("#tag " * 60)).reason.startswith("'#' per word")
    assert flt(text_row("- the quality of items matters\n" * 60)).reason.startswith("bullet lines")
    assert flt(sft("Q", "short answer")) is None  # instruction rows are out of scope by default
