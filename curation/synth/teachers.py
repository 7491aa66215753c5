"""Teacher backends behind one interface (docs/architecture.md §6).

A teacher turns chat requests into generations and says who it is (:class:`TeacherInfo`)
so every synthetic row can record model, revision, licence and terms. Backends:

* :class:`ProceduralTeacher` — rules and templates, seeded and deterministic; the offline default.
* :class:`TransformersTeacher` — a local model directory through ``transformers`` generation
  (needs the optional model extra: torch).
* :class:`OpenAICompatibleTeacher` — any server speaking OpenAI chat completions.

Caching lives in :mod:`curation.synth.cache`; teachers only report each finished
generation through ``on_result`` as soon as it exists, so the cache can persist it at once.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import copy
import email.utils
import hashlib
import json
import logging
import operator
import os
import random
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import httpx2

from curation.core.provenance import TeacherInfo

log = logging.getLogger(__name__)

Message = Mapping[str, Any]
ResultCallback = Callable[[int, "Generation"], None]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; part of the cache key.

    There is no ``n``: several samples of one prompt are several requests with different
    seeds, so each sample is cached (and resumed) on its own.
    """

    temperature: float = 0.0
    max_new_tokens: int = 256
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class ChatRequest:
    """One prompt (a list of {role, content} messages) and how to sample its answer."""

    messages: Sequence[Message]
    params: GenerationParams = field(default_factory=GenerationParams)

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("ChatRequest needs at least one message")
        for m in self.messages:
            if "role" not in m or "content" not in m:
                raise ValueError(f"each message needs 'role' and 'content'; got keys {sorted(m)}")

    def messages_list(self) -> list[dict[str, Any]]:
        return [dict(m) for m in self.messages]


@dataclass(frozen=True)
class Generation:
    """One completion. ``finish_reason``: stop, length, or unsupported (procedural: no rule applies).

    What the backend reported about how it made the completion, kept (and cached) with it so provenance
    records what happened rather than what was asked: ``served_model`` and ``system_fingerprint`` as an
    OpenAI-compatible reply names them, and ``effective_params``, the sampling the backend confirms it applied
    (a value of None: that parameter did not apply, e.g. temperature in greedy decoding), or None as a whole
    when the backend cannot tell (an HTTP server does not report whether it honoured ``temperature``).
    """

    text: str
    finish_reason: str
    cached: bool = False
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    served_model: str | None = None
    system_fingerprint: str | None = None
    effective_params: Mapping[str, Any] | None = None


class TeacherError(RuntimeError):
    """A teacher could not produce some generations; the others were already reported."""


@runtime_checkable
class Teacher(Protocol):
    """What the synthetic stage needs from any backend."""

    info: TeacherInfo

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        """Generations in request order; ``on_result(index, generation)`` fires as each one finishes."""
        ...


class WrappedTeacher:
    """A teacher that adds behaviour around another teacher's ``generate`` (progress reports, Ray tasks);
    every other attribute (``info``, ``cache_extra``, ``scrub_secrets``…) is the wrapped teacher's."""

    def __init__(self, teacher: Teacher) -> None:
        self.teacher = teacher
        self.info: TeacherInfo = teacher.info

    def __getattr__(self, name: str) -> Any:
        if name == "teacher":  # not set yet (a copy being built): never ask the wrapped teacher for itself
            raise AttributeError(name)
        return getattr(self.teacher, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.teacher!r})"


