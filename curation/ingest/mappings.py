"""Mappings: how one parsed input record of a known shape becomes canonical rows.

A mapping is one function registered with :func:`mapping`, which declares in one place
everything the rest of the project takes from it: the record fields it reads (with their default
keys, which a source can rename), its settings model (what the source's ``options`` may hold in
the project file, validated when the file is loaded), the kinds of rows it produces and what its
records look like. The project file's ``mapping`` key, the ingester's dispatch and
``docs/mappings.md`` (:func:`mappings_reference`) all read :data:`MAPPINGS`.

A mapping turns one record into one or more rows (OASST trees yield a row per thread). It raises
:class:`RecordError` with a reason a person can act on when the record does not fit; the ingester
quarantines the record with that reason. Every input key a mapping does not read lands in
``extra``, so nothing is dropped.

Field names can be overridden per source (``fields: {instruction: question}``); a field given
as a list is the concatenation of those fields, blank ones skipped (e.g. ``[instruction, input]``).
"""

from __future__ import annotations

import re
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from curation.core.conformance import structure_problem
from curation.core.markdown import generated_notice, table_cell
from curation.core.schema import KINDS, Message


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


FieldKeys = str | list[str]
"""The record key of a field, or several keys whose texts are joined."""


class FieldReader:
    """Reads the declared fields of one record under the source's names, remembering which keys were read
    (the rest is the row's ``extra``)."""

    def __init__(
        self,
        record: Mapping[str, Any],
        defaults: Mapping[str, FieldKeys],
        renamed: Mapping[str, FieldKeys] | None = None,
        optional: Collection[str] = (),
    ) -> None:
        self.record = record
        self.defaults = defaults
        self.renamed = renamed or {}
        self.optional = optional
        self.used: set[str] = set()

    def _name(self, logical: str) -> FieldKeys:
        if logical not in self.defaults:
            raise KeyError(f"field {logical!r} is not declared by the mapping (declared: {sorted(self.defaults)})")
        return self.renamed.get(logical, self.defaults[logical])

    def keys(self, logical: str) -> list[str]:
        """The record keys a field is read from."""
        name = self._name(logical)
        return [name] if isinstance(name, str) else list(name)

    def single_key(self, logical: str) -> str | None:
        """The record key of a field named by one string; None when it joins several keys."""
        name = self._name(logical)
        return name if isinstance(name, str) else None

    def _missing(self, keys: list[str], logical: str) -> RecordError:
        present = ", ".join(sorted(map(str, self.record))) or "none"
        return RecordError(
            f"missing required field {' + '.join(repr(k) for k in keys)} (the {logical}); record has keys: "
            f"{present}. Set fields.{logical} in the project file if it is named differently"
        )

    def raw(self, logical: str) -> Any:
        """The value of a field as it is (the first key only when several are named)."""
        (key,) = self.keys(logical)[:1]
        if key not in self.record or self.record[key] is None:
            if logical not in self.optional:
                raise self._missing([key], logical)
            return None
        self.used.add(key)
        return self.record[key]

    def text(self, logical: str) -> str | None:
        """The text of a field, its keys' non-blank texts joined by a blank line; None when an optional
        field is absent."""
        keys = self.keys(logical)
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
            if logical not in self.optional:
                raise self._missing(keys, logical)
            return None
        return "\n\n".join(parts)

    def extra(self) -> dict[str, Any]:
        """Every key of the record that was not read."""
        return {k: v for k, v in self.record.items() if k not in self.used}


