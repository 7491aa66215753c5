"""The ``synthetic`` stage: seed rows picked from ``filtered`` (ranked in DuckDB, only the top of each
method's ranking read into Python: :func:`seed_rows`), candidates from every configured method,
verification, then the licence and terms policy; accepted rows with their provenance and lineage, rejected
candidates with the reason and every verdict (``synthetic_rejections``)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from curation.core.config import ProjectConfig
from curation.core.hashing import stable_unit_sql
from curation.core.licenses import LicensePolicy
from curation.core.progress import Progress
from curation.core.provenance import Provenance, TeacherInfo
from curation.core.schema import Row, iter_rows
from curation.core.warehouse import quote, read_batches
from curation.synth.methods import MethodSettings, SynthContext, generate_candidates, select_seeds, validate_methods
from curation.synth.teachers import ChatRequest, Generation, ResultCallback, Teacher, TeacherError, WrappedTeacher
from curation.synth.terms import ModelTerms, parse_model_registry, policy_violation, registered_teacher
from curation.synth.verify import Candidate, Judge, VerifySettings, verify_candidates

REJECTIONS_DDL = (
    "candidate_id VARCHAR NOT NULL, method VARCHAR NOT NULL, reason VARCHAR NOT NULL, "
    "parent_ids JSON, teacher_model VARCHAR, judge_score DOUBLE, candidate JSON, verification JSON, "
    "created_at TIMESTAMP"
)


REJECTIONS_SCHEMA = pa.schema(
    [
        ("candidate_id", pa.string()),
        ("method", pa.string()),
        ("reason", pa.string()),
        ("parent_ids", pa.string()),
        ("teacher_model", pa.string()),
        ("judge_score", pa.float64()),
        ("candidate", pa.string()),
        ("verification", pa.string()),
        ("created_at", pa.timestamp("us")),
    ]
)


@dataclass(frozen=True)
class SyntheticRow:
    row: Row
    provenance: Provenance
    lineage: tuple[dict[str, str | None], ...]


def accepted_row(c: Candidate, info: TeacherInfo, created_at: datetime, judge: TeacherInfo | None) -> SyntheticRow:
    """An accepted candidate as a row, its provenance (with every verdict and, when a judge scored it, the judge
    as the policy registers it) and its lineage edges. The served model and system fingerprint a method put
    under ``generation_params["served"]`` (:func:`curation.synth.methods.base.backend_record`) become
    provenance columns."""
    row = {**c.row, "ingested_at": created_at}
    scored = "judge" in c.verification or c.method == "preference"
    params = dict(c.generation_params)
    served = params.pop("served", None) or {}
    return SyntheticRow(
        row,
        Provenance(
            row["row_id"],
            c.method,
            info,
            created_at,
            params,
            c.prompt_template,
            c.parent_ids,
            judge=judge if scored else None,
            judge_score=c.judge_score,
            verification=c.verification,
            served_model=served.get("model"),
            system_fingerprint=served.get("system_fingerprint"),
        ),
        c.lineage,
    )


def rejection_record(c: Candidate, info: TeacherInfo, created_at: datetime) -> dict[str, Any]:
    """One ``synthetic_rejections`` row: the candidate as it was, why it was dropped, every verdict."""
    candidate = {k: v for k, v in c.row.items() if k != "ingested_at" and v is not None}
    return {
        "candidate_id": c.row["row_id"],
        "method": c.method,
        "reason": c.rejected or "rejected",
        "parent_ids": json.dumps(list(c.parent_ids)),
        "teacher_model": info.model,
        "judge_score": c.judge_score,
        "candidate": json.dumps(candidate, ensure_ascii=False, default=str),
        "verification": json.dumps(c.verification, sort_keys=True, default=str),
        "created_at": created_at,
    }


@dataclass
class SynthesisResult:
    accepted: list[SyntheticRow]
    rejected: list[Candidate]
    warnings: list[str]
    teacher: TeacherInfo  # as registered in the policy
    created_at: datetime

    def rows(self) -> list[Row]:
        return [s.row for s in self.accepted]

    def provenance_records(self) -> list[dict[str, Any]]:
        return [s.provenance.as_record() for s in self.accepted]

    def lineage_edges(self) -> list[dict[str, str | None]]:
        return [edge for s in self.accepted for edge in s.lineage]

    def rejection_records(self) -> list[dict[str, Any]]:
        return [rejection_record(c, self.teacher, self.created_at) for c in self.rejected]

    def rejections_sample(self, limit: int = 10) -> list[dict[str, Any]]:
        return [{"method": c.method, "reason": c.rejected, "candidate": c.row["row_id"]} for c in self.rejected[:limit]]

    def counts(self) -> list[dict[str, Any]]:
        """Per method: candidates, accepted, rejected, and the most common rejection reason."""
        table: dict[str, dict[str, Any]] = {}
        for s in self.accepted:
            table.setdefault(s.provenance.method, {"accepted": 0, "rejected": 0, "reasons": {}})["accepted"] += 1
        for c in self.rejected:
            entry = table.setdefault(c.method, {"accepted": 0, "rejected": 0, "reasons": {}})
            entry["rejected"] += 1
            reason = (c.rejected or "").split(":")[0]
            entry["reasons"][reason] = entry["reasons"].get(reason, 0) + 1
        return [
            {
                "method": m,
                "candidates": v["accepted"] + v["rejected"],
                "accepted": v["accepted"],
                "rejected": v["rejected"],
                "top_rejection": max(v["reasons"].items(), key=lambda kv: kv[1])[0] if v["reasons"] else "",
            }
            for m, v in sorted(table.items())
        ]


def synthesize(
    ctx: SynthContext,
    seeds: Sequence[Row],
    methods: Mapping[str, Any],
    verify_settings: VerifySettings,
    intended_use: str,
    created_at: datetime,
) -> SynthesisResult:
    """Generate, verify (with ``ctx.judge``), apply the licence/terms policy; split into accepted rows and
    rejected candidates."""
    candidates = generate_candidates(ctx, seeds, methods)
    warnings = verify_candidates(candidates, ctx.judge, ctx.info, verify_settings)
    for c in candidates:
        violation = policy_violation(c.row, intended_use, ctx.policy) if c.accepted else None
        if violation:
            c.verification["policy"] = {"intended_use": intended_use, "violation": violation}
            c.rejected = f"policy: {violation}"
    # The judge's licence and terms as policy.teachers declares them, like the teacher's (registered_teacher).
    judge = registered_teacher(ctx.judge.info, ctx.registry) if ctx.judge is not None else None
    accepted = [accepted_row(c, ctx.info, created_at, judge) for c in candidates if c.accepted]
    return SynthesisResult(accepted, [c for c in candidates if not c.accepted], warnings, ctx.info, created_at)


class ReportingTeacher(WrappedTeacher):
    """A teacher whose every ``generate`` call reports its progress: requests done of the call's total, how
    many came from the generation cache and, when the backend gives up on some, how many failed. The
    requests, their order and the generations are the wrapped teacher's, untouched; every other attribute
    is the wrapped teacher's too."""

    def __init__(
        self, teacher: Teacher, log: Callable[[str], None], label: str = "synthetic: teacher requests"
    ) -> None:
        super().__init__(teacher)
        self.log = log
        self.label = label

    def __repr__(self) -> str:
        return repr(self.teacher)  # reported as the teacher it wraps

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        progress = Progress(self.log, self.label, len(requests), unit="requests")
        progress.counts = {"cached": 0, "failed": 0}
        seen: set[int] = set()

        def landed(index: int, generation: Generation) -> None:
            if index not in seen:
                seen.add(index)
                progress.advance(1, cached=int(generation.cached))
            if on_result is not None:
                on_result(index, generation)

        try:
            generations = self.teacher.generate(requests, on_result=landed)
        except TeacherError:
            progress.counts["failed"] = len(requests) - len(seen)
            progress.finish()
            raise
        for index, generation in enumerate(generations):  # a backend that ignores on_result: counted now
            if index not in seen:
                seen.add(index)
                progress.advance(1, cached=int(generation.cached))
        progress.finish()
        return generations


