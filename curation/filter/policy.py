"""Policy filters: a blocklist of terms and patterns, and the licence gate.

Both are opt-in: which words are unacceptable and what a build is for are the user's decisions.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from curation.core.licenses import INTENDED_USES, LicensePolicy
from curation.core.schema import Row
from curation.core.texts import all_text, prompt_text, response_text
from curation.filter.base import Filter, Verdict
from curation.filter.batch import BatchTexts
from curation.filter.pii import find_pii, pii_candidates
from curation.filter.prefilter import any_of, wider_re2
from curation.synth.terms import ModelTerms, parse_model_registry, row_refusals


def _read_terms(path: str) -> list[str]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"filter blocklist: terms_file {str(file)!r} does not exist; give a text file with "
            "one term per line (lines starting with # are comments)"
        )
    lines = file.read_text(encoding="utf-8").splitlines()
    return [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]


@dataclass(frozen=True)
class Blocklist(Filter):
    """Drop rows containing a blocked term (whole words, case-insensitive) or matching a pattern."""

    name = "blocklist"
    cost = 2.0
    terms: Sequence[str] = ()
    terms_file: str | None = None
    patterns: Sequence[str] = ()
    where: str = "all"  # all, prompt or response
    case_sensitive: bool = False

    _term_re: re.Pattern[str] | None = field(default=None, init=False, repr=False)
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), init=False, repr=False)
    _screen: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.where not in ("all", "prompt", "response"):
            raise ValueError(f"filter blocklist: where must be all, prompt or response, got {self.where!r}")
        terms = list(self.terms) + (_read_terms(self.terms_file) if self.terms_file else [])
        if not terms and not self.patterns:
            raise ValueError("filter blocklist: give terms (a list), terms_file (one term per line) or patterns")
        flags = 0 if self.case_sensitive else re.IGNORECASE
        if terms:
            # Longest first so "bad word" wins over "bad"; \b keeps "class" from matching "ass".
            # Any run of whitespace between the words of a multi-word term ("credit  card").
            alternation = "|".join(
                r"\s+".join(re.escape(w) for w in t.split()) for t in sorted(set(terms), key=len, reverse=True)
            )
            object.__setattr__(self, "_term_re", re.compile(rf"(?<!\w)(?:{alternation})(?!\w)", flags))
        compiled = []
        for pattern in self.patterns:
            try:
                compiled.append(re.compile(pattern, flags))
            except re.error as error:
                raise ValueError(
                    f"filter blocklist: pattern {pattern!r} is not a valid regular expression: {error}"
                ) from error
        object.__setattr__(self, "_patterns", tuple(compiled))
        terms_re = (self._term_re,) if self._term_re is not None else ()
        object.__setattr__(self, "_screen", any_of(wider_re2(pattern) for pattern in (*terms_re, *self._patterns)))

    def _text(self, row: Row) -> str:
        if self.where == "prompt":
            return prompt_text(row)
        if self.where == "response":
            return response_text(row)
        return all_text(row)

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        return self.decide_screened(rows, [[self._text(row)] for row in rows], self._screen)

    def decide(self, row: Row) -> Verdict:
        text = self._text(row)
        if self._term_re is not None:
            match = self._term_re.search(text)
            if match:
                return ("blocked term", match.group(0))
        for pattern in self._patterns:
            match = pattern.search(text)
            if match:
                return (f"blocked pattern {pattern.pattern!r}", match.group(0)[:80])
        return None


@dataclass(frozen=True)
class LicenseFilter(Filter):
    """Drop rows whose licence or model terms forbid the build's intended use, naming every reason.

    Judged: every id of the row's licence expression (policy in curation.core.licenses), the terms recorded
    in the row, and the terms of the model that wrote an ingested model-made row (``policy.teachers``; an
    undeclared one is unknown terms, refused by a commercial build)."""

    name = "license"
    cost = 0.05
    intended_use: str = "research"
    licenses: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    teachers: Mapping[str, Any] = field(default_factory=dict)  # policy.teachers: {model: {license, terms, forbids}}

    _policy: LicensePolicy = field(init=False, repr=False)
    _registry: Mapping[str, ModelTerms] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.intended_use not in INTENDED_USES:
            raise ValueError(f"filter license: intended_use must be one of {INTENDED_USES}, got {self.intended_use!r}")
        object.__setattr__(self, "_policy", LicensePolicy.with_overrides(self.licenses))
        object.__setattr__(self, "_registry", parse_model_registry(self.teachers))

    @staticmethod
    def _key(row: Row) -> tuple[Any, ...]:
        """What the verdict depends on; a batch holds a few distinct ones."""
        made_by = row.get("generator") if row.get("origin") not in (None, "human") else None
        carried = (row.get("extra") or {}).get("terms") or {}
        return (row.get("license"), made_by, tuple(carried.get("forbids") or ()), tuple(carried.get("models") or ()))

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        by_key: dict[tuple[Any, ...], Verdict] = {}
        verdicts = []
        for row in rows:
            key = self._key(row)
            if key not in by_key:
                by_key[key] = self.decide(row)
            verdicts.append(by_key[key])
        return verdicts

    def decide(self, row: Row) -> Verdict:
        reasons = row_refusals(row, self.intended_use, self._policy, self._registry)
        if not reasons:
            return None
        return ("; ".join(reasons), row.get("license"))


@dataclass(frozen=True)
class PiiFilter(Filter):
    """Drop rows that contain the given kinds of personal data or secrets (instead of redacting them)."""

    name = "pii"
    cost = 2.0
    entities: tuple[str, ...] = ("PRIVATE_KEY",)

    def decide(self, row: Row) -> Verdict:
        return self._decide(all_text(row), self.entities)

    def _decide(self, text: str, entities: Collection[str]) -> Verdict:
        matches = find_pii(text, entities)
        if not matches:
            return None
        return (f"contains {matches[0].entity} (policy: drop rows with {', '.join(self.entities)})", matches[0].entity)

    def decide_batch(self, rows: Sequence[Row], fields: BatchTexts) -> list[Verdict]:
        # Screened first: only the rows that may hold one of the entities are searched.
        texts = ["\n".join(fields.row_texts(position)) for position in range(len(rows))]  # all_text of each row
        candidates = pii_candidates(texts, self.entities)
        return [self._decide(text, found) if found else None for text, found in zip(texts, candidates, strict=True)]
