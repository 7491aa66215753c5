"""Precision and recall of ``curation.filter.pii`` on presidio-research's synthetic PII sentences.

Usage: ``python benchmarks/pii_eval.py [path/to/synth_dataset_v2.json] [--ner spacy[:MODEL]]``
Prints a Markdown table per entity type.

Scoring rule (span overlap, per type): a predicted span is a true positive when it overlaps
at least one gold span of the same type, otherwise a false positive; a gold span is found when
at least one predicted span of its type overlaps it, otherwise a false negative. Precision =
TP / predicted spans, recall = found gold spans / gold spans. Overlap rather than exact
boundaries because the gold is inconsistent in ways that do not matter for redaction (phone
extensions, "(0)" trunk prefixes, multi-line addresses split into several spans). Column
"FP on other PII" counts false positives that overlap a gold span of another type (e.g. a
driver's licence number shaped like an SSN): real PII, wrongly typed.

Splits (``--split``): the sentences come from 209 templates; ``dev`` holds those of even
``template_id``, ``test`` those of odd. Patterns are tuned on ``dev`` (and other data) only, and the
figures a README reports for a tuned detector are those of ``test``, which no rule was written from.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.filter.pii import REGEX_ENTITIES, NerBackend, find_pii
from curation.ingest.readers import read_objects

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "presidio-synth-pii" / "synth_dataset_v2.json"

# presidio entity type → ours. Types not listed (GPE, ORGANIZATION, DATE_TIME, …) are not
# targets, but their spans still count for "FP on other PII".
GOLD_TO_OURS: dict[str, str] = {
    "EMAIL_ADDRESS": "EMAIL",
    "PHONE_NUMBER": "PHONE",
    "CREDIT_CARD": "CREDIT_CARD",
    "IBAN_CODE": "IBAN",
    "IP_ADDRESS": "IP_ADDRESS",
    "US_SSN": "US_SSN",
    "STREET_ADDRESS": "STREET_ADDRESS",
    "PERSON": "PERSON",
}


@dataclass
class EntityScore:
    gold: int = 0
    found: int = 0
    predicted: int = 0
    tp: int = 0
    fp_other_pii: int = 0

    @property
    def fp(self) -> int:
        return self.predicted - self.tp

    @property
    def fn(self) -> int:
        return self.gold - self.found

    @property
    def precision(self) -> float:
        return self.tp / self.predicted if self.predicted else 1.0

    @property
    def recall(self) -> float:
        return self.found / self.gold if self.gold else 1.0


def load_presidio(path: Path = DEFAULT_PATH) -> list[dict]:
    """The presidio-research synthetic sentences ({full_text, spans, …})."""
    if not path.exists():
        raise FileNotFoundError(
            f"presidio synthetic PII data not found at {path}; pass its path "
            "(shared/data/presidio-synth-pii/synth_dataset_v2.json)"
        )
    return [record for _, record in read_objects(path)]


SPLITS = ("all", "dev", "test")


def split_records(records: Iterable[dict], split: str) -> list[dict]:
    """The records of ``split`` (see the module docstring): whole templates go to one side."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if split == "all":
        return list(records)
    parity = 0 if split == "dev" else 1
    return [record for record in records if int(record["template_id"]) % 2 == parity]


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def evaluate(records: Iterable[dict], ner: NerBackend | None = None) -> dict[str, EntityScore]:
    """Per-entity scores (our entity names) under the overlap rule in the module docstring."""
    # PERSON is only scored when a backend can find it; a column of zeros would say nothing.
    searched = set(REGEX_ENTITIES) | ({"PERSON"} if ner is not None else set())
    scores: dict[str, EntityScore] = {}
    for record in records:
        text = record["full_text"]
        gold = [(GOLD_TO_OURS.get(s["entity_type"]), (s["start_position"], s["end_position"])) for s in record["spans"]]
        predicted = find_pii(text, ner=ner)
        for entity, span in gold:
            if entity not in searched:
                continue
            score = scores.setdefault(entity, EntityScore())
            score.gold += 1
            if any(p.entity == entity and _overlaps(span, (p.start, p.end)) for p in predicted):
                score.found += 1
        for p in predicted:
            score = scores.setdefault(p.entity, EntityScore())
            score.predicted += 1
            span = (p.start, p.end)
            if any(e == p.entity and _overlaps(span, g) for e, g in gold):
                score.tp += 1
            elif any(_overlaps(span, g) for _, g in gold):
                score.fp_other_pii += 1
    return scores


def markdown_table(scores: dict[str, EntityScore]) -> str:
    lines = [
        "| Entity | Gold | TP | FP | FP on other PII | FN | Precision | Recall |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entity in sorted(scores):
        s = scores[entity]
        lines.append(
            f"| {entity} | {s.gold} | {s.tp} | {s.fp} | {s.fp_other_pii} | {s.fn} | "
            f"{s.precision:.3f} | {s.recall:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--split", default="all", choices=SPLITS, help="template split (see the docstring)")
    parser.add_argument("--ner", default=None, help="optional NER backend, e.g. 'spacy:en_core_web_sm'")
    args = parser.parse_args(argv)
    ner = None
    if args.ner:
        from curation.filter.pii_ner import backend_from_spec

        ner = backend_from_spec(args.ner)
    records = split_records(load_presidio(args.path), args.split)
    started = time.perf_counter()
    scores = evaluate(records, ner=ner)
    elapsed = time.perf_counter() - started
    print(markdown_table(scores))
    print(
        f"\n{len(records)} sentences ({args.split} split) from {args.path.name}, {elapsed:.2f} s; "
        "rule: predicted span is TP if it overlaps a gold span of the same type."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
