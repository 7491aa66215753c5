"""What each licence allows, and whether a row may go into a dataset for an intended use.

The table covers the licences common in instruction-tuning data. Anything else can be declared in
the project file's ``policy.licenses`` section (same fields), which extends or overrides this one;
an undeclared licence is treated as unknown, and unknown never passes a commercial build.
Obligations follow the licence texts (SPDX list, creativecommons.org deeds).

A row's ``license`` is an SPDX licence *expression*: one id for a source row, and for a row derived from
several inputs (parents, a problem set, a teacher) the conjunction of all of them, e.g.
``CC-BY-NC-4.0 AND CC-BY-SA-4.0``: a derived row owes every obligation of every input, so no licence is ever
dropped in favour of a "stricter" one (share-alike and non-commercial are different obligations, and two
attribution licences owe credit to two parties). :func:`combine` writes the canonical form (ids deduplicated
and sorted, so the same set of inputs always gives the same string, and the data version with it); every
policy decision (:meth:`LicensePolicy.allows`, the report's obligations) evaluates every id of it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from license_expression import ExpressionError, LicenseExpression, LicenseSymbol, get_spdx_licensing

INTENDED_USES: tuple[str, ...] = ("research", "commercial")


@dataclass(frozen=True)
class LicenseTerms:
    spdx: str
    commercial: bool
    training: bool = True
    attribution: bool = False
    share_alike: bool = False
    note: str = ""


_BUILTIN: tuple[LicenseTerms, ...] = (
    LicenseTerms("CC0-1.0", commercial=True),
    LicenseTerms("Unlicense", commercial=True),
    LicenseTerms("MIT", commercial=True, attribution=True),
    LicenseTerms("BSD-2-Clause", commercial=True, attribution=True),
    LicenseTerms("BSD-3-Clause", commercial=True, attribution=True),
    LicenseTerms("Apache-2.0", commercial=True, attribution=True),
    LicenseTerms("CC-BY-4.0", commercial=True, attribution=True),
    LicenseTerms("CC-BY-3.0", commercial=True, attribution=True),
    LicenseTerms("CC-BY-SA-4.0", commercial=True, attribution=True, share_alike=True),
    LicenseTerms("CC-BY-SA-3.0", commercial=True, attribution=True, share_alike=True),
    LicenseTerms("ODC-By-1.0", commercial=True, attribution=True),
    LicenseTerms("GPL-3.0-only", commercial=True, attribution=True, share_alike=True),
    LicenseTerms("CC-BY-NC-4.0", commercial=False, attribution=True, note="non-commercial"),
    LicenseTerms("CC-BY-NC-SA-4.0", commercial=False, attribution=True, share_alike=True, note="non-commercial"),
    LicenseTerms("CC-BY-NC-3.0", commercial=False, attribution=True, note="non-commercial"),
    LicenseTerms("CC-BY-ND-4.0", commercial=True, training=False, attribution=True, note="no derivatives"),
)


# The SPDX licence list and expression grammar (license-expression, the library of the SPDX tooling and
# ScanCode): ids are matched case-insensitively and rendered in their SPDX spelling.
_SPDX = get_spdx_licensing()


@functools.lru_cache(maxsize=4096)
def _parse(expression: str) -> LicenseExpression | None:
    """The parsed expression, or None for text that is no expression at all (e.g. unbalanced brackets):
    such a licence is then one opaque, unknown id. Cached: a table holds a few distinct licences."""
    try:
        return _SPDX.parse(expression, validate=False, simple=False)
    except ExpressionError:
        return None


def license_ids(expression: str | None) -> tuple[str, ...]:
    """Every licence id of ``expression``, deduplicated and sorted; () when missing. An exception
    (``Apache-2.0 WITH LLVM-exception``) is not a licence of its own: its licence is listed."""
    if not expression or not expression.strip():
        return ()
    parsed = _parse(expression)
    if parsed is None:
        return (expression.strip(),)
    symbols = _SPDX.license_symbols(parsed, unique=True, decompose=False)
    return tuple(sorted({str(getattr(symbol, "license_symbol", symbol).key) for symbol in symbols}))


def is_spdx_id(license_id: str) -> bool:
    """Whether ``license_id`` is on the SPDX licence or exception list (ScanCode's own LicenseRef- names,
    which the library also knows, are not SPDX: they must be declared like any other)."""
    symbol = _SPDX.known_symbols.get(license_id)
    return symbol is not None and not license_id.startswith("LicenseRef-")


def combine(licenses: Iterable[str | None]) -> str | None:
    """The licence of a row made from inputs under ``licenses``: their conjunction, in canonical form
    (ids deduplicated and sorted; a choice ``A OR B`` kept as one operand). None when no input has one.

    ``combine(["CC-BY-SA-4.0", "CC-BY-NC-4.0"]) == "CC-BY-NC-4.0 AND CC-BY-SA-4.0"``,
    ``combine(["MIT", "Apache-2.0", "MIT"]) == "Apache-2.0 AND MIT"``.
    """
    operands: set[str] = set()
    for license_ in licenses:
        if not license_ or not license_.strip():
            continue
        parsed = _parse(license_)
        if parsed is None:
            operands.add(license_.strip())
        elif isinstance(parsed, _SPDX.AND):
            operands.update(_operand(arg) for arg in parsed.flatten().args)
        else:
            operands.add(_operand(parsed))
    return " AND ".join(sorted(operands)) or None


def _operand(expression: Any) -> str:
    """One operand of an AND, rendered canonically (a nested choice in brackets)."""
    if isinstance(expression, LicenseSymbol) or not isinstance(expression, _SPDX.OR):
        return str(expression.simplify() if hasattr(expression, "simplify") else expression)
    return f"({expression.simplify()})"


@dataclass(frozen=True)
class LicensePolicy:
    """The licence table in force: built-ins plus the project file's additions."""

    terms: Mapping[str, LicenseTerms] = field(default_factory=lambda: {t.spdx: t for t in _BUILTIN})

    @classmethod
    def with_overrides(cls, overrides: Mapping[str, Mapping[str, object]] | None) -> LicensePolicy:
        table = {t.spdx: t for t in _BUILTIN}
        for spdx, fields in (overrides or {}).items():
            table[spdx] = LicenseTerms(spdx=spdx, **dict(fields))  # type: ignore[arg-type]
        return cls(terms=table)

    def lookup(self, spdx: str | None) -> LicenseTerms | None:
        """The terms of a licence id, or of a conjunction of known ids (``A AND B``: allowed what both allow,
        owing what either owes, so a caller reading one set of terms per row judges the whole set). None when
        an id is unknown, or for a choice (``A OR B``: judge it with :meth:`refusals`)."""
        if not spdx:
            return None
        found = self.terms.get(spdx)
        if found is not None:
            return found
        parsed = _parse(spdx)
        if parsed is None:
            return None
        args = parsed.flatten().args if isinstance(parsed, _SPDX.AND) else (parsed,)
        if any(not isinstance(getattr(a, "license_symbol", a), LicenseSymbol) for a in args):
            return None  # a choice inside: no single set of terms
        parts = [self.terms.get(str(getattr(a, "license_symbol", a).key)) for a in args]
        if any(p is None for p in parts):
            return None
        known = [p for p in parts if p is not None]
        if len(known) == 1:
            return known[0]
        return LicenseTerms(
            spdx=combine([spdx]) or spdx,
            commercial=all(t.commercial for t in known),
            training=all(t.training for t in known),
            attribution=any(t.attribution for t in known),
            share_alike=any(t.share_alike for t in known),
            note="; ".join(dict.fromkeys(f"{t.spdx}: {t.note}" for t in known if t.note)),
        )

    def terms_of(self, expression: str | None) -> dict[str, LicenseTerms | None]:
        """Every id of ``expression`` with its terms (None: unknown)."""
        return {license_id: self.lookup(license_id) for license_id in license_ids(expression)}

    def is_known(self, license_id: str) -> bool:
        """Declared in the table (built-in or ``policy.licenses``) or on the SPDX list."""
        return license_id in self.terms or is_spdx_id(license_id)

    def unknown_ids(self, expression: str | None) -> list[str]:
        """Ids of ``expression`` whose terms the table does not give (the policy cannot judge them)."""
        return [license_id for license_id, terms in self.terms_of(expression).items() if terms is None]

    def refusals(self, expression: str | None, intended_use: str, *, unknown: bool = True) -> list[str]:
        """Every reason rows under ``expression`` may not be used for ``intended_use`` (empty: allowed).
        All ids of a conjunction are judged, each refusal named; a choice (``A OR B``) is refused only when
        every option is. ``unknown=False`` leaves out the refusals of unknown ids (for a caller that reports
        those on their own)."""
        if intended_use not in INTENDED_USES:
            raise ValueError(f"intended_use must be one of {INTENDED_USES}, got {intended_use!r}")
        if not expression or not expression.strip():
            return self._refusals_of_id(None, intended_use, unknown)
        parsed = _parse(expression)
        if parsed is None:
            return self._refusals_of_id(expression.strip(), intended_use, unknown)
        return self._refusals_of(parsed, intended_use, unknown)

    def _refusals_of(self, expression: Any, intended_use: str, unknown: bool) -> list[str]:
        if isinstance(expression, _SPDX.AND):
            reasons = [why for arg in expression.args for why in self._refusals_of(arg, intended_use, unknown)]
            return list(dict.fromkeys(reasons))
        if isinstance(expression, _SPDX.OR):
            options = [self._refusals_of(arg, intended_use, unknown) for arg in expression.args]
            if any(not reasons for reasons in options):
                return []
            return list(dict.fromkeys(why for reasons in options for why in reasons))
        # A symbol, or "id WITH exception": the exception only widens the licence's grant.
        symbol = getattr(expression, "license_symbol", expression)
        return self._refusals_of_id(str(getattr(symbol, "key", symbol)), intended_use, unknown)

    def _refusals_of_id(self, spdx: str | None, intended_use: str, unknown: bool = True) -> list[str]:
        terms = self.lookup(spdx)
        if terms is None:
            if intended_use == "research" or not unknown:
                return []
            return [f"licence {spdx or 'missing'} is unknown; declare it under policy.licenses"]
        if not terms.training:
            return [f"{spdx} does not allow derivative works ({terms.note or 'no training'})"]
        if intended_use == "commercial" and not terms.commercial:
            return [f"{spdx} is {terms.note or 'non-commercial'}: not allowed in a commercial build"]
        return []

    def allows(self, spdx: str | None, intended_use: str) -> tuple[bool, str]:
        """Whether rows under the licence expression ``spdx`` may be used for ``intended_use``, and why not
        (every refusal, joined with "; ")."""
        reasons = self.refusals(spdx, intended_use)
        return not reasons, "; ".join(reasons)

    def obligations(self, expression: str | None) -> dict[str, bool]:
        """Which obligations any id of ``expression`` carries (a conjunction owes them all)."""
        terms = [t for t in self.terms_of(expression).values() if t is not None]
        return {
            "attribution": any(t.attribution for t in terms),
            "share_alike": any(t.share_alike for t in terms),
            "non_commercial": any(not t.commercial for t in terms),
        }

    def permissiveness_rank(self, spdx: str | None) -> int:
        """Higher is more permissive; used to pick which duplicate to keep. Unknown is 0; an expression
        ranks as its least permissive id."""
        ids = license_ids(spdx)
        if len(ids) > 1:
            return min(self.permissiveness_rank(license_id) for license_id in ids)
        terms = self.lookup(spdx)
        if terms is None:
            return 0
        rank = 1
        if terms.training:
            rank += 1
        if terms.commercial:
            rank += 4
        if not terms.share_alike:
            rank += 2
        if not terms.attribution:
            rank += 1
        return rank


