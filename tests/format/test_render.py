"""Rendering rows for the target model: templates, token counts, loss masks, length policy, checks.

Each shipped template family gets a byte-level BPE trained in the test session on real public
conversations (../shared/data), so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from curation.format.render import (
    RenderedRow,
    RenderError,
    _plain_rust_tokenizer_class,
    apply_length_policy,
    format_batch,
    format_row,
    generation_prompt_matches,
    load_tokenizer,
    parse_rendered,
    render_row,
    resolve_chat_template,
    reusing_renderings,
    round_trip_ok,
    special_tokens_in_content,
    tokenizer_id,
)
from curation.format.render_checks import verify_row
from curation.format.tokenizers import TEMPLATE_NAMES, TEMPLATE_SPECS, load_template, train_tokenizer
from tests.conftest import REPO, SHARED_DATA

EOS = {name: spec.eos for name, spec in TEMPLATE_SPECS.items()}


def _fastchat_rows() -> list[dict]:
    roles = {"human": "user", "gpt": "assistant"}
    records = json.loads((SHARED_DATA / "fastchat-dummy-conversation" / "dummy_conversation.json").read_text())
    return [
        {
            "row_id": r["id"],
            "kind": "chat",
            "messages": [{"role": roles[t["from"]], "content": t["value"]} for t in r["conversations"]],
        }
        for r in records
    ]


def _preference_rows() -> list[dict]:
    records = json.loads(
        (SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json").read_text()
    )
    rows = []
    for index, r in enumerate(records):
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")
        rows.append(
            {
                "row_id": f"pref{index}",
                "kind": "preference",
                "messages": [{"role": "user", "content": prompt}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
        )
    return rows


@pytest.fixture(scope="session")
def fastchat() -> list[dict]:
    return _fastchat_rows()


@pytest.fixture(scope="session")
def preference() -> list[dict]:
    return _preference_rows()


@pytest.fixture(scope="session")
def tokenizer_dirs(tmp_path_factory, fastchat, preference) -> dict[str, Path]:
    texts = [m["content"] for row in fastchat for m in row["messages"]]
    texts += [row["chosen"][0]["content"] for row in preference]
    base = tmp_path_factory.mktemp("tokenizers")
    return {name: train_tokenizer(texts, base / name, vocab_size=2000, template=name) for name in TEMPLATE_NAMES}


@pytest.fixture(scope="session")
def toks(tokenizer_dirs) -> dict:
    return {name: load_tokenizer(path) for name, path in tokenizer_dirs.items()}


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
TOOL_ROW = {
    "row_id": "t1",
    "kind": "tool",
    "extra": {"tools": TOOLS},
    "messages": [
        {"role": "user", "content": "What's the weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "name": "get_weather", "content": '{"temp_c": 18}'},
        {"role": "assistant", "content": "It is 18 °C in Paris."},
    ],
}
CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


def _masked_text(tok, rendered: RenderedRow) -> str:
    return tok.decode([i for i, m in zip(rendered.input_ids, rendered.assistant_mask, strict=True) if m])


# --------------------------------------------------------------------------- tokenizers


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_trained_tokenizer_loads_offline_with_template_and_atomic_control_tokens(tokenizer_dirs, name):
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dirs[name]), local_files_only=True)
    assert tok.chat_template == load_template(name)
    assert tok.eos_token == TEMPLATE_SPECS[name].eos
    for token in TEMPLATE_SPECS[name].special:
        assert len(tok.encode(token, add_special_tokens=False)) == 1, token
    text = "Ünïcode ✓ 日本語 and emoji 🙂\n\ttabs"  # byte-level: nothing is unknown, decoding is exact
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_our_tokenizers_load_as_autotokenizer_loads_them(tokenizer_dirs, toks, name):
    # load_tokenizer takes the generic class directly for what train_tokenizer saves: it must be the object
    # AutoTokenizer would have built, down to its settings and what it makes of a text.
    expected = AutoTokenizer.from_pretrained(str(tokenizer_dirs[name]), local_files_only=True)
    loaded = toks[name]
    assert type(loaded) is type(expected)
    assert loaded.init_kwargs == expected.init_kwargs
    assert loaded.special_tokens_map == expected.special_tokens_map
    assert loaded.chat_template == expected.chat_template
    text = "<|im_start|>user\nÜnïcode ✓ 日本語 🙂<|im_end|>\n<|eot_id|> tabs\t"
    assert loaded(text)["input_ids"] == expected(text)["input_ids"]
    assert tokenizer_id(loaded) == tokenizer_id(expected)


def test_a_tokenizer_with_a_model_config_or_custom_code_goes_through_autotokenizer(tokenizer_dirs, tmp_path):
    # A model's config.json or an auto_map may name a class other than the generic one: AutoTokenizer decides.
    source = tokenizer_dirs[TEMPLATE_NAMES[0]]
    assert _plain_rust_tokenizer_class(source) is not None
    with_config = tmp_path / "with_config"
    shutil.copytree(source, with_config)
    (with_config / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert _plain_rust_tokenizer_class(with_config) is None
    custom = tmp_path / "custom"
    shutil.copytree(source, custom)
    settings = json.loads((custom / "tokenizer_config.json").read_text())
    settings["auto_map"] = {"AutoTokenizer": ["tokenization_mine.MyTokenizer", None]}
    (custom / "tokenizer_config.json").write_text(json.dumps(settings))
    assert _plain_rust_tokenizer_class(custom) is None


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed (the models extra)")
def test_loading_the_format_tokenizer_does_not_import_torch():
    # The run's process keeps whatever it imports to the end of the run: torch would add about 200 MiB.
    probe = (
        "import sys\n"
        "from curation.format.render import load_tokenizer\n"
        "tokenizer = load_tokenizer('demo/tokenizer', 'chatml')\n"
        "assert tokenizer('hello')['input_ids']\n"
        "print(sorted(name for name in sys.modules if name == 'torch' or name.startswith('torch.'))[:3])\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_training_is_deterministic(tmp_path):
    # The demo rebuilds its tokenizer offline; formatted rows record its id, which must not drift.
    texts = ["the quick brown fox", "jumps over the lazy dog", "pack my box with five dozen jugs"] * 20
    first = train_tokenizer(texts, tmp_path / "a", vocab_size=300)
    second = train_tokenizer(texts, tmp_path / "b", vocab_size=300)
    assert (first / "tokenizer.json").read_bytes() == (second / "tokenizer.json").read_bytes()
    assert tokenizer_id(load_tokenizer(first)) == tokenizer_id(load_tokenizer(second))


def test_unknown_template_name_is_a_clear_error(tmp_path):
    with pytest.raises(KeyError, match="shipped templates"):
        train_tokenizer(["a b c"], tmp_path, template="nope")
    with pytest.raises(ValueError, match=r"format\.chat_template"):
        resolve_chat_template("nope")


# --------------------------------------------------------------------------- rendering layouts


def test_chatml_and_llama3_layouts_are_exact(toks):
    row = {"kind": "chat", "messages": CHAT[:2]}
    assert render_row(row, toks["chatml"], system_prompt="Be brief.").text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    assert render_row(row, toks["llama3"]).text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
    )


def test_system_prompt_added_only_when_row_has_none(toks):
    own = {"kind": "sft", "messages": [{"role": "system", "content": "Row system."}, *CHAT[:2]]}
    rendered = render_row(own, toks["chatml"], system_prompt="Default system.")
    assert "Row system." in rendered.text and "Default system." not in rendered.text
    assert render_row({"kind": "sft", "messages": CHAT[:2]}, toks["chatml"]).messages[0]["role"] == "user"


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_assistant_mask_covers_exactly_assistant_content_and_end_of_turn(toks, name):
    tok = toks[name]
    rendered = render_row({"kind": "chat", "messages": CHAT}, tok, system_prompt="Sys")
    assert len(rendered.assistant_mask) == len(rendered.input_ids) == rendered.n_tokens
    assert rendered.mask_source == ("generation" if name == "chatml_generation" else "offsets")
    assert _masked_text(tok, rendered) == f"Hello!{EOS[name]}4{EOS[name]}"


def test_offset_masks_equal_generation_marker_masks_on_real_conversations(toks, fastchat):
    # Same vocabulary, same rendering; one mask from {% generation %}, the other from offsets.
    for row in fastchat[:60]:
        by_offsets = render_row(row, toks["chatml"])
        by_markers = render_row(row, toks["chatml_generation"])
        assert by_offsets.input_ids == by_markers.input_ids, row["row_id"]
        assert by_offsets.assistant_mask == by_markers.assistant_mask, row["row_id"]
        expected = "".join(m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant")
        assert _masked_text(toks["chatml"], by_offsets) == expected


def test_mask_falls_back_to_content_search_for_templates_that_rewrite_history(tokenizer_dirs):
    # A template that shows only the last assistant reply in full: not prefix-stable.
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n"
        "{{ m.content if (loop.last or m.role != 'assistant') else '...' }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    tok = load_tokenizer(tokenizer_dirs["chatml"], chat_template=template)
    rendered = render_row({"kind": "chat", "messages": CHAT}, tok)
    assert rendered.mask_source == "content_search"
    # The earlier reply is shown as "..." in the final rendering: nothing of it to train on.
    assert _masked_text(tok, rendered) == "4<|im_end|>"


def test_token_counts_match_the_tokenizer(toks, fastchat):
    tok = toks["llama3"]
    for row in fastchat[:20]:
        rendered = render_row(row, tok)
        assert rendered.n_tokens == len(tok.apply_chat_template(row["messages"], tokenize=True, return_dict=False))


def test_preference_rows_follow_trl_prompt_completion_split(toks, preference):
    for name, tok in toks.items():
        for row in preference[:15]:
            rendered = render_row(row, tok)
            full_chosen = tok.apply_chat_template(row["messages"] + row["chosen"], tokenize=False)
            assert rendered.prompt == tok.apply_chat_template(
                row["messages"], tokenize=False, add_generation_prompt=True
            )
            assert rendered.prompt + rendered.chosen == full_chosen
            assert rendered.chosen.rstrip("\n").endswith(row["chosen"][0]["content"] + EOS[name])
            assert rendered.rejected.rstrip("\n").endswith(row["rejected"][0]["content"] + EOS[name])
            assert rendered.text == rendered.prompt
            assert rendered.n_tokens == rendered.n_prompt_tokens + max(
                rendered.n_chosen_tokens, rendered.n_rejected_tokens
            )


def test_text_prompt_and_reward_rows(toks):
    tok = toks["chatml"]
    text = render_row({"kind": "text", "text": "Plain pretraining text."}, tok)
    assert text.n_tokens == len(tok("Plain pretraining text.", add_special_tokens=False)["input_ids"])
    assert text.text == "Plain pretraining text." and set(text.assistant_mask) == {1}
    prompt = render_row({"kind": "prompt", "messages": [{"role": "user", "content": "Name a colour."}]}, tok)
    assert prompt.text.endswith("<|im_start|>assistant\n") and set(prompt.assistant_mask) == {0}
    reward = render_row({"kind": "reward", "messages": CHAT[:2], "score": 0.7}, tok)
    assert _masked_text(tok, reward) == "Hello!<|im_end|>"


def test_tool_rows_render_tools_and_calls_and_parse_back(toks):
    for name in ("chatml", "chatml_generation"):
        tok = toks[name]
        rendered = render_row(TOOL_ROW, tok)
        assert rendered.text.startswith("<|im_start|>system\n# Tools")
        assert '"name": "get_weather"' in rendered.text and "<|im_start|>tool\n" in rendered.text
        assert _masked_text(tok, rendered) == (
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>'
            "It is 18 °C in Paris.<|im_end|>"
        )
        parsed = parse_rendered(rendered.text, tok)
        assert [m["role"] for m in parsed] == ["user", "assistant", "tool", "assistant"]
        call = parsed[1]["tool_calls"][0]["function"]
        assert call == {"name": "get_weather", "arguments": {"city": "Paris"}}
        assert round_trip_ok(TOOL_ROW, tok) == (True, "ok")
    with pytest.raises(RenderError, match="t1: the llama3 template does not render tools"):
        render_row(TOOL_ROW, toks["llama3"])


def test_missing_tokenizer_and_missing_template_are_clear_errors(tmp_path, tokenizer_dirs):
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        load_tokenizer(tmp_path / "no/such/dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*neither tokenizer\.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        load_tokenizer("someone/not-cached-model-xyz")
    tok = load_tokenizer(tokenizer_dirs["chatml"])
    tok.chat_template = None
    with pytest.raises(ValueError, match=r"no chat template.*format\.chat_template") as raised:
        render_row({"kind": "chat", "messages": CHAT[:2]}, tok)
    assert not isinstance(raised.value, RenderError)  # a configuration error must stop the run
    with pytest.raises(ValueError, match="no chat template"):  # format_row must not swallow it either
        format_row({"kind": "chat", "messages": CHAT[:2]}, tok, max_tokens=100)
    swapped = load_tokenizer(tokenizer_dirs["chatml"], chat_template="llama3")
    assert render_row({"kind": "chat", "messages": CHAT[:2]}, swapped).text.count("<|start_header_id|>") == 2


# --------------------------------------------------------------------------- length policy


def _long_chat(turns: int) -> dict:
    messages = [{"role": "system", "content": "You are terse."}]
    for i in range(turns):
        messages += [
            {"role": "user", "content": f"Question {i}: " + "tell me more " * 5},
            {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 5},
        ]
    return {"row_id": "long", "kind": "chat", "messages": messages}


def test_drop_policy_drops_with_reason_and_keeps_short_rows(toks):
    tok = toks["chatml"]
    rendered = render_row(_long_chat(4), tok)
    assert apply_length_policy(rendered, rendered.n_tokens, "drop") == (rendered, "within_limit")
    kept, reason = apply_length_policy(rendered, rendered.n_tokens - 1, "drop")
    assert kept is None and reason.startswith("dropped_too_long") and str(rendered.n_tokens) in reason


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_truncate_drops_earliest_exchanges_keeping_system_and_whole_turns(toks, name):
    tok = toks[name]
    rendered = render_row(_long_chat(4), tok)
    budget = rendered.n_tokens * 6 // 10
    cut, reason = apply_length_policy(rendered, budget, "truncate", tokenizer=tok)
    assert reason.startswith("truncated_earliest_turns") and cut.truncation == reason
    assert cut.n_tokens <= budget
    assert cut.messages[0]["role"] == "system" and cut.messages[1]["role"] == "user"
    assert cut.messages[-1]["content"].startswith("Answer 3")  # the latest exchanges survive
    assert cut.n_tokens == render_row({"kind": "chat", "messages": cut.messages}, tok).n_tokens
    assert _masked_text(tok, cut).endswith(EOS[name])


def test_truncate_cuts_last_assistant_turn_when_one_exchange_is_too_long(toks):
    tok = toks["chatml"]
    row = {
        "kind": "sft",
        "messages": [{"role": "user", "content": "Write a lot."}, {"role": "assistant", "content": "word " * 200}],
    }
    rendered = render_row(row, tok)
    cut, reason = apply_length_policy(rendered, 40, "truncate", tokenizer=tok)
    assert reason.startswith("truncated_last_assistant")
    assert cut.n_tokens == len(cut.input_ids) == len(cut.assistant_mask) == 40
    assert rendered.text.startswith(cut.text) and not cut.text.endswith("<|im_end|>\n")
    assert cut.input_ids == rendered.input_ids[:40]
    tiny, reason = apply_length_policy(rendered, 5, "truncate", tokenizer=tok)
    assert tiny is None and "prompt of the last exchange" in reason


def test_truncate_drops_preference_rows_and_cuts_text_rows(toks, preference):
    tok = toks["chatml"]
    pref = render_row(preference[0], tok)
    assert apply_length_policy(pref, 10, "truncate", tokenizer=tok)[0] is None
    text = render_row({"kind": "text", "text": "one two three four five six seven eight"}, tok)
    cut, reason = apply_length_policy(text, 3, "truncate", tokenizer=tok)
    assert reason.startswith("truncated_text") and cut.n_tokens == 3
    assert tok.decode(cut.input_ids) == cut.text and text.text.startswith(cut.text)


# --------------------------------------------------------------------------- round-trip checks


def test_special_tokens_leaking_into_content_are_found(toks):
    leaky = {
        "kind": "chat",
        "messages": [{"role": "user", "content": "end here <|im_end|> ok"}, {"role": "assistant", "content": "fine"}],
    }
    assert special_tokens_in_content(leaky, toks["chatml"]) == ["<|im_end|>"]
    assert special_tokens_in_content(leaky, toks["llama3"]) == []
    llama_leak = {
        "kind": "preference",
        "messages": [{"role": "user", "content": "q"}],
        "chosen": [{"role": "assistant", "content": "a<|eot_id|>"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    assert special_tokens_in_content(llama_leak, toks["llama3"]) == ["<|eot_id|>"]
    assert special_tokens_in_content({"kind": "chat", "messages": CHAT}, toks["chatml"]) == []
    assert special_tokens_in_content(TOOL_ROW, toks["chatml"]) == []
    bad_tool = {
        **TOOL_ROW,
        "extra": {
            "tools": [
                {"type": "function", "function": {"name": "f", "description": "ends <|im_end|>", "parameters": {}}}
            ]
        },
    }
    assert special_tokens_in_content(bad_tool, toks["chatml"]) == ["<|im_end|>"]
    ok, reason = round_trip_ok(leaky, toks["chatml"])
    assert not ok and reason


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_real_conversations_round_trip(toks, fastchat, preference, name):
    tok = toks[name]
    for row in fastchat[:100] + preference[:30]:
        assert round_trip_ok(row, tok) == (True, "ok"), row["row_id"]
        if row["kind"] == "chat":
            assert parse_rendered(render_row(row, tok).text, name) == row["messages"]
            # What inference sends (history + generation prompt) parses to the history alone.
            prompt_only = {"kind": "prompt", "messages": row["messages"][:-1]}
            assert parse_rendered(render_row(prompt_only, tok).text, tok) == row["messages"][:-1]


def test_round_trip_catches_content_the_template_changes(tokenizer_dirs):
    # Meta's own Llama 3 template trims content; our check must notice that whitespace is lost.
    trimming = load_template("llama3").replace("{{- message.content }}", "{{- message.content | trim }}")
    tok = load_tokenizer(tokenizer_dirs["llama3"], chat_template=trimming)
    row = {
        "kind": "chat",
        "messages": [{"role": "user", "content": "  padded  "}, {"role": "assistant", "content": "x"}],
    }
    ok, reason = round_trip_ok(row, tok)
    assert not ok and "message 0" in reason


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_generation_prompt_matches_for_shipped_templates(toks, name):
    assert generation_prompt_matches(CHAT, toks[name])


def test_generation_prompt_mismatch_is_detected(tokenizer_dirs):
    # Inference would send "<|im_start|>assistant" without the newline training put after the role:
    # a string prefix still, but the model would first have to generate the newline itself.
    bad = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
    )
    tok = load_tokenizer(tokenizer_dirs["chatml"], chat_template=bad)
    assert not generation_prompt_matches(CHAT, tok)
    tok.chat_template = bad.replace("<|im_start|>assistant{%", "<|im_start|>assistant\n{%")
    assert generation_prompt_matches(CHAT, tok)
    with pytest.raises(ValueError, match="assistant turn"):
        generation_prompt_matches(CHAT[:1], tok)


def test_format_row_records_unrenderable_rows_instead_of_raising(toks):
    tok = toks["llama3"]
    assert format_row(TOOL_ROW, tok, max_tokens=1000) == (
        None,
        "render_error: row t1: the llama3 template does not render tools; use the chatml or chatml_generation template",
    )
    assert format_row({"row_id": "e", "kind": "chat", "messages": []}, tok, max_tokens=1000)[1] == (
        "render_error: row e: chat row has no messages"
    )
    kept, reason = format_row({"kind": "chat", "messages": CHAT}, tok, max_tokens=1000, system_prompt="S")
    assert reason == "within_limit" and kept.messages[0] == {"role": "system", "content": "S"}
    assert json.loads(json.dumps(kept.to_record()))["n_tokens"] == kept.n_tokens
    dropped, reason = format_row({"kind": "chat", "messages": CHAT}, tok, max_tokens=5, policy="drop")
    assert dropped is None and reason.startswith("dropped_too_long")


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_a_batch_in_one_reuse_block_renders_and_verifies_like_rows_one_by_one(toks, fastchat, preference, name):
    # What the stage does (every text of the batch tokenized in one call, renderings and tokens reused by
    # the verification) must give exactly what rendering and verifying each row alone gives.
    tok = toks[name]
    rows = [*fastchat[:25], *preference[:10], TOOL_ROW, {"row_id": "x", "kind": "text", "text": "Plain text."}]
    rows += [{"row_id": "p", "kind": "prompt", "messages": CHAT[:1]}, {"row_id": "bad", "kind": "video"}]
    rows += [_long_chat(6)]

    def checks(outcomes: list) -> list:
        pairs = zip(rows, outcomes, strict=True)
        return [verify_row({**row, "messages": r.messages}, tok) for row, (r, _) in pairs if r]

    alone = [format_row(row, tok, max_tokens=120, policy="truncate", system_prompt="S") for row in rows]
    alone_checks = checks(alone)
    with reusing_renderings():
        batch = format_batch(rows, tok, max_tokens=120, policy="truncate", system_prompt="S")
        batch_checks = checks(batch)
    assert batch == alone and batch_checks == alone_checks
    assert {r.mask_source for r, _ in batch if r} >= {"all", "none", "empty"}
    assert any(reason.startswith("truncated") for _, reason in batch)


# --------------------------------------------------------------------------- fast paths give the same answers

# A template that reaches into the corners of Jinja's sandbox: dict methods (attributes of dict itself),
# missing keys, unsafe attributes, loop state, indexing, namespaces, filters, tests and raise_exception.
_PROBING_TEMPLATE = (
    "{%- set ns = namespace(n=0) %}"
    "{%- for message in messages %}{% set ns.n = ns.n + 1 %}"
    "[{{ message.role }}|{{ message.get('content') }}|{{ message['role'] }}|{{ message.items() | list | length }}"
    "|{{ message.weight if message.weight is defined else '-' }}|{{ message.pop is defined }}"
    "|{{ message.missing is defined }}|{{ message.thinking | default('') }}"
    "|{{ message.reasoning_content | default('') }}"
    "|{{ message.keys is defined }}|{{ loop.last }}|{{ message.content | tojson }}"
    "{%- if message.tool_calls is defined %}{% for call in message.tool_calls %}"
    "<{{ call.function.name }} {{ call.function.arguments | tojson }}>{% endfor %}{% endif %}]"
    "{%- if message.role == 'boom' %}{{ raise_exception('no boom: ' + message.content) }}{% endif %}"
    "{%- endfor %}{{ ns.n }}{{ messages[-1].role }}{{ bos_token }}{{ eos_token }}"
    "{%- if add_generation_prompt %}<gen>{% endif %}"
)
_PROBING_CONVERSATIONS = [
    CHAT,
    [{"role": "user", "content": "x", "weight": 1}, {"role": "assistant", "content": "y", "weight": True}],
    [{"role": "user", "content": "x", "weight": 1.0, "name": None}, {"role": "assistant", "content": None}],
    [{"role": "user", "content": 'é 🙂 "q"', "items": "shadowed?"}, {"role": "assistant", "content": "", "keys": 3}],
    [{"role": "user", "content": "why"}, {"role": "assistant", "content": "because", "reasoning": "think first"}],
    [{"role": "assistant", "content": "", "thinking": "t", "reasoning_content": "r"}],
    TOOL_ROW["messages"],
    [{"role": "user", "content": "nested", "meta": {"a": [1, 2, {"b": None}]}}],
    [{"role": "user", "content": "x"}, {"role": "boom", "content": "y"}],
]


@pytest.mark.parametrize("name", [*TEMPLATE_NAMES, "probing"])
def test_renderer_renders_exactly_what_render_jinja_template_renders(toks, name):
    from transformers.utils.chat_template_utils import render_jinja_template

    from curation.format.render import _Renderer

    tok = toks["chatml_generation" if name == "probing" else name]
    template = _PROBING_TEMPLATE if name == "probing" else tok.chat_template
    renderer = _Renderer(tok, template)
    for messages in _PROBING_CONVERSATIONS:
        conversation = [{k: v for k, v in m.items() if v is not None} for m in messages]
        for add_generation_prompt in (False, True):
            for marked in (False, True) if renderer.marks_generation else (False,):
                try:
                    texts, spans = render_jinja_template(
                        conversations=[conversation],
                        chat_template=template,
                        return_assistant_tokens_mask=marked,
                        add_generation_prompt=add_generation_prompt,
                        **tok.special_tokens_map,
                    )
                except Exception as error:  # the same template error, raised the same way
                    with pytest.raises(type(error), match=str(error)[:20]):
                        renderer.render(messages, None, add_generation_prompt, marked)
                    continue
                expected = (texts[0], [tuple(span) for span in spans[0]] if marked else None)
                assert renderer.render(messages, None, add_generation_prompt, marked) == expected


def test_render_reuse_keys_tell_values_apart_that_compare_equal():
    from curation.format.render import _conversation_key

    one, true, float_one = ({"role": "user", "content": "x", "n": value} for value in (1, True, 1.0))
    assert len({_conversation_key([m], None) for m in (one, true, float_one)}) == 3
    assert _conversation_key(CHAT, None) == _conversation_key([dict(m) for m in CHAT], None)
    assert _conversation_key(CHAT, None) != _conversation_key(CHAT, TOOLS)
    assert _conversation_key(CHAT[:1], None) != _conversation_key([{"content": "Hi", "role": "user"}], None)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_direct_tokenizer_calls_give_what_the_tokenizer_gives(toks, name):
    from curation.format.render import _direct_backend, _tokenize, decode

    tok = toks[name]
    texts = ["", "Plain text.", "Ünïcode ✓ 日本語 🙂\n\ttabs  ", tok.apply_chat_template(CHAT, tokenize=False)]
    texts.append("a special token inside content: " + TEMPLATE_SPECS[name].eos + " <tool_call>")

    def expected() -> list:
        out = tok(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
        return list(zip(out["input_ids"], out["offset_mapping"], strict=True))

    def materialized(encodings: list) -> list:
        return [(ids, None if offsets is None else list(offsets)) for ids, offsets in encodings]

    assert _direct_backend(tok) is not None
    assert materialized(_tokenize(tok, texts)) == expected()
    assert _tokenize(tok, texts, offsets=False) == [(ids, None) for ids, _ in expected()]
    for ids, _ in expected():
        assert decode(tok, ids) == tok.decode(ids)
    # A backend left truncating by an earlier call, or special tokens split as text, is not called directly.
    tok.backend_tokenizer.enable_truncation(3)
    assert _direct_backend(tok) is None and _tokenize(tok, texts) == expected()
    tok.split_special_tokens = True
    try:
        assert _direct_backend(tok) is None and _tokenize(tok, texts) == expected()
    finally:
        tok.split_special_tokens = False
        tok.backend_tokenizer.encode_special_tokens = False


def test_masks_from_spans_count_every_token_that_overlaps_a_span():
    import random

    import numpy as np

    from curation.format.render import _mask_from_spans

    def reference(offsets, spans):
        bounds = np.array(offsets, dtype=np.int64).reshape(-1, 2)
        mask = np.zeros(len(offsets), dtype=bool)
        for start, end in spans:
            mask |= (bounds[:, 1] > start) & (bounds[:, 0] < end)
        return mask.astype(np.int64).tolist()

    rng = random.Random(3)
    for _ in range(300):
        offsets, position = [], 0
        for _ in range(rng.randrange(0, 40)):
            start = max(0, position - rng.choice((0, 0, 0, 1)))  # overlapping and empty tokens too
            position = start + rng.choice((0, 1, 2, 3))
            offsets.append((start, position))
        spans = sorted((a, a + rng.randrange(0, 8)) for a in rng.sample(range(0, 60), rng.randrange(0, 4)))
        assert _mask_from_spans(offsets, spans) == reference(offsets, spans), (offsets, spans)


def _offset_tokenizers(texts: list[str]) -> dict:
    """Rust tokenizers of the other common shapes, trained on ``texts`` in a second: WordPiece behind a
    normalizer that lowercases and strips accents (BERT), Unigram behind Metaspace (T5, Llama 2), and a
    byte-level BPE whose post-processor trims spaces off the offsets (GPT-2, RoBERTa)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    bert = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    bert.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    bert.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    bert.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=800, special_tokens=["[UNK]"]))
    t5 = Tokenizer(models.Unigram())
    t5.pre_tokenizer = pre_tokenizers.Metaspace()
    t5.decoder = decoders.Metaspace()
    t5.train_from_iterator(texts, trainers.UnigramTrainer(vocab_size=600, special_tokens=["<unk>"], unk_token="<unk>"))
    gpt2 = Tokenizer(models.BPE())
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    gpt2.post_processor = processors.ByteLevel(trim_offsets=True)
    gpt2.train_from_iterator(
        texts, trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    return {"wordpiece": bert, "unigram": t5, "byte-level trimmed": gpt2}


def test_offsets_read_from_the_rust_encoding_give_the_masks_of_the_whole_offset_list(toks, fastchat, preference):
    """What formatting reads token by token (:class:`TokenOffsets`: spans, bisected loss masks) is what the
    encoding's whole offset list gives, for the shipped tokenizers and the other common shapes, on real
    conversations, accents, emoji split into byte tokens, runs of spaces and special tokens."""
    import random

    from curation.format.render import TokenOffsets, _mask_from_spans

    texts = [m["content"] for row in fastchat for m in row["messages"]] + [
        row["chosen"][0]["content"] for row in preference
    ]
    rendered = [toks[name].apply_chat_template(row["messages"], tokenize=False) for name in toks for row in fastchat]
    odd = [
        "",
        " ",
        "Ünïcode ✓ 日本語 🙂🙂\n\ttabs    end  ",
        "a   b\n\n\n c  ",
        "<|im_end|> in <|eot_id|> text <tool_call>",
    ]
    backends = {name: tok.backend_tokenizer for name, tok in toks.items()} | _offset_tokenizers(texts)
    rng = random.Random(5)
    for name, backend in backends.items():
        for text in [*rendered[:150], *texts[:150], *odd]:
            encoding = backend.encode(text, add_special_tokens=False)
            offsets = TokenOffsets(encoding)
            assert list(offsets) == encoding.offsets, (name, text)
            if encoding.offsets:
                assert offsets[-1] == encoding.offsets[-1] and offsets[1:3] == encoding.offsets[1:3]
            # spans at every token boundary and at random places, empty ones and ones past the end too
            edges = sorted({0, len(text), *(edge for span in encoding.offsets for edge in span)})
            for _ in range(12):
                count = rng.randrange(1, 4)
                points = sorted(
                    rng.choice(edges) if rng.random() < 0.7 else rng.randrange(0, len(text) + 3)
                    for _ in range(2 * count)
                )
                spans = list(zip(points[::2], points[1::2], strict=True))
                assert offsets.mask(spans) == _mask_from_spans(encoding.offsets, spans), (name, text, spans)
