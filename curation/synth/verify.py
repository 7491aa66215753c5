"""Verification of synthetic candidates: every verdict is kept, accepted or not.

Each candidate row goes through, in order of cost:

1. the method's own hard checks (a computed answer that must match, unit tests that must pass);
2. heuristics — the same row filters the ``filtered`` stage uses (empty, length, broken encoding,
   echo of the input, degenerate repetition, refusal), so a synthetic row meets the bar a human one does;
3. off-topic detection against the topic the instruction was requested for;
4. an AI judge scoring 1–5 against a rubric (:mod:`curation.synth.judges`), with a warning when the
   judge is the teacher's own model;
5. batch statistics: outliers on simple statistics (modified z-score) and the same instruction
   answered differently.

The result of each step is stored in a ``verification`` dict that goes to ``provenance.verification``
(accepted rows) or ``synthetic_rejections.verification`` (rejected ones).
"""

from __future__ import annotations

import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from curation.core.normalize import normalize_text, words
from curation.core.provenance import TeacherInfo
from curation.core.schema import Row
from curation.core.texts import prompt_text, response_text
from curation.filter.base import Rejection
from curation.filter.quality import BrokenEncoding, Echo, EmptyFilter, LengthBounds, Refusal, Repetition
from curation.synth.judges import PairwiseVerdict, RubricVerdict, self_judging_warning

# Iglewicz & Hoaglin (1993), "How to Detect and Handle Outliers": |modified z| > 3.5 is an outlier.
OUTLIER_Z = 3.5
MIN_ROWS_FOR_OUTLIERS = 10  # below this the median and MAD say little
# A z-score alone flags tiny differences in a uniform batch; an outlier must also differ in substance:
# three times longer or shorter than the median, or 0.3 apart in the share of distinct words.
_MIN_DEVIATION = {"log_chars": math.log(3), "distinct_word_ratio": 0.3}
_RAW_CHARS = 500  # judge replies are stored shortened: enough to see why, not a transcript


class Judge(Protocol):
    """Scores (prompt, response) pairs 1–5; compares two responses to a prompt in both orders."""

    info: TeacherInfo

    def score(self, items: Sequence[tuple[str, str]]) -> list[RubricVerdict]: ...

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairwiseVerdict]: ...


@dataclass(frozen=True)
class VerifySettings:
    """Thresholds; the project file's ``synthesis.verify`` mapping sets them (see :meth:`from_mapping`)."""

    min_judge_score: int = 3  # the rubric's "partly correct … but useful" (curation.synth.judges.DEFAULT_RUBRIC)
    max_response_words: int = 4_000
    min_topic_overlap: float = 0.5  # share of the topic's content words found in the row
    outliers: bool = True
    on_conflict: str = "flag"  # flag: record only; keep_best: keep the best-scored answer of an instruction
    heuristics: tuple[str, ...] = ("empty", "length", "encoding", "echo", "repetition", "refusal")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> VerifySettings:
        values = dict(values or {})
        known = set(cls.__dataclass_fields__)
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"synthesis.verify: unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        if "heuristics" in values:
            values["heuristics"] = tuple(values["heuristics"])
            bad = set(values["heuristics"]) - set(_HEURISTICS)
            if bad:
                raise ValueError(
                    f"synthesis.verify.heuristics: unknown {sorted(bad)}; choose from {sorted(_HEURISTICS)}"
                )
        if values.get("on_conflict", "flag") not in ("flag", "keep_best"):
            raise ValueError(
                f"synthesis.verify.on_conflict must be 'flag' or 'keep_best', got {values['on_conflict']!r}"
            )
        if not 1 <= int(values.get("min_judge_score", 3)) <= 5:
            raise ValueError("synthesis.verify.min_judge_score must be within 1–5")
        return cls(**values)


@dataclass
class Candidate:
    """A synthetic row before verification, with what its method already checked."""

    row: Row
    method: str
    parent_ids: tuple[str, ...] = ()
    lineage: tuple[dict[str, str | None], ...] = ()
    generation_params: dict[str, Any] = field(default_factory=dict)
    prompt_template: str | None = None
    topic: str | None = None
    checks: dict[str, Any] = field(default_factory=dict)  # the method's own verdicts (tests, answers)
    failed: str | None = None  # set by the method when a hard check failed (the reason)
    skip_judge: bool = False  # the answer is checked exactly (computed, tested): a judge adds nothing
    generated: str = "response"  # what the teacher wrote: response, instruction or none (batch statistics)
    verification: dict[str, Any] = field(default_factory=dict)
    judge_score: float | None = None
    rejected: str | None = None

    @property
    def accepted(self) -> bool:
        return self.rejected is None


