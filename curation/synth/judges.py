"""Verification of synthetic data: a 1–5 rubric judge and a position-swapped pairwise judge.

LLM judges run on any :class:`~curation.synth.teachers.Teacher` (so they batch, retry and cache like
teachers do). :class:`ProceduralJudge` is the offline default: heuristics plus exact checks
of what the procedural rules can solve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Literal

from curation.core.normalize import words
from curation.core.provenance import TeacherInfo
from curation.synth.teachers import ChatRequest, Generation, GenerationParams, Teacher, solve_arithmetic, solve_units

Winner = Literal["a", "b", "tie"]

# Greedy and short: a verdict should not depend on sampling, and the score comes last.
JUDGE_PARAMS = GenerationParams(temperature=0.0, max_new_tokens=512, top_p=1.0, seed=0)

DEFAULT_RUBRIC = (
    "Score the response from 1 to 5.\n"
    "5: correct, complete and directly helpful; follows every instruction.\n"
    "4: correct and helpful with minor omissions or style issues.\n"
    "3: partly correct or incomplete, but useful.\n"
    "2: mostly unhelpful, evasive, or with significant errors.\n"
    "1: wrong, harmful, off-topic, empty or degenerate."
)

_RUBRIC_TEMPLATE = (
    "You are an impartial judge. Evaluate the assistant's response to the user's request "
    "against the rubric.\n\n[Rubric]\n{rubric}\n\n[User request]\n{prompt}\n\n[Response]\n{response}\n\n"
    'Explain briefly, then end with a final line exactly of the form "Score: N" with N from 1 to 5.'
)

# Pairwise wording and the [[A]]/[[B]]/[[C]] verdict tokens follow MT-Bench's pairwise judge
# (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").
_PAIRWISE_TEMPLATE = (
    "You are an impartial judge. Compare two assistant responses to the same user request and "
    "decide which one is better (helpfulness, correctness, following instructions). Do not let the "
    "order, the length or the style of the responses influence you.\n\n[User request]\n{prompt}\n\n"
    "[Response A]\n{first}\n\n[Response B]\n{second}\n\n"
    'Explain briefly, then end with "[[A]]" if A is better, "[[B]]" if B is better, or "[[C]]" for a tie.'
)

_SCORE_PATTERNS = (
    re.compile(r"\[\[\s*([1-5])\s*\]\]"),
    re.compile(r"\b(?:score|rating|grade)\s*[:=]?\s*\**\s*([1-5])(?:\s*/\s*5)?\b", re.I),
    re.compile(r"\b([1-5])\s*/\s*5\b"),
    re.compile(r"\b([1-5])\s*out of\s*5\b", re.I),
)
_VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_BARE_VERDICT = re.compile(r"^\W*(?:response\s+)?([AB])\W*$", re.I)


def parse_score(reply: str) -> int | None:
    """The 1–5 score in a judge reply: the last explicit "Score: N", "[[N]]", "N/5" or "N out of 5",
    else a reply that is only a digit 1–5; None when absent or out of range (never guessed)."""
    for pattern in _SCORE_PATTERNS:
        found = pattern.findall(reply)
        if found:
            return int(found[-1])
    stripped = reply.strip().strip(".*")
    return int(stripped) if stripped in {"1", "2", "3", "4", "5"} else None


def parse_preference(reply: str) -> Literal["A", "B", "C"] | None:
    """ "A", "B" or "C" (tie) from the last [[X]] token, or a reply that is only "A"/"B"; else None."""
    found = _VERDICT.findall(reply)
    if found:
        return found[-1]
    bare = _BARE_VERDICT.match(reply)
    return bare.group(1).upper() if bare else None  # type: ignore[return-value]


def served_record(generations: Sequence[Generation]) -> dict[str, str]:
    """What the server said answered a judge's requests (model id, fingerprint), for the verdict's record:
    the judge's configured name and revision are only what the project file says."""
    record: dict[str, str] = {}
    for generation in generations:
        if generation.served_model and "served_model" not in record:
            record["served_model"] = generation.served_model
        if generation.system_fingerprint and "system_fingerprint" not in record:
            record["system_fingerprint"] = generation.system_fingerprint
    return record


