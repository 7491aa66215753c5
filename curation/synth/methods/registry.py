"""The registry of synthesis methods: one decorator registers a method with its settings model, and the
project file's validation (``synthesis.methods``), the run order, the seed selection (fed from DuckDB in
each method's draw order) and the reference in ``docs/synthesis-methods.md`` all read that one
registration."""

from __future__ import annotations

import heapq
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from curation.core.hashing import stable_unit
from curation.core.markdown import generated_notice, markdown_table
from curation.core.schema import Row, make_row_id
from curation.synth.methods.base import MethodSettings, SynthContext
from curation.synth.verify import Candidate

S = TypeVar("S", bound=MethodSettings)

# A method: (context, seed rows, its validated settings) -> candidates, not yet verified.
MethodFunction = Callable[[SynthContext, Sequence[Row], S], list[Candidate]]


@dataclass(frozen=True)
class SynthesisMethod(Generic[S]):
    """One registered method."""

    name: str  # its key under ``synthesis.methods``
    settings: type[S]
    generate: MethodFunction[S]
    order: int  # methods run in this order (then by name): a later duplicate of a row is the one rejected
    produces: str  # what its rows are, for the reference

    @property
    def description(self) -> list[str]:
        """The paragraphs of the method's docstring, each on one line."""
        doc = inspect.getdoc(self.generate) or ""
        return [" ".join(paragraph.split()) for paragraph in doc.split("\n\n") if paragraph.strip()]

    @property
    def summary(self) -> str:
        """The first paragraph of the method's docstring."""
        return (self.description or [""])[0]


REGISTRY: dict[str, SynthesisMethod[Any]] = {}


