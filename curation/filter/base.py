"""The two base classes of the filtering stage, and the registry their subclasses join by being defined.

Modelled on DataTrove's pipeline steps: the base owns everything that is the same for every step —
its name, its cost, counting what it saw, rejected or edited and how long it took, naming itself
and the row when it fails, and writing the rejection record or the edit — so a subclass is only
its decision.

* A **filter** subclasses :class:`Filter`, declares ``name`` and ``cost`` (filters run cheapest
  first) as class attributes and its parameters as dataclass fields, and implements
  ``decide(row)``: ``None`` keeps the row, a reason (or ``(reason, measured value)``) drops it.
* A **cleaner** subclasses :class:`Cleaner`, declares ``name`` and implements
  ``clean_text(text) -> (new_text, description | None)``; the base applies it to every text of
  the row (:func:`curation.core.texts.text_fields`) and records one :class:`Edit` per changed
  field. A cleaner that needs the whole row overrides ``clean(row)`` instead.

``default = True`` puts a step in the chain when the project file does not mention it. Defining
the class registers it under its ``name`` (:data:`FILTERS`, :data:`CLEANERS`); this module
imports no filter module, and ``curation/filter/__init__.py`` imports every module of the package,
so a step in a new module registers without a list to update anywhere. A whole filter::

    @dataclass(frozen=True)
    class NeedsQuestion(Filter):
        'Prompts that are not questions.'      # its line in docs/filters.md

        name = "needs_question"                # in the project file: filters: {needs_question: {marker: "?"}}
        cost = 0.1
        marker: str = "?"

        def decide(self, row: Row) -> Verdict:
            return None if self.marker in prompt_text(row) else "not a question"
"""

from __future__ import annotations

import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from curation.core.markdown import REGENERATE_REFERENCES, generated_notice, table_cell
from curation.core.schema import Row
from curation.core.texts import text_fields, with_texts

RejectionValue = float | str | None
"""What a filter measured (a count, a share, the matched text), stored as text in ``filter_rejections``."""

Verdict = str | tuple[str, RejectionValue] | None
"""A filter's decision: ``None`` keeps the row; a reason, or a reason and the measured value, drops it."""


@dataclasses.dataclass(frozen=True)
class Rejection:
    """Why a filter dropped a row: stored as one ``filter_rejections`` record."""

    filter: str
    reason: str
    value: RejectionValue = None


@dataclasses.dataclass(frozen=True)
class Edit:
    """What a cleaner changed in one field (``where`` is e.g. ``messages[1].content``)."""

    cleaner: str
    where: str
    description: str


@dataclasses.dataclass
class FilterStats:
    """Per-step counts: ``seen`` rows reached the step (earlier filters passed them)."""

    rows_in: int = 0
    rows_kept: int = 0
    rows_edited: int = 0
    seen: dict[str, int] = dataclasses.field(default_factory=dict)
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    edits: dict[str, int] = dataclasses.field(default_factory=dict)
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


class FilterError(RuntimeError):
    """A filter or cleaner failed on a row; the message names both."""


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

FILTERS: dict[str, type[Filter]] = {}
"""Every filter class by name, in the order they were defined."""
CLEANERS: dict[str, type[Cleaner]] = {}
"""Every cleaner class by name, in the order they were defined (the order default cleaners run in)."""

_Step = TypeVar("_Step", bound=type)


def _register(registry: dict[str, _Step], kind: str, cls: _Step) -> None:
    name = cls.__dict__["name"]
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind} {cls.__qualname__}: name must be a non-empty string, got {name!r}")
    if not (cls.__doc__ or "").strip():
        raise TypeError(
            f"{kind} {name!r} ({cls.__qualname__}) needs a docstring: its first line is its entry in docs/filters.md"
        )
    existing = registry.get(name)
    # The same class defined again (a module reloaded, a test re-run) replaces itself; another class may
    # not take a name already in use, or the project file's meaning would depend on import order.
    if existing is not None and (existing.__module__, existing.__qualname__) != (cls.__module__, cls.__qualname__):
        raise TypeError(
            f"{kind} name {name!r} of {cls.__module__}.{cls.__qualname__} is already taken by "
            f"{existing.__module__}.{existing.__qualname__}; choose another name"
        )
    registry[name] = cls


