"""Model terms: the licences and usage terms of the models that wrote rows (project file ``policy.teachers``).

Licences and terms propagate (docs/architecture.md §4): a synthetic row carries the conjunction of the licences of
its parents, its seed pool and its teacher (:func:`curation.core.licenses.combine`), and the union of the usage
restrictions (``forbids``) of its teacher and of the models that generated its parents. The ``synthetic`` asset
applies them to every candidate, the licence filter to every ingested row (:func:`row_refusals`), the
licence-and-terms checks and the compliance report re-read them on the finished tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from curation.core.licenses import INTENDED_USES, LicensePolicy
from curation.core.provenance import TeacherInfo
from curation.core.schema import Row


@dataclass(frozen=True)
class ModelTerms:
    """What a model's licence and terms allow, e.g. terms that forbid training competing models."""

    model: str
    license: str | None = None
    terms: str = ""
    forbids: tuple[str, ...] = ()  # intended uses the terms rule out (curation.core.licenses.INTENDED_USES)


def parse_model_registry(entries: Mapping[str, Any] | None) -> dict[str, ModelTerms]:
    """``{model: {license, terms, forbids: [uses]}}`` from ``policy.teachers``, with clear errors."""
    registry: dict[str, ModelTerms] = {}
    for model, entry in (entries or {}).items():
        fields = entry
        if hasattr(fields, "model_dump"):  # a typed config entry: same keys
            fields = {k: v for k, v in fields.model_dump().items() if v is not None}
        if not isinstance(fields, Mapping):
            raise ValueError(f"policy.teachers.{model}: expected a mapping with license, terms, forbids")
        unknown = set(fields) - {"license", "terms", "forbids"}
        if unknown:
            raise ValueError(
                f"policy.teachers.{model}: unknown keys {sorted(unknown)}; allowed: license, terms, forbids"
            )
        forbids = fields.get("forbids") or []
        if isinstance(forbids, str) or any(use not in INTENDED_USES for use in forbids):
            raise ValueError(
                f"policy.teachers.{model}.forbids must be a list of intended uses from "
                f"{list(INTENDED_USES)}, got {forbids!r}"
            )
        registry[model] = ModelTerms(model, fields.get("license"), str(fields.get("terms") or ""), tuple(forbids))
    return registry


def registered_teacher(info: TeacherInfo, registry: Mapping[str, ModelTerms]) -> TeacherInfo:
    """The teacher as the policy declares it: the registry's licence and terms win over the backend's."""
    entry = registry.get(info.model)
    if entry is None:
        return info
    return replace(info, license=entry.license or info.license, terms=entry.terms or info.terms)


def inherited_terms(
    parents: Sequence[Row], teacher: TeacherInfo, registry: Mapping[str, ModelTerms]
) -> dict[str, list[str]]:
    """Union of the restrictions of the teacher, the parents' generators and the parents' own inherited
    terms: a restriction never disappears downstream. Empty lists when nothing restricts the row."""
    forbids: set[str] = set()
    terms: set[str] = set()
    models: set[str] = set()

    def add(model: str | None, extra_terms: str = "") -> None:
        entry = registry.get(model or "")
        if entry is not None and (entry.forbids or entry.terms):
            forbids.update(entry.forbids)
            terms.update([entry.terms] if entry.terms else [])
            models.add(entry.model)
        if extra_terms:
            terms.add(extra_terms)
            models.add(model or "")

    add(teacher.model, teacher.terms)
    for parent in parents:
        add(parent.get("generator"))
        carried = (parent.get("extra") or {}).get("terms") or {}
        forbids.update(carried.get("forbids") or [])
        terms.update(carried.get("terms") or [])
        models.update(carried.get("models") or [])
    return {"forbids": sorted(forbids), "terms": sorted(terms), "models": sorted(m for m in models if m)}


def _recorded_terms_refusal(row: Row, intended_use: str) -> list[str]:
    """The restriction synthesis recorded in the row (``extra.terms``), if it forbids ``intended_use``."""
    carried = (row.get("extra") or {}).get("terms") or {}
    if intended_use in (carried.get("forbids") or []):
        return [f"terms of {', '.join(carried.get('models') or []) or 'a teacher'} forbid {intended_use} use"]
    return []


def generator_refusals(
    generator: str, intended_use: str, policy: LicensePolicy, registry: Mapping[str, ModelTerms]
) -> list[str]:
    """Every reason the outputs of ``generator`` (the model that wrote an ingested row) may not be used for
    ``intended_use``: its registered terms, its registered licence, or, in a commercial build, terms nobody
    declared (an undeclared generator is unknown terms, judged like an unknown licence)."""
    entry = registry.get(generator)
    if entry is None:
        if intended_use == "commercial":
            return [f"generator {generator} is not declared under policy.teachers: its terms are unknown"]
        return []
    reasons = []
    if intended_use in entry.forbids:
        reasons.append(f"terms of {entry.model} ({entry.terms or 'registered'}) forbid {intended_use} use")
    if entry.license:
        reasons += [f"generator {entry.model}: {why}" for why in policy.refusals(entry.license, intended_use)]
    return reasons


def row_refusals(
    row: Row, intended_use: str, policy: LicensePolicy, registry: Mapping[str, ModelTerms] | None = None
) -> list[str]:
    """Every reason ``row`` may not be used for ``intended_use``, in a fixed order: its licence (each id of
    the expression), the terms recorded in it, and, when ``registry`` is given, the terms of the model that
    wrote it (``generator`` of a row whose origin is not human). Empty: allowed."""
    reasons = policy.refusals(row.get("license"), intended_use) + _recorded_terms_refusal(row, intended_use)
    generator = row.get("generator")
    if registry is not None and generator and row.get("origin") not in (None, "human"):
        reasons += generator_refusals(generator, intended_use, policy, registry)
    return list(dict.fromkeys(reasons))


def policy_violation(row: Row, intended_use: str, policy: LicensePolicy) -> str | None:
    """Why ``row`` may not be used for ``intended_use`` (every refusal: inherited terms, licence), or None."""
    reasons = _recorded_terms_refusal(row, intended_use) + policy.refusals(row.get("license"), intended_use)
    return "; ".join(reasons) or None


def terms_violations(
    rows: Iterable[Row], registry: Mapping[str, ModelTerms], policy: LicensePolicy, intended_use: str, limit: int = 20
) -> tuple[int, list[dict[str, Any]]]:
    """Rows whose licence, inherited terms, or generator's registered terms forbid ``intended_use``:
    (count, a sample). The registry is consulted again here, so a model whose terms changed after the
    run is still caught."""
    count = 0
    sample: list[dict[str, Any]] = []
    for row in rows:
        why = policy_violation(row, intended_use, policy)
        entry = registry.get(row.get("generator") or "")
        if entry is not None and intended_use in entry.forbids:
            registered = f"terms of {entry.model} ({entry.terms or 'registered'}) forbid {intended_use} use"
            why = registered if why is None else f"{why}; {registered}"
        if why is not None:
            count += 1
            if len(sample) < limit:
                sample.append(
                    {
                        "row_id": row["row_id"],
                        "license": row.get("license"),
                        "generator": row.get("generator"),
                        "why": why,
                    }
                )
    return count, sample
