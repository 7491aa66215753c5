"""The dedup stage's memo: a re-run copies the facts of rows it has seen, and must write exactly what a run
without the memo writes."""

import shutil
from pathlib import Path

import duckdb
import pytest

from benchmarks.scale_mix import build_mix
from curation.core import memo
from curation.core.config import load_project
from curation.core.warehouse import StagedWrite, Warehouse
from curation.dedup.stage import DedupRun, run_dedup
from curation.ingest.sources import ingest_sources
from tests.conftest import needs_shared_data

pytestmark = needs_shared_data  # the mixes are built from ../shared/data

TABLES = ("deduped", "dedup_clusters", "dedup_signatures", "dedup_facts", "dedup_paragraphs")


def _dedup(warehouse_file: Path, project_file: Path) -> tuple[DedupRun, dict[str, list[tuple]]]:
    config = load_project(project_file)
    warehouse = Warehouse(warehouse_file)
    with warehouse.write("deduped") as staged:
        run = run_dedup(staged, config.dedup, workers=1)
    with warehouse.connect(read_only=True) as connection:
        tables = {table: connection.execute(f"SELECT * FROM {table}").fetchall() for table in TABLES}
        tables["lineage"] = connection.execute("SELECT * FROM lineage WHERE asset = 'deduped'").fetchall()
    return run, {table: sorted(rows, key=repr) for table, rows in tables.items()}


def _raw(warehouse_file: Path, project_file: Path) -> None:
    with Warehouse(warehouse_file).write("raw") as staged:
        ingest_sources(load_project(project_file), staged)


@pytest.mark.parametrize("stored", ["copied", "patched"])
def test_a_rerun_after_new_and_removed_rows_writes_what_a_fresh_run_writes(tmp_path: Path, monkeypatch, stored) -> None:
    """``stored``: how the re-runs stage ``dedup_signatures`` and ``deduped``, a copy of what they keep (this
    change, 17% of the rows, is past ``PATCH_MAX_CHANGE``) or the stored tables patched in place."""
    patched: list[str] = []
    if stored == "patched":
        monkeypatch.setattr(memo, "PATCH_MAX_CHANGE", 1.0)
        patch = StagedWrite.patch

        def recorded(self, table, *args, **kwargs):
            patched.append(table)
            return patch(self, table, *args, **kwargs)

        monkeypatch.setattr(StagedWrite, "patch", recorded)
    build_mix(tmp_path / "mix", 2_000, seed=2)
    build_mix(tmp_path / "more", 300, seed=9)  # other records under the same source names and line numbers
    project = tmp_path / "mix" / "distillery.yaml"
    memo_file = tmp_path / "memo.duckdb"
    _raw(memo_file, project)
    _raw(tmp_path / "more.duckdb", tmp_path / "more" / "distillery.yaml")
    first, _ = _dedup(memo_file, project)
    assert first.counts["facts_reused"] == 0

    with duckdb.connect(str(memo_file)) as connection:
        (stripped,) = connection.execute(
            "SELECT count(*) FROM dedup_facts WHERE row_id NOT IN (SELECT row_id FROM dedup_memo)"
        ).fetchone()
        assert stripped > 0, "the mix should hold boilerplate, whose rows leave the memo"
        # New rows interleave with the old ones (same sources, same line numbers), moving their positions;
        # some old rows go.
        connection.execute(f"ATTACH '{tmp_path / 'more.duckdb'}' AS more (READ_ONLY)")
        connection.execute("INSERT INTO raw SELECT * FROM more.raw")
        connection.execute(
            "DELETE FROM raw WHERE row_id IN (SELECT row_id FROM raw USING SAMPLE 50 ROWS (reservoir, 3))"
        )
        # Records that moved in their file: same id and texts (the facts memo holds them), another source_uri.
        connection.execute(
            "UPDATE raw SET source_uri = source_uri || '-moved' "
            "WHERE row_id IN (SELECT row_id FROM raw USING SAMPLE 40 ROWS (reservoir, 5))"
        )
        (expected_reuse,) = connection.execute(
            "SELECT count(*) FROM raw WHERE row_id IN (SELECT row_id FROM dedup_memo)"
        ).fetchone()
    shutil.copy(memo_file, tmp_path / "fresh.duckdb")
    with duckdb.connect(str(tmp_path / "fresh.duckdb")) as connection:
        connection.execute("DROP TABLE dedup_memo")  # this one computes every row's facts
    shutil.copy(tmp_path / "fresh.duckdb", tmp_path / "unsigned.duckdb")
    with duckdb.connect(str(tmp_path / "unsigned.duckdb")) as connection:
        connection.execute("DROP TABLE dedup_signatures")  # and this one every signature, and writes
        connection.execute("DROP TABLE deduped")  # every row of a new deduped

    again, with_memo = _dedup(memo_file, project)
    fresh_run, fresh = _dedup(tmp_path / "fresh.duckdb", project)
    assert fresh_run.counts["facts_reused"] == 0
    assert 1_500 < again.counts["facts_reused"] == expected_reuse
    unsigned_run, unsigned = _dedup(tmp_path / "unsigned.duckdb", project)
    assert with_memo == fresh == unsigned
    assert {"dedup_signatures", "deduped"} & set(patched) == (
        {"dedup_signatures", "deduped"} if stored == "patched" else set()
    )
    # Most kept rows stay as the first run wrote them; with no deduped to keep, every row is written.
    assert again.counts["rows_in_place"] > 1_000 and unsigned_run.counts["rows_in_place"] == 0
    assert again.counts == fresh_run.counts | {"facts_reused": expected_reuse}

    # Other dedup settings: nothing is reused.
    project.write_text(project.read_text() + "dedup:\n  lowercase: false\n")
    changed, _ = _dedup(memo_file, project)
    assert changed.counts["facts_reused"] == 0
