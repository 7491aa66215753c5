"""What each licence allows, and whether a row may go into a dataset for an intended use.

The table covers the licences common in instruction-tuning data. Anything else can be declared in
the project file's ``policy.licenses`` section (same fields), which extends or overrides this one;
an undeclared licence is treated as unknown, and unknown never passes a commercial build.
Obligations follow the licence texts (SPDX list, creativecommons.org deeds).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

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
        if not spdx:
            return None
        return self.terms.get(spdx)

    def allows(self, spdx: str | None, intended_use: str) -> tuple[bool, str]:
        """Whether rows under ``spdx`` may be used for ``intended_use``, and why not."""
        if intended_use not in INTENDED_USES:
            raise ValueError(f"intended_use must be one of {INTENDED_USES}, got {intended_use!r}")
        terms = self.lookup(spdx)
        if terms is None:
            if intended_use == "research":
                return True, ""
            return False, f"licence {spdx or 'missing'} is unknown; declare it under policy.licenses"
        if not terms.training:
            return False, f"{spdx} does not allow derivative works ({terms.note or 'no training'})"
        if intended_use == "commercial" and not terms.commercial:
            return False, f"{spdx} is {terms.note or 'non-commercial'}: not allowed in a commercial build"
        return True, ""

    def permissiveness_rank(self, spdx: str | None) -> int:
        """Higher is more permissive; used to pick which duplicate to keep. Unknown is 0."""
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


def strictest(licenses: list[str | None], policy: LicensePolicy = DEFAULT_POLICY) -> str | None:
    """The least permissive of several licences (what a merged or derived row must carry)."""
    present = [lic for lic in licenses if lic]
    if not present:
        return None
    return min(present, key=lambda lic: (policy.permissiveness_rank(lic), lic))
