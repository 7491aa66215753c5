"""Tests of the filter stage."""

from __future__ import annotations

import json


def one_at_a_time(rows: list[dict], cleaners: list, filters: list) -> list[tuple]:
    """Each row through each cleaner, then each filter until one rejects it (the runner's contract): the
    reference every batch path is compared with, as (row JSON, edits, rejection) per row."""
    outcome = []
    for row in rows:
        edits = []
        for cleaner in cleaners:
            row, made = cleaner(row)
            edits += made
        rejection = next((r for f in filters if (r := f(row)) is not None), None)
        outcome.append((json.dumps(row, sort_keys=True), tuple(edits), rejection))
    return outcome
