"""Render canonical rows for the target model: chat template, token counts, loss masks, checks.

Everything is rendered the way the tokenizer's own ``apply_chat_template`` renders it (its template,
through transformers' compiled template and renderer) and tokenized by the tokenizer itself (its Rust
backend, called the way ``tokenizer(texts)`` calls it), so the text we count and mask is byte-for-byte
what a trainer using the same tokenizer would build. Layouts:

* sft / chat / tool / reward: the whole conversation; ``assistant_mask`` marks the tokens the
  assistant wrote (content, tool calls and its end-of-turn token), never headers or other roles.
* prompt: user turns plus the generation prompt; nothing to learn, so the mask is all zeros.
* preference: ``prompt`` / ``chosen`` / ``rejected`` strings split the way TRL's DPOTrainer
  splits them (``trl/data_utils.py``, ``maybe_apply_chat_template``): prompt rendered with the
  generation prompt, each completion = rendering(prompt + completion) minus the prompt prefix.
* text: the raw text, every token trained on.

Tools for tool rows are read from ``row["extra"]["tools"]`` (where the ingest mappings keep them).

:func:`format_batch` renders a batch of rows and tokenizes all their texts in one tokenizer call;
inside :func:`reusing_renderings` the verification that follows (:mod:`curation.format.render_checks`)
finds the renderings and tokens it needs instead of computing them again.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import itertools
import json
import operator
import re
import weakref
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from curation.core.schema import Message, Row
from curation.format.tokenizers import TEMPLATE_NAMES, load_template, template_id

if TYPE_CHECKING:  # transformers takes seconds to import; only the type checker needs it here
    from transformers import PreTrainedTokenizerBase

    from curation.core.config import ProjectConfig

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_CHAT_KINDS = ("sft", "chat", "tool", "reward", "prompt")
# Marker line our ChatML templates put before the tool list in the system turn (see chatml.jinja).
_CHATML_TOOLS_HEADER = "# Tools\nYou may call these functions"

LengthPolicy = Literal["drop", "truncate"]
Tools = list[dict[str, Any]] | None
"""JSON-schema tool definitions, as transformers' ``apply_chat_template(tools=...)`` takes them."""


@dataclass
class RenderedRow:
    """One row rendered for the target model; :meth:`to_record` gives the ``formatted`` columns."""

    row_id: str | None
    kind: str
    text: str
    """Full rendering; for preference rows the prompt rendering."""
    n_tokens: int
    """Tokens the trainer sees; for preference rows prompt + the longer completion."""
    input_ids: list[int]
    assistant_mask: list[int]
    """1 for tokens that carry loss. Empty for preference rows: the prompt/completion split is the mask."""
    mask_source: str
    """generation (template markers), offsets (incremental rendering), content_search (template not
    prefix-stable: content located by search), all (text rows), none (no assistant turn) or empty."""
    template_id: str
    tokenizer_id: str
    messages: list[Message]
    """What was rendered (system prompt added, earliest turns dropped); the prompt side for preference."""
    prompt: str | None = None
    chosen: str | None = None
    rejected: str | None = None
    n_prompt_tokens: int | None = None
    n_chosen_tokens: int | None = None
    n_rejected_tokens: int | None = None
    chosen_messages: list[Message] | None = None
    rejected_messages: list[Message] | None = None
    tools: Tools = None
    truncation: str | None = None
    """Set by :func:`apply_length_policy` when the row was cut, with what was cut."""

    def to_record(self) -> dict[str, Any]:
        """JSON-ready dict (messages and masks as lists) for the formatted table or an export."""
        return asdict(self)


# --------------------------------------------------------------------------- loading


def resolve_chat_template(chat_template: str) -> str:
    """A template given in the project file: a shipped name, a path to a .jinja file, or Jinja text."""
    if chat_template in TEMPLATE_NAMES:
        return load_template(chat_template)
    if "{{" in chat_template or "{%" in chat_template:
        return chat_template
    path = Path(chat_template)
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"chat template file {chat_template!r} does not exist")
        return path.read_text(encoding="utf-8")
    raise ValueError(
        f"chat_template {chat_template!r} is neither a shipped template ({', '.join(TEMPLATE_NAMES)}), "
        "a .jinja file nor Jinja text; fix format.chat_template in the project file"
    )


