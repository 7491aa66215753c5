"""Which copy dedup keeps depends on content and source order (source, file, record), never on when a row
was ingested: the same data ingested in other runs, or in another order, keeps the same representative."""

from __future__ import annotations

import json
import random
from datetime import datetime
from pathlib import Path

import duckdb

from curation.core.config import load_project
from curation.core.schema import Row
from curation.core.warehouse import Warehouse
from curation.dedup.clusters import KeepPolicy
from curation.ingest.sources import ingest_sources
from tests.dedup.test_dedup import dedup, sft

EARLY, LATE = datetime(2026, 1, 1), datetime(2026, 6, 1)


def _copies(alpha_ingested: datetime, beta_ingested: datetime) -> list[Row]:
    """Copies of one answer in sources ``alpha`` and ``beta`` (tied on every preference criterion), and two
    copies in one file of ``beta`` (records 10 and 2: numeric, not string, order decides)."""
    return [
        sft("b1", "What is 2+2?", "Four.", source="beta", source_uri="b.jsonl#0", ingested_at=beta_ingested),
        sft("a1", "What is 2+2?", "four.", source="alpha", source_uri="a.jsonl#5", ingested_at=alpha_ingested),
        sft("b10", "Name a colour.", "Blue.", source="beta", source_uri="b.jsonl#10", ingested_at=alpha_ingested),
        sft("b2", "Name a colour.", "blue.", source="beta", source_uri="b.jsonl#2", ingested_at=beta_ingested),
    ]


def test_the_kept_copy_does_not_depend_on_ingestion_time_or_input_order() -> None:
    alpha_first = dedup(_copies(EARLY, LATE))
    beta_first_rows = _copies(LATE, EARLY)
    random.Random(5).shuffle(beta_first_rows)
    beta_first = dedup(beta_first_rows)
    assert alpha_first.removed() == {"b1": "a1", "b10": "b2"}
    assert beta_first.removed() == alpha_first.removed()
    assert beta_first.members == alpha_first.members
    assert [_content(r) for r in beta_first.kept] == [_content(r) for r in alpha_first.kept]
    assert [r["row_id"] for r in alpha_first.kept] == ["a1", "b2"]


def _content(row: Row) -> Row:
    return {name: value for name, value in row.items() if name != "ingested_at"}


def test_the_same_sources_ingested_in_two_runs_or_one_keep_the_same_rows(tmp_path: Path) -> None:
    """Home one ingests ``beta`` first and ``alpha`` in a later run (its rows are ingested later); home two
    ingests both at once. Dedup keeps the same rows in both."""
    data = tmp_path / "data"
    data.mkdir()
    records = {
        "alpha": [{"instruction": "What is 2+2?", "output": "Four."}, {"instruction": "Say hi.", "output": "Hi."}],
        "beta": [{"instruction": "Say hi.", "output": "hi."}, {"instruction": "What is 2+2?", "output": "four."}],
    }
    for name, rows in records.items():
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")

    def project(names: list[str]) -> Path:
        config = tmp_path / f"{'_'.join(names)}.yaml"
        sources = "".join(f"  - {{name: {n}, path: data/{n}.jsonl, mapping: alpaca, license: MIT}}\n" for n in names)
        config.write_text(f"name: keep-rule\nformat: {{tokenizer: none}}\nsources:\n{sources}", encoding="utf-8")
        return config

    def ingest(warehouse: Warehouse, config: Path, at: datetime | None = None) -> None:
        with warehouse.write("raw") as staged:
            ingest_sources(load_project(config), staged)
        if at is not None:  # as if this run had been long ago
            with warehouse.connect() as connection:
                connection.execute("UPDATE raw SET ingested_at = ?", [at])

    two_runs, one_run = Warehouse(tmp_path / "two.duckdb"), Warehouse(tmp_path / "one.duckdb")
    ingest(two_runs, project(["beta"]), at=EARLY)
    ingest(two_runs, project(["beta", "alpha"]))
    ingest(one_run, project(["alpha", "beta"]))
    kept = []
    for warehouse in (two_runs, one_run):
        memory = duckdb.connect()
        memory.execute(f"ATTACH '{warehouse.path}' AS home (READ_ONLY)")
        memory.execute("CREATE TABLE raw AS SELECT * FROM home.raw")
        memory.execute("DETACH home")
        result = dedup([], memory)
        kept.append({(r["source"], r["source_uri"].rsplit("/", 1)[-1]) for r in result.kept})
        assert len(result.kept) == 2
    assert kept[0] == kept[1] == {("alpha", "alpha.jsonl#1"), ("alpha", "alpha.jsonl#2")}


def test_the_policy_in_python_ignores_ingestion_time() -> None:
    policy = KeepPolicy()
    rows = [sft("late", "Q?", "A.", ingested_at=LATE), sft("early", "Q?", "A.", ingested_at=EARLY)]
    assert rows[policy.choose(rows, [0, 1])]["row_id"] == "late"  # the earlier position wins
    assert policy.reason(rows[0], rows[1], 0, 1) == "earlier in the input (all preference criteria tied)"