def _last_user(messages: Sequence[Message]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from values, stable across processes (``hash()`` is salted per process)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------------------------------------
# Procedural: things rules can do honestly — exact arithmetic, unit conversions, perturbations.
# ---------------------------------------------------------------------------------------------

PROCEDURAL_VERSION = "1"  # bump when rules or templates change, so cached outputs are not reused

_WORD_OPS = (
    (re.compile(r"\bmultiplied by\b|\btimes\b|[×x](?=\s*[\d(])", re.I), "*"),
    (re.compile(r"\bdivided by\b|÷", re.I), "/"),
    (re.compile(r"\bplus\b|\badded to\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
)
_NUM = r"\d+(?:,\d{3})*(?:\.\d+)?"
_EXPR = re.compile(rf"[-(\s]*{_NUM}(?:\s*[-+*/]\s*[(\s]*-?{_NUM}[)\s]*)+")
# Words allowed around the expression: the solver answers arithmetic *questions*, so a date
# like 2024-01-15 inside a story is not taken for a subtraction.
_FRAME = frozenset(
    (
        "what",
        "whats",
        "what's",
        "is",
        "are",
        "do",
        "does",
        "you",
        "get",
        "for",
        "the",
        "value",
        "of",
        "result",
        "answer",
        "please",
        "solve",
        "compute",
        "calculate",
        "evaluate",
        "find",
        "work",
        "out",
        "equal",
        "equals",
        "to",
    )
)
_BINOPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _eval_exact(node: ast.AST) -> Fraction:
    # Only numbers and + - * / (and unary minus) are evaluated; anything else is refused.
    if isinstance(node, ast.Expression):
        return _eval_exact(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        value = _eval_exact(node.operand)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval_exact(node.left), _eval_exact(node.right))
    raise ValueError("not plain arithmetic")


def format_number(value: Fraction) -> str:
    """Exact decimal when the value has one (integers, 3.5, 0.0625), else 6 decimals and "…" (1/3 → 0.333333…)."""
    if value.denominator == 1:
        return str(value.numerator)
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    if d == 1:  # terminating: scale to an integer and place the decimal point exactly
        places = 0
        while (value * 10**places).denominator != 1:
            places += 1
        digits = str(abs(value.numerator * 10**places // value.denominator)).rjust(places + 1, "0")
        return ("-" if value < 0 else "") + digits[:-places] + "." + digits[-places:]
    return f"{float(value):.6f}".rstrip("0") + "…"


def solve_arithmetic(text: str) -> tuple[str, str] | None:
    """Find one arithmetic expression in ``text`` and return (expression, exact result), or None."""
    work = text
    for pattern, symbol in _WORD_OPS:
        work = pattern.sub(f" {symbol} ", work)
    match = _EXPR.search(work)
    if match is None:
        return None
    rest = (work[: match.start()] + " " + work[match.end() :]).casefold()
    if any(w not in _FRAME for w in re.findall(r"[a-z']+", rest)) or re.search(r"\d", rest):
        return None
    expression = re.sub(r"\s+", " ", match.group(0).replace(",", "")).strip()
    try:
        value = _eval_exact(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError):
        return None
    return expression, format_number(value)


# Factors to the SI base unit of each dimension (exact by definition: NIST SP 811, Appendix B).
_UNITS: dict[str, tuple[str, Fraction]] = {
    unit: (dimension, Fraction(factor))
    for dimension, factors in {
        "length": {
            "mm": "1/1000",
            "cm": "1/100",
            "m": "1",
            "km": "1000",
            "in": "0.0254",
            "ft": "0.3048",
            "yd": "0.9144",
            "mi": "1609.344",
        },
        "mass": {"mg": "1/1000000", "g": "1/1000", "kg": "1", "lb": "0.45359237", "oz": "0.028349523125"},
        "time": {"s": "1", "min": "60", "h": "3600", "day": "86400", "week": "604800"},
        "volume": {"ml": "1/1000", "l": "1"},
    }.items()
    for unit, factor in factors.items()
}

_UNIT_ALIASES = {
    "millimeter": "mm",
    "millimetre": "mm",
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
    "kilometer": "km",
    "kilometre": "km",
    "inch": "in",
    "inches": "in",
    "foot": "ft",
    "feet": "ft",
    "yard": "yd",
    "mile": "mi",
    "milligram": "mg",
    "gram": "g",
    "kilogram": "kg",
    "pound": "lb",
    "lbs": "lb",
    "ounce": "oz",
    "second": "s",
    "sec": "s",
    "minute": "min",
    "hour": "h",
    "hr": "h",
    "days": "day",
    "weeks": "week",
    "milliliter": "ml",
    "millilitre": "ml",
    "liter": "l",
    "litre": "l",
    "celsius": "c",
    "°c": "c",
    "fahrenheit": "f",
    "°f": "f",
    "kelvin": "k",
}
_TEMPERATURES = {"c", "f", "k"}
_UNIT_WORD = r"((?:degrees?\s+)?°?[a-zA-Z]+)"
_QUANTITY = r"(?<![\d.,])(-?\d+(?:,\d{3})*(?:\.\d+)?)"
_CONVERT = re.compile(rf"{_QUANTITY}\s*{_UNIT_WORD}\s+(?:to|in|into)\s+{_UNIT_WORD}", re.I)
_HOW_MANY = re.compile(rf"how many\s+{_UNIT_WORD}\s+(?:are\s+)?(?:there\s+)?in\s+{_QUANTITY}\s*{_UNIT_WORD}", re.I)


def _unit(name: str) -> str | None:
    key = re.sub(r"^degrees?\s+", "", name.lower())
    if key in _UNITS or key in _TEMPERATURES:
        return key
    if key in _UNIT_ALIASES:
        return _UNIT_ALIASES[key]
    if key.endswith("s") and key[:-1] in _UNIT_ALIASES:  # plural: meters, kilograms, …
        return _UNIT_ALIASES[key[:-1]]
    return None


def _to_kelvin(value: Fraction, unit: str) -> Fraction:
    if unit == "c":
        return value + Fraction("273.15")
    if unit == "f":
        return (value - 32) * Fraction(5, 9) + Fraction("273.15")
    return value


def _from_kelvin(value: Fraction, unit: str) -> Fraction:
    if unit == "c":
        return value - Fraction("273.15")
    if unit == "f":
        return (value - Fraction("273.15")) * Fraction(9, 5) + 32
    return value


def convert_units(value: Fraction, source: str, target: str) -> Fraction | None:
    """Exact conversion between units of one dimension (names or symbols), or None if unknown/mixed."""
    src, dst = _unit(source), _unit(target)
    if src is None or dst is None:
        return None
    if src in _TEMPERATURES or dst in _TEMPERATURES:
        if not (src in _TEMPERATURES and dst in _TEMPERATURES):
            return None
        return _from_kelvin(_to_kelvin(value, src), dst)
    (dim_s, f_s), (dim_d, f_d) = _UNITS[src], _UNITS[dst]
    if dim_s != dim_d:
        return None
    return value * f_s / f_d


def solve_units(text: str) -> tuple[str, str, str, str] | None:
    """Find a unit-conversion question; return (value, source unit, target unit, result) or None."""
    match = _CONVERT.search(text)
    if match:
        number, source, target = match.groups()
    else:
        match = _HOW_MANY.search(text)
        if not match:
            return None
        target, number, source = match.groups()
    result = convert_units(Fraction(number.replace(",", "")), source, target)
    if result is None:
        return None
    return number, source, target, format_number(result)


_ARITH_TEMPLATES = (
    "What is {expr}?",
    "Compute {expr}.",
    "Calculate {expr}.",
    "Evaluate {expr}.",
    "What do you get for {expr}?",
)
_ARITH_ANSWERS = (
    "{expr} = {result}",
    "The answer is {result}, since {expr} = {result}.",
    "{expr} = {result}. The answer is {result}.",
)
_UNIT_TEMPLATES = (
    "Convert {value} {source} to {target}.",
    "How many {target} are in {value} {source}?",
    "What is {value} {source} in {target}?",
)
_UNIT_ANSWERS = ("{value} {source} = {result} {target}.", "{value} {source} is {result} {target}.")
_UNIT_PAIRS = (
    ("km", "m"),
    ("m", "cm"),
    ("kg", "g"),
    ("h", "min"),
    ("l", "ml"),
    ("mi", "km"),
    ("ft", "in"),
    ("lb", "kg"),
    ("c", "f"),
    ("f", "c"),
    ("day", "h"),
    ("week", "day"),
)
_UNIT_NAMES = {
    "km": "kilometers",
    "m": "meters",
    "cm": "centimeters",
    "kg": "kilograms",
    "g": "grams",
    "h": "hours",
    "min": "minutes",
    "l": "liters",
    "ml": "milliliters",
    "mi": "miles",
    "ft": "feet",
    "in": "inches",
    "lb": "pounds",
    "c": "degrees Celsius",
    "f": "degrees Fahrenheit",
    "day": "days",
    "week": "weeks",
}


def arithmetic_problem(rng: random.Random) -> tuple[str, str]:
    """A templated arithmetic question and its exact answer."""
    a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 12)
    op1, op2 = rng.choice("+-*"), rng.choice("+-*/")
    expr = f"{a} {op1} {b}" if rng.random() < 0.5 else f"({a} {op1} {b}) {op2} {c}"
    solved = solve_arithmetic(expr)
    assert solved is not None  # the generator only builds expressions the solver accepts
    return rng.choice(_ARITH_TEMPLATES).format(expr=expr), solved[1]


def unit_problem(rng: random.Random) -> tuple[str, str]:
    """A templated unit-conversion question and its exact answer."""
    source, target = rng.choice(_UNIT_PAIRS)
    value = rng.randint(1, 500) if source not in _TEMPERATURES else rng.randint(-40, 120)
    result = convert_units(Fraction(value), source, target)
    assert result is not None
    question = rng.choice(_UNIT_TEMPLATES).format(value=value, source=_UNIT_NAMES[source], target=_UNIT_NAMES[target])
    return question, format_number(result)


# Keyboard neighbours for substitution typos (QWERTY rows), the common noise model in
# robustness work such as Belinkov & Bisk 2018 ("Synthetic and natural noise").
_QWERTY_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {
    ch: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)) for row in _QWERTY_ROWS for i, ch in enumerate(row)
}
_TOKENS = re.compile(r"\w+|\W+", re.UNICODE)
PERTURBATIONS: tuple[str, ...] = ("typo", "word_swap", "casing")


def _typo(word: str, rng: random.Random) -> str:
    if len(word) < 2:
        return word
    i = rng.randrange(len(word) - 1)
    kind = rng.choice(("swap", "drop", "double", "neighbour"))
    if kind == "swap":
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == "drop":
        return word[:i] + word[i + 1 :]
    if kind == "double":
        return word[:i] + word[i] + word[i:]
    near = _NEIGHBOURS.get(word[i].lower())
    return word[:i] + rng.choice(near) + word[i + 1 :] if near else word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def perturb(text: str, kind: str, *, seed: int = 0, rate: float = 0.15) -> str:
    """A seeded noisy copy of ``text``: ``typo``, ``word_swap`` (adjacent words) or ``casing``.

    ``rate`` is the share of words touched (at least one when the text has words). The same
    (text, kind, seed, rate) always gives the same output, in any process.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choose one of {PERTURBATIONS}")
    if not 0 <= rate <= 1:
        raise ValueError(f"rate must be in [0, 1], got {rate}")
    rng = random.Random(stable_seed("perturb", kind, seed, rate, text))
    tokens = _TOKENS.findall(text)
    word_ix = [i for i, t in enumerate(tokens) if t[0].isalnum() or t[0] == "_"]
    if not word_ix or rate == 0:
        return text
    k = max(1, round(rate * len(word_ix)))
    if kind == "word_swap":
        if len(word_ix) < 2:
            return text
        for j in sorted(rng.sample(range(len(word_ix) - 1), min(k, len(word_ix) - 1))):
            a, b = word_ix[j], word_ix[j + 1]
            tokens[a], tokens[b] = tokens[b], tokens[a]
        return "".join(tokens)
    for i in rng.sample(word_ix, min(k, len(word_ix))):
        if kind == "typo":
            tokens[i] = _typo(tokens[i], rng)
        else:  # only casings that differ, so every chosen word really changes
            options = sorted({f(tokens[i]) for f in (str.upper, str.lower, str.capitalize, str.swapcase)} - {tokens[i]})
            tokens[i] = rng.choice(options) if options else tokens[i]
    return "".join(tokens)


class ProceduralTeacher:
    """Answers what rules can answer exactly: arithmetic and unit conversions.

    Anything else gets an empty text with ``finish_reason="unsupported"`` — it never
    pretends to answer. Deterministic: the answer wording depends only on (seed, prompt).
    """

    def __init__(self, seed: int = 0, *, license: str = "CC0-1.0", terms: str = "") -> None:
        # Output comes from this project's own templates, so it carries no model's terms.
        self.seed = seed
        self.info = TeacherInfo(
            backend="procedural",
            model="distillery-procedural",
            revision=PROCEDURAL_VERSION,
            license=license,
            terms=terms,
        )

    def __repr__(self) -> str:
        return f"ProceduralTeacher(seed={self.seed})"

    def answer(self, prompt: str, seed: int = 0) -> str | None:
        rng = random.Random(stable_seed("answer", self.seed, seed, prompt))
        units = solve_units(prompt)
        if units is not None:
            value, source, target, result = units
            return rng.choice(_UNIT_ANSWERS).format(value=value, source=source, target=target, result=result)
        arithmetic = solve_arithmetic(prompt)
        if arithmetic is not None:
            expr, result = arithmetic
            return rng.choice(_ARITH_ANSWERS).format(expr=expr, result=result)
        return None

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        out: list[Generation] = []
        for i, request in enumerate(requests):
            text = self.answer(_last_user(request.messages), request.params.seed)
            gen = Generation(
                text=text or "",
                finish_reason="stop" if text is not None else "unsupported",
                # Rules and templates: the seed picks the wording; there is no sampling and no token budget.
                effective_params={
                    "seed": request.params.seed,
                    "temperature": None,
                    "top_p": None,
                    "max_new_tokens": None,
                },
            )
            out.append(gen)
            if on_result is not None:
                on_result(i, gen)
        return out


# ---------------------------------------------------------------------------------------------
# transformers: a local model directory.
# ---------------------------------------------------------------------------------------------


def hash_model_dir(model_dir: Path, chunk_size: int = 1 << 20) -> str:
    """sha256 over every file's relative path and bytes: the weights fingerprint of a local model directory.

    Every byte, not the safetensors index and shard headers: those name tensors, shapes, dtypes and offsets,
    which a fine-tune of the same architecture leaves as they were, so a header digest would keep the
    fingerprint while every weight changed. Config, generation config, tokenizer and chat template are in too:
    each changes what the model writes. The cost is one sequential read of the directory (the model load
    reads the same bytes; sha256 runs at about 1–2 GB/s)."""
    digest = hashlib.sha256()
    # Hidden files and folders are left out: `.cache/huggingface` (download metadata the hub rewrites), `.git`.
    files = sorted(
        p
        for p in Path(model_dir).rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(model_dir).parts)
    )
    if not files:
        raise FileNotFoundError(f"model directory {model_dir} has no files")
    for path in files:
        digest.update(path.relative_to(model_dir).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(chunk_size):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class TransformersTeacher:
    """A local model directory generated with ``transformers``, in left-padded batches."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        license: str,
        terms: str = "",
        model_id: str | None = None,
        revision: str | None = None,
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "auto",
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise FileNotFoundError(
                f"no config.json in model directory {self.model_dir}; point model_dir at a saved transformers model"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        # The fingerprint is taken even when the project file names a revision (a hub commit): a name cannot
        # tell that the files in model_dir were replaced, and the cache key must (curation.synth.cache.cache_key).
        weights = hash_model_dir(self.model_dir)
        self.info = TeacherInfo(
            backend="transformers",
            model=model_id or self.model_dir.name,
            revision=revision or weights,
            license=license,
            terms=terms,
            weights=weights,
        )
        self._model: Any = None
        self._tokenizer: Any = None

    def __repr__(self) -> str:
        return f"TransformersTeacher(model_dir={str(self.model_dir)!r}, revision={self.info.revision!r})"

    def _load(self) -> None:
        if self._model is not None:
            return
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("the transformers teacher needs torch: install the 'models' extra") from exc
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, padding_side="left")
        if self._tokenizer.pad_token is None:
            self._tokenizer.pad_token = self._tokenizer.eos_token
        if not self._tokenizer.chat_template:
            raise ValueError(f"tokenizer in {self.model_dir} has no chat template; add one to use it as a teacher")
        # transformers' stub types .to() as taking a model; a device string is what it accepts at runtime.
        model = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=self.dtype)
        self._model = model.to(self.device)  # type: ignore[arg-type]
        self._model.eval()

    def _generation_config(self, params: GenerationParams) -> tuple[Any, dict[str, Any]]:
        """The generation config ``generate`` gets for ``params`` (the model's own defaults from its
        generation_config.json under the request's values), and the sampling it applies, as provenance
        records it: a model's default ``top_k`` or ``repetition_penalty`` applies although no request set it."""
        config = copy.deepcopy(self._model.generation_config)
        sample = params.temperature > 0
        values: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "do_sample": sample,
            "pad_token_id": self._tokenizer.pad_token_id,
        }
        if sample:
            values.update(temperature=params.temperature, top_p=params.top_p)
        else:  # greedy: explicit Nones silence "flag ignored" warnings from model defaults
            values.update(temperature=None, top_p=None, top_k=None)
        config.update(**values)
        # transformers 5 fills what is still unset with its global defaults inside generate (top_k 50 when
        # sampling: applied although no request asked for it); the record reads them the same way.
        defaults_of = getattr(config, "_get_default_generation_params", None)
        defaults: dict[str, Any] = defaults_of() if callable(defaults_of) else {}

        def used(name: str) -> Any:
            value = getattr(config, name, None)
            return defaults.get(name) if value is None else value

        effective: dict[str, Any] = {
            "do_sample": sample,
            "max_new_tokens": params.max_new_tokens,
            "num_beams": used("num_beams") or 1,
            # Greedy decoding applies no temperature, top_p or top_k, and the seed changes nothing.
            "temperature": used("temperature") if sample else None,
            "top_p": used("top_p") if sample else None,
            "top_k": used("top_k") if sample else None,
            "seed": params.seed if sample else None,
        }
        for name, neutral, sampling_only in (
            ("min_p", None, True),
            ("typical_p", 1.0, True),
            ("repetition_penalty", 1.0, False),
            ("no_repeat_ngram_size", 0, False),
        ):
            value = used(name)
            if value is not None and value != neutral and (sample or not sampling_only):
                effective[name] = value
        return config, effective

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        import torch

        self._load()
        results: list[Generation | None] = [None] * len(requests)
        # One `generate` call takes one sampling config, so batch within groups of equal params.
        groups: dict[GenerationParams, list[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(request.params, []).append(i)
        eos_ids = self._model.generation_config.eos_token_id
        eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
        for params, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                prompts = [
                    self._tokenizer.apply_chat_template(
                        requests[i].messages_list(), tokenize=False, add_generation_prompt=True
                    )
                    for i in batch
                ]
                enc = self._tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                    self.device
                )
                config, effective = self._generation_config(params)
                if config.do_sample:
                    torch.manual_seed(params.seed)
                with torch.no_grad():
                    out = self._model.generate(**enc, generation_config=config)
                new = out[:, enc["input_ids"].shape[1] :]
                prompt_lens = enc["attention_mask"].sum(dim=1).tolist()
                for row, i in enumerate(batch):
                    ids = new[row].tolist()
                    stop_at = next((k for k, t in enumerate(ids) if t in eos), None)
                    kept = ids if stop_at is None else ids[:stop_at]
                    gen = Generation(
                        text=self._tokenizer.decode(kept, skip_special_tokens=True),
                        finish_reason="stop" if stop_at is not None else "length",
                        prompt_tokens=int(prompt_lens[row]),
                        completion_tokens=len(kept),
                        effective_params=effective,
                    )
                    results[i] = gen
                    if on_result is not None:
                        on_result(i, gen)
        return [g for g in results if g is not None]


# ---------------------------------------------------------------------------------------------
# OpenAI-compatible HTTP servers.
# ---------------------------------------------------------------------------------------------

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})  # 409: OpenAI's "retry" for conflicts


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date, RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class _Secret:
    """Holds a credential; prints as *** so ``vars()``, debuggers and tracebacks do not show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret(***)"

    __str__ = __repr__


REDACTED_API_KEY = "[REDACTED_API_KEY]"
"""What replaces the configured API key wherever a server sends it back (replies, errors)."""


class OpenAICompatibleTeacher:
    """Chat completions over HTTP with bounded concurrency, retries and back-off.

    The API key is held privately and only ever put in the Authorization header: it is not
    in ``repr``, ``info``, log lines or error messages (which are also scrubbed of it). A reply
    that contains it (a server or model echoing the request's headers) is scrubbed before the
    generation leaves this class, so no row, cache entry, judge verdict or export can store it.
    ``revision``: hosted APIs can change weights behind one name, so pass a dated snapshot
    id when there is one; it is part of the cache key.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        license: str,
        terms: str = "",
        revision: str = "unversioned",
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 60.0,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_retry_after_s: float = 120.0,
        extra_body: Mapping[str, Any] | None = None,
        send_seed: bool = True,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0 and timeout_s > 0")
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.extra_body = dict(extra_body or {})
        self.send_seed = send_seed
        self._api_key = _Secret(api_key) if api_key else None
        self.info = TeacherInfo(
            backend="openai-compatible", model=model, revision=revision, license=license, terms=terms
        )
        self.requests_sent = 0  # HTTP attempts, retries included: lets callers (and tests) see traffic

    def __repr__(self) -> str:
        key = "set" if self._api_key else "none"
        return f"OpenAICompatibleTeacher(base_url={self.base_url!r}, model={self.info.model!r}, api_key={key})"

    __str__ = __repr__

    def __reduce__(self) -> Any:
        raise TypeError("OpenAICompatibleTeacher holds an API key and is not picklable; rebuild it from config")

    @property
    def cache_extra(self) -> str:
        """Request settings beyond the sampling parameters that change outputs; part of the cache key."""
        return json.dumps(self.extra_body, sort_keys=True) if self.extra_body else ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._api_key.reveal(), REDACTED_API_KEY) if self._api_key else text

    def scrub_secrets(self, text: str) -> str:
        """``text`` with this teacher's API key replaced by :data:`REDACTED_API_KEY` (for generations that
        come from elsewhere, e.g. a cache filled before replies were scrubbed)."""
        return self._scrub(text)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key.reveal()}"
        return headers

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        p = request.params
        body: dict[str, Any] = {
            "model": self.info.model,
            "messages": request.messages_list(),
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_new_tokens,
        }
        if self.send_seed:
            body["seed"] = p.seed
        body.update(self.extra_body)
        return body

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_retry_after_s)
        # Exponential back-off with full jitter (AWS Architecture Blog, "Exponential Backoff and Jitter").
        return random.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2**attempt))

    async def _one(self, client: httpx2.AsyncClient, sem: asyncio.Semaphore, request: ChatRequest) -> Generation:
        url = f"{self.base_url}/chat/completions"
        body = self._body(request)
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after: float | None = None
            async with sem:
                self.requests_sent += 1
                try:
                    response = await client.post(url, json=body, headers=self._headers())
                except httpx2.TimeoutException:
                    last = f"timed out after {self.timeout_s}s"
                except httpx2.TransportError as exc:
                    last = f"connection error: {type(exc).__name__}"
                else:
                    if response.status_code == 200:
                        return self._parse(response)
                    # Scrubbed before cutting: a cut through the key would leave a prefix no scrub finds.
                    last = f"HTTP {response.status_code}: {self._scrub(response.text)[:300]}"
                    if response.status_code not in _RETRY_STATUS:
                        raise TeacherError(self._scrub(f"{url} refused the request ({last}); not retried"))
                    retry_after = parse_retry_after(response.headers.get("retry-after"))
            if attempt < self.max_retries:
                delay = self._backoff(attempt, retry_after)
                log.info("retrying %s in %.2fs after %s", url, delay, self._scrub(last)[:80])
                await asyncio.sleep(delay)
        raise TeacherError(self._scrub(f"{url} failed after {self.max_retries + 1} attempts; last: {last}"))

    def _parse(self, response: httpx2.Response) -> Generation:
        try:
            payload = response.json()
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise TeacherError(
                self._scrub(
                    f"{self.base_url}: not a chat-completions reply ({type(exc).__name__}): "
                    f"{self._scrub(response.text)[:300]}"
                )
            ) from None
        usage = payload.get("usage") or {}
        served = payload.get("model")
        fingerprint = payload.get("system_fingerprint")
        return Generation(
            # The strings of a reply that are kept (cache, rows, provenance): none may carry the key.
            text=self._scrub(str(text)),
            finish_reason=self._scrub(str(choice.get("finish_reason") or "stop")),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            # What the server says answered: the configured name may be an alias for changing weights.
            served_model=self._scrub(str(served)) if served else None,
            system_fingerprint=self._scrub(str(fingerprint)) if fingerprint else None,
            # effective_params stays None: the protocol does not report whether temperature, top_p or seed
            # were honoured, so provenance marks them requested, not confirmed.
        )

    async def agenerate(
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> list[Generation]:
        """Async form of :meth:`generate`: every request concurrently, at most ``concurrency`` in flight."""
        sem = asyncio.Semaphore(self.concurrency)
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        results: list[Generation | None] = [None] * len(requests)
        errors: list[str] = []

        async def run(i: int, client: httpx2.AsyncClient) -> None:
            try:
                gen = await self._one(client, sem, requests[i])
            except TeacherError as exc:
                errors.append(f"request {i}: {exc}")
                return
            results[i] = gen
            if on_result is not None:
                on_result(i, gen)  # runs on the loop thread: safe for a single DuckDB connection

        async with httpx2.AsyncClient(timeout=self.timeout_s, limits=limits) as client:
            await asyncio.gather(*(run(i, client) for i in range(len(requests))))
        if errors:
            done = sum(r is not None for r in results)
            raise TeacherError(
                f"{len(errors)} of {len(requests)} requests failed ({done} succeeded and were "
                f"reported); first: {errors[0]}"
            )
        return [g for g in results if g is not None]

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        coro_factory = lambda: self.agenerate(requests, on_result)  # noqa: E731
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro_factory())
        # Called from inside an event loop (a notebook): run on a private loop in a worker thread.
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(lambda: asyncio.run(coro_factory())).result()


