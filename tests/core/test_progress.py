from curation.core.progress import reported


def test_items_pass_through_and_progress_is_reported() -> None:
    lines: list[str] = []
    assert list(reported(range(5), lines.append, "stage", total=5, every_s=0.0)) == [0, 1, 2, 3, 4]
    assert lines[0].startswith("stage: 1 of 5 rows") and lines[-1].startswith("stage: done, 5 rows")


def test_quiet_when_fast() -> None:
    lines: list[str] = []
    list(reported(range(1000), lines.append, "stage", every_s=60.0))
    assert len(lines) == 1 and "1,000 rows" in lines[0]