def _timed_call(stats: FilterStats, name: str, timed: bool, kind: str, row: Row, call: Callable[[], Any]) -> Any:
    start = time.perf_counter() if timed else 0.0
    try:
        result = call()
    except Exception as error:
        raise FilterError(
            f"{kind} {name!r} failed on row {row.get('row_id')}: {type(error).__name__}: {error}. "
            f"Fix the row upstream or switch the {kind} off in the project file's filters section."
        ) from error
    if timed:
        stats.seconds[name] = stats.seconds.get(name, 0.0) + time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


class Filter(ABC):
    """Base of every filter: subclasses declare ``name`` and ``cost`` and implement :meth:`decide`."""

    name: ClassVar[str]
    cost: ClassVar[float]
    """Relative cost per row; without ``filters.order`` the chain runs cheapest first."""
    default: ClassVar[bool] = False
    """On when the project file does not mention it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a concrete filter; intermediate bases declare no name
            if not isinstance(getattr(cls, "cost", None), int | float):
                raise TypeError(
                    f"filter {cls.__dict__['name']!r} ({cls.__qualname__}) must declare a numeric "
                    "cost (filters run cheapest first)"
                )
            _register(FILTERS, "filter", cls)

    @abstractmethod
    def decide(self, row: Row) -> Verdict:
        """``None`` to keep ``row``; a reason, or ``(reason, measured value)``, to drop it."""

    def __call__(self, row: Row) -> Rejection | None:
        verdict = self.decide(row)
        if verdict is None:
            return None
        if isinstance(verdict, str):
            return Rejection(self.name, verdict)
        reason, value = verdict
        return Rejection(self.name, reason, value)

    def zero_counts(self, stats: FilterStats) -> None:
        """Enter this filter in ``stats`` with zero counts, so one that never fires is still listed."""
        stats.seen.setdefault(self.name, 0)
        stats.rejected.setdefault(self.name, 0)

    def run(self, row: Row, stats: FilterStats, *, timed: bool = False) -> Rejection | None:
        """Decide on ``row`` and count it in ``stats``; a failure is a :class:`FilterError` naming both."""
        stats.seen[self.name] = stats.seen.get(self.name, 0) + 1
        rejection: Rejection | None = _timed_call(stats, self.name, timed, "filter", row, lambda: self(row))
        if rejection is not None:
            stats.rejected[self.name] = stats.rejected.get(self.name, 0) + 1
        return rejection


# ---------------------------------------------------------------------------------------------
# Cleaners
# ---------------------------------------------------------------------------------------------


class Cleaner:
    """Base of every cleaner: subclasses declare ``name`` and implement :meth:`clean_text` (or :meth:`clean`).

    A cleaner never mutates its input and returns the same row object when nothing changed, so the
    runner tells edited rows apart cheaply.
    """

    name: ClassVar[str]
    default: ClassVar[bool] = False
    """On when the project file does not mention it; default cleaners run in definition order,
    ``whitespace`` last."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            if cls.clean_text is Cleaner.clean_text and cls.clean is Cleaner.clean:
                raise TypeError(
                    f"cleaner {cls.__dict__['name']!r} ({cls.__qualname__}) must implement "
                    "clean_text(text) or clean(row)"
                )
            _register(CLEANERS, "cleaner", cls)

    def clean_text(self, text: str) -> tuple[str, str | None]:
        """The edited text and a description of the change (``None``: unchanged)."""
        raise NotImplementedError(f"cleaner {self.name!r} implements neither clean_text nor clean")

    def clean(self, row: Row) -> tuple[Row, list[Edit]]:
        """:meth:`clean_text` applied to every text of ``row``; only what changed is copied."""
        replacements: dict[tuple[str, int | None], str] = {}
        edits: list[Edit] = []
        for text_field in text_fields(row):
            new_text, description = self.clean_text(text_field.text)
            if description is None or new_text == text_field.text:
                continue
            replacements[text_field.key] = new_text
            edits.append(Edit(self.name, text_field.where, description))
        return with_texts(row, replacements), edits

    def __call__(self, row: Row) -> tuple[Row, list[Edit]]:
        return self.clean(row)

    def zero_counts(self, stats: FilterStats) -> None:
        """Enter this cleaner in ``stats`` with zero counts, so one that never edits is still listed."""
        stats.seen.setdefault(self.name, 0)
        stats.edits.setdefault(self.name, 0)

    def run(self, row: Row, stats: FilterStats, *, timed: bool = False) -> tuple[Row, list[Edit]]:
        """Clean ``row`` and count it in ``stats``; a failure is a :class:`FilterError` naming both."""
        cleaned: tuple[Row, list[Edit]] = _timed_call(stats, self.name, timed, "cleaner", row, lambda: self(row))
        stats.seen[self.name] = stats.seen.get(self.name, 0) + 1
        if cleaned[1]:
            stats.edits[self.name] = stats.edits.get(self.name, 0) + len(cleaned[1])
        return cleaned


