"""Optional NER backend for person names, plugged into ``curation.filter.pii.find_pii(ner=…)``.

Regexes cannot tell "Paris" the person from "Paris" the city; a named-entity model can. The
backend here wraps spaCy, which is not a dependency of Distillery: install ``spacy`` and a
pipeline package (e.g. ``en_core_web_sm``) yourself, then pass
``backend_from_spec("spacy:en_core_web_sm")``. Nothing is downloaded at run time.
"""

from __future__ import annotations

from typing import Any

from curation.filter.pii import PiiMatch

# spaCy's OntoNotes/WikiNER labels for people. Only people: organisations and places are not
# personal data on their own and redacting them would gut ordinary text.
_PERSON_LABELS = frozenset({"PERSON", "PER"})


class SpacyPersonBackend:
    """PERSON matches from a locally installed spaCy pipeline."""

    def __init__(self, model: str = "en_core_web_sm", nlp: Any | None = None) -> None:
        if nlp is None:
            try:
                import spacy
            except ImportError as exc:
                raise ImportError(
                    "the spaCy PII backend needs the 'spacy' package and a pipeline such as "
                    f"{model!r}: pip install spacy, then install the model package; or run without NER"
                ) from exc
            try:
                # Only the entity recogniser is needed; the parser and lemmatizer cost time.
                nlp = spacy.load(model, exclude=["parser", "lemmatizer", "attribute_ruler", "tagger"])
            except OSError as exc:
                raise OSError(
                    f"spaCy model {model!r} is not installed; install its package "
                    "(nothing is downloaded at run time) or pick another model"
                ) from exc
        self.nlp = nlp
        self.model = model

    def __call__(self, text: str) -> list[PiiMatch]:
        matches: list[PiiMatch] = []
        for offset, chunk in _chunks(text, getattr(self.nlp, "max_length", 1_000_000)):
            doc = self.nlp(chunk)
            matches.extend(
                PiiMatch("PERSON", offset + ent.start_char, offset + ent.end_char, ent.text)
                for ent in doc.ents
                if ent.label_ in _PERSON_LABELS
            )
        return matches


def _chunks(text: str, limit: int) -> list[tuple[int, str]]:
    """Pieces of at most ``limit`` characters, cut at a newline where possible.

    spaCy refuses texts longer than ``nlp.max_length``; cutting at line ends keeps names whole.
    """
    pieces: list[tuple[int, str]] = []
    start = 0
    while len(text) - start > limit:
        cut = text.rfind("\n", start, start + limit)
        cut = cut + 1 if cut > start else start + limit
        pieces.append((start, text[start:cut]))
        start = cut
    pieces.append((start, text[start:]))
    return pieces


def backend_from_spec(spec: str) -> SpacyPersonBackend:
    """``"spacy"`` or ``"spacy:MODEL"`` → a backend; raises ValueError for anything else."""
    kind, _, model = spec.partition(":")
    if kind != "spacy":
        raise ValueError(f"unknown NER backend {spec!r}; supported: 'spacy' or 'spacy:MODEL_NAME'")
    return SpacyPersonBackend(model or "en_core_web_sm")