def load_tokenizer(
    path_or_id: str | Path, chat_template: str | None = None, *, allow_network: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local directory (or a hub id, from the local cache unless allow_network).

    ``chat_template`` (shipped name, .jinja path or Jinja text) replaces the tokenizer's own. Offsets
    are needed for loss masks, so only fast (Rust-backed) tokenizers are accepted.
    """
    source = str(path_or_id)
    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1):
        raise FileNotFoundError(
            f"tokenizer directory {source!r} does not exist (or is not a directory); point format.tokenizer "
            "at a folder holding tokenizer.json and tokenizer_config.json"
        )
    if local and not any((path / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"tokenizer directory {source!r} holds neither tokenizer.json nor "
            "tokenizer_config.json; build one with curation.format.tokenizers or save_pretrained"
        )
    try:
        plain = _plain_rust_tokenizer_class(path) if local else None
        if plain is not None:
            tokenizer = plain.from_pretrained(str(path), local_files_only=True)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(
                str(path) if local else source, local_files_only=local or not allow_network
            )
    except (OSError, ValueError) as error:
        hint = (
            (
                "it is not a local directory and is not in the local Hugging Face cache; download it where a "
                "network exists, or pass allow_network=True"
            )
            if not local
            else "the directory is incomplete"
        )
        raise FileNotFoundError(f"cannot load tokenizer {source!r}: {hint} ({error})") from error
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer {source!r} is not a fast tokenizer; loss masks need character offsets, "
            "so save it with tokenizer.json (transformers converts most slow tokenizers)"
        )
    if chat_template is not None:
        tokenizer.chat_template = resolve_chat_template(chat_template)
    return tokenizer


_GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def _plain_rust_tokenizer_class(path: Path) -> Any:
    """transformers' generic Rust-backed class when ``path`` holds a tokenizer that ``AutoTokenizer`` would
    load as that class anyway (a ``tokenizer.json``, a ``tokenizer_config.json`` naming the generic class,
    no ``auto_map`` of custom code, no model ``config.json`` that could name a model-specific class): what
    :mod:`curation.format.tokenizers` saves, the demo's tokenizer among them. Else None.

    Loaded through the class itself rather than ``AutoTokenizer``, whose import brings in transformers'
    configuration code and, with it, torch when torch is installed: about 200 MiB and seconds in the run's
    process for a tokenizer that needs neither."""
    if not (path / "tokenizer.json").is_file() or (path / "config.json").exists():
        return None
    try:
        settings = json.loads((path / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # AutoTokenizer's own loading reports what is wrong with it
    if not isinstance(settings, dict) or "auto_map" in settings:
        return None
    if settings.get("tokenizer_class") not in _GENERIC_TOKENIZER_CLASSES:
        return None
    return _tokenizers_backend()


def load_format_tokenizer(config: ProjectConfig) -> PreTrainedTokenizerBase:
    """The tokenizer and chat template of ``format:`` in the project file (a directory relative to the
    project file, else a hub id from the local cache)."""
    settings = config.format
    local = config.resolve(settings.tokenizer)
    return load_tokenizer(local if local.is_dir() else settings.tokenizer, settings.chat_template)


_TOKENIZER_IDS: weakref.WeakKeyDictionary[PreTrainedTokenizerBase, str] = weakref.WeakKeyDictionary()


def tokenizer_id(tokenizer: PreTrainedTokenizerBase) -> str:
    """Stable id of the vocabulary and pre/post-processing (hash of tokenizer.json), cached per object."""
    cached = _TOKENIZER_IDS.get(tokenizer)
    if cached is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        serial = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
        cached = hashlib.sha256(serial.encode("utf-8")).hexdigest()[:16]
        _TOKENIZER_IDS[tokenizer] = cached
    return cached


def _template_text(tokenizer: PreTrainedTokenizerBase, tools: Tools = None) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
            "set format.chat_template "
            f"in the project file (one of {', '.join(TEMPLATE_NAMES)}, a .jinja path or Jinja text)"
        )
    return tokenizer.get_chat_template(None, tools)


# --------------------------------------------------------------------------- reuse within a batch

Spans = list[tuple[int, int]]


class TokenOffsets(Sequence[tuple[int, int]]):
    """The character span of each token of a Rust ``tokenizers.Encoding``, read token by token
    (``token_to_chars``) when asked for.

    ``encoding.offsets`` builds a Python tuple of two ints per token: on the benchmark's rows that costs
    ~70 µs a row, as much as 40% of tokenizing it. What formatting reads of the offsets is a few tokens: where
    a loss span starts and ends (:meth:`mask`) and where a cut falls."""

    __slots__ = ("_encoding", "_length")

    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding
        self._length = len(encoding)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._length))]
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError(f"token {index} of {self._length}")
        span: tuple[int, int] = self._encoding.token_to_chars(position)
        return span

    def mask(self, spans: Spans) -> list[int]:
        """:func:`_mask_from_spans` of these offsets: 1 for a token that overlaps a span.

        A tokenizer's offsets are in text order, each token's span within the piece of text it came
        from, so both starts and ends never decrease along the tokens. The tokens whose end is past a
        span's start are then a suffix, and those whose start is before its end a prefix: the span's
        tokens are their overlap. (Were the order ever broken, the mask would not decode to the assistant's
        text and verification would reject the row: :func:`curation.format.render_checks.mask_problem`.)"""
        mask = bytearray(self._length)
        for start, end in spans:
            first = self._first_ending_after(start)
            stop = self._first_starting_from(end)
            if first < stop:
                mask[first:stop] = b"\x01" * (stop - first)
        return list(mask)

    def _first_ending_after(self, position: int) -> int:
        # The token holding the character (so ending after it) is the answer when the one before it ends by
        # then: two lookups in Rust instead of a bisection's dozen. Characters no token holds (spaces trimmed
        # off the offsets, a position past the text) are bisected.
        spans = self._encoding.token_to_chars
        token = self._encoding.char_to_token(position)
        if token is not None and (token == 0 or spans(token - 1)[1] <= position):
            return int(token)
        return bisect.bisect_right(self, position, key=_span_end)

    def _first_starting_from(self, position: int) -> int:
        spans = self._encoding.token_to_chars
        token = self._encoding.char_to_token(position)
        if token is not None:
            if spans(token)[0] < position:  # the token straddles the position: the next one may start there
                token += 1
            if (token == self._length or spans(token)[0] >= position) and (
                token == 0 or spans(token - 1)[0] < position
            ):
                return int(token)
        return bisect.bisect_left(self, position, key=_span_start)


_span_start = operator.itemgetter(0)
_span_end = operator.itemgetter(1)

Offsets = Sequence[tuple[int, int]]
"""Each token's character span in the text: a list, or :class:`TokenOffsets` read from the Rust encoding."""
Encoding = tuple[list[int], Offsets | None]
"""Token ids and each token's character span in the text (None when only the ids were asked for)."""


@dataclass
class _Reuse:
    renderings: dict[tuple[Any, ...], tuple[str, Spans | None]] = field(default_factory=dict)
    encodings: dict[tuple[int, str], Encoding] = field(default_factory=dict)
    control_tokens: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    renderers: dict[tuple[int, str], _Renderer] = field(default_factory=dict)


_REUSE: ContextVar[_Reuse | None] = ContextVar("curation_format_reuse", default=None)


@contextlib.contextmanager
def reusing_renderings() -> Iterator[None]:
    """Inside this block a conversation rendered again, or a text tokenized again, is looked up instead:
    verifying a row renders and tokenizes what rendering it already did, and :func:`format_batch`
    tokenizes every text of its rows in one call. Meant for one batch of rows whose messages are not
    changed while it lasts; everything is freed at the end of the block."""
    token = _REUSE.set(_Reuse())
    try:
        yield
    finally:
        _REUSE.reset(token)


def _conversation_key(messages: list[Message], tools: Tools) -> tuple[Any, ...]:
    """A key that is equal for two conversations exactly when the template sees the same data.

    A message of string keys and string values is keyed by its (key, value) pairs: hashing them reuses
    each string's cached hash, so the key costs a few operations per message, not a pass over the text
    (as ``repr`` does). Any other message (tool calls, numbers, None) is keyed by its ``repr``, which,
    unlike ``==``, tells 1 from 1.0 from True."""
    key: list[Any] = [repr(tools) if tools else None]
    for message in messages:
        items = tuple(message.items())
        for name, value in items:
            if type(name) is not str or type(value) is not str:
                key.append(repr(message))
                break
        else:
            key.append(items)
    return tuple(key)


# --------------------------------------------------------------------------- rendering


def _template_tools(tools: Tools) -> list[Any] | None:
    # transformers types ``tools`` as a list of dicts or callables; a list is invariant, so say "any list".
    return tools or None


@functools.lru_cache(maxsize=16)
def _marks_generation(template: str) -> bool:
    return _GENERATION_TAG.search(template) is not None


_JSON_SCALARS = (str, int, float, bool)


def _plain_message(message: dict[str, Any]) -> dict[str, Any]:
    """transformers' ``_plain_template_data`` of one message (what the sandboxed template may see), without
    copying a message whose keys are strings and values JSON scalars: for those it is the identity (the
    message is already a fresh dict, and the template cannot change it)."""
    for name, value in message.items():
        if type(name) is not str or type(value) not in _JSON_SCALARS:
            from transformers.utils.chat_template_utils import _plain_template_data

            plain: dict[str, Any] = _plain_template_data(message)
            return plain
    return message


_DICT_ATTRIBUTES = frozenset(dir(dict))
"""What ``getattr`` finds on a plain dict (its class's attributes; a dict instance has no others)."""


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> Any:
    """The template compiled by transformers (its sandboxed environment, filters, ``{% generation %}``
    tracker), in an environment of its own whose attribute lookup answers ``message.role`` on a plain dict
    without raising and catching AttributeError first, and whose render contexts start from a plain dict
    of the globals.

    Jinja's sandbox resolves ``obj.name`` by trying the attribute and, on AttributeError, the item. For an
    object of exactly type dict and a name that is not an attribute of dict, that attempt always fails, so
    the item lookup (and ``undefined`` when the key is missing) is what the sandbox returns too; every
    other lookup goes through the sandbox unchanged. Half of a chat template's time is these lookups."""
    from transformers.utils.chat_template_utils import _cached_compile_jinja_template

    compiled = _cached_compile_jinja_template(template)  # a new environment, not transformers' cached one
    environment = compiled.environment
    sandbox_getattr = environment.getattr
    undefined = environment.undefined

    def getattr_(obj: Any, attribute: str) -> Any:
        if type(obj) is dict and type(attribute) is str and attribute not in _DICT_ATTRIBUTES:
            try:
                return obj[attribute]
            except (TypeError, LookupError):
                return undefined(obj=obj, name=attribute)
        return sandbox_getattr(obj, attribute)

    environment.getattr = getattr_

    # Every render starts a context from the template's globals, a ChainMap (template over environment)
    # that Jinja copies and lists key by key in Python, twice per render. Nothing changes these globals
    # after compiling, so the same context is built from a plain copy of them.
    globals_ = dict(compiled.globals)
    chained_new_context = compiled.new_context

    def new_context(vars: dict[str, Any] | None = None, shared: bool = False, locals: Any = None) -> Any:
        if shared or locals:
            return chained_new_context(vars, shared, locals)
        parent = dict(globals_, **(vars or {}))
        return environment.context_class(environment, parent, compiled.name, compiled.blocks, globals=globals_)

    compiled.new_context = new_context
    return compiled


class _Renderer:
    """A chat template compiled once, by transformers' own cached compiler, with the tokenizer's special
    tokens as template variables.

    :meth:`render` renders what ``render_jinja_template`` (the renderer of ``apply_chat_template``) renders,
    through transformers' own steps: messages made plain data, reasoning fields aliased, ``{% generation %}``
    spans tracked. What it saves is that function's per-call work that does not change between calls:
    re-validating and re-converting the template variables and looking the template up. Conversations
    with tools go through ``render_jinja_template`` itself (its handling of tool schemas and callables),
    and so does everything when transformers' helpers are not importable."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str) -> None:
        self.template = template
        self.marks_generation = _marks_generation(template)
        self._variables: dict[str, Any] = dict(tokenizer.special_tokens_map)
        try:
            from transformers.utils.chat_template_utils import (
                _REASONING_FIELDS,
                _alias_reasoning_fields,
                _plain_template_data,
                _render_with_assistant_indices,
            )

            self._compiled: Any = _compile(template)
        except ImportError:  # another transformers: its public renderer does everything
            self._compiled = None
            return
        self._plain_variables = _plain_template_data(self._variables)
        self._alias = _alias_reasoning_fields
        self._reasoning = frozenset(_REASONING_FIELDS)  # the keys it reads: a message without any stays as it is
        self._with_indices = _render_with_assistant_indices

    def render(
        self, messages: list[Message], tools: Tools, add_generation_prompt: bool, marked: bool
    ) -> tuple[str, Spans | None]:
        """The rendering and, when ``marked``, the character spans of its ``{% generation %}`` blocks."""
        # apply_chat_template drops keys whose value is None before rendering.
        conversation = [{k: v for k, v in message.items() if v is not None} for message in messages]
        if tools or self._compiled is None:
            from transformers.utils.chat_template_utils import render_jinja_template

            # Annotated as returning a string; it returns the renderings and the marked spans of each conversation.
            rendered: Any = render_jinja_template(
                conversations=[conversation],
                tools=_template_tools(tools),
                chat_template=self.template,
                return_assistant_tokens_mask=marked,
                add_generation_prompt=add_generation_prompt,
                **self._variables,
            )
            texts, marked_spans = rendered
            return texts[0], [(int(start), int(end)) for start, end in marked_spans[0]] if marked else None
        chat = [_plain_message(message) for message in conversation]
        if any(not self._reasoning.isdisjoint(message) for message in chat):  # else aliasing changes nothing
            chat = self._alias(chat)
        if marked:
            text, indices = self._with_indices(
                compiled_template=self._compiled,
                messages=chat,
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **self._plain_variables,
            )
            return text, [(int(start), int(end)) for start, end in indices]
        text = self._compiled.render(
            messages=chat,
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **self._plain_variables,
        )
        return text, None


def _renderer(tokenizer: PreTrainedTokenizerBase, template: str, reuse: _Reuse | None) -> _Renderer:
    if reuse is None:
        return _Renderer(tokenizer, template)
    key = (id(tokenizer), template)
    renderer = reuse.renderers.get(key)
    if renderer is None:
        renderer = reuse.renderers[key] = _Renderer(tokenizer, template)
    return renderer


def _render_marked(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[Message],
    tools: Tools,
    add_generation_prompt: bool = False,
    spans: bool = True,
) -> tuple[str, Spans | None]:
    """The rendering and, when ``spans`` is set and the template has ``{% generation %}`` markers, the
    character spans they mark (else None).

    Renders the way ``apply_chat_template`` does (keys whose value is None dropped, special tokens as
    template variables, through transformers' own compiled and cached template, see :class:`_Renderer`),
    without its per-call overhead, and with the marked spans from the same rendering."""
    template = _template_text(tokenizer, tools)
    marked = spans and _marks_generation(template)
    reuse = _REUSE.get()
    key: tuple[Any, ...] = ()
    if reuse is not None:
        key = (id(tokenizer), template, _conversation_key(messages, tools), add_generation_prompt)
        hit = reuse.renderings.get(key)
        if hit is not None and (hit[1] is not None or not marked):  # a rendering without spans cannot give them
            return hit
    result = _renderer(tokenizer, template, reuse).render(messages, tools, add_generation_prompt, marked)
    if reuse is not None:
        reuse.renderings[key] = result
    return result


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: Tools, add_generation_prompt: bool = False
) -> str:
    return _render_marked(tokenizer, messages, tools, add_generation_prompt, spans=False)[0]


# --------------------------------------------------------------------------- tokenizing


@functools.cache
def _tokenizers_backend() -> Any:
    """transformers' class of tokenizers backed by the Rust ``tokenizers`` library (None in a transformers
    without it)."""
    try:
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    return TokenizersBackend


def _direct_backend(tokenizer: PreTrainedTokenizerBase) -> Any:
    """The Rust tokenizer of a fast tokenizer when calling it directly gives exactly what
    ``tokenizer(texts, add_special_tokens=False)`` gives (transformers' own ``__call__`` and ``_encode_plus``,
    which pass the texts straight to ``encode_batch``, no truncation or padding set on it, special tokens
    split as the tokenizer says); else None. Calling it directly skips transformers' per-text conversion of
    each encoding into dicts of lists."""
    from transformers.tokenization_utils_base import PreTrainedTokenizerBase

    backend_class = _tokenizers_backend()
    kind = type(tokenizer)
    if (
        backend_class is None
        or not isinstance(tokenizer, backend_class)
        or kind.__call__ is not PreTrainedTokenizerBase.__call__
        or kind._encode_plus is not backend_class._encode_plus
        or hasattr(tokenizer, "_switch_to_input_mode")
    ):
        return None
    backend = tokenizer.backend_tokenizer
    if (
        backend.truncation is not None
        or backend.padding is not None
        or backend.encode_special_tokens != bool(tokenizer.split_special_tokens)
    ):
        return None
    return backend


def _tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], offsets: bool = True) -> list[Encoding]:
    """Ids (and, with ``offsets``, character spans) of each text, from one call."""
    if not texts:
        return []
    backend = _direct_backend(tokenizer)
    if backend is not None:
        if offsets:
            return [(e.ids, TokenOffsets(e)) for e in backend.encode_batch(list(texts), add_special_tokens=False)]
        # Same ids, without tracking offsets (a quarter of the tokenizing time).
        return [(e.ids, None) for e in backend.encode_batch_fast(list(texts), add_special_tokens=False)]
    out = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=offsets, return_attention_mask=False)
    if offsets:
        return list(zip(out["input_ids"], out["offset_mapping"], strict=True))
    return [(ids, None) for ids in out["input_ids"]]


def _encodings(tokenizer: PreTrainedTokenizerBase, wanted: dict[str, bool]) -> dict[str, Encoding]:
    """The encoding of each text of ``wanted`` (text -> whether its offsets are needed), every text that
    still needs tokenizing tokenized in one call (two: with and without offsets). Inside a
    :func:`reusing_renderings` block a text is tokenized once, and found there later."""
    reuse = _REUSE.get()
    if reuse is None:
        return _tokenize_wanted(tokenizer, wanted)
    owner = id(tokenizer)
    cache = reuse.encodings
    missing: dict[str, bool] = {}
    for text, offsets in wanted.items():
        hit = cache.get((owner, text))
        if hit is None or (offsets and hit[1] is None):
            missing[text] = offsets
    for text, encoding in _tokenize_wanted(tokenizer, missing).items():
        cache[owner, text] = encoding
    return {text: cache[owner, text] for text in wanted}


def _tokenize_wanted(tokenizer: PreTrainedTokenizerBase, wanted: dict[str, bool]) -> dict[str, Encoding]:
    with_offsets = [text for text, offsets in wanted.items() if offsets]
    ids_only = [text for text, offsets in wanted.items() if not offsets]
    found = dict(zip(with_offsets, _tokenize(tokenizer, with_offsets), strict=True))
    found.update(zip(ids_only, _tokenize(tokenizer, ids_only, offsets=False), strict=True))
    return found


def _want(wanted: dict[str, bool], texts: Sequence[str], offsets: bool) -> None:
    for text in texts:
        wanted[text] = wanted.get(text, False) or offsets


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, offsets: bool = True) -> Encoding:
    return _encodings(tokenizer, {text: offsets})[text]


def _offsets(tokenizer: PreTrainedTokenizerBase, text: str) -> Offsets:
    offsets = _encode(tokenizer, text, offsets=True)[1]
    assert offsets is not None  # asked for
    return offsets


def decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    """``tokenizer.decode(ids)`` for a list of ids, without its check of every element's type (which
    costs more than the decoding); straight from the Rust tokenizer where transformers' ``_decode`` would
    only pass the ids on to it (its own ``_decode``, no clean-up of tokenization spaces)."""
    backend_class = _tokenizers_backend()
    if (
        backend_class is not None
        and isinstance(tokenizer, backend_class)
        and type(tokenizer)._decode is backend_class._decode
        and not tokenizer.clean_up_tokenization_spaces
    ):
        return str(tokenizer.backend_tokenizer.decode(ids, skip_special_tokens=False))
    return str(tokenizer._decode(ids))


def _mask_from_spans(offsets: Offsets, spans: Spans) -> list[int]:
    # A token counts when it overlaps a span, as transformers does for {% generation %} blocks, so both
    # mask sources agree on tokens that straddle a boundary.
    if isinstance(offsets, TokenOffsets):
        return offsets.mask(spans)
    if not offsets:
        return []
    if len(spans) == 1:  # most rows: one reply; a comprehension beats building arrays for it
        start, end = spans[0]
        return [1 if token_end > start and token_start < end else 0 for token_start, token_end in offsets]
    if len(spans) == 2:
        (start, end), (start2, end2) = spans
        return [
            1 if (token_end > start and token_start < end) or (token_end > start2 and token_start < end2) else 0
            for token_start, token_end in offsets
        ]
    bounds = np.fromiter(itertools.chain.from_iterable(offsets), dtype=np.int64, count=2 * len(offsets)).reshape(-1, 2)
    mask = np.zeros(len(offsets), dtype=bool)
    for start, end in spans:
        mask |= (bounds[:, 1] > start) & (bounds[:, 0] < end)
    return mask.astype(np.int64).tolist()


def _assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[Message], tools: Tools, full: str
) -> tuple[Spans, bool]:
    """Character spans of assistant turns in ``full``, by incremental rendering.

    Turn i spans from the end of render(messages[:i], generation prompt) to the end of
    render(messages[:i+1]) minus trailing whitespace: content, tool calls and the end-of-turn token,
    as the {% generation %} templates mark it. Where the template is not prefix-stable (it rewrites
    earlier turns), fall back to finding the content text; the flag says whether that happened.
    """
    spans: Spans = []
    exact = True
    cursor = 0
    for index, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        if index > 0:
            before = _render(tokenizer, messages[:index], tools, add_generation_prompt=True)
            upto = _render(tokenizer, messages[: index + 1], tools)
            if upto.startswith(before) and full.startswith(upto):
                end = len(upto.rstrip())
                spans.append((len(before), max(end, len(before))))
                cursor = len(upto)
                continue
        exact = False
        content = message.get("content") or ""
        position = full.find(content, cursor) if content else -1
        if position >= 0:
            spans.append((position, position + len(content)))
            cursor = position + len(content)
    return spans, exact


@dataclass(frozen=True)
class _Draft:
    """A row rendered but not tokenized yet: the texts to tokenize, and how their tokens become the
    row's counts and mask (:meth:`parts`). Splitting the two lets a batch tokenize in one call."""

    kind: str
    texts: tuple[str, ...]
    """The rendering (text rows: the text); for preference rows prompt, chosen and rejected."""
    spans: Spans | None
    """Character spans of ``texts[0]`` that carry loss; None for every token (text rows)."""
    mask_source: str
    verification_texts: tuple[str, ...] = ()
    """Renderings that verifying the row tokenizes too (:func:`round_trip_ok`); it needs their ids only."""

    @property
    def needs_offsets(self) -> bool:
        """Whether :meth:`parts` reads the offsets of :attr:`texts` (the mask, a text row's cut); preference
        rows only count tokens."""
        return self.kind != "preference"

    def want(self, wanted: dict[str, bool]) -> None:
        """Add the texts to tokenize for this row to ``wanted`` (text -> offsets needed)."""
        _want(wanted, self.texts, self.needs_offsets)
        _want(wanted, self.verification_texts, False)

    def parts(self, encodings: Sequence[Encoding]) -> dict[str, Any]:
        """The rendering's fields of :class:`RenderedRow`, from the encodings of :attr:`texts`."""
        if self.kind == "preference":
            prompt, chosen, rejected = self.texts
            (prompt_ids, _), (chosen_ids, _), (rejected_ids, _) = encodings
            # TRL tokenizes prompt and completion separately and concatenates, so counts add up the same way.
            return {
                "text": prompt,
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "input_ids": [],
                "assistant_mask": [],
                "mask_source": self.mask_source,
                "n_prompt_tokens": len(prompt_ids),
                "n_chosen_tokens": len(chosen_ids),
                "n_rejected_tokens": len(rejected_ids),
                "n_tokens": len(prompt_ids) + max(len(chosen_ids), len(rejected_ids)),
            }
        ids, offsets = encodings[0]
        assert offsets is not None  # needs_offsets
        mask = [1] * len(ids) if self.spans is None else _mask_from_spans(offsets, self.spans)
        return {
            "text": self.texts[0],
            "n_tokens": len(ids),
            "input_ids": ids,
            "assistant_mask": mask,
            "mask_source": self.mask_source,
        }