class MappingOptions(BaseModel):
    """Base of a mapping's settings: a source's ``options`` in the project file (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(MappingOptions):
    """The settings of a mapping that takes none."""


MappingFn = Callable[[FieldReader, Any], list[Mapped]]
"""``(fields of one record, the source's options model) -> rows``."""
_Fn = TypeVar("_Fn", bound=MappingFn)


@dataclass(frozen=True)
class MappingSpec:
    """A registered mapping: its function and everything declared with it."""

    name: str
    function: MappingFn
    doc: str
    fields: Mapping[str, FieldKeys]
    optional: frozenset[str]
    options: type[MappingOptions]
    kinds: tuple[str, ...]
    version: int = 1
    """Bumped when the function's rows change for the same record and settings: the sources it maps are
    then read again (:func:`curation.ingest.settings.settings_fingerprint`), not carried over."""

    def parse_options(self, options: Mapping[str, Any]) -> MappingOptions:
        """A source's ``options`` as this mapping's settings (pydantic ``ValidationError`` if they do not fit)."""
        return self.options.model_validate(dict(options))

    def map(self, record: Mapping[str, Any], renamed: Mapping[str, FieldKeys], options: MappingOptions) -> list[Mapped]:
        """The rows of one record, its fields read under the source's names (``renamed``)."""
        rows = self.function(FieldReader(record, self.fields, renamed, self.optional), options)
        for row in rows:
            if row.kind not in self.kinds:  # the declaration is what docs and users rely on
                raise RuntimeError(
                    f"mapping {self.name!r} produced a {row.kind!r} row but declares the kinds "
                    f"{list(self.kinds)}; fix its @mapping(kinds=...)"
                )
            # Every mapping, built-in or not, is held to the structure canonical_schema checks at every stage
            # (no two assistant turns in a row, no role marker in assistant text): a record that breaks it is
            # quarantined here with the reason instead of stopping the build at the raw check.
            if row.messages is not None:
                completions = [row.chosen or [], row.rejected or []] if row.kind == "preference" else []
                problem = structure_problem(row.messages, *completions)
                if problem:
                    raise RecordError(problem + (f" ({row.part})" if row.part else ""))
        return rows


MAPPINGS: dict[str, MappingSpec] = {}
"""Every mapping by name, in registration order (filled by :func:`mapping`)."""


def mapping(
    name: str,
    *,
    doc: str,
    kinds: Collection[str],
    fields: Mapping[str, FieldKeys],
    optional: Collection[str] = (),
    options: type[MappingOptions] = NoOptions,
    version: int = 1,
) -> Callable[[_Fn], _Fn]:
    """Register the decorated function as the mapping ``name``.

    ``doc``: what a record looks like (one line, shown in docs/mappings.md). ``kinds``: the row kinds it
    produces. ``fields``: logical field → default record key(s); the function reads only these, and a source
    can rename them. ``optional``: fields that may be absent. ``options``: the settings model of
    ``options`` in the project file; the function receives it validated. ``version``: raise it when a change
    to the function changes the rows of records it already mapped, so files ingested with the old code are
    read again instead of kept as they were (their content and settings did not change).
    """

    def register(function: _Fn) -> _Fn:
        if name in MAPPINGS:
            raise ValueError(
                f"mapping {name!r} is registered twice ({MAPPINGS[name].function.__qualname__} "
                f"and {function.__qualname__})"
            )
        unknown_kinds = [kind for kind in kinds if kind not in KINDS]
        if unknown_kinds or not kinds:
            raise ValueError(f"mapping {name!r}: kinds must be some of {list(KINDS)}, got {list(kinds)}")
        if not set(optional) <= set(fields):
            raise ValueError(
                f"mapping {name!r}: optional fields {sorted(set(optional) - set(fields))} are not declared in fields"
            )
        if not (isinstance(options, type) and issubclass(options, MappingOptions)):
            raise TypeError(f"mapping {name!r}: options must be a MappingOptions subclass, got {options!r}")
        MAPPINGS[name] = MappingSpec(
            name, function, doc, dict(fields), frozenset(optional), options, tuple(kinds), version
        )
        return function

    return register


def mapping_spec(name: str) -> MappingSpec:
    """The registered mapping ``name``; ``KeyError`` naming the known ones otherwise."""
    try:
        return MAPPINGS[name]
    except KeyError:
        raise KeyError(f"unknown mapping {name!r}; known mappings: {', '.join(MAPPINGS)}") from None


# --------------------------------------------------------------------------------------------
# Helpers shared by the built-in mappings
# --------------------------------------------------------------------------------------------


def _require_content(*texts: str | None, what: str = "content") -> None:
    if not any(t and t.strip() for t in texts):
        raise RecordError(f"empty {what}: nothing to train on")


def _user(content: str) -> Message:
    return {"role": "user", "content": content}


def _assistant(content: str) -> Message:
    return {"role": "assistant", "content": content}


def _messages_from_list(
    turns: Any, role_key: str, content_key: str, role_map: Mapping[str, str], field_name: str
) -> list[Message]:
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"field {field_name!r} must be a non-empty list of turns")
    messages: list[Message] = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(f"{field_name}[{index}] must be an object, got {type(turn).__name__}")
        role = turn.get(role_key)
        if not isinstance(role, str) or role not in role_map:
            raise RecordError(f"{field_name}[{index}].{role_key} is {role!r}; expected one of {sorted(role_map)}")
        content = turn.get(content_key)
        if content is not None and not isinstance(content, str):
            if isinstance(content, list):  # OpenAI content parts: keep the text parts
                content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
            else:
                raise RecordError(f"{field_name}[{index}].{content_key} must be a string, got {type(content).__name__}")
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


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