def synthesis_method(
    name: str, settings: type[S], *, order: int, produces: str
) -> Callable[[MethodFunction[S]], MethodFunction[S]]:
    """Register the decorated function as the synthesis method ``name`` with its settings model.

    ``order`` fixes when it runs among the others (candidate ids and rejections of duplicates depend on
    it, so existing methods keep theirs); ``produces`` says what its rows are, for the reference."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"synthesis method name must be snake_case, got {name!r}")

    def register(generate: MethodFunction[S]) -> MethodFunction[S]:
        if name in REGISTRY:
            raise ValueError(
                f"synthesis method {name!r} is registered twice "
                f"({REGISTRY[name].generate.__module__} and {generate.__module__})"
            )
        REGISTRY[name] = SynthesisMethod(name, settings, generate, order, produces)
        return generate

    return register


def registered_methods() -> list[SynthesisMethod[Any]]:
    """Every method, in run order."""
    return sorted(REGISTRY.values(), key=lambda m: (m.order, m.name))


def _settings_error(name: str, model: type[MethodSettings], error: ValidationError) -> ValueError:
    """A pydantic error as one message that names each key (``synthesis.methods.code.problems: …``)."""
    problems = error.errors()
    unknown = sorted(str(e["loc"][0]) for e in problems if e["type"] == "extra_forbidden")
    if unknown:
        return ValueError(f"synthesis.methods.{name}: unknown keys {unknown}; allowed: {sorted(model.model_fields)}")
    messages = []
    for problem in problems:
        where = ".".join(["synthesis", "methods", name, *(str(part) for part in problem["loc"])])
        message = problem["msg"].removeprefix("Value error, ")
        got = f" (got {problem['input']!r})" if problem["loc"] else ""  # a whole-model check: no one value
        messages.append(f"{where}: {message}{got}")
    return ValueError("; ".join(messages))


def validate_methods(methods: Mapping[str, Any]) -> dict[str, MethodSettings]:
    """The ``synthesis.methods`` mapping checked against each method's settings model: known names,
    known keys, valid values, a non-negative ``count``."""
    out: dict[str, MethodSettings] = {}
    for name, raw in methods.items():
        method = REGISTRY.get(name)
        if method is None:
            raise ValueError(
                f"synthesis.methods: unknown method {name!r}; choose from {[m.name for m in registered_methods()]}"
            )
        if raw is not None and not isinstance(raw, Mapping):
            raise ValueError(f"synthesis.methods.{name}: expected a mapping of settings (count, …), got {raw!r}")
        try:
            out[name] = method.settings.model_validate(dict(raw or {}))
        except ValidationError as error:
            raise _settings_error(name, method.settings, error) from None
    return out


def select_seeds(rows: Iterable[Row], methods: Mapping[str, Any], seed: int) -> list[Row]:
    """The seed rows the methods will pick, in one streaming pass: per method, the ``count`` eligible rows
    with the smallest seeded hash (what each method's own pick chooses), so memory is bounded by the
    counts, not by the size of ``filtered`` (docs/architecture.md §5)."""
    wanted = [
        (name, settings)
        for name, settings in validate_methods(methods).items()
        if settings.seed_salt is not None and settings.count > 0
    ]
    heaps: dict[str, list[tuple[float, str, Row]]] = {name: [] for name, _ in wanted}
    for row in rows:
        for name, settings in wanted:
            if not settings.eligible(row):
                continue
            # A max-heap on the key: the root is the worst of the rows kept so far.
            item = (-stable_unit(seed, settings.seed_salt or "", row["row_id"]), row["row_id"], row)
            if len(heaps[name]) < settings.count:
                heapq.heappush(heaps[name], item)
            elif item[0] > heaps[name][0][0]:
                heapq.heapreplace(heaps[name], item)
    chosen = {row_id: row for heap in heaps.values() for _, row_id, row in heap}
    return [chosen[k] for k in sorted(chosen)]


def generate_candidates(ctx: SynthContext, seeds: Sequence[Row], methods: Mapping[str, Any]) -> list[Candidate]:
    """Run every configured method with a ``count`` in run order; candidates are not yet verified."""
    plan = validate_methods(methods)
    out: list[Candidate] = []
    for method in registered_methods():
        settings = plan.get(method.name)
        if settings is not None and settings.count:
            out += method.generate(ctx, seeds, settings)
    return _unique(out)


def _unique(candidates: list[Candidate]) -> list[Candidate]:
    """One candidate per row id (two methods can derive the same row): later copies are rejected."""
    seen: set[str] = set()
    for c in candidates:
        if c.row["row_id"] in seen:
            c.failed = c.failed or "duplicate of another candidate with the same content id"
            c.row = {**c.row, "row_id": make_row_id(c.row["row_id"], "duplicate", c.method)}
        seen.add(c.row["row_id"])
    return candidates


# ---------------------------------------------------------------------------------------------
# The reference: docs/synthesis-methods.md
# ---------------------------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(value: Any) -> str:
    return "unset" if value is None else f"`{json.dumps(value)}`"


def methods_reference() -> str:
    """Every registered method as Markdown: what it makes, then its settings with types and defaults."""
    methods = registered_methods()
    lines = [
        "# Synthesis methods",
        "",
        generated_notice("the @synthesis_method registrations in curation/synth/methods"),
        "",
        "Each method is a key under `synthesis.methods` in the project file, with the settings below; "
        "it runs when its `count` is above 0, in the order of this table. Unknown methods, unknown keys "
        "and invalid values are refused with the key named. A method is one module in "
        "`curation/synth/methods/`, registered with `@synthesis_method`.",
        "",
        markdown_table(
            [{"method": f"`{m.name}`", "produces": m.produces, "what it does": m.summary} for m in methods],
            width=10_000,
        ),
    ]
    for m in methods:
        rows = [
            {
                "setting": f"`{key}`",
                "type": _type_name(field.annotation),
                "default": _default(field.get_default(call_default_factory=True)),
                "meaning": field.description or "",
            }
            for key, field in m.settings.model_fields.items()
        ]
        lines += ["", f"## `{m.name}`", ""]
        lines += [line for paragraph in m.description for line in (paragraph, "")]
        lines += [markdown_table(rows, width=10_000)]
    return "\n".join(lines) + "\n"
