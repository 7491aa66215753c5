"""Loss masks of sft / chat rows: every row has a loss token, and the masked tokens decode to exactly the
assistant contents plus the template's end-of-turn marker (``render_checks.mask_problem``), enforced by
the ``formatted`` stage (a ``loss_mask`` rejection) and by the ``round_trip_ok`` check (SQL over every row)."""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
import pytest

from curation.core.config import FormatConfig
from curation.core.schema import ARROW_SCHEMA, encode_row, new_row
from curation.format.render import apply_length_policy, load_tokenizer, render_row
from curation.format.render_checks import mask_problem, verify_row
from curation.format.stage import REJECTION_STAGES, format_records, start_worker
from curation.format.table import formatted_record
from curation.format.tokenizers import TEMPLATE_NAMES, train_tokenizer
from tests.conftest import REPO

DEMO_TOKENIZER = REPO / "demo" / "tokenizer"
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "It is 4."},
]
# Not prefix-stable (earlier replies are shown as "..."), and outside the shipped families: the mask falls
# back to finding each reply's content in the rendering, and the round trip only checks content order.
HIDING_TEMPLATE = (
    "{% for m in messages %}[{{ m.role }}]\n"
    "{{ m.content if (loop.last or m.role != 'assistant') else '...' }}\n{% endfor %}"
    "{% if add_generation_prompt %}[assistant]\n{% endif %}"
)


@pytest.fixture(scope="module", params=TEMPLATE_NAMES)
def tok(request, tmp_path_factory):
    # A small byte-level BPE per template, with that template's control tokens atomic (as a real tokenizer
    # of the family has them); trained in well under a second, nothing downloaded.
    texts = [m["content"] for m in CHAT] * 20 + ["wo " * 80, "other " * 80, "Write."]
    path = train_tokenizer(texts, tmp_path_factory.mktemp(request.param), vocab_size=300, template=request.param)
    return load_tokenizer(path)


def _record(row: dict, tokenizer, max_tokens: int | None = None) -> dict:
    rendered = render_row(row, tokenizer)
    if max_tokens is not None:
        rendered, _ = apply_length_policy(rendered, max_tokens, "truncate", tokenizer=tokenizer)
    return formatted_record({"row_id": "r", **row}, rendered, "train", 0.5)


def _batch(rows: list[dict]) -> pa.RecordBatch:
    table = pa.Table.from_pylist([encode_row(row) for row in rows], schema=ARROW_SCHEMA)
    table = table.append_column("split_row_id", pa.array([row["row_id"] for row in rows]))
    return table.append_column("split", pa.array(["train"] * len(rows))).to_batches()[0]


def test_masked_tokens_of_shipped_templates_are_the_replies_and_end_of_turn(tok) -> None:
    for kind in ("sft", "chat"):
        record = _record({"kind": kind, "messages": CHAT}, tok)
        assert mask_problem(record, tok) is None
        assert verify_row(record, tok).problem is None


def test_a_mask_that_misses_or_overshoots_the_reply_is_a_problem(tok) -> None:
    record = _record({"kind": "chat", "messages": CHAT}, tok)
    mask = json.loads(record["assistant_mask"])
    first = mask.index(1)
    shifted = [0, *mask[:-1]]  # one header token in, the end-of-turn token of the last reply out
    dropped_first_reply = [0] * (mask.index(0, first)) + mask[mask.index(0, first) :]
    problems = {
        "no loss": mask_problem({**record, "assistant_mask": json.dumps([0] * len(mask))}, tok),
        "shifted": mask_problem({**record, "assistant_mask": json.dumps(shifted)}, tok),
        "one reply": mask_problem({**record, "assistant_mask": json.dumps(dropped_first_reply)}, tok),
        "other content": mask_problem({**record, "messages": [*CHAT[:-1], {**CHAT[-1], "content": "It is 5."}]}, tok),
    }
    assert problems["no loss"].startswith("no loss token")
    assert "not its content" in problems["shifted"]
    assert problems["one reply"] == "1 masked run(s) of tokens for 2 assistant turn(s)"
    assert "assistant turn 2" in problems["other content"]
    assert verify_row({**record, "assistant_mask": json.dumps(shifted)}, tok).problem[0] == "loss_mask"


def test_a_reply_cut_by_the_length_policy_ends_on_a_prefix_of_its_content(tok) -> None:
    messages = [{"role": "user", "content": "Write."}, {"role": "assistant", "content": "wo " * 80}]
    row = {"kind": "sft", "messages": messages}
    record = _record(row, tok, max_tokens=30)
    assert record["truncation"].startswith("truncated_last_assistant")
    assert mask_problem(record, tok) is None
    wrong = {**record, "messages": [row["messages"][0], {"role": "assistant", "content": "other " * 80}]}
    assert "not a prefix" in mask_problem(wrong, tok)


def test_rows_of_other_kinds_and_unrendered_rows_are_not_mask_checked(tok) -> None:
    assert mask_problem({"kind": "chat", "messages": CHAT}, tok) is None  # an input row: nothing stored yet
    prompt = _record({"kind": "prompt", "messages": CHAT[:2]}, tok)
    assert json.loads(prompt["assistant_mask"]) == [0] * prompt["n_tokens"]
    assert mask_problem(prompt, tok) is None


def test_the_stage_rejects_a_row_whose_reply_is_not_found_in_the_rendering() -> None:
    # An empty reply under a template that is not prefix-stable: content search finds nothing to mask, the
    # content-order round trip passes, so before the mask check the row was stored with no loss at all.
    tokenizer = load_tokenizer(DEMO_TOKENIZER, chat_template=HIDING_TEMPLATE)
    start_worker(tokenizer, FormatConfig(tokenizer="demo/tokenizer", max_tokens=256), None)
    empty_reply = [CHAT[1], {"role": "assistant", "content": ""}, CHAT[3], CHAT[4]]
    rows = [
        new_row(row_id="ok", kind="sft", messages=[CHAT[1], CHAT[2]]),
        new_row(row_id="lost", kind="chat", messages=empty_reply),
    ]
    result = format_records(_batch(rows))
    assert result.formatted.column("parent_id").to_pylist() == ["ok"]
    [rejection] = result.rejections.to_pylist()
    assert rejection["row_id"] == "lost" and rejection["stage"] == "loss_mask" in REJECTION_STAGES
    assert rejection["reason"] == "1 masked run(s) of tokens for 2 assistant turn(s)"


def test_the_check_query_finds_sft_and_chat_rows_without_a_loss_token() -> None:
    from checks.formatted import _NO_LOSS_TOKEN

    connection = duckdb.connect()
    connection.execute("CREATE TABLE formatted (row_id VARCHAR, kind VARCHAR, assistant_mask JSON)")
    connection.executemany(
        "INSERT INTO formatted VALUES (?, ?, ?)",
        [
            ("learns", "sft", "[0, 0, 1, 1]"),
            ("silent_sft", "sft", "[0, 0, 0]"),
            ("silent_chat", "chat", "[]"),
            ("prompt", "prompt", "[0, 0]"),
            ("pair", "preference", "[]"),
        ],
    )
    found = connection.execute(f"SELECT row_id FROM formatted WHERE {_NO_LOSS_TOKEN} ORDER BY row_id").fetchall()
    assert found == [("silent_chat",), ("silent_sft",)]
