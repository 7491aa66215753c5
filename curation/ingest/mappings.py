"""Built-in mappings from common record shapes to the canonical row.

A mapping turns one parsed input record into one or more canonical rows (OASST trees yield a
row per thread). It raises :class:`RecordError` with a reason a person can act on when the
record does not fit; the ingester quarantines the record with that reason. Every input key a
mapping does not consume lands in ``extra``, so nothing is dropped.

Field names can be overridden per source (``fields: {instruction: question}``); a field given
as a list is the concatenation of those fields, blank ones skipped (e.g. ``[instruction, input]``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from curation.core.schema import Message


class RecordError(ValueError):
    """The record cannot become a row; the message is the quarantine reason."""


@dataclass
class Mapped:
    """One canonical row's content, before ids and source columns are attached."""

    kind: str
    messages: list[Message] | None = None
    chosen: list[Message] | None = None
    rejected: list[Message] | None = None
    score: float | None = None
    text: str | None = None
    origin: str | None = None
    generator: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    part: str | None = None  # sub-record address (e.g. OASST thread) appended to source_uri


class _Reader:
    """Reads fields of one record, remembering which keys were consumed."""

    def __init__(self, record: Mapping[str, Any], names: Mapping[str, str | list[str]]) -> None:
        self.record = record
        self.names = names
        self.used: set[str] = set()

    def _keys(self, logical: str, default: str | list[str]) -> list[str]:
        name = self.names.get(logical, default)
        return [name] if isinstance(name, str) else list(name)

    def _missing(self, keys: list[str], logical: str) -> RecordError:
        present = ", ".join(sorted(map(str, self.record))) or "none"
        return RecordError(
            f"missing required field {' + '.join(repr(k) for k in keys)} (the {logical}); record has keys: "
            f"{present}. Set fields.{logical} in the project file if it is named differently")

    def raw(self, logical: str, default: str, required: bool = True) -> Any:
        (key,) = self._keys(logical, default)[:1]
        if key not in self.record or self.record[key] is None:
            if required:
                raise self._missing([key], logical)
            return None
        self.used.add(key)
        return self.record[key]

    def text(self, logical: str, default: str | list[str], required: bool = True) -> str | None:
        keys = self._keys(logical, default)
        parts: list[str] = []
        found = False
        for key in keys:
            value = self.record.get(key)
            if value is None:
                continue
            found = True
            self.used.add(key)
            if not isinstance(value, str):
                raise RecordError(f"field {key!r} must be a string, got {type(value).__name__}")
            if value.strip():
                parts.append(value)
        if not found:
            if required:
                raise self._missing(keys, logical)
            return None
        return "\n\n".join(parts)

    def extra(self) -> dict[str, Any]:
        return {k: v for k, v in self.record.items() if k not in self.used}


def _require_content(*texts: str | None, what: str = "content") -> None:
    if not any(t and t.strip() for t in texts):
        raise RecordError(f"empty {what}: nothing to train on")


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