def reporting_judge(judge: Judge | None, log: Callable[[str], None]) -> Judge | None:
    """``judge`` with its requests reported like the teacher's, when it is a model judge (one that asks a
    teacher); a copy, so the judge the caller holds is left as it was."""
    model = getattr(judge, "teacher", None)
    if judge is None or model is None:
        return judge
    reporting = copy.copy(judge)
    reporting.teacher = ReportingTeacher(model, log, "synthetic: judge requests")  # type: ignore[attr-defined]
    return reporting


@dataclass(frozen=True)
class SynthesisPlan:
    """The project file's synthesis settings and policy, validated before any teacher model is loaded."""

    methods: Mapping[str, Any]
    verify: VerifySettings
    policy: LicensePolicy
    registry: Mapping[str, ModelTerms]
    intended_use: str
    seed: int
    base_dir: Path
    allow_weaker_sandbox: bool = False

    @classmethod
    def from_config(cls, config: ProjectConfig) -> SynthesisPlan:
        synthesis = config.synthesis
        plan = cls(
            synthesis.methods,
            VerifySettings.from_mapping(synthesis.verify),
            LicensePolicy.with_overrides(config.policy.licenses),
            parse_model_registry(config.policy.teachers),
            config.policy.intended_use,
            synthesis.seed,
            config.base_dir,
            synthesis.sandbox.allow_weaker,
        )
        validate_methods(plan.methods)
        return plan

    def run(
        self,
        teacher: Teacher,
        judge: Judge | None,
        filtered: Iterable[Row],
        created_at: datetime,
        log: Callable[[str], None] | None = None,
    ) -> SynthesisResult:
        """Pick the seed rows out of ``filtered`` (any rows that include the methods' picks, streamed once: the
        whole table, or :func:`seed_rows`' choice), then synthesize with ``teacher`` as the policy registers it.
        With ``log``, the teacher's and a model judge's requests report their progress there."""
        info = registered_teacher(teacher.info, self.registry)
        if log is not None:
            teacher, judge = ReportingTeacher(teacher, log), reporting_judge(judge, log)
        ctx = SynthContext(
            teacher,
            info,
            self.policy,
            self.registry,
            seed=self.seed,
            judge=judge,
            base_dir=self.base_dir,
            allow_weaker_sandbox=self.allow_weaker_sandbox,
        )
        seeds = select_seeds(filtered, self.methods, self.seed)
        return synthesize(ctx, seeds, self.methods, self.verify, self.intended_use, created_at)