def _chat_draft(tokenizer: PreTrainedTokenizerBase, kind: str, messages: list[Message], tools: Tools) -> _Draft:
    """A conversation's rendering and the spans of what the assistant wrote, with where they came from."""
    prompt_row = kind == "prompt"
    text, marked = _render_marked(tokenizer, messages, tools, add_generation_prompt=prompt_row)
    # The round trip renders a prompt row without the generation prompt.
    verification = (_render(tokenizer, messages, tools),) if prompt_row else ()
    if not any(m.get("role") == "assistant" for m in messages):
        return _Draft(kind, (text,), [], "none", verification)
    if marked is not None:
        return _Draft(kind, (text,), marked, "generation", verification)
    spans, exact = _assistant_spans(tokenizer, messages, tools, text)
    return _Draft(kind, (text,), spans, "offsets" if exact else "content_search", verification)


def _with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    # A row's own system message wins: it was written for that conversation.
    if not system_prompt or (messages and messages[0].get("role") == "system"):
        return list(messages)
    return [{"role": "system", "content": system_prompt}, *messages]


def _row_tools(row: Row) -> Tools:
    extra = row.get("extra") or {}
    tools = extra.get("tools") if isinstance(extra, dict) else None
    if isinstance(tools, str):  # some sources store the schema list as a JSON string
        tools = json.loads(tools)
    return tools or None


