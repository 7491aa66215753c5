"""Progress of the long stages (issue 13, deliverable 6): a real run of the demo with a progress line at
every step shows, in the Dagster log, rows done of the total for deduped and inspection and teacher requests
done, cached and failed for synthetic; and the teacher's requests are counted as they land."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import dagster as dg
import pytest

from curation.core.progress import EVERY_S_ENV
from curation.core.provenance import TeacherInfo
from curation.synth.stage import ReportingTeacher
from curation.synth.teachers import ChatRequest, Generation, TeacherError
from tests.conftest import DEMO_CONFIG


@pytest.mark.slow
def test_each_long_stage_logs_rows_done_of_the_total(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVERY_S_ENV, "0")  # a line at every step: the demo is small
    from definitions import ASSETS
    from resources import ProjectResource, WarehouseResource
    from resources.teachers import TeacherResource
    from resources.tokenizer import TokenizerResource

    wanted = {"raw", "deduped", "filtered", "synthetic", "inspection"}
    resources = {
        "project": ProjectResource(config_path=str(DEMO_CONFIG)),
        "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
        "teacher": TeacherResource(),
        "tokenizer": TokenizerResource(),
    }
    with dg.instance_for_test() as instance:
        assets = [a for a in ASSETS if a.key.to_user_string() in wanted]
        result = dg.materialize(assets, instance=instance, resources=resources)
        lines = [entry.user_message for entry in instance.all_logs(result.run_id) if entry.dagster_event is None]

    def progress(pattern: str) -> list[re.Match[str]]:
        return [m for line in lines if (m := re.fullmatch(pattern, line))]

    facts = progress(r"deduped: facts: ([\d,]+) of ([\d,]+) rows \([\d,]+ rows/s.*\)")
    assert facts and facts[-1][1] == facts[-1][2] != "0"  # every raw row, counted as its batch lands
    assert progress(r"deduped: facts: done, [\d,]+ rows in [\d.]+ s")
    assert progress(r"deduped: LSH band keys: [\d,]+ of [\d,]+ rows .*")
    requests = progress(r"synthetic: teacher requests: ([\d,]+) of ([\d,]+) requests \(.*; ([\d,]+) cached, 0 failed\)")
    assert requests and all(int(m[1]) <= int(m[2]) for m in requests)
    assert any(m[1] == m[2] for m in requests)
    assert progress(r"synthetic: teacher requests: done, [\d,]+ requests, [\d,]+ cached, 0 failed in [\d.]+ s")
    inspected = progress(r"inspection: ([\d,]+) of ([\d,]+) rows \(.*\)")
    assert len(inspected) == 4  # raw, deduped, filtered, synthetic: one line after each
    assert inspected[-1][1] == inspected[-1][2]
    assert progress(r"filtering: [\d,]+ of [\d,]+ rows .*")  # the stage that had it already still has it


class _Backend:
    """Answers the first ``answered`` requests (the first of them from the cache), then gives up on the rest."""

    info = TeacherInfo(backend="fake", model="fake", revision="1", license="MIT")

    def __init__(self, answered: int) -> None:
        self.answered = answered

    def generate(
        self, requests: Sequence[ChatRequest], on_result: Callable[[int, Generation], None] | None = None
    ) -> list[Generation]:
        out = []
        for i in range(min(self.answered, len(requests))):
            out.append(Generation(f"answer {i}", "stop", cached=i == 0))
            if on_result is not None:
                on_result(i, out[-1])
        if len(out) < len(requests):
            raise TeacherError(f"{len(requests) - len(out)} of {len(requests)} requests failed")
        return out


def _requests(n: int) -> list[ChatRequest]:
    return [ChatRequest(({"role": "user", "content": f"q{i}"},)) for i in range(n)]


def test_teacher_requests_are_reported_done_cached_and_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EVERY_S_ENV, "0")
    lines: list[str] = []
    landed: list[int] = []
    teacher = ReportingTeacher(_Backend(answered=3), lines.append)  # type: ignore[arg-type]
    with pytest.raises(TeacherError):
        teacher.generate(_requests(5), on_result=lambda i, _: landed.append(i))
    assert landed == [0, 1, 2]  # the caller's callback still sees every generation
    assert lines[0].startswith("synthetic: teacher requests: 1 of 5 requests (") and "1 cached, 0 failed" in lines[0]
    assert "ETA" in lines[0]
    assert re.fullmatch(r"synthetic: teacher requests: done, 3 requests, 1 cached, 2 failed in [\d.]+ s", lines[-1])

    lines.clear()
    generations = ReportingTeacher(_Backend(answered=2), lines.append).generate(_requests(2))  # type: ignore[arg-type]
    assert [g.text for g in generations] == ["answer 0", "answer 1"]
    assert lines[-1].startswith("synthetic: teacher requests: done, 2 requests, 1 cached, 0 failed")


def test_the_wrapped_teacher_is_otherwise_the_same() -> None:
    backend = _Backend(answered=1)
    teacher = ReportingTeacher(backend, lambda _: None)  # type: ignore[arg-type]
    assert teacher.info is backend.info and teacher.answered == 1 and repr(teacher) == repr(backend)