# ---------------------------------------------------------------------------------------------
# From the project file.
# ---------------------------------------------------------------------------------------------

_SPEC_KEYS: dict[str, set[str]] = {
    "procedural": {"seed", "license", "terms"},
    "transformers": {"model_dir", "license", "terms", "model_id", "revision", "batch_size", "device", "dtype"},
    "openai-compatible": {
        "base_url",
        "model",
        "api_key_env",
        "license",
        "terms",
        "revision",
        "concurrency",
        "max_retries",
        "timeout_s",
        "backoff_base_s",
        "backoff_max_s",
        "max_retry_after_s",
        "extra_body",
        "send_seed",
    },
}


def build_teacher(spec: Mapping[str, Any], *, api_key: str | None = None, base_dir: Path | None = None) -> Teacher:
    """A teacher from a project-file mapping such as ``{"backend": "procedural", "seed": 0}``.

    ``api_key`` is for callers that resolve secrets themselves (a Dagster ``EnvVar``); otherwise
    ``api_key_env`` names the environment variable to read. A relative ``model_dir`` is resolved
    against ``base_dir`` (the project file's folder).
    """
    backend = spec.get("backend", "procedural")
    if backend not in _SPEC_KEYS:
        raise ValueError(f"unknown teacher backend {backend!r}; choose one of {sorted(_SPEC_KEYS)}")
    if "api_key" in spec:  # checked first so the message says where the key belongs
        raise ValueError(
            "put the API key in an environment variable and name it with api_key_env, never in the project file"
        )
    options = {k: v for k, v in spec.items() if k != "backend"}
    unknown = set(options) - _SPEC_KEYS[backend]
    if unknown:
        raise ValueError(
            f"teacher backend {backend!r} does not take {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS[backend])}"
        )
    if backend == "procedural":
        return ProceduralTeacher(**options)
    for required in ("license",) + (("model_dir",) if backend == "transformers" else ("base_url", "model")):
        if required not in options:
            raise ValueError(f"teacher backend {backend!r} needs {required!r} in the project file")
    if backend == "transformers":
        model_dir = Path(options.pop("model_dir"))
        if base_dir is not None and not model_dir.is_absolute():
            model_dir = base_dir / model_dir
        return TransformersTeacher(model_dir, **options)
    env_name = options.pop("api_key_env", None)
    if api_key is None and env_name:
        api_key = os.environ.get(env_name)
        if not api_key:
            raise ValueError(f"environment variable {env_name} (api_key_env of the teacher) is not set")
    return OpenAICompatibleTeacher(options.pop("base_url"), options.pop("model"), api_key, **options)
