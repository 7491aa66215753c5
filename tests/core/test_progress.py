import re

import pytest

from curation.core.progress import EVERY_S_ENV, Progress, duration, reported


def test_items_pass_through_and_progress_is_reported() -> None:
    lines: list[str] = []
    assert list(reported(range(5), lines.append, "stage", total=5, every_s=0.0)) == [0, 1, 2, 3, 4]
    assert lines[0].startswith("stage: 1 of 5 rows") and lines[-1].startswith("stage: done, 5 rows")


def test_quiet_when_fast() -> None:
    lines: list[str] = []
    list(reported(range(1000), lines.append, "stage", every_s=60.0))
    assert len(lines) == 1 and "1,000 rows" in lines[0]


def test_lines_say_the_rate_and_the_time_left() -> None:
    lines: list[str] = []
    list(reported([10, 20, 30], lines.append, "stage", total=60, every_s=0.0, size=lambda n: n))
    assert re.fullmatch(r"stage: 10 of 60 rows \([\d,]+ rows/s, ETA \d+ s\)", lines[0]), lines[0]
    assert "ETA" not in lines[2] and lines[2].startswith("stage: 60 of 60 rows")  # nothing left


def test_the_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    monkeypatch.setenv(EVERY_S_ENV, "0")
    list(reported(range(3), lines.append, "stage"))
    assert len(lines) == 4  # one per item, then the closing line
    monkeypatch.setenv(EVERY_S_ENV, "soon")
    with pytest.raises(ValueError, match=EVERY_S_ENV):
        Progress(lines.append, "stage")


def test_named_counts_are_kept_beside_the_total() -> None:
    lines: list[str] = []
    progress = Progress(lines.append, "requests", total=4, every_s=0.0, unit="requests")
    progress.advance(1, cached=1)
    progress.advance(2, cached=0, failed=2)
    progress.finish()
    assert lines[1].startswith("requests: 3 of 4 requests (") and lines[1].endswith("; 1 cached, 2 failed)")
    assert lines[2].startswith("requests: done, 3 requests, 1 cached, 2 failed in ")


def test_durations_read_naturally() -> None:
    assert [duration(s) for s in (5, 600, 7200)] == ["5 s", "10 min", "2.0 h"]
