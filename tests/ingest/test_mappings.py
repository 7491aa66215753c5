"""Built-in mappings on hand-made records of the shapes the shared data does not carry (HH, OpenAI, reward,
text) and the error messages a user sees for each kind of misfit."""

from __future__ import annotations

import pytest

from curation.ingest.mappings import MAPPINGS, Mapped, RecordError, parse_hh_transcript


def run(mapping: str, record: dict, fields: dict | None = None, options: dict | None = None) -> list[Mapped]:
    """One record through a registered mapping, as the ingester calls it."""
    spec = MAPPINGS[mapping]
    return spec.map(record, fields or {}, spec.parse_options(options or {}))


def test_hh_transcripts_split_into_shared_prompt_and_completions() -> None:
    chosen = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6."
    rejected = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: No idea."
    (row,) = run("hh", {"chosen": chosen, "rejected": rejected})
    assert row.kind == "preference"
    assert [m["role"] for m in row.messages] == ["user", "assistant", "user"]
    assert row.chosen == [{"role": "assistant", "content": "6."}]
    assert row.rejected == [{"role": "assistant", "content": "No idea."}]


def test_hh_rejects_text_that_is_not_a_transcript() -> None:
    with pytest.raises(RecordError, match="Human: … Assistant"):
        parse_hh_transcript("just some text")


def test_openai_messages_with_tools_become_tool_rows_and_keep_tools_in_extra() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "3°C", "tool_call_id": "c1"},
            {"role": "assistant", "content": "It is 3°C."},
        ],
        "tools": [{"type": "function", "function": {"name": "weather"}}],
        "id": 7,
    }
    (row,) = run("openai", record)
    assert row.kind == "tool"
    assert row.messages[2]["tool_calls"][0]["function"]["name"] == "weather"
    assert row.messages[3]["tool_call_id"] == "c1"
    assert row.extra == {"tools": record["tools"], "id": 7}


def test_openai_content_parts_keep_their_text() -> None:
    (row,) = run(
        "openai",
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
                {"role": "assistant", "content": "Hello."},
            ]
        },
    )
    assert row.messages[0]["content"] == "Hi there" and row.kind == "chat"


def test_preference_with_message_lists_splits_the_common_prefix() -> None:
    prompt = [{"role": "user", "content": "Name a colour."}]
    (row,) = run(
        "preference",
        {
            "chosen": [*prompt, {"role": "assistant", "content": "Blue."}],
            "rejected": [*prompt, {"role": "assistant", "content": "No."}],
        },
    )
    assert row.messages == prompt and row.chosen[0]["content"] == "Blue." and row.rejected[0]["content"] == "No."


def test_reward_and_text_rows() -> None:
    (reward,) = run("reward", {"prompt": "Rate me.", "response": "Fine.", "score": 0.7})
    assert reward.kind == "reward" and reward.score == 0.7
    with pytest.raises(RecordError, match="'score' must be a number, got str"):
        run("reward", {"prompt": "Rate me.", "response": "Fine.", "score": "high"})
    (text,) = run("text", {"text": "A long document.", "url": "u"})
    assert text.kind == "text" and text.text == "A long document." and text.extra == {"url": "u"}


def test_joined_fields_and_renamed_fields() -> None:
    (row,) = run(
        "alpaca",
        {"q": "Translate.", "ctx": "Bonjour", "a": "Hello"},
        fields={"instruction": ["q", "ctx"], "output": "a"},
    )
    assert row.messages[0]["content"] == "Translate.\n\nBonjour" and row.messages[1]["content"] == "Hello"


def test_missing_field_error_lists_the_keys_and_how_to_fix_it() -> None:
    with pytest.raises(RecordError) as error:
        run("gsm8k", {"problem": "1+1?", "answer": "2"})
    message = str(error.value)
    assert "missing required field 'question'" in message and "record has keys: answer, problem" in message
    assert "fields.question" in message


def test_oasst_skips_deleted_messages() -> None:
    tree = {
        "message_tree_id": "t",
        "prompt": {
            "message_id": "p",
            "role": "prompter",
            "text": "Hi?",
            "replies": [
                {"message_id": "a", "role": "assistant", "text": "Hello!", "rank": 0, "replies": []},
                {"message_id": "b", "role": "assistant", "text": "Spam", "deleted": True, "replies": []},
            ],
        },
    }
    rows = run("oasst", tree)
    assert [r.messages[-1]["content"] for r in rows] == ["Hello!"]
