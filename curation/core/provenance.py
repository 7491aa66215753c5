"""Per-row provenance of synthetic and augmented rows, and the lineage edges of every derivation
(docs/architecture.md §4)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

PROVENANCE_DDL = (
    "row_id VARCHAR NOT NULL, method VARCHAR NOT NULL, teacher_backend VARCHAR, "
    "teacher_model VARCHAR, teacher_revision VARCHAR, teacher_license VARCHAR, teacher_terms VARCHAR, "
    "generation_params JSON, prompt_template VARCHAR, parent_ids JSON, judge_model VARCHAR, "
    "judge_score DOUBLE, verification JSON, created_at TIMESTAMP, teacher_weights VARCHAR, served_model VARCHAR, "
    "system_fingerprint VARCHAR, judge_backend VARCHAR, judge_revision VARCHAR, judge_license VARCHAR, "
    "judge_terms VARCHAR, judge_weights VARCHAR"
)
"""Columns after ``created_at`` were added later (issue 12): appended, never inserted, so a reader that selects by
name or a writer that inserts ``BY NAME`` (:func:`curation.synth.ingested.insert_ingested_provenance`) works with
both layouts."""

PROVENANCE_SCHEMA = pa.schema(
    [
        ("row_id", pa.string()),
        ("method", pa.string()),
        ("teacher_backend", pa.string()),
        ("teacher_model", pa.string()),
        ("teacher_revision", pa.string()),
        ("teacher_license", pa.string()),
        ("teacher_terms", pa.string()),
        ("generation_params", pa.string()),
        ("prompt_template", pa.string()),
        ("parent_ids", pa.string()),
        ("judge_model", pa.string()),
        ("judge_score", pa.float64()),
        ("verification", pa.string()),
        ("created_at", pa.timestamp("us")),
        ("teacher_weights", pa.string()),
        ("served_model", pa.string()),
        ("system_fingerprint", pa.string()),
        ("judge_backend", pa.string()),
        ("judge_revision", pa.string()),
        ("judge_license", pa.string()),
        ("judge_terms", pa.string()),
        ("judge_weights", pa.string()),
    ]
)

LINEAGE_SCHEMA = pa.schema(
    [
        ("child_id", pa.string()),
        ("parent_id", pa.string()),
        ("asset", pa.string()),
        ("operation", pa.string()),
        ("detail", pa.string()),
    ]
)
LINEAGE_WALK_DEPTH = 64
"""Lineage edges a walk up from a row follows at most (the split-leak check, the compliance report's
ancestry). The pipeline's chains are a handful long; the walks keep every path rather than deduplicating as
they go (a recursive UNION's seen-set does not spill, and ran out of DuckDB's memory at 1M rows), so a cycle
in a damaged lineage table must not run them forever."""


@dataclass(frozen=True)
class TeacherInfo:
    """Who produced a generation: what provenance records for every synthetic row."""

    backend: str
    model: str
    revision: str
    license: str
    terms: str = ""  # short id or text of usage terms, e.g. "no-competing-models"
    # Content digest of a local model's files (curation.synth.teachers.hash_model_dir), "" for served and
    # procedural models. Part of the generation-cache key, so changed weights never return old generations
    # even when ``revision`` (a name from the project file) stayed the same.
    weights: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Provenance:
    """How one synthetic or augmented row was made.

    ``teacher`` and ``judge`` are the models as the policy registers them (licence and terms from
    ``policy.teachers``). ``served_model`` and ``system_fingerprint`` are what the backend reported for the
    generations of this row (an OpenAI-compatible reply's ``model`` and ``system_fingerprint``), recorded beside
    the configured model and revision because a server may answer with other weights than the name says;
    ``generation_params`` holds what was requested and, under ``effective``/``not_confirmed``, what the backend
    confirmed it applied."""

    row_id: str
    method: str
    teacher: TeacherInfo
    created_at: datetime
    generation_params: dict[str, Any] = field(default_factory=dict)
    prompt_template: str | None = None
    parent_ids: tuple[str, ...] = ()
    judge: TeacherInfo | None = None  # the model that scored the row; None when no judge scored it
    judge_score: float | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    served_model: str | None = None
    system_fingerprint: str | None = None

    @property
    def judge_model(self) -> str | None:
        return self.judge.model if self.judge is not None else None

    def as_record(self) -> dict[str, Any]:
        judge = self.judge
        return {
            "row_id": self.row_id,
            "method": self.method,
            "teacher_backend": self.teacher.backend,
            "teacher_model": self.teacher.model,
            "teacher_revision": self.teacher.revision,
            "teacher_license": self.teacher.license,
            "teacher_terms": self.teacher.terms or None,
            "generation_params": json.dumps(self.generation_params, sort_keys=True),
            "prompt_template": self.prompt_template,
            "parent_ids": json.dumps(list(self.parent_ids)),
            "judge_model": self.judge_model,
            "judge_score": self.judge_score,
            "verification": json.dumps(self.verification, sort_keys=True),
            "created_at": self.created_at,
            "teacher_weights": self.teacher.weights or None,
            "served_model": self.served_model,
            "system_fingerprint": self.system_fingerprint,
            "judge_backend": judge.backend if judge else None,
            "judge_revision": judge.revision if judge else None,
            "judge_license": judge.license if judge else None,
            "judge_terms": (judge.terms or None) if judge else None,
            "judge_weights": (judge.weights or None) if judge else None,
        }


def lineage_record(
    child_id: str, parent_id: str, asset: str, operation: str, detail: str | None = None
) -> dict[str, str | None]:
    return {"child_id": child_id, "parent_id": parent_id, "asset": asset, "operation": operation, "detail": detail}