_HEURISTICS = {
    "empty": EmptyFilter,
    "length": LengthBounds,
    "encoding": BrokenEncoding,  # lost bytes and control characters: what a broken generation looks like
    "echo": Echo,
    # Degenerate loops only: Gopher's document rules are for text rows (see Repetition's docstring).
    "repetition": Repetition,
    "refusal": Refusal,
}


def _heuristic_filters(settings: VerifySettings) -> list[Any]:
    out = []
    for name in settings.heuristics:
        if name == "length":
            out.append(LengthBounds(max_response_words=settings.max_response_words))
        else:
            out.append(_HEURISTICS[name]())
    return out


def heuristic_verdicts(row: Row, filters: Sequence[Any]) -> tuple[dict[str, Any], Rejection | None]:
    """Every heuristic's verdict on ``row`` ("ok" or its reason) and the first rejection."""
    verdicts: dict[str, Any] = {}
    first: Rejection | None = None
    for check in filters:
        found = check(row)
        verdicts[check.name] = "ok" if found is None else f"{found.reason} ({found.value})"
        if found is not None and first is None:
            first = found
    return verdicts, first


_STOP = frozenset(
    (
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "how",
        "in",
        "into",
        "is",
        "it",
        "of",
        "on",
        "or",
        "the",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "with",
        "your",
        "you",
        "about",
    )
)


def _stem(word: str) -> str:
    # A 5-letter prefix matches "photosynthesis"/"photosynthetic", "cook"/"cooking" well enough
    # for a topic check; a full stemmer is no more accurate on short topic phrases.
    return word[:5]


def topic_overlap(topic: str, text: str) -> float:
    """Share of the topic's content words (prefix-stemmed) that occur in ``text``; 1.0 for an empty topic."""
    wanted = {_stem(w) for w in words(topic) if w not in _STOP and len(w) > 2}
    if not wanted:
        return 1.0
    present = {_stem(w) for w in words(text)}
    return len(wanted & present) / len(wanted)


def modified_z_scores(values: Sequence[float]) -> list[float]:
    """Iglewicz–Hoaglin modified z-scores: 0.6745 (x − median) / MAD. When more than half the values are
    equal (MAD 0), the usual fallback (x − median) / (1.253314 · mean absolute deviation); zeros when
    every value is the same."""
    if not values:
        return []
    median = statistics.median(values)
    mad = statistics.median(abs(v - median) for v in values)
    if mad > 0:
        return [0.6745 * (v - median) / mad for v in values]
    mean_ad = statistics.fmean(abs(v - median) for v in values)
    if mean_ad == 0:
        return [0.0] * len(values)
    return [(v - median) / (1.253314 * mean_ad) for v in values]


def _stats(row: Row, generated: str) -> dict[str, float]:
    text = prompt_text(row) if generated == "instruction" else response_text(row)
    tokens = words(text)
    return {
        "log_chars": math.log1p(len(text)),
        "log_words": math.log1p(len(tokens)),
        "distinct_word_ratio": len(set(tokens)) / len(tokens) if tokens else 0.0,
    }


def _reject(candidate: Candidate, reason: str) -> None:
    if candidate.rejected is None:
        candidate.rejected = reason