# A role marker the turn splitter did not take (no space after the colon, e.g. an empty
# "\n\nHuman:" turn in public HH data): left alone it would stay inside the previous turn's
# text and glue two assistant turns together.
_HH_STRAY_MARKER = re.compile(r"\n\n(?:Human|Assistant):")


def parse_hh_transcript(transcript: str) -> list[Message]:
    """Anthropic HH layout: "\\n\\nHuman: …\\n\\nAssistant: …" → messages.

    Raises :class:`RecordError` when a role marker would survive inside a turn's content.
    """
    text = transcript if transcript.startswith("\n\n") else "\n\n" + transcript
    pieces = _HH_TURN.split(text)
    if len(pieces) < 3 or pieces[0].strip():
        raise RecordError("transcript is not in the 'Human: … Assistant: …' layout")
    # The splitter consumed every well-formed marker, so any marker left is malformed; one
    # regex pass over the pieces keeps the common case cheap.
    for index, content in enumerate(pieces[2::2]):
        if _HH_STRAY_MARKER.search(content):
            raise RecordError(
                f"turn {index} contains a role marker ('Human:'/'Assistant:' without the usual space) "
                "inside its text: the transcript's turns cannot be told apart"
            )
    messages = []
    for speaker, content in zip(pieces[1::2], pieces[2::2], strict=True):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    return messages


def _reply_start(turns: list[Message]) -> int:
    """Where the final reply of a conversation starts: after its last user or system turn. Tool turns belong
    to the reply (an assistant calls a tool and answers with its result)."""
    return next((i + 1 for i in range(len(turns) - 1, -1, -1) if turns[i]["role"] in ("user", "system")), 0)


def _split_preference_lists(chosen: list[Message], rejected: list[Message]) -> tuple[list[Message], ...]:
    """Two whole conversations → (prompt, chosen reply, rejected reply). Like HH transcripts, a pair compares
    two replies to one conversation: both must share every turn up to their final reply and both replies must
    start with an assistant turn; anything else is quarantined with where they differ."""
    splits = {name: _reply_start(turns) for name, turns in (("chosen", chosen), ("rejected", rejected))}
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        start = splits[name]
        if start == 0:
            raise RecordError(f"{name} has no user turn before its reply: no prompt to compare replies to")
        if start == len(turns) or turns[start]["role"] != "assistant":
            raise RecordError(f"{name} does not end with an assistant reply after its last user turn")
    prompt = chosen[: splits["chosen"]]
    if prompt != rejected[: splits["rejected"]]:
        differs_at = next(
            (i for i, (c, r) in enumerate(zip(prompt, rejected, strict=False)) if c != r),
            min(len(prompt), splits["rejected"]),
        )
        raise RecordError(
            f"chosen and rejected differ at turn {differs_at}, before their final assistant reply "
            f"({len(chosen)} vs {len(rejected)} turns): not a comparison of two replies to one conversation"
        )
    return prompt, chosen[splits["chosen"] :], rejected[splits["rejected"] :]


