"""Chat templates shipped with Distillery and a small offline tokenizer built around them.

The bundled demo and the tests need a real tokenizer with a chat template but may never download
one, so :func:`train_tokenizer` trains a byte-level BPE (the scheme of GPT-2, Llama 3 and Qwen) on
local texts in seconds and saves a directory that ``transformers.AutoTokenizer`` loads offline.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class TemplateSpec:
    """The tokens a template family relies on; they become added tokens of the trained tokenizer."""

    special: tuple[str, ...]
    """Control tokens, added as special (never split, skipped by ``decode(skip_special_tokens=True)``)."""
    eos: str
    """End of an assistant turn: what generation stops on."""
    pad: str
    bos: str | None = None
    extra: tuple[str, ...] = ()
    """Markup tokens written by the template but also fine in text (added, not special), like Qwen's
    ``<tool_call>``."""


# Token inventories follow the public tokenizer configs of the families: ChatML as in Qwen2.5
# (eos <|im_end|>, pad <|endoftext|>, <tool_call> as a non-special added token); Llama 3 as in
# Meta-Llama-3-8B-Instruct (bos <|begin_of_text|>, turn end <|eot_id|>).
_CHATML = TemplateSpec(
    special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
    eos="<|im_end|>",
    pad="<|endoftext|>",
    extra=("<tool_call>", "</tool_call>"),
)
TEMPLATE_SPECS: dict[str, TemplateSpec] = {
    "chatml": _CHATML,
    "chatml_generation": _CHATML,
    "llama3": TemplateSpec(
        special=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        eos="<|eot_id|>",
        pad="<|end_of_text|>",
        bos="<|begin_of_text|>",
    ),
}
TEMPLATE_NAMES: tuple[str, ...] = tuple(sorted(TEMPLATE_SPECS))


def load_template(name: str) -> str:
    """The Jinja text of a shipped chat template (``curation/templates/<name>.jinja``)."""
    if name not in TEMPLATE_SPECS:
        raise KeyError(f"unknown chat template {name!r}; shipped templates: {', '.join(TEMPLATE_NAMES)}")
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


@functools.lru_cache(maxsize=64)
def template_id(template: str) -> str:
    """Short stable id of a template text, recorded on every formatted row."""
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:16]


def train_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    vocab_size: int = 2000,
    template: str = "chatml",
) -> Path:
    """Train a byte-level BPE on ``texts``, attach a shipped chat template, save to ``out_dir``.

    Byte-level means every string is encodable (no unknown token), so decode(encode(x)) == x and
    character offsets are exact, which the offset-based loss masks rely on. Returns ``out_dir``.
    """
    spec = TEMPLATE_SPECS.get(template)
    if spec is None:
        raise KeyError(f"unknown chat template {template!r}; shipped templates: {', '.join(TEMPLATE_NAMES)}")
    chat_template = load_template(template)

    tokenizer = Tokenizer(models.BPE())
    # add_prefix_space=False: a chat template decides its own spacing; GPT-2 style prefixing would
    # change the text we render.
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(spec.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    if spec.extra:
        tokenizer.add_tokens(list(spec.extra))

    # Imported here: transformers is slow to import and the template helpers above do not need it.
    from transformers import PreTrainedTokenizerFast

    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=spec.bos,
        eos_token=spec.eos,
        pad_token=spec.pad,
        chat_template=chat_template,
        model_max_length=1_000_000,
    )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wrapped.save_pretrained(str(out_dir))
    return out_dir
