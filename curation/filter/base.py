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

The runner hands a step a whole batch of rows with their texts walked once for all steps
(``run(rows, fields, stats)``; ``fields`` is a :class:`curation.filter.batch.BatchTexts`: the texts
flat and as one Arrow array, each screen run once, per-row values such as the prompt derived once). By
default a filter decides row by row; a step that can do a batch more cheaply says so — a cleaner with
``screen()``, an RE2 pattern that every text it would change matches (:mod:`curation.filter.prefilter`),
a filter by overriding ``decide_batch`` (e.g. with :meth:`Filter.decide_rows` on the rows a screen
passes) — and must end exactly as ``decide``/``clean`` row by row.

``default = True`` puts a step in the chain when the project file does not mention it. Defining
the class registers it under its ``name`` (:data:`FILTERS`, :data:`CLEANERS`); this module
imports no module that defines a step, and ``curation/filter/__init__.py`` imports every module of
the package, so a step in a new module registers without a list to update anywhere. A whole filter::

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from curation.core.markdown import REGENERATE_REFERENCES, generated_notice, table_cell
from curation.core.schema import Row
from curation.core.texts import TextField, text_fields, with_texts
from curation.filter.batch import BatchTexts, Screen
from curation.filter.prefilter import passing_rows

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

    def add(self, other: FilterStats) -> None:
        """Add ``other``'s counts to these (the counts of one batch, made in a worker process)."""
        self.rows_in += other.rows_in
        self.rows_kept += other.rows_kept
        self.rows_edited += other.rows_edited
        for mine, theirs in (
            (self.seen, other.seen),
            (self.rejected, other.rejected),
            (self.edits, other.edits),
            (self.seconds, other.seconds),
        ):
            for name, value in theirs.items():
                mine[name] = mine.get(name, 0) + value  # type: ignore[assignment]


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


_Result = TypeVar("_Result")


def _run_step(
    step: Filter | Cleaner,
    kind: str,
    rows: Sequence[Row],
    fields: BatchTexts,
    stats: FilterStats,
    timed: bool,
    batch: Callable[[Sequence[Row], BatchTexts], _Result],
    single: Callable[[Row], object],
) -> _Result:
    """``batch(rows, fields)``, counted as ``rows`` seen by ``step`` (and timed); a failure is a
    :class:`FilterError` naming the step and the row, found by re-running the rows one by one."""
    start = time.perf_counter() if timed else 0.0
    try:
        results = batch(rows, fields)
    except Exception as error:
        culprit, cause = rows[0] if len(rows) == 1 else None, error
        if culprit is None:
            for row in rows:
                try:
                    single(row)
                except Exception as row_error:
                    culprit, cause = row, row_error
                    break
        where = f"row {culprit.get('row_id')}" if culprit is not None else f"a batch of {len(rows)} rows"
        raise FilterError(
            f"{kind} {step.name!r} failed on {where}: {type(cause).__name__}: {cause}. "
            f"Fix the row upstream or switch the {kind} off in the project file's filters section."
        ) from cause
    stats.seen[step.name] = stats.seen.get(step.name, 0) + len(rows)
    if timed:
        stats.seconds[step.name] = stats.seconds.get(step.name, 0.0) + time.perf_counter() - start
    return results


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

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        """:meth:`decide` on each row (``fields``: the batch's texts; ``fields[i]`` is row ``i``'s). A
        filter overrides it when a whole batch can be judged more cheaply (e.g. :meth:`decide_rows` on
        the rows a screen passes); the verdicts must be exactly those of :meth:`decide`."""
        return [self.decide(row) for row in rows]

    def decide_rows(self, rows: Sequence[Row], positions: Iterable[int]) -> list[Verdict]:
        """:meth:`decide` on the rows at ``positions``; the others are kept."""
        verdicts: list[Verdict] = [None] * len(rows)
        for position in positions:
            verdicts[position] = self.decide(rows[position])
        return verdicts

    def decide_screened(
        self, rows: Sequence[Row], texts: Sequence[Sequence[str]], pattern: str | None
    ) -> list[Verdict]:
        """:meth:`decide` on the rows one of whose ``texts`` the RE2 ``pattern`` matches
        (:mod:`curation.filter.prefilter`), all screened in one call; the others are kept. For a filter
        that can only reject a row when one of its texts matches ``pattern``."""
        return self.decide_rows(rows, passing_rows(texts, pattern))

    def screens(self) -> list[Screen]:
        """The screens :meth:`decide_batch` asks the batch for (:meth:`BatchTexts.screen`), so that the
        runner can have them run together (:meth:`BatchTexts.prefetch`): a hint, never a condition."""
        return []

    def __call__(self, row: Row) -> Rejection | None:
        return _rejection(self.name, self.decide(row))

    def zero_counts(self, stats: FilterStats) -> None:
        """Enter this filter in ``stats`` with zero counts, so one that never fires is still listed."""
        stats.seen.setdefault(self.name, 0)
        stats.rejected.setdefault(self.name, 0)

    def run(
        self, rows: Sequence[Row], fields: BatchTexts, stats: FilterStats, *, timed: bool = False
    ) -> list[Rejection | None]:
        """Decide on ``rows`` (``fields``: their texts) and count them in ``stats``; a failure is a
        :class:`FilterError` naming both."""
        verdicts = _run_step(self, "filter", rows, fields, stats, timed, self.decide_batch, self.decide)
        rejections: list[Rejection | None] = [None] * len(verdicts)
        found = 0
        if verdicts.count(None) < len(verdicts):  # most batches: no rejection at all, found in C
            for position, verdict in enumerate(verdicts):
                if verdict is not None:
                    rejections[position] = _rejection(self.name, verdict)
                    found += 1
        stats.rejected[self.name] = stats.rejected.get(self.name, 0) + found
        return rejections


