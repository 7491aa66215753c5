"""Synthesis methods: each turns seed rows (or nothing) into new rows with provenance and lineage.

The methods here run with any :class:`~curation.teachers.Teacher`; the procedural teacher makes
them work offline. Every row produced carries a :class:`~curation.provenance.Provenance` record
and lineage edges to its parents, and its licence is the strictest of its parents' and the
teacher's (DESIGN.md §4).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from curation.licenses import LicensePolicy, strictest
from curation.provenance import Provenance, lineage_record
from curation.schema import Row, make_row_id, new_row
from curation.split import stable_unit
from curation.teachers import PERTURBATIONS, ProceduralTeacher, TeacherInfo, arithmetic_problem, perturb, unit_problem


@dataclass(frozen=True)
class SyntheticRow:
    row: Row
    provenance: Provenance
    lineage: tuple[dict[str, str | None], ...]


def _first_user_index(row: Row) -> int | None:
    for index, message in enumerate(row.get("messages") or []):
        if message.get("role") == "user" and (message.get("content") or "").strip():
            return index
    return None


def perturbation_rows(seeds: Iterable[Row], teacher: TeacherInfo, count: int, seed: int, created_at: datetime,
                      policy: LicensePolicy, rate: float = 0.15) -> Iterator[SyntheticRow]:
    """Noisy copies of instructions (typos, swapped words, casing) with the human response kept,
    for robustness to messy user input. ``count`` seed rows are chosen by a seeded hash of their id,
    so the choice is stable as data grows."""
    eligible = [r for r in seeds if r.get("kind") in ("sft", "chat") and _first_user_index(r) is not None]
    eligible.sort(key=lambda r: stable_unit(seed, "perturbation", r["row_id"]))
    for position, parent in enumerate(eligible[:count]):
        kind = PERTURBATIONS[position % len(PERTURBATIONS)]
        index = _first_user_index(parent)
        assert index is not None
        messages = [dict(m) for m in parent["messages"]]
        original = messages[index]["content"]
        noisy = perturb(original, kind, seed=seed, rate=rate)
        if noisy == original:
            continue
        messages[index]["content"] = noisy
        row_id = make_row_id(parent["row_id"], "perturb", kind, str(seed))
        row = new_row(**{**parent, "row_id": row_id, "messages": messages, "origin": "augmented",
                         "generator": teacher.model, "license": strictest([parent["license"], teacher.license], policy),
                         "ingested_at": created_at})
        params = {"perturbation": kind, "rate": rate, "seed": seed}
        verification = {"changed": True, "heuristic": "perturbed instruction differs; response kept from parent"}
        yield SyntheticRow(row, Provenance(row_id, "perturbation", teacher, created_at, params,
                                           prompt_template=f"perturb:{kind}", parent_ids=(parent["row_id"],),
                                           verification=verification),
                           (lineage_record(row_id, parent["row_id"], "synthetic", f"perturb:{kind}",
                                           f"messages[{index}].content perturbed ({kind}, rate {rate})"),))


def template_problem_rows(teacher: ProceduralTeacher, method: str, count: int, seed: int, created_at: datetime,
                          source: str = "synthetic") -> Iterator[SyntheticRow]:
    """Templated word problems with computed answers (arithmetic or unit conversion). The teacher
    answers independently and only rows where its answer matches the computed one are kept."""
    make = {"arithmetic": arithmetic_problem, "units": unit_problem}[method]
    rng = random.Random(f"{seed}:{method}")
    made = 0
    attempts = 0
    while made < count and attempts < count * 4:
        attempts += 1
        question, expected = make(rng)
        answer = teacher.answer(question, seed=seed)
        verified = answer is not None and expected in answer
        if not verified:
            continue
        row_id = make_row_id("synthetic", method, question, str(seed))
        row = new_row(row_id=row_id, kind="sft", messages=[{"role": "user", "content": question},
                                                         {"role": "assistant", "content": answer}],
                      source=source, source_uri=f"teacher:{teacher.info.model}/{method}#{attempts}",
                      license=teacher.info.license, origin="synthetic", generator=teacher.info.model,
                      extra={"expected_answer": expected}, ingested_at=created_at)
        provenance = Provenance(row_id, f"template:{method}", teacher.info, created_at, {"seed": seed},
                                prompt_template=method, verification={"expected": expected, "answer_matches": True})
        made += 1
        yield SyntheticRow(row, provenance, ())
