"""HH-style full-transcript preference records are split only where they really are a comparison of two
final replies to one conversation (issue 15, deliverable 3): anything else is quarantined with a reason
instead of becoming a row with two assistant turns in a row or a literal "Human:" inside a reply."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from curation.core.config import SourceConfig
from curation.core.schema import utcnow
from curation.ingest.mappings import MAPPINGS, Mapped, RecordError
from curation.ingest.sources import Quarantined, ingest_file


def run_hh(chosen: str, rejected: str) -> list[Mapped]:
    """One record through the `hh` mapping, as the ingester calls it."""
    spec = MAPPINGS["hh"]
    return spec.map({"chosen": chosen, "rejected": rejected}, {}, spec.parse_options({}))


def _roles(row: Mapped) -> list[str]:
    return [m["role"] for m in row.messages]


def test_common_case_prompt_is_everything_before_the_final_reply() -> None:
    shared = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is 2+2?"
    (row,) = run_hh(shared + "\n\nAssistant: 4.", shared + "\n\nAssistant: 5.")
    assert _roles(row) == ["user", "assistant", "user"]
    assert row.chosen == [{"role": "assistant", "content": "4."}]
    assert row.rejected == [{"role": "assistant", "content": "5."}]


def test_transcripts_that_differ_before_the_final_turn_are_quarantined() -> None:
    # The shape of the public HH records the issue found: the second conversation turn already differs.
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue."
    rejected = "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Rude.\n\nAssistant: Sorry."
    with pytest.raises(RecordError, match="differ at turn 1, before the final assistant turn"):
        run_hh(chosen, rejected)


def test_transcripts_of_different_length_are_quarantined() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!"
    with pytest.raises(RecordError, match=r"differ at turn 1.*4 vs 2 turns"):
        run_hh(chosen, rejected)


def test_empty_human_turn_does_not_leave_a_marker_in_assistant_text() -> None:
    # "\n\nHuman:" with no text (no space after the colon) is not a split point: before the fix its marker
    # stayed inside the assistant reply and the next reply followed it, two assistant turns in a row.
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman:\n\nAssistant: Anything else?"
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman:\n\nAssistant: Bye."
    with pytest.raises(RecordError, match="role marker"):
        run_hh(chosen, rejected)


def test_transcript_ending_with_a_human_turn_is_quarantined() -> None:
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: More?"
    with pytest.raises(RecordError, match="ends with a Human turn"):
        run_hh(chosen, "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Less?")


def test_ingester_quarantines_bad_records_and_keeps_rows_well_formed(tmp_path: Path) -> None:
    """Through the ingester: the good pair becomes a row, the others land in quarantine with their reason,
    and no row has two assistant turns in a row or a role marker inside content."""
    good = {"chosen": "\n\nHuman: Hi\n\nAssistant: A.", "rejected": "\n\nHuman: Hi\n\nAssistant: B."}
    differs = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Colour?\n\nAssistant: Blue.",
        "rejected": "\n\nHuman: Hi\n\nAssistant: No.\n\nHuman: Why?\n\nAssistant: Because.",
    }
    marker = {
        "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman:\n\nAssistant: More?",
        "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman:\n\nAssistant: Bye.",
    }
    path = tmp_path / "hh.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (good, differs, marker)) + "\n")
    source = SourceConfig(name="hh", path=path.name, mapping="hh", license="MIT")
    items = list(ingest_file(path, path.name, source, utcnow(), 100_000))
    rows = [i for i in items if not isinstance(i, Quarantined)]
    quarantined = [i for i in items if isinstance(i, Quarantined)]
    assert len(rows) == 1
    assert ["before the final assistant turn" in q.error for q in quarantined] == [True, False]
    assert "role marker" in quarantined[1].error
    for row in rows:
        turns = [*row["messages"], *row["chosen"]]
        roles = [m["role"] for m in turns]
        assert not any(a == b == "assistant" for a, b in itertools.pairwise(roles))
        assert not any("Human:" in m["content"] or "Assistant:" in m["content"] for m in turns)


# --- Message-list inputs (`preference` with chosen/rejected as message lists, `sharegpt`, `openai`) -----------


def run_mapping(name: str, record: dict) -> list[Mapped]:
    spec = MAPPINGS[name]
    return spec.map(record, {}, spec.parse_options({}))


def _turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_preference_lists_share_every_turn_before_the_final_reply() -> None:
    prompt = [_turn("system", "Be brief."), _turn("user", "Hi"), _turn("assistant", "Hello!"), _turn("user", "2+2?")]
    (row,) = run_mapping(
        "preference",
        {"chosen": [*prompt, _turn("assistant", "4.")], "rejected": [*prompt, _turn("assistant", "5.")]},
    )
    assert row.messages == prompt
    assert row.chosen == [_turn("assistant", "4.")] and row.rejected == [_turn("assistant", "5.")]


def test_preference_lists_that_differ_before_the_final_reply_are_quarantined() -> None:
    # Before the fix the common prefix was split off and the rest kept as "completions": here the rejected
    # completion started with an assistant turn and carried a user turn inside it.
    chosen = [_turn("user", "Hi"), _turn("assistant", "Hello!"), _turn("user", "Colour?"), _turn("assistant", "Blue")]
    rejected = [_turn("user", "Hi"), _turn("assistant", "Go away."), _turn("user", "Rude."), _turn("assistant", "Ok")]
    with pytest.raises(RecordError, match="differ at turn 1, before their final assistant reply"):
        run_mapping("preference", {"chosen": chosen, "rejected": rejected})


def test_preference_lists_with_different_questions_are_quarantined() -> None:
    # Before the fix: no shared turn, so the whole conversations (user turns included) became the completions.
    with pytest.raises(RecordError, match="differ at turn 0"):
        run_mapping(
            "preference",
            {
                "chosen": [_turn("user", "Name a colour."), _turn("assistant", "Blue.")],
                "rejected": [_turn("user", "Name a fruit."), _turn("assistant", "Apple.")],
            },
        )


def test_preference_list_ending_with_a_user_turn_is_quarantined() -> None:
    with pytest.raises(RecordError, match="rejected does not end with an assistant reply"):
        run_mapping(
            "preference",
            {
                "chosen": [_turn("user", "Hi"), _turn("assistant", "Hello")],
                "rejected": [_turn("user", "Hi"), _turn("assistant", "Hello"), _turn("user", "And?")],
            },
        )


def test_message_lists_with_two_assistant_turns_in_a_row_are_quarantined() -> None:
    conversation = [
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
        {"from": "gpt", "value": "How can I help?"},
    ]
    with pytest.raises(RecordError, match=r"two assistant turns in a row \(turns 1 and 2\)"):
        run_mapping("sharegpt", {"conversations": conversation})
    # The source says so by naming two different speakers.
    named = [
        _turn("user", "Debate it."),
        {"role": "assistant", "content": "Yes.", "name": "pro"},
        {"role": "assistant", "content": "No.", "name": "con"},
    ]
    (row,) = run_mapping("openai", {"messages": named})
    assert [m.get("name") for m in row.messages] == [None, "pro", "con"]


def test_role_marker_inside_an_assistant_message_is_quarantined() -> None:
    messages = [_turn("user", "Hi"), _turn("assistant", "Hello!\n\nHuman: thanks\n\nAssistant: welcome")]
    with pytest.raises(RecordError, match="role marker \\('Human:'\\) inside assistant text"):
        run_mapping("openai", {"messages": messages})
    # A user pasting a transcript is content, not a marker.
    pasted = [_turn("user", "Summarise:\n\nHuman: hi\n\nAssistant: yo"), _turn("assistant", "A greeting.")]
    assert run_mapping("openai", {"messages": pasted})