def _rejection(name: str, verdict: Verdict) -> Rejection | None:
    if verdict is None:
        return None
    if isinstance(verdict, str):
        return Rejection(name, verdict)
    reason, value = verdict
    return Rejection(name, reason, value)


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
        return self.edit_texts(row, ((field, self.clean_text(field.text)) for field in text_fields(row)))

    def edit_texts(
        self, row: Row, cleaned: Iterable[tuple[TextField, tuple[str, str | None]]]
    ) -> tuple[Row, list[Edit]]:
        """``row`` with the new texts of ``cleaned`` (a field and what :meth:`clean_text` made of it) where
        they differ, and one :class:`Edit` for each; the fields not listed are left as they are."""
        replacements: dict[tuple[str, int | None], str] = {}
        edits: list[Edit] = []
        for text_field, (new_text, description) in cleaned:
            if description is None or new_text == text_field.text:
                continue
            replacements[text_field.key] = new_text
            edits.append(Edit(self.name, text_field.where, description))
        return with_texts(row, replacements), edits

    def screen(self) -> str | None:
        """An RE2 pattern that every text :meth:`clean_text` would change matches
        (:mod:`curation.filter.prefilter`); in a batch, the texts it does not match are not cleaned at
        all. ``None`` (the default): every text is."""
        return None

    def screens(self) -> list[Screen]:
        """The screens :meth:`clean_batch` asks the batch for (:meth:`Filter.screens`): :meth:`screen`."""
        screen = self.screen()
        return [] if screen is None else [Screen(screen)]

    def clean_batch(self, rows: Sequence[Row], fields: BatchTexts) -> dict[int, tuple[Row, list[Edit]]]:
        """What :meth:`clean` makes of the rows it changes, by position (``fields``: the batch's texts);
        for a cleaner of texts, only the texts its :meth:`screen` passes are cleaned. A cleaner overrides
        it where a batch can be done more cheaply still; the results must be exactly those of
        :meth:`clean` (a row left out is one :meth:`clean` returns as it is, without edits)."""
        if type(self).clean is not Cleaner.clean:
            changes = {}
            for position, row in enumerate(rows):
                new, edits = self.clean(row)
                if new is not row or edits:
                    changes[position] = (new, edits)
            return changes
        return self.clean_texts(rows, fields)

    def clean_texts(self, rows: Sequence[Row], fields: BatchTexts) -> dict[int, tuple[Row, list[Edit]]]:
        """What :meth:`Cleaner.clean` makes of the rows it changes, with only the texts of the whole
        batch that :meth:`screen` passes cleaned (:meth:`clean_screened`)."""
        screened = fields.passing(self.screen())
        cleaned = self.clean_screened([fields.texts[position] for position in screened])
        by_row: dict[int, list[tuple[TextField, tuple[str, str | None]]]] = {}
        starts, owner = fields.starts, fields.owner
        for position, result in zip(screened, cleaned, strict=True):
            if result[1] is None:  # unchanged: edit_texts would skip it
                continue
            row = int(owner[position])
            by_row.setdefault(row, []).append((fields[row][position - starts[row]], result))
        changes = {}
        for row, row_cleaned in by_row.items():
            new, edits = self.edit_texts(rows[row], row_cleaned)
            if edits:
                changes[row] = (new, edits)
        return changes

    def clean_screened(self, texts: Sequence[str]) -> list[tuple[str, str | None]]:
        """:meth:`clean_text` on each text the screen passed; overridden where those texts are better
        looked at together."""
        return [self.clean_text(text) for text in texts]

    def __call__(self, row: Row) -> tuple[Row, list[Edit]]:
        return self.clean(row)

    def zero_counts(self, stats: FilterStats) -> None:
        """Enter this cleaner in ``stats`` with zero counts, so one that never edits is still listed."""
        stats.seen.setdefault(self.name, 0)
        stats.edits.setdefault(self.name, 0)

    def run(
        self, rows: Sequence[Row], fields: BatchTexts, stats: FilterStats, *, timed: bool = False
    ) -> dict[int, tuple[Row, list[Edit]]]:
        """Clean ``rows`` (``fields``: their texts) and count them in ``stats``: the rows changed, by
        position, with their edits. A failure is a :class:`FilterError` naming the step and the row."""
        changes = _run_step(self, "cleaner", rows, fields, stats, timed, self.clean_batch, self.clean)
        stats.edits[self.name] = stats.edits.get(self.name, 0) + sum(len(edits) for _, edits in changes.values())
        return changes


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