@dataclass(frozen=True)
class RubricVerdict:
    score: int | None  # None: the judge gave no parseable score (treat as unverified, not as 1)
    raw: str
    served: Mapping[str, str] = field(default_factory=dict)  # served_record of the reply


@dataclass(frozen=True)
class PairwiseVerdict:
    """``winner`` is kept only when both orders agree; ``consistent`` False marks position bias."""

    winner: Winner | None
    consistent: bool
    raw_ab: str  # reply with response a shown first
    raw_ba: str  # reply with response b shown first
    served: Mapping[str, str] = field(default_factory=dict)  # served_record of both replies


class RubricJudge:
    """Scores (prompt, response) pairs 1–5 against a rubric with a teacher model as the judge."""

    def __init__(self, teacher: Teacher, rubric: str = DEFAULT_RUBRIC, params: GenerationParams = JUDGE_PARAMS) -> None:
        self.teacher = teacher
        self.rubric = rubric
        self.params = params
        self.info: TeacherInfo = teacher.info

    def request(self, prompt: str, response: str) -> ChatRequest:
        content = _RUBRIC_TEMPLATE.format(rubric=self.rubric, prompt=prompt, response=response)
        return ChatRequest(messages=({"role": "user", "content": content},), params=self.params)

    def score(self, items: Sequence[tuple[str, str]]) -> list[RubricVerdict]:
        generations = self.teacher.generate([self.request(p, r) for p, r in items])
        return [RubricVerdict(score=parse_score(g.text), raw=g.text, served=served_record([g])) for g in generations]


def _combine(first: str | None, second: str | None) -> Winner | None:
    # `second` saw b in slot A, so its letters are mapped back before comparing.
    mapped_first = {"A": "a", "B": "b", "C": "tie"}.get(first or "")
    mapped_second = {"A": "b", "B": "a", "C": "tie"}.get(second or "")
    if mapped_first is None or mapped_first != mapped_second:
        return None
    return mapped_first  # type: ignore[return-value]


class PairwiseJudge:
    """Compares two responses in both orders; a verdict survives only if it does not flip with order.

    Position bias (preferring whichever answer comes first or second) is well documented for
    LLM judges (Zheng et al. 2023; Wang et al. 2023, "Large Language Models are not Fair Evaluators");
    swapping and keeping only consistent verdicts is their recommended mitigation.
    """

    def __init__(self, teacher: Teacher, params: GenerationParams = JUDGE_PARAMS) -> None:
        self.teacher = teacher
        self.params = params
        self.info: TeacherInfo = teacher.info

    def request(self, prompt: str, first: str, second: str) -> ChatRequest:
        content = _PAIRWISE_TEMPLATE.format(prompt=prompt, first=first, second=second)
        return ChatRequest(messages=({"role": "user", "content": content},), params=self.params)

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairwiseVerdict]:
        """For each (prompt, a, b): both orders in one batch, then the combined verdict."""
        requests: list[ChatRequest] = []
        for prompt, a, b in items:
            requests += [self.request(prompt, a, b), self.request(prompt, b, a)]
        gens = self.teacher.generate(requests)
        verdicts: list[PairwiseVerdict] = []
        for k in range(len(items)):
            ab, ba = gens[2 * k].text, gens[2 * k + 1].text
            winner = _combine(parse_preference(ab), parse_preference(ba))
            served = served_record(gens[2 * k : 2 * k + 2])
            verdicts.append(PairwiseVerdict(winner, winner is not None, ab, ba, served))
        return verdicts


# Refusal openers seen in chat data; the same kind of list open filters use to drop refusals
# (e.g. the "unfiltered" ShareGPT/WizardLM cleaning scripts).
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|i am sorry|i apologi[sz]e|i can(?:'|no)t|i cannot|as an ai\b|"
    r"as a language model)",
    re.I,
)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def mentions_value(response: str, value: str) -> bool:
    """Whether a number in ``response`` equals ``value`` exactly (a computed answer, "…" when rounded)."""
    target = Fraction(value.rstrip("…"))  # a rounded expectation is met by its 6-decimal rounding
    for token in _NUMBER.findall(response):
        try:
            if Fraction(token.replace(",", "")) == target:
                return True
        except (ValueError, ZeroDivisionError):
            continue
    return False


def _distinct_trigram_ratio(tokens: list[str]) -> float:
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return len(set(grams)) / len(grams) if grams else 1.0