def _assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def map_alpaca(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    instruction = reader.text("instruction", ["instruction", "input"])
    output = reader.text("output", "output")
    _require_content(instruction, what="instruction")
    system = reader.text("system", "system", required=False)
    messages = ([{"role": "system", "content": system}] if system else []) + [_user(instruction or "")]
    messages.append(_assistant(output or ""))
    return [Mapped(kind="sft", messages=messages, extra=reader.extra())]


def map_self_instruct(record: Mapping[str, Any], names: Mapping[str, Any],
                      options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    instruction = reader.text("instruction", "instruction")
    _require_content(instruction, what="instruction")
    instances = reader.raw("instances", "instances")
    if not isinstance(instances, list) or not instances:
        raise RecordError("field 'instances' must be a non-empty list of {input, output} objects")
    rows = []
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RecordError(f"instances[{index}] must be an object, got {type(instance).__name__}")
        inner = _Reader(instance, {})
        prompt = "\n\n".join(p for p in (instruction, inner.text("input", "input", required=False)) if p)
        output = inner.text("output", "output")
        extra = reader.extra() | ({"instance": inner.extra()} if inner.extra() else {})
        extra.pop("instances", None)
        rows.append(Mapped(kind="sft", messages=[_user(prompt), _assistant(output or "")], extra=extra,
                           part=f"instance{index}" if len(instances) > 1 else None))
    return rows


_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
                   "system": "system", "tool": "tool", "observation": "tool", "function": "tool",
                   "function_call": "assistant"}


def _messages_from_list(turns: Any, role_key: str, content_key: str, role_map: Mapping[str, str],
                        field_name: str) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field {field_name!r} must be a non-empty list of turns")
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{field_name}[{index}] must be an object, got {type(turn).__name__}")
        role = turn.get(role_key)
        if role not in role_map:
            raise RecordError(f"{field_name}[{index}].{role_key} is {role!r}; expected one of {sorted(role_map)}")
        content = turn.get(content_key)
        if content is not None and not isinstance(content, str):
            if isinstance(content, list):  # OpenAI content parts: keep the text parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            else:
                raise RecordError(f"{field_name}[{index}].{content_key} must be a string, "
                                  f"got {type(content).__name__}")
        message: Message = {"role": role_map[role], "content": content or ""}
        for optional in ("name", "tool_calls", "tool_call_id"):
            if turn.get(optional) is not None:
                message[optional] = turn[optional]
        messages.append(message)
    if not any(m["content"].strip() for m in messages if m["role"] == "user"):
        raise RecordError(f"empty content: no user turn in {field_name!r} has text")
    return messages


def _chat_kind(messages: list[Message]) -> str:
    if any(m["role"] == "tool" or m.get("tool_calls") for m in messages):
        return "tool"
    return "chat"


def map_sharegpt(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    turns = reader.raw("conversations", "conversations")
    messages = _messages_from_list(turns, options.get("role_key", "from"), options.get("content_key", "value"),
                                   _SHAREGPT_ROLES, "conversations")
    return [Mapped(kind=_chat_kind(messages), messages=messages, extra=reader.extra())]


def map_openai(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    turns = reader.raw("messages", "messages")
    roles = {r: r for r in ("system", "user", "assistant", "tool")} | {"developer": "system"}
    messages = _messages_from_list(turns, "role", "content", roles, "messages")
    extra = reader.extra()
    return [Mapped(kind=_chat_kind(messages) if "tools" not in extra else "tool", messages=messages, extra=extra)]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(transcript: str) -> list[Message]:
    """Anthropic HH layout: "\\n\\nHuman: …\\n\\nAssistant: …" → messages."""
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise RecordError("transcript is not in the 'Human: … Assistant: …' layout")
    messages = []
    for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def _split_common_prefix(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], ...]:
    shared = 0
    while (shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]):
        shared += 1
    # The completion must start at an assistant turn.
    while shared > 0 and chosen[shared]["role"] != "assistant":
        shared -= 1
    return chosen[:shared], chosen[shared:], rejected[shared:]


def map_preference(record: Mapping[str, Any], names: Mapping[str, Any],
                   options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    chosen_raw = reader.raw("chosen", "chosen")
    rejected_raw = reader.raw("rejected", "rejected")
    if isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
        roles = {r: r for r in ("system", "user", "assistant", "tool")}
        chosen = _messages_from_list(chosen_raw, "role", "content", roles, "chosen")
        rejected = _messages_from_list(rejected_raw, "role", "content", roles, "rejected")
        prompt, chosen_tail, rejected_tail = _split_common_prefix(chosen, rejected)
        return [Mapped(kind="preference", messages=prompt, chosen=chosen_tail, rejected=rejected_tail,
                       extra=reader.extra())]
    for name, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        if not isinstance(value, str):
            raise RecordError(f"field {name!r} must be a string or a list of messages, got {type(value).__name__}")
    prompt = reader.text("prompt", "prompt")
    _require_content(prompt, what="prompt")
    _require_content(chosen_raw, rejected_raw, what="completions")
    return [Mapped(kind="preference", messages=[_user(prompt or "")], chosen=[_assistant(chosen_raw)],
                   rejected=[_assistant(rejected_raw)], extra=reader.extra())]


def map_hh(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    chosen_text = reader.text("chosen", "chosen")
    rejected_text = reader.text("rejected", "rejected")
    chosen = parse_hh_transcript(chosen_text or "")
    rejected = parse_hh_transcript(rejected_text or "")
    prompt, chosen_tail, rejected_tail = _split_common_prefix(chosen, rejected)
    if not prompt:
        raise RecordError("chosen and rejected transcripts share no prompt turns")
    return [Mapped(kind="preference", messages=prompt, chosen=chosen_tail, rejected=rejected_tail,
                   extra=reader.extra())]


def map_gsm8k(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    question = reader.text("question", "question")
    answer = reader.text("answer", "answer")
    _require_content(question, what="question")
    extra = reader.extra()
    final = (answer or "").rsplit("####", 1)
    if len(final) == 2:
        extra["final_answer"] = final[1].strip()
    return [Mapped(kind="sft", messages=[_user(question or ""), _assistant(answer or "")], extra=extra)]


def map_prompts(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    keys = names.get("prompt", "prompt")
    key = keys if isinstance(keys, str) else None
    value = record.get(key) if key else None
    if isinstance(value, list):  # multi-turn benchmarks (MT-bench "turns")
        reader.used.add(key)
        if not all(isinstance(t, str) for t in value):
            raise RecordError(f"field {key!r} must be a list of strings")
        turns = [t for t in value if t.strip()]
    else:
        prompt = reader.text("prompt", "prompt")
        turns = [prompt] if prompt else []
    _require_content(*turns, what="prompt")
    return [Mapped(kind="prompt", messages=[_user(t) for t in turns], extra=reader.extra())]


def map_text(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    text = reader.text("text", "text")
    _require_content(text, what="text")
    return [Mapped(kind="text", text=text, extra=reader.extra())]


def map_reward(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    reader = _Reader(record, names)
    prompt = reader.text("prompt", "prompt")
    response = reader.text("response", "response")
    score = reader.raw("score", "score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise RecordError(f"field 'score' must be a number, got {type(score).__name__}")
    _require_content(prompt, what="prompt")
    return [Mapped(kind="reward", messages=[_user(prompt or ""), _assistant(response or "")], score=float(score),
                   extra=reader.extra())]


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


def map_oasst(record: Mapping[str, Any], names: Mapping[str, Any], options: Mapping[str, Any]) -> list[Mapped]:
    """An OASST message tree → one chat row per root-to-leaf thread (``mode: threads``), the
    best-ranked thread only (``mode: best``), or preference pairs of ranked siblings
    (``mode: preference``). Deleted messages and their subtrees are skipped."""
    reader = _Reader(record, names)
    root = reader.raw("prompt", "prompt")
    if not isinstance(root, dict) or "text" not in root:
        raise RecordError("field 'prompt' must be the root message object of an OASST tree")
    mode = options.get("mode", "threads")
    if mode not in ("threads", "best", "preference"):
        raise RecordError(f"options.mode must be threads, best or preference; got {mode!r}")
    tree_extra = reader.extra()

    def message_of(node: dict[str, Any]) -> Message:
        role = _OASST_ROLES.get(node.get("role", ""))
        if role is None or not isinstance(node.get("text"), str):
            raise RecordError(f"message {node.get('message_id')!r} has role {node.get('role')!r} "
                              "or non-string text")
        return {"role": role, "content": node["text"]}

    def live_replies(node: dict[str, Any]) -> list[dict[str, Any]]:
        replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
        return sorted(replies, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))

    def row_for(path: list[dict[str, Any]], part: str) -> Mapped:
        synthetic = [n.get("model_name") or "unknown" for n in path if n.get("synthetic")]
        return Mapped(kind="chat", messages=[message_of(n) for n in path], part=part,
                      origin="synthetic" if synthetic else None,
                      generator=",".join(sorted(set(synthetic))) or None,
                      extra=tree_extra | {"message_ids": [n.get("message_id") for n in path],
                                          "ranks": [n.get("rank") for n in path],
                                          "review_results": [n.get("review_result") for n in path],
                                          "langs": sorted({n.get("lang") for n in path if n.get("lang")})})

    rows: list[Mapped] = []
    if mode == "preference":
        def walk_pairs(path: list[dict[str, Any]]) -> None:
            node = path[-1]
            ranked = [r for r in live_replies(node) if r.get("rank") is not None and r.get("role") == "assistant"]
            for i, better in enumerate(ranked):
                for worse in ranked[i + 1:]:
                    rows.append(Mapped(kind="preference", messages=[message_of(n) for n in path],
                                       chosen=[message_of(better)], rejected=[message_of(worse)],
                                       part=f"{better.get('message_id')}>{worse.get('message_id')}",
                                       extra=tree_extra | {"message_ids": [n.get("message_id") for n in path],
                                                           "ranks": [better.get("rank"), worse.get("rank")]}))
            for reply in live_replies(node):
                walk_pairs([*path, reply])
        walk_pairs([root])
    elif mode == "best":
        path = [root]
        while live_replies(path[-1]):
            path.append(live_replies(path[-1])[0])
        rows.append(row_for(path, "best"))
    else:
        def walk(path: list[dict[str, Any]]) -> None:
            replies = live_replies(path[-1])
            if not replies:
                rows.append(row_for(path, "thread" + str(len(rows))))
            for reply in replies:
                walk([*path, reply])
        walk([root])
    if not rows or not root["text"].strip():
        raise RecordError("empty content: the tree has no usable thread")
    return rows


MappingFn = Callable[[Mapping[str, Any], Mapping[str, Any], Mapping[str, Any]], list[Mapped]]

MAPPING_FUNCTIONS: dict[str, MappingFn] = {
    "alpaca": map_alpaca,
    "self_instruct": map_self_instruct,
    "sharegpt": map_sharegpt,
    "openai": map_openai,
    "preference": map_preference,
    "hh": map_hh,
    "oasst": map_oasst,
    "gsm8k": map_gsm8k,
    "prompts": map_prompts,
    "text": map_text,
    "reward": map_reward,
}