def _ranked_pages(
    connection: duckdb.DuckDBPyConnection, table: str, settings: MethodSettings, seed: int
) -> Iterator[Row]:
    """The rows of ``table`` in the order of ``settings``' seeded draw (then row id), a page at a time, each
    page twice the last, up to the page that brings the ``count``-th eligible row (or the end of the table).
    Each page is a top-N in DuckDB: no ranking of the whole table is sorted or stored."""
    start, size, eligible = 0, max(2 * settings.count, 256), 0
    with stable_unit_sql(connection, seed) as unit:
        while eligible < settings.count:
            page = read_batches(
                connection,
                f"""WITH page AS (
                    SELECT row_id, {unit}(?, row_id) AS draw FROM {quote(table)}
                    ORDER BY draw, row_id LIMIT {size} OFFSET {start})
                SELECT t.* FROM {quote(table)} t JOIN page p USING (row_id) ORDER BY p.draw, p.row_id""",
                [settings.seed_salt],
            )
            read = 0
            for row in iter_rows(page):
                read += 1
                eligible += settings.eligible(row)
                yield row
            if read < size:
                break
            start, size = start + size, 2 * size


def seed_rows(connection: duckdb.DuckDBPyConnection, table: str, methods: Mapping[str, Any], seed: int) -> list[Row]:
    """The seed rows :func:`~curation.synth.methods.select_seeds` would pick out of the whole ``table``, reading
    into Python only the top of each method's ranking (:func:`_ranked_pages`), not the table."""
    chosen: dict[str, Row] = {}
    for name, settings in validate_methods(methods).items():
        if settings.seed_salt is not None and settings.count > 0:
            pages = _ranked_pages(connection, table, settings, seed)
            chosen |= {row["row_id"]: row for row in select_seeds(pages, {name: methods[name]}, seed)}
    return [chosen[k] for k in sorted(chosen)]