def _draft(
    tokenizer: PreTrainedTokenizerBase,
    kind: str,
    messages: list[Message],
    tools: Tools,
    chosen: list[Message] | None = None,
    rejected: list[Message] | None = None,
    text: str | None = None,
) -> _Draft:
    if kind == "text":
        return _Draft(kind, (text or "",), None, "all")
    if kind == "preference":
        prompt = _render(tokenizer, messages, tools, add_generation_prompt=True)
        pieces, fulls = [prompt], []
        for side, completion in (("chosen", chosen), ("rejected", rejected)):
            full = _render(tokenizer, messages + list(completion or []), tools)
            if not full.startswith(prompt):
                raise RenderError(
                    f"the rendering of prompt + {side} does not start with the "
                    "prompt rendering, so the template cannot split prompt and completion"
                )
            pieces.append(full[len(prompt) :])
            fulls.append(full)
        return _Draft(kind, tuple(pieces), None, "empty", tuple(fulls))
    return _chat_draft(tokenizer, kind, messages, tools)


def _render_parts(
    tokenizer: PreTrainedTokenizerBase,
    kind: str,
    messages: list[Message],
    tools: Tools,
    chosen: list[Message] | None = None,
    rejected: list[Message] | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    draft = _draft(tokenizer, kind, messages, tools, chosen, rejected, text)
    wanted: dict[str, bool] = {}
    draft.want(wanted)
    encodings = _encodings(tokenizer, wanted)
    return draft.parts([encodings[t] for t in draft.texts])


class RenderError(ValueError):
    """A row the template cannot render (bad shape, or the template refuses it); the run goes on
    without the row. Configuration errors (no chat template, missing tokenizer) are not this."""


@dataclass(frozen=True)
class _Pending:
    """A row ready to render: what :class:`RenderedRow` records besides the rendering, and its draft."""

    fields: dict[str, Any]
    draft: _Draft


def _prepare(row: Row, tokenizer: PreTrainedTokenizerBase, system_prompt: str | None) -> _Pending:
    """Validate a row and render it (not tokenized yet); RenderError for a row that cannot be rendered."""
    from jinja2 import TemplateError

    kind = row.get("kind")
    row_id = row.get("row_id")
    chosen = rejected = None
    try:
        tools = _row_tools(row)
    except json.JSONDecodeError as error:
        raise RenderError(f"row {row_id}: extra.tools is not valid JSON ({error})") from error
    if kind == "text":
        if not isinstance(row.get("text"), str):
            raise RenderError(f"row {row_id}: text row has no text")
        messages: list[Message] = []
        template = getattr(tokenizer, "chat_template", None) or ""
    elif kind in _CHAT_KINDS or kind == "preference":
        if not row.get("messages"):
            raise RenderError(f"row {row_id}: {kind} row has no messages")
        messages = _with_system_prompt(row["messages"], system_prompt)
        if kind == "preference":
            chosen, rejected = row.get("chosen") or [], row.get("rejected") or []
            if not chosen or not rejected:
                raise RenderError(f"row {row_id}: preference row needs both chosen and rejected messages")
        template = _template_text(tokenizer, tools)
    else:
        raise RenderError(
            f"row {row_id}: unknown kind {kind!r}; expected one of sft, chat, tool, prompt, reward, preference, text"
        )
    try:
        draft = _draft(tokenizer, kind, messages, tools, chosen, rejected, row.get("text"))
    except (TemplateError, RenderError) as error:
        raise RenderError(f"row {row_id}: {error}") from error
    fields = {
        "row_id": row_id,
        "kind": kind,
        "messages": messages,
        "chosen_messages": chosen,
        "rejected_messages": rejected,
        "tools": tools,
        "template_id": template_id(template),
        "tokenizer_id": tokenizer_id(tokenizer),
    }
    return _Pending(fields, draft)


def render_rows(
    rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase, *, system_prompt: str | None = None
) -> list[RenderedRow | RenderError]:
    """Render canonical rows with the tokenizer's chat template (see the module doc for layouts), every
    text of the batch tokenized in one call. A row that cannot be rendered comes back as its
    :class:`RenderError`; configuration errors raise (ValueError)."""
    pending: list[_Pending | RenderError] = []
    for row in rows:
        try:
            pending.append(_prepare(row, tokenizer, system_prompt))
        except RenderError as error:
            pending.append(error)
    wanted: dict[str, bool] = {}
    for p in pending:
        if isinstance(p, _Pending):
            p.draft.want(wanted)
    encodings = _encodings(tokenizer, wanted)
    return [
        p
        if isinstance(p, RenderError)
        else RenderedRow(**p.fields, **p.draft.parts([encodings[t] for t in p.draft.texts]))
        for p in pending
    ]


def render_row(row: Row, tokenizer: PreTrainedTokenizerBase, *, system_prompt: str | None = None) -> RenderedRow:
    """One row of :func:`render_rows`; raises :class:`RenderError` for a row that cannot be rendered."""
    [rendered] = render_rows([row], tokenizer, system_prompt=system_prompt)
    if isinstance(rendered, RenderError):
        raise rendered
    return rendered


def format_batch(
    rows: Sequence[Row],
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_tokens: int,
    policy: LengthPolicy = "drop",
    system_prompt: str | None = None,
) -> list[tuple[RenderedRow | None, str]]:
    """Render then apply the length policy: what the ``formatted`` asset does to each row.

    A row that cannot be rendered comes back as (None, "render_error: ...") so it is recorded, not
    lost; configuration errors still raise.
    """
    return [
        (None, f"render_error: {rendered}")
        if isinstance(rendered, RenderError)
        else apply_length_policy(rendered, max_tokens, policy, tokenizer=tokenizer)
        for rendered in render_rows(rows, tokenizer, system_prompt=system_prompt)
    ]


def format_row(
    row: Row,
    tokenizer: PreTrainedTokenizerBase,
    *,
    max_tokens: int,
    policy: LengthPolicy = "drop",
    system_prompt: str | None = None,
) -> tuple[RenderedRow | None, str]:
    """One row of :func:`format_batch`."""
    [outcome] = format_batch([row], tokenizer, max_tokens=max_tokens, policy=policy, system_prompt=system_prompt)
    return outcome


# --------------------------------------------------------------------------- length policy


def _drop_earliest_exchange(messages: list[Message]) -> list[Message] | None:
    """Messages without the earliest exchange (system kept), still starting on a user turn; None if
    only one exchange is left."""
    head = 1 if messages and messages[0].get("role") == "system" else 0
    body = messages[head:]
    later_users = [i for i, m in enumerate(body) if m.get("role") == "user" and i > 0]
    if not later_users:
        return None
    return messages[:head] + body[later_users[0] :]


def apply_length_policy(
    rendered: RenderedRow, max_tokens: int, policy: LengthPolicy, *, tokenizer: PreTrainedTokenizerBase | None = None
) -> tuple[RenderedRow | None, str]:
    """Keep, cut or drop a rendered row against ``max_tokens``; returns (row or None, reason).

    ``drop``: over-long rows are dropped. ``truncate`` (needs ``tokenizer`` for re-rendering):
    1. conversations lose whole earliest exchanges (system prompt kept, still starting on a user
       turn), which keeps every remaining turn intact — what multi-turn SFT recipes do;
    2. if the last exchange alone is still too long and its prompt part fits, the token sequence
       is cut inside the final assistant turn; the end-of-turn token is lost with it, so the model
       is never taught to stop mid-answer;
    3. text rows keep their first ``max_tokens`` tokens;
    4. preference and prompt rows are dropped once dropping earliest exchanges is not enough:
       cutting a completion would change what the pair compares, a prompt without its end is not
       a prompt.
    Reasons start with a stable code: ``within_limit``, ``dropped_too_long``,
    ``truncated_earliest_turns``, ``truncated_last_assistant``, ``truncated_text``.
    """
    if max_tokens <= 0:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    if policy not in ("drop", "truncate"):
        raise ValueError(f"length policy {policy!r} is not one of drop, truncate")
    original = rendered.n_tokens
    if original <= max_tokens:
        return rendered, "within_limit"
    too_long = f"dropped_too_long: {original} tokens > max_tokens {max_tokens}"
    if policy == "drop":
        return None, too_long
    if tokenizer is None:
        raise ValueError("apply_length_policy(policy='truncate') needs the tokenizer to re-render the row")

    if rendered.kind == "text":
        keep = rendered.input_ids[:max_tokens]
        offsets = _offsets(tokenizer, rendered.text)
        cut = offsets[max_tokens - 1][1] if keep else 0
        reason = f"truncated_text: kept first {max_tokens} of {original} tokens"
        return replace(
            rendered,
            text=rendered.text[:cut],
            input_ids=keep,
            n_tokens=len(keep),
            assistant_mask=rendered.assistant_mask[:max_tokens],
            truncation=reason,
        ), reason

    current = rendered
    dropped = 0
    while current.n_tokens > max_tokens and current.kind != "prompt":
        shorter = _drop_earliest_exchange(current.messages)
        if shorter is None:
            break
        dropped += 1
        parts = _render_parts(
            tokenizer, current.kind, shorter, current.tools, current.chosen_messages, current.rejected_messages
        )
        current = replace(current, messages=shorter, **parts)
    if current.n_tokens <= max_tokens:
        reason = (
            f"truncated_earliest_turns: dropped {dropped} earliest exchange(s), {original} -> {current.n_tokens} tokens"
        )
        return replace(current, truncation=reason), reason

    if current.kind in ("preference", "prompt") or current.messages[-1].get("role") != "assistant":
        still = f" (still {current.n_tokens} after dropping earliest turns)" if dropped else ""
        return None, too_long + still
    prompt_text = _render(tokenizer, current.messages[:-1], current.tools, add_generation_prompt=True)
    if not current.text.startswith(prompt_text):
        return None, too_long + " (template is not prefix-stable, cannot cut the last turn safely)"
    offsets = _offsets(tokenizer, current.text)
    prompt_len = len(_encode(tokenizer, prompt_text, offsets=False)[0])
    if prompt_len >= max_tokens:
        return None, too_long + f" (the prompt of the last exchange alone has {prompt_len} tokens)"
    cut = offsets[max_tokens - 1][1]
    reason = (
        f"truncated_last_assistant: dropped {dropped} earliest exchange(s) and cut the last assistant "
        f"turn, {original} -> {max_tokens} tokens"
    )
    return replace(
        current,
        text=current.text[:cut],
        input_ids=current.input_ids[:max_tokens],
        assistant_mask=current.assistant_mask[:max_tokens],
        n_tokens=max_tokens,
        truncation=reason,
    ), reason


# --------------------------------------------------------------------------- checks


def control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Tokens the template uses as markup: special tokens plus added tokens written by the template
    (the same rule transformers uses for ``sanitize_control_tokens``)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = "\0".join(template.values())
    reuse = _REUSE.get()
    key = (id(tokenizer), template)
    if reuse is not None and key in reuse.control_tokens:
        return reuse.control_tokens[key]
    found = set(tokenizer.all_special_tokens)
    for token in tokenizer.added_tokens_decoder.values():
        if token.special or (token.content in template and not token.content.isspace()):
            found.add(token.content)
    tokens = sorted(t for t in found if t)
    if reuse is not None:
        reuse.control_tokens[key] = tokens
    return tokens


def _row_strings(row: Row) -> list[str]:
    strings = [row["text"]] if isinstance(row.get("text"), str) else []
    for column in ("messages", "chosen", "rejected"):
        for message in row.get(column) or []:
            if isinstance(message.get("content"), str):
                strings.append(message["content"])
            for call in message.get("tool_calls") or []:
                strings.append(json.dumps(call, ensure_ascii=False))
    tools = (row.get("extra") or {}).get("tools") if isinstance(row.get("extra"), dict) else None
    if tools:  # tool schemas are rendered into the system turn too
        strings.append(tools if isinstance(tools, str) else json.dumps(tools, ensure_ascii=False))
    return strings


def special_tokens_in_content(row: Row, tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """Control tokens of the template that appear inside the row's own text (a leak: the model would
    read a turn boundary where the author wrote text). Sorted, unique."""
    tokens = control_tokens(tokenizer)
    leaked = {token for text in _row_strings(row) for token in tokens if token in text}
    return sorted(leaked)


def _family(template_name_or_tokenizer: Any) -> str | None:
    if isinstance(template_name_or_tokenizer, str) and template_name_or_tokenizer in TEMPLATE_NAMES:
        template = load_template(template_name_or_tokenizer)
    elif isinstance(template_name_or_tokenizer, str):
        template = template_name_or_tokenizer
    else:
        template = getattr(template_name_or_tokenizer, "chat_template", None) or ""
    if isinstance(template, str):
        return _template_family(template)
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    return None


@functools.lru_cache(maxsize=16)
def _template_family(template: str) -> str | None:
    if "<|im_start|>" in template:
        return "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    return None


_CHATML_TURN = re.compile(r"<\|im_start\|>([^\n]*)\n(.*?)<\|im_end\|>\n?", re.DOTALL)
_LLAMA3_TURN = re.compile(r"<\|start_header_id\|>(.*?)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.DOTALL)
_TOOL_CALL = re.compile(r"\n?<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


def _parse_turns(text: str, pattern: re.Pattern[str], open_header: str) -> list[tuple[str, str]]:
    turns: list[tuple[str, str]] = []
    position = 0
    for match in pattern.finditer(text):
        if text[position : match.start()].strip():
            raise ValueError(f"unparsed text at character {position}: {text[position : match.start()][:60]!r}")
        turns.append((match.group(1), match.group(2)))
        position = match.end()
    rest = text[position:]
    # A trailing generation prompt is the opening of the next assistant turn, not a message.
    if rest.strip() and rest != open_header:
        raise ValueError(f"unparsed text at character {position}: {rest[:60]!r}")
    return turns


def parse_rendered(text: str, template_name_or_tokenizer: Any) -> list[Message]:
    """Messages back from a rendering by a shipped family (ChatML, Llama 3); tool definitions in the
    ChatML system turn are removed, tool calls come back as ``tool_calls``."""
    family = _family(template_name_or_tokenizer)
    if family == "llama3":
        text = text.removeprefix("<|begin_of_text|>")
        turns = _parse_turns(text, _LLAMA3_TURN, "<|start_header_id|>assistant<|end_header_id|>\n\n")
        return [{"role": role, "content": content} for role, content in turns]
    if family != "chatml":
        raise ValueError("parse_rendered knows the chatml and llama3 layouts only; this template is neither")
    messages: list[Message] = []
    for role, content in _parse_turns(text, _CHATML_TURN, "<|im_start|>assistant\n"):
        if role == "system" and _CHATML_TOOLS_HEADER in content:
            content = content[: content.index(_CHATML_TOOLS_HEADER)].removesuffix("\n\n")
            if not content:
                continue
        message: Message = {"role": role, "content": content}
        if role == "assistant" and "<tool_call>" in content:
            calls = []
            for match in _TOOL_CALL.finditer(content):
                call = json.loads(match.group(1))
                calls.append(
                    {"type": "function", "function": {"name": call.get("name"), "arguments": call.get("arguments")}}
                )
            message["content"] = content[: content.index("<tool_call>")].removesuffix("\n")
            message["tool_calls"] = calls
        messages.append(message)
    return messages


def _comparable(message: Message) -> tuple[str, str, list[tuple[Any, Any]]]:
    calls = []
    for call in message.get("tool_calls") or []:
        function = call.get("function", call)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):  # not JSON: compare the raw string
                arguments = json.loads(arguments)
        calls.append((function.get("name"), json.dumps(arguments, sort_keys=True)))
    return message.get("role") or "", message.get("content") or "", calls


def _conversations(row: Row) -> list[list[Message]]:
    messages = list(row.get("messages") or [])
    if row.get("kind") == "preference":
        return [messages + list(row.get("chosen") or []), messages + list(row.get("rejected") or [])]
    return [messages]


def round_trip_ok(row: Row, tokenizer: PreTrainedTokenizerBase) -> tuple[bool, str]:
    """Does the row survive rendering? Parse the rendering back to the same messages and
    decode(encode(rendering)) to the same text. Templates outside the shipped families get a weaker
    check: every content string appears in the rendering, in order."""
    tools = _row_tools(row)
    if row.get("kind") == "text":
        text = row.get("text") or ""
        ids, _ = _encode(tokenizer, text, offsets=False)
        if decode(tokenizer, ids) != text:
            return False, "decode(encode(text)) differs from the text"
        return True, "ok"
    family = _family(tokenizer)
    for conversation in _conversations(row):
        rendered = _render(tokenizer, conversation, tools)
        if decode(tokenizer, _encode(tokenizer, rendered, offsets=False)[0]) != rendered:
            return False, "decode(encode(rendering)) differs from the rendering"
        if family is None:
            cursor = 0
            for index, message in enumerate(conversation):
                position = rendered.find(message.get("content") or "", cursor)
                if position < 0:
                    role = message.get("role")
                    return False, f"message {index} ({role}) content not found in the rendering"
                cursor = position + len(message.get("content") or "")
            continue
        try:
            parsed = parse_rendered(rendered, tokenizer)
        except ValueError as error:
            return False, f"rendering does not parse back: {error}"
        if len(parsed) != len(conversation):
            return False, f"parsed {len(parsed)} messages back from {len(conversation)}"
        for index, (original, back) in enumerate(zip(conversation, parsed, strict=True)):
            if _comparable(original) != _comparable(back):
                return False, f"message {index} ({original.get('role')}) differs after rendering and parsing"
    return True, "ok" if family else "ok (content-order check: no parser for this template)"


def tokenize_for_round_trip(rows: Sequence[Row], tokenizer: PreTrainedTokenizerBase) -> None:
    """Inside a :func:`reusing_renderings` block, render what :func:`round_trip_ok` checks for each row and
    tokenize it all in one call, so checking many rows does not cost a tokenizer call each."""
    texts: list[str] = []
    for row in rows:
        if row.get("kind") == "text":
            texts.append(row.get("text") or "")
            continue
        tools = _row_tools(row)
        texts += [_render(tokenizer, conversation, tools) for conversation in _conversations(row)]
    if _REUSE.get() is not None:  # outside a block there is nothing to keep them in
        _encodings(tokenizer, dict.fromkeys(texts, False))


def generation_prompt_matches(
    messages: list[Message], tokenizer: PreTrainedTokenizerBase, *, tools: Tools = None
) -> bool:
    """Is render(history, add_generation_prompt=True) exactly what precedes the last assistant reply
    in render(history + reply)? I.e. inference sends what training saw, and the model's first
    generated text is the reply itself (a generation prompt that stops short, e.g. without the
    newline after the role, is a string prefix but would make the model generate the newline)."""
    last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"), default=-1)
    if last <= 0:
        raise ValueError(
            "generation_prompt_matches needs a conversation with an assistant turn after at least one other message"
        )
    prompt = _render(tokenizer, messages[:last], tools, add_generation_prompt=True)
    full = _render(tokenizer, messages[: last + 1], tools)
    if not full.startswith(prompt) or len(full) == len(prompt):
        return False
    content = messages[last].get("content") or ""
    # Tool-call-only replies have no content to anchor on; the prefix test is all we can check.
    return full[len(prompt) :].startswith(content) if content else True