DEFAULT_POLICY = LicensePolicy()


def permissiveness_rank(spdx: str | None) -> int:
    """:meth:`LicensePolicy.permissiveness_rank` under the built-in table."""
    return DEFAULT_POLICY.permissiveness_rank(spdx)


def undeclared_license_problems(config: Any) -> list[str]:
    """One message per licence a project file uses that is neither an SPDX id nor declared under
    ``policy.licenses``: each names where it is used and how to declare it. ``config`` is a
    :class:`curation.core.config.ProjectConfig` (sources, synthesis methods, ``policy.teachers``); an
    undeclared licence would make every row under it "unknown" with every check green, so the project
    file is refused instead."""
    policy = LicensePolicy.with_overrides(config.policy.licenses)
    used: list[tuple[str, str | None]] = [(f"source {s.name!r}", s.license) for s in config.sources]
    used += [(f"policy.teachers.{model}", entry.license) for model, entry in (config.policy.teachers or {}).items()]
    for name, settings in (config.synthesis.methods or {}).items():
        license_ = settings.get("license") if isinstance(settings, Mapping) else getattr(settings, "license", None)
        if isinstance(license_, str):
            used.append((f"synthesis.methods.{name}", license_))
    teacher = config.synthesis.teacher
    teacher_license = teacher.get("license") if isinstance(teacher, Mapping) else getattr(teacher, "license", None)
    if isinstance(teacher_license, str):
        used.append(("synthesis.teacher", teacher_license))
    return [
        f"{where}: licence {license_id!r} is not an SPDX id (https://spdx.org/licenses/) and is not declared "
        f"under policy.licenses; use its SPDX id, or declare it, e.g. policy: {{licenses: {{{license_id!r}: "
        "{commercial: false, attribution: true}}}}"
        for where, expression in used
        for license_id in license_ids(expression)
        if not policy.is_known(license_id)
    ]