class ProceduralJudge:
    """Offline judge: exact checks where rules know the answer, otherwise conservative heuristics.

    Scores: 5 a checkable answer that is right; 1 a checkable answer that is wrong, an empty
    reply or one that only repeats the prompt; 2 a refusal or degenerate repetition; 3 anything
    else (plausible but unverified — rules cannot judge quality). Its arithmetic and unit checks
    use the same solver as :class:`~curation.synth.teachers.ProceduralTeacher`, so they confirm an LLM's
    answers but are no independent check of procedural ones.
    """

    def __init__(self, *, min_trigram_ratio: float = 0.5) -> None:
        self.min_trigram_ratio = min_trigram_ratio
        self.info = TeacherInfo(
            backend="procedural", model="distillery-procedural-judge", revision="1", license="CC0-1.0", terms=""
        )

    def __repr__(self) -> str:
        return "ProceduralJudge()"

    def score_one(self, prompt: str, response: str) -> RubricVerdict:
        if not response.strip():
            return RubricVerdict(1, "empty response")
        if words(response) == words(prompt):  # punctuation and case do not make an echo an answer
            return RubricVerdict(1, "response repeats the prompt")
        units = solve_units(prompt)
        expected = units[3] if units is not None else None
        if expected is None:
            arithmetic = solve_arithmetic(prompt)
            expected = arithmetic[1] if arithmetic is not None else None
        if expected is not None:
            ok = mentions_value(response, expected)
            return RubricVerdict(5 if ok else 1, f"expected {expected}: {'found' if ok else 'not found'}")
        if _REFUSAL.search(response):
            return RubricVerdict(2, "refusal")
        tokens = words(response)
        if len(tokens) >= 20 and _distinct_trigram_ratio(tokens) < self.min_trigram_ratio:
            return RubricVerdict(2, "degenerate repetition")
        return RubricVerdict(3, "unverified")

    def score(self, items: Sequence[tuple[str, str]]) -> list[RubricVerdict]:
        return [self.score_one(p, r) for p, r in items]

    def compare(self, items: Sequence[tuple[str, str, str]]) -> list[PairwiseVerdict]:
        """Higher heuristic score wins, equal is a tie; order-independent by construction."""
        out: list[PairwiseVerdict] = []
        for prompt, a, b in items:
            sa, sb = self.score_one(prompt, a), self.score_one(prompt, b)
            a_score, b_score = sa.score or 0, sb.score or 0  # never None here: every branch of score_one scores
            winner: Winner = "a" if a_score > b_score else "b" if b_score > a_score else "tie"
            raw = f"a: {sa.score} ({sa.raw}); b: {sb.score} ({sb.raw})"
            out.append(PairwiseVerdict(winner=winner, consistent=True, raw_ab=raw, raw_ba=raw))
        return out


_QUANT_SUFFIX = re.compile(r"([-_.](?:gguf|awq|gptq|fp8|fp16|bf16|int4|int8|mlx|exl2|q\d(?:_[a-z0-9]+)*))+$")


def _model_key(model: str) -> str:
    base = model.strip().rstrip("/").rsplit("/", 1)[-1].casefold()
    return _QUANT_SUFFIX.sub("", base)


def judge_is_teacher(judge: TeacherInfo, teacher: TeacherInfo) -> bool:
    """True when the judge is (very likely) the teacher's own model: same weights fingerprint (or content-hash
    revision), or the same model name once organisation prefixes and quantisation suffixes are removed.

    LLM judges favour their own generations (Panickssery et al. 2024, "LLM Evaluators Recognize
    and Favor Their Own Generations"), so such verdicts deserve a warning.
    """
    if judge.weights and judge.weights == teacher.weights:
        return True
    if judge.revision.startswith("sha256:") and judge.revision == teacher.revision:
        return True
    return _model_key(judge.model) == _model_key(teacher.model)


def self_judging_warning(judge: TeacherInfo, teacher: TeacherInfo) -> str | None:
    """A warning text for logs and metadata when :func:`judge_is_teacher`, else None."""
    if not judge_is_teacher(judge, teacher):
        return None
    return (
        f"judge {judge.model!r} is the teacher's own model ({teacher.model!r}): LLM judges favour their "
        "own outputs, so its scores are optimistic; configure a different judge model"
    )
