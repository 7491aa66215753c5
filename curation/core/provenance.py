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
    "judge_score DOUBLE, verification JSON, created_at TIMESTAMP"
)

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


@dataclass(frozen=True)
class TeacherInfo:
    """Who produced a generation: what provenance records for every synthetic row."""

    backend: str
    model: str
    revision: str
    license: str
    terms: str = ""  # short id or text of usage terms, e.g. "no-competing-models"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Provenance:
    """How one synthetic or augmented row was made."""

    row_id: str
    method: str
    teacher: TeacherInfo
    created_at: datetime
    generation_params: dict[str, Any] = field(default_factory=dict)
    prompt_template: str | None = None
    parent_ids: tuple[str, ...] = ()
    judge_model: str | None = None
    judge_score: float | None = None
    verification: dict[str, Any] = field(default_factory=dict)

    def as_record(self) -> dict[str, Any]:
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
        }


def lineage_record(
    child_id: str, parent_id: str, asset: str, operation: str, detail: str | None = None
) -> dict[str, str | None]:
    return {"child_id": child_id, "parent_id": parent_id, "asset": asset, "operation": operation, "detail": detail}