# ---------------------------------------------------------------------------------------------
# Reference documentation, generated from the registry
# ---------------------------------------------------------------------------------------------


def _first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0].replace("``", "`")


def _short(value: Any, width: int = 60) -> str:
    # Long default lists (regular expressions, token lists) are counted, not quoted: the class has them.
    text = f"{len(value)} items" if isinstance(value, list | tuple) and len(value) > 3 else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _parameters(cls: type) -> str:
    if not dataclasses.is_dataclass(cls):
        return "—"
    shown = []
    for parameter in dataclasses.fields(cls):
        if not parameter.init:
            continue
        if parameter.default is not dataclasses.MISSING:
            default = _short(parameter.default)
        elif parameter.default_factory is not dataclasses.MISSING:
            default = _short(parameter.default_factory())
        else:
            default = "required"
        shown.append(f"`{parameter.name}` = `{default}`")
    return "<br>".join(shown) or "—"


def _name_and_source(name: str, cls: type) -> str:
    """The step's name and a link to its class, relative to docs/ (where the reference lives)."""
    module = cls.__module__
    return f"`{name}`<br>[`{module.rsplit('.', 1)[-1]}.{cls.__qualname__}`](../{module.replace('.', '/')}.py)"


def reference_markdown() -> str:
    """docs/filters.md: every registered filter and cleaner with its default, cost, parameters and purpose."""
    lines = [
        "# Filters and cleaners",
        "",
        generated_notice("the filter and cleaner classes in curation/filter"),
        "",
        "Each is set by name in the project file's `filters:` section (cleaners under `filters: cleaners:`):",
        "a mapping of parameters, `true` for the defaults, or `false` to switch a default one off.",
        "`defaults: false` starts from nothing; `order: [...]` runs the named ones first.",
        "To add one, subclass `Filter` or `Cleaner` (see `curation/filter/base.py`) and run",
        f"`{REGENERATE_REFERENCES}`.",
        "",
        "## Filters",
        "",
        "Cheapest first, the order they run in unless `filters.order` says otherwise. The first filter to",
        "reject a row records why in `filter_rejections`.",
        "",
        "| filter | default | cost | parameters (defaults) | drops |",
        "|---|---|---:|---|---|",
    ]
    for name, filter_class in sorted(FILTERS.items(), key=lambda item: (item[1].cost, item[0])):
        lines.append(
            f"| {_name_and_source(name, filter_class)} | {'on' if filter_class.default else 'off'} | "
            f"{filter_class.cost:g} | {table_cell(_parameters(filter_class))} | "
            f"{table_cell(_first_line(filter_class))} |"
        )
    lines += [
        "",
        "## Cleaners",
        "",
        "In the order they run (`whitespace` last); every edit is a lineage edge of the `filtered` asset.",
        "",
        "| cleaner | default | parameters (defaults) | edits |",
        "|---|---|---|---|",
    ]
    for name in sorted(CLEANERS, key=lambda name: name == "whitespace"):
        cleaner_class = CLEANERS[name]
        lines.append(
            f"| {_name_and_source(name, cleaner_class)} | {'on' if cleaner_class.default else 'off'} | "
            f"{table_cell(_parameters(cleaner_class))} | {table_cell(_first_line(cleaner_class))} |"
        )
    return "\n".join(lines) + "\n"


def default_names(registry: Mapping[str, type[Filter]] | Mapping[str, type[Cleaner]]) -> list[str]:
    """Names of the steps that are on by default, in definition order."""
    return [name for name, step in registry.items() if step.default]