def verify_candidates(
    candidates: Sequence[Candidate],
    judge: Judge | None,
    teacher: TeacherInfo,
    settings: VerifySettings = VerifySettings(),
) -> list[str]:
    """Verify ``candidates`` in place (``verification``, ``judge_score``, ``rejected``); return warnings.

    Rejected candidates keep every verdict computed before and after the failing step that is
    cheap to compute, so a reviewer sees why; only the judge is skipped for rows already rejected.
    """
    warnings: list[str] = []
    if judge is not None:
        warning = self_judging_warning(judge.info, teacher)
        if warning:
            warnings.append(warning)
    filters = _heuristic_filters(settings)
    for c in candidates:
        c.verification = {"method_checks": dict(c.checks)}
        if c.failed:
            _reject(c, c.failed)
        verdicts, found = heuristic_verdicts(c.row, filters)
        c.verification["heuristics"] = verdicts
        if found is not None:
            _reject(c, f"heuristic {found.filter}: {found.reason}")
        if c.topic:
            overlap = topic_overlap(c.topic, prompt_text(c.row) + "\n" + response_text(c.row))
            c.verification["topic"] = {"requested": c.topic, "overlap": round(overlap, 3)}
            if overlap < settings.min_topic_overlap:
                _reject(c, f"off-topic: {overlap:.0%} of the topic words of {c.topic!r} appear")

    to_judge = [c for c in candidates if c.accepted and not c.skip_judge]
    if judge is not None and to_judge:
        items = [
            (prompt_text(c.row), response_text(c.row) if c.row.get("kind") != "text" else c.row["text"])
            for c in to_judge
        ]
        for c, verdict in zip(to_judge, judge.score(items), strict=True):
            c.judge_score = None if verdict.score is None else float(verdict.score)
            c.verification["judge"] = {
                "model": judge.info.model,
                "score": verdict.score,
                "raw": verdict.raw[:_RAW_CHARS],
                "min_score": settings.min_judge_score,
                **verdict.served,  # what the judge's server said answered
            }
            if verdict.score is None:
                _reject(c, "judge gave no parseable score")
            elif verdict.score < settings.min_judge_score:
                _reject(c, f"judge score {verdict.score} < {settings.min_judge_score}")
    if warnings:
        for c in candidates:
            c.verification["warnings"] = list(warnings)

    if settings.outliers:
        _flag_outliers(candidates)
    _flag_conflicts(candidates, settings.on_conflict)
    return warnings


def _flag_outliers(candidates: Sequence[Candidate]) -> None:
    # Per method: arithmetic answers and code solutions have different normal lengths.
    by_method: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.accepted and c.generated != "none":  # a human text kept verbatim is no teacher outlier
            by_method[c.method].append(c)
    for group in by_method.values():
        if len(group) < MIN_ROWS_FOR_OUTLIERS:
            continue
        stats = [_stats(c.row, c.generated) for c in group]
        for name, floor in _MIN_DEVIATION.items():
            values = [s[name] for s in stats]
            median = statistics.median(values)
            for c, value, z in zip(group, values, modified_z_scores(values), strict=True):
                if abs(z) > OUTLIER_Z and abs(value - median) >= floor:
                    c.verification.setdefault("outliers", {})[name] = round(z, 2)
                    _reject(c, f"outlier: {name} modified z-score {z:.1f} (|z| > {OUTLIER_Z})")


_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", normalize_text(text)).strip()


def _flag_conflicts(candidates: Sequence[Candidate], on_conflict: str) -> None:
    """Same instruction, different answers: recorded on every row of the group; with ``keep_best``
    only the best-scored answer (then the first) stays. Preference rows differ by design: skipped."""
    groups: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        if c.accepted and c.row.get("kind") in ("sft", "chat"):
            groups[_norm(prompt_text(c.row))].append(c)
    for group in groups.values():
        answers = {_norm(response_text(c.row)) for c in group}
        if len(answers) < 2:
            continue
        for c in group:
            c.verification["conflict"] = {"same_instruction_answers": len(answers)}
        if on_conflict == "keep_best":
            best = max(group, key=lambda c: (c.judge_score or 0.0, -group.index(c)))
            for c in group:
                if c is not best:
                    _reject(c, "same instruction answered differently; kept the best-scored answer")


class ModelJudge:
    """A rubric judge and a position-swapped pairwise judge on one judge model (any teacher backend)."""

    def __init__(self, teacher: Any, rubric: str | None = None) -> None:
        from curation.synth.judges import DEFAULT_RUBRIC, PairwiseJudge, RubricJudge

        self.rubric = RubricJudge(teacher, rubric or DEFAULT_RUBRIC)
        self.pairwise = PairwiseJudge(teacher)
        self.info: TeacherInfo = teacher.info

    def __repr__(self) -> str:
        return f"ModelJudge({self.info.model!r})"

    def score(self, items: Sequence[tuple[str, str]]) -> list[RubricVerdict]:
        return self.rubric.score(items)

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairwiseVerdict]:
        return self.pairwise.compare(items)