# --------------------------------------------------------------------------------------------
# The built-in mappings
# --------------------------------------------------------------------------------------------


@mapping(
    "alpaca",
    kinds=["sft"],
    fields={"instruction": ["instruction", "input"], "output": "output", "system": "system"},
    optional=["system"],
    doc="Instruction tuning: `{instruction, input, output}`, optional `system`; the input is appended to "
    "the instruction.",
)
def map_alpaca(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    instruction = fields.text("instruction")
    output = fields.text("output")
    _require_content(instruction, what="instruction")
    system = fields.text("system")
    messages = ([{"role": "system", "content": system}] if system else []) + [_user(instruction or "")]
    messages.append(_assistant(output or ""))
    return [Mapped(kind="sft", messages=messages, extra=fields.extra())]


@mapping(
    "self_instruct",
    kinds=["sft"],
    fields={"instruction": "instruction", "instances": "instances"},
    doc="Self-Instruct seed tasks: an `instruction` and `instances: [{input, output}]`; one row per instance.",
)
def map_self_instruct(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    instruction = fields.text("instruction")
    _require_content(instruction, what="instruction")
    instances = fields.raw("instances")
    if not isinstance(instances, list) or not instances:
        raise RecordError("field 'instances' must be a non-empty list of {input, output} objects")
    rows = []
    for index, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise RecordError(f"instances[{index}] must be an object, got {type(instance).__name__}")
        inner = FieldReader(instance, {"input": "input", "output": "output"}, optional=["input"])
        prompt = "\n\n".join(p for p in (instruction, inner.text("input")) if p)
        output = inner.text("output")
        extra = fields.extra() | ({"instance": inner.extra()} if inner.extra() else {})
        extra.pop("instances", None)
        rows.append(
            Mapped(
                kind="sft",
                messages=[_user(prompt), _assistant(output or "")],
                extra=extra,
                part=f"instance{index}" if len(instances) > 1 else None,
            )
        )
    return rows


_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "function_call": "assistant",
}


class ShareGptOptions(MappingOptions):
    role_key: str = Field(default="from", description="Key of a turn's speaker.")
    content_key: str = Field(default="value", description="Key of a turn's text.")


@mapping(
    "sharegpt",
    kinds=["chat", "tool"],
    fields={"conversations": "conversations"},
    options=ShareGptOptions,
    doc="ShareGPT conversations: `conversations: [{from, value}]` with speakers human/gpt/system/tool…; "
    "rows with tool turns are `tool` rows.",
)
def map_sharegpt(fields: FieldReader, options: ShareGptOptions) -> list[Mapped]:
    turns = fields.raw("conversations")
    messages = _messages_from_list(turns, options.role_key, options.content_key, _SHAREGPT_ROLES, "conversations")
    return [Mapped(kind=_chat_kind(messages), messages=messages, extra=fields.extra())]


@mapping(
    "openai",
    kinds=["chat", "tool"],
    fields={"messages": "messages"},
    doc="OpenAI chat format: `messages: [{role, content}]` (content parts, `tool_calls`, `tool_call_id` "
    "kept); a record with `tools` or tool turns is a `tool` row.",
)
def map_openai(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    turns = fields.raw("messages")
    roles = {r: r for r in ("system", "user", "assistant", "tool")} | {"developer": "system"}
    messages = _messages_from_list(turns, "role", "content", roles, "messages")
    extra = fields.extra()
    return [Mapped(kind=_chat_kind(messages) if "tools" not in extra else "tool", messages=messages, extra=extra)]


@mapping(
    "preference",
    kinds=["preference"],
    fields={"chosen": "chosen", "rejected": "rejected", "prompt": "prompt"},
    doc="Preference pairs: `{prompt, chosen, rejected}` strings, or `chosen`/`rejected` message lists: two "
    "conversations that must share every turn up to their final assistant reply (the prompt); a pair that "
    "differs earlier is quarantined.",
)
def map_preference(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    chosen_raw = fields.raw("chosen")
    rejected_raw = fields.raw("rejected")
    if isinstance(chosen_raw, list) and isinstance(rejected_raw, list):
        roles = {r: r for r in ("system", "user", "assistant", "tool")}
        chosen = _messages_from_list(chosen_raw, "role", "content", roles, "chosen")
        rejected = _messages_from_list(rejected_raw, "role", "content", roles, "rejected")
        prompt_turns, chosen_tail, rejected_tail = _split_preference_lists(chosen, rejected)
        return [
            Mapped(
                kind="preference",
                messages=prompt_turns,
                chosen=chosen_tail,
                rejected=rejected_tail,
                extra=fields.extra(),
            )
        ]
    for name, value in (("chosen", chosen_raw), ("rejected", rejected_raw)):
        if not isinstance(value, str):
            raise RecordError(f"field {name!r} must be a string or a list of messages, got {type(value).__name__}")
    prompt = fields.text("prompt")
    _require_content(prompt, what="prompt")
    _require_content(chosen_raw, rejected_raw, what="completions")
    return [
        Mapped(
            kind="preference",
            messages=[_user(prompt or "")],
            chosen=[_assistant(chosen_raw)],
            rejected=[_assistant(rejected_raw)],
            extra=fields.extra(),
        )
    ]


@mapping(
    "hh",
    kinds=["preference"],
    fields={"chosen": "chosen", "rejected": "rejected"},
    doc="Anthropic HH: `chosen` and `rejected` full transcripts (`\\n\\nHuman: … \\n\\nAssistant: …`); "
    "all turns before the final assistant reply are the prompt and must match; a record whose transcripts "
    "differ earlier, do not end with an assistant reply, or keep a role marker inside a turn is quarantined.",
)
def map_hh(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    chosen_text = fields.text("chosen")
    rejected_text = fields.text("rejected")
    chosen = parse_hh_transcript(chosen_text or "")
    rejected = parse_hh_transcript(rejected_text or "")
    # An HH pair compares two final assistant replies to one conversation. Transcripts that end
    # elsewhere, or differ earlier, are not that comparison: splitting them at their first
    # difference would make multi-turn "completions" that mix both speakers.
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise RecordError(f"{name} transcript ends with a Human turn, not an assistant reply")
    prompt = chosen[:-1]
    if prompt != rejected[:-1]:
        differs_at = next(
            (i for i, (c, r) in enumerate(zip(prompt, rejected[:-1], strict=False)) if c != r),
            min(len(prompt), len(rejected) - 1),
        )
        raise RecordError(
            f"chosen and rejected transcripts differ at turn {differs_at}, before the final assistant turn "
            f"({len(chosen)} vs {len(rejected)} turns): not a comparison of two replies to one conversation"
        )
    if not prompt:
        raise RecordError("chosen and rejected transcripts share no prompt turns")
    return [
        Mapped(kind="preference", messages=prompt, chosen=chosen[-1:], rejected=rejected[-1:], extra=fields.extra())
    ]


_OASST_ROLES = {"prompter": "user", "assistant": "assistant"}


class OasstOptions(MappingOptions):
    mode: Literal["threads", "best", "preference"] = Field(
        default="threads",
        description="`threads`: one chat row per root-to-leaf thread; `best`: the best-ranked "
        "thread only; `preference`: a pair per two ranked sibling replies.",
    )


@mapping(
    "oasst",
    kinds=["chat", "preference"],
    fields={"prompt": "prompt"},
    options=OasstOptions,
    doc="OpenAssistant message trees: `prompt` is the root message `{message_id, role, text, rank, replies}`; "
    "deleted messages and their subtrees are skipped.",
)
def map_oasst(fields: FieldReader, options: OasstOptions) -> list[Mapped]:
    """An OASST message tree → one chat row per root-to-leaf thread (``mode: threads``), the
    best-ranked thread only (``mode: best``), or preference pairs of ranked siblings
    (``mode: preference``). Deleted messages and their subtrees are skipped."""
    root = fields.raw("prompt")
    if not isinstance(root, dict) or "text" not in root:
        raise RecordError("field 'prompt' must be the root message object of an OASST tree")
    tree_extra = fields.extra()

    def message_of(node: dict[str, Any]) -> Message:
        role = _OASST_ROLES.get(node.get("role", ""))
        if role is None or not isinstance(node.get("text"), str):
            raise RecordError(f"message {node.get('message_id')!r} has role {node.get('role')!r} or non-string text")
        return {"role": role, "content": node["text"]}

    def live_replies(node: dict[str, Any]) -> list[dict[str, Any]]:
        replies = [r for r in node.get("replies") or [] if not r.get("deleted")]
        return sorted(replies, key=lambda r: (r.get("rank") is None, r.get("rank") or 0))

    def row_for(path: list[dict[str, Any]], part: str) -> Mapped:
        synthetic = [n.get("model_name") or "unknown" for n in path if n.get("synthetic")]
        return Mapped(
            kind="chat",
            messages=[message_of(n) for n in path],
            part=part,
            origin="synthetic" if synthetic else None,
            generator=",".join(sorted(set(synthetic))) or None,
            extra=tree_extra
            | {
                "message_ids": [n.get("message_id") for n in path],
                "ranks": [n.get("rank") for n in path],
                "review_results": [n.get("review_result") for n in path],
                "langs": sorted({n["lang"] for n in path if n.get("lang")}),
            },
        )

    rows: list[Mapped] = []
    if options.mode == "preference":

        def walk_pairs(path: list[dict[str, Any]]) -> None:
            node = path[-1]
            ranked = [r for r in live_replies(node) if r.get("rank") is not None and r.get("role") == "assistant"]
            for i, better in enumerate(ranked):
                for worse in ranked[i + 1 :]:
                    rows.append(
                        Mapped(
                            kind="preference",
                            messages=[message_of(n) for n in path],
                            chosen=[message_of(better)],
                            rejected=[message_of(worse)],
                            part=f"{better.get('message_id')}>{worse.get('message_id')}",
                            extra=tree_extra
                            | {
                                "message_ids": [n.get("message_id") for n in path],
                                "ranks": [better.get("rank"), worse.get("rank")],
                            },
                        )
                    )
            for reply in live_replies(node):
                walk_pairs([*path, reply])

        walk_pairs([root])
    elif options.mode == "best":
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


@mapping(
    "gsm8k",
    kinds=["sft"],
    fields={"question": "question", "answer": "answer"},
    doc="GSM8K maths: `{question, answer}`; the number after `####` is kept as `extra.final_answer`.",
)
def map_gsm8k(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    question = fields.text("question")
    answer = fields.text("answer")
    _require_content(question, what="question")
    extra = fields.extra()
    final = (answer or "").rsplit("####", 1)
    if len(final) == 2:
        extra["final_answer"] = final[1].strip()
    return [Mapped(kind="sft", messages=[_user(question or ""), _assistant(answer or "")], extra=extra)]


@mapping(
    "prompts",
    kinds=["prompt"],
    fields={"prompt": "prompt"},
    doc="Prompt-only files (benchmarks, prompt lists): `prompt` is a string, or a list of strings that "
    "becomes one user turn each (MT-bench `turns`).",
)
def map_prompts(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    key = fields.single_key("prompt")
    value = fields.record.get(key) if key else None
    if key and isinstance(value, list):  # multi-turn benchmarks (MT-bench "turns")
        fields.used.add(key)
        if not all(isinstance(t, str) for t in value):
            raise RecordError(f"field {key!r} must be a list of strings")
        turns = [t for t in value if t.strip()]
    else:
        prompt = fields.text("prompt")
        turns = [prompt] if prompt else []
    _require_content(*turns, what="prompt")
    return [Mapped(kind="prompt", messages=[_user(t) for t in turns], extra=fields.extra())]


@mapping(
    "text",
    kinds=["text"],
    fields={"text": "text"},
    doc="Plain documents: `{text}` (pre-training style rows, no messages).",
)
def map_text(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    text = fields.text("text")
    _require_content(text, what="text")
    return [Mapped(kind="text", text=text, extra=fields.extra())]


@mapping(
    "reward",
    kinds=["reward"],
    fields={"prompt": "prompt", "response": "response", "score": "score"},
    doc="Scored responses for reward modelling: `{prompt, response, score}` with a numeric score.",
)
def map_reward(fields: FieldReader, options: NoOptions) -> list[Mapped]:
    prompt = fields.text("prompt")
    response = fields.text("response")
    score = fields.raw("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise RecordError(f"field 'score' must be a number, got {type(score).__name__}")
    _require_content(prompt, what="prompt")
    return [
        Mapped(
            kind="reward",
            messages=[_user(prompt or ""), _assistant(response or "")],
            score=float(score),
            extra=fields.extra(),
        )
    ]


# --------------------------------------------------------------------------------------------
# The reference page (docs/mappings.md)
# --------------------------------------------------------------------------------------------


def _field_keys(keys: FieldKeys) -> str:
    return " + ".join(f"`{k}`" for k in ([keys] if isinstance(keys, str) else keys))


def _option_type(info: FieldInfo) -> str:
    if typing.get_origin(info.annotation) is Literal:
        return " | ".join(f"`{choice}`" for choice in typing.get_args(info.annotation))
    annotation = info.annotation
    return getattr(annotation, "__name__", str(annotation))


def _yaml_value(value: Any) -> str:
    """A default as it is written in the project file (``threads``, ``true``, ``3``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _option_line(name: str, info: FieldInfo) -> str:
    default = (
        "required" if info.is_required() else f"default `{_yaml_value(info.get_default(call_default_factory=True))}`"
    )
    description = f": {info.description}" if info.description else ""
    return f"`{name}` ({_option_type(info)}, {default}){description}"


def mappings_reference() -> str:
    """docs/mappings.md: every registered mapping with its record shape, fields, options and kinds."""
    lines = [
        "# Mappings",
        "",
        generated_notice("the @mapping registrations in curation/ingest/mappings.py"),
        "",
        "A source's `mapping` in the project file names the shape of its records. `fields` renames a mapping's",
        "fields (`fields: {instruction: question}`; a list joins several keys, blank ones skipped) and `options`",
        "holds its settings; unknown options are errors. Keys a mapping does not read are kept in the row's",
        "`extra`; a record that does not fit is quarantined with the reason.",
        "",
        "| mapping | records | fields (default keys) | options | kinds |",
        "|---|---|---|---|---|",
    ]
    for spec in MAPPINGS.values():
        fields = "<br>".join(
            f"`{logical}` ← {_field_keys(keys)}" + (" (optional)" if logical in spec.optional else "")
            for logical, keys in spec.fields.items()
        )
        options = "<br>".join(_option_line(name, info) for name, info in spec.options.model_fields.items()) or "—"
        kinds = ", ".join(f"`{kind}`" for kind in spec.kinds)
        lines.append(
            f"| `{spec.name}` | {table_cell(spec.doc)} | {table_cell(fields)} | {table_cell(options)} | {kinds} |"
        )
    return "\n".join(lines) + "\n"
