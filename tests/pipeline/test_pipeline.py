"""The whole graph on the bundled demo through a real Dagster run, as a user would run it."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.core.licenses import license_ids
from curation.core.warehouse import content_hash
from tests.conftest import DEMO_CONFIG

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dg.ExecuteInProcessResult, Path]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILLERY_HOME", str(home))
        patch.delenv("DISTILLERY_CONFIG", raising=False)
        from definitions import ASSETS, CHECKS
        from resources import ProjectResource, WarehouseResource
        from resources.teachers import TeacherResource
        from resources.tokenizer import TokenizerResource

        resources = {
            "project": ProjectResource(config_path=str(DEMO_CONFIG)),
            "warehouse": WarehouseResource(path=str(home / "warehouse.duckdb")),
            "teacher": TeacherResource(),
            "tokenizer": TokenizerResource(),
        }
        with dg.instance_for_test() as instance:
            result = dg.materialize([*ASSETS, *CHECKS], instance=instance, resources=resources, raise_on_error=False)
            yield result, home / "warehouse.duckdb"


@pytest.fixture
def db(demo_run) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(str(demo_run[1]), read_only=True)
    yield connection
    connection.close()


def test_every_asset_materializes_and_every_check_passes(demo_run) -> None:
    result, _ = demo_run
    assert result.success
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {
        "raw",
        "deduped",
        "filtered",
        "synthetic",
        "synthetic_mixed",
        "formatted",
        "exports",
        "compliance_report",
        "inspection",
    }
    evaluations = result.get_asset_check_evaluations()
    assert len(evaluations) >= 15
    assert [f"{e.asset_key.to_user_string()}:{e.check_name}" for e in evaluations if not e.passed] == []


def test_planted_malformed_records_are_quarantined(db) -> None:
    errors = [r[0] for r in db.execute("SELECT error FROM quarantine ORDER BY source, record_no").fetchall()]
    expected = [
        "conversations[0].from is 'narrator'",
        "invalid JSON",
        "must be a string, got int",
        "missing required field 'output'",
        "empty instruction",
        "expected a JSON object",
        "undecodable bytes",
        "oversized record",
    ]
    for fragment in expected:
        assert sum(fragment in e for e in errors) == 1, fragment
    assert len(errors) == len(expected)


def test_row_counts_add_up_through_the_stages(db) -> None:
    def n(sql: str) -> int:
        return db.execute(sql).fetchone()[0]

    lines = len((DEMO_CONFIG.parent / "data" / "alpaca_sft.jsonl").read_bytes().splitlines())
    assert n("SELECT records FROM ingested_files WHERE file = 'data/alpaca_sft.jsonl'") == lines
    assert n("SELECT count(*) FROM raw") == n("SELECT sum(rows) FROM ingested_files")
    removed = n("SELECT count(*) FROM dedup_clusters WHERE row_id <> kept_row_id")
    assert removed >= 2  # the planted duplicate SFT record and the copied conversation
    assert n("SELECT count(*) FROM deduped") == n("SELECT count(*) FROM raw") - removed
    assert n("SELECT count(*) FROM filtered") == n("SELECT count(*) FROM deduped") - n(
        "SELECT count(*) FROM filter_rejections"
    )
    assert n("SELECT count(*) FROM synthetic_mixed") == n("SELECT count(*) FROM filtered") + n(
        "SELECT count(*) FROM synthetic"
    ) - n("SELECT count(*) FROM mix_excluded")
    assert n("SELECT count(*) FROM formatted") == n("SELECT count(*) FROM synthetic_mixed") - n(
        "SELECT count(*) FROM format_rejections"
    )


def test_low_quality_rows_are_rejected_with_reasons(db) -> None:
    by_filter = dict(db.execute("SELECT filter, count(*) FROM filter_rejections GROUP BY 1").fetchall())
    for name in ("empty", "echo", "refusal", "chosen_equals_rejected"):
        assert by_filter.get(name, 0) >= 1, name
    assert db.execute("SELECT count(*) FROM filter_rejections WHERE reason = ''").fetchone()[0] == 0


def test_benchmark_leak_is_removed_before_formatting(db) -> None:
    leaked = db.execute("SELECT benchmark, item_id FROM contamination").fetchall()
    assert ("demo_bench", "1#turn1") in leaked
    assert (
        db.execute("SELECT count(*) FROM formatted WHERE text ILIKE '%poem about the ocean at night%'").fetchone()[0]
        == 0
    )


def walk_to_raw(db: duckdb.DuckDBPyConnection, row_id: str) -> list[tuple[str, str, str]]:
    chain = []
    while True:
        edge = db.execute("SELECT parent_id, asset, operation FROM lineage WHERE child_id = ?", [row_id]).fetchone()
        if edge is None:
            return chain
        chain.append(edge)
        row_id = edge[0]


def test_lineage_from_a_formatted_row_back_to_its_file_and_record(db) -> None:
    row_id, _parent = db.execute(
        "SELECT f.row_id, f.parent_id FROM formatted f JOIN lineage l ON l.child_id = f.parent_id "
        "AND l.asset = 'filtered' AND l.operation LIKE '%html_to_text%'"
    ).fetchone()  # the HTML-cleaned row
    chain = walk_to_raw(db, row_id)
    assert [(asset, op.split(":")[0]) for _, asset, op in chain] == [("formatted", "format"), ("filtered", "clean")]
    root = chain[-1][0]
    source_uri, source_license = db.execute("SELECT source_uri, license FROM raw WHERE row_id = ?", [root]).fetchone()
    file, record = source_uri.split("#")
    line = (DEMO_CONFIG.parent / file).read_bytes().splitlines()[int(record) - 1]  # JSONL: record = line here
    raw_output = db.execute("SELECT messages->>'$[1].content' FROM raw WHERE row_id = ?", [root]).fetchone()[0]
    assert json.loads(line)["output"] == raw_output and "<p>" in raw_output
    formatted_text = db.execute("SELECT text FROM formatted WHERE row_id = ?", [row_id]).fetchone()[0]
    assert "<p>" not in formatted_text and "404 Not Found" in formatted_text
    assert source_license == "Apache-2.0"


def test_pii_is_redacted_with_typed_placeholders_and_recorded(db) -> None:
    texts = " ".join(r[0] for r in db.execute("SELECT CAST(messages AS VARCHAR) FROM filtered").fetchall())
    for secret in ("maria.rivera@rivera-family.net", "415 555 0134", "AKIAIOSFODNN7EXAMPLE", "4111 1111 1111 1111"):
        assert secret not in texts
    for placeholder in ("[EMAIL]", "[PHONE]", "[API_KEY]", "[CREDIT_CARD]"):
        assert placeholder in texts
    details = [r[0] for r in db.execute("SELECT detail FROM lineage WHERE operation LIKE '%pii%'").fetchall()]
    assert any("EMAIL" in d for d in details)


def test_synthetic_rows_have_provenance_and_owe_every_licence_of_their_inputs(db) -> None:
    rows = db.execute(
        "SELECT s.row_id, s.license, s.origin, p.teacher_model, p.parent_ids FROM synthetic s "
        "JOIN provenance p USING (row_id)"
    ).fetchall()
    assert rows and len(rows) == db.execute("SELECT count(*) FROM synthetic").fetchone()[0]
    for _row_id, license, origin, teacher, parents in rows:
        assert teacher == "distillery-procedural"
        expected = {"CC0-1.0"}  # the procedural teacher's
        for parent in json.loads(parents):
            parent_license = db.execute("SELECT license FROM filtered WHERE row_id = ?", [parent]).fetchone()[0]
            expected |= set(license_ids(parent_license))
        assert set(license_ids(license)) == expected  # the conjunction: no input's obligations dropped
        assert origin in ("augmented", "synthetic")


def test_formatted_rows_fit_the_budget_and_carry_masks(db) -> None:
    longest, masks, splits = db.execute(
        "SELECT max(n_tokens), count(*) FILTER (assistant_mask IS NOT NULL), list(DISTINCT split) FROM formatted"
    ).fetchone()
    assert longest <= 512
    assert masks == db.execute("SELECT count(*) FROM formatted").fetchone()[0]
    assert sorted(splits) == ["eval", "train"]


def test_materialization_metadata_shows_in_the_ui(demo_run) -> None:
    result, _ = demo_run
    events = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    raw = events["raw"]
    assert raw["dagster/row_count"].value > 0
    assert {c.name for c in raw["dagster/column_schema"].value.columns} >= {"row_id", "messages", "license"}
    assert raw["quarantined"].value >= 1
    assert "column_lineage" in str(events["formatted"].keys()) or "dagster/column_lineage" in events["formatted"]
    # `exports` counted each row once per layout as its row count: it is formatted's rows, the lines apart.
    assert events["exports"]["dagster/row_count"].value == events["formatted"]["dagster/row_count"].value
    assert events["exports"]["rows_written"].value > events["exports"]["dagster/row_count"].value


def test_duplicates_are_explained_and_the_earlier_record_is_kept(db) -> None:
    rows = db.execute(
        "SELECT d.method, d.jaccard, r.source_uri, k.source_uri, d.reason FROM dedup_clusters d "
        "JOIN raw r ON r.row_id = d.row_id JOIN raw k ON k.row_id = d.kept_row_id WHERE d.removed "
        "ORDER BY d.method, r.source_uri"
    ).fetchall()
    methods = [r[0] for r in rows]
    assert "exact:prompt_response" in methods and any(m.startswith("near:") for m in methods)
    near = next(r for r in rows if r[0].startswith("near:"))
    assert 0.8 <= near[1] < 1.0  # the planted near copy, with its verified word 5-gram Jaccard
    for _, _, removed_uri, kept_uri, reason in rows:
        assert removed_uri.split("#")[0] == kept_uri.split("#")[0]
        assert int(kept_uri.split("#")[1]) < int(removed_uri.split("#")[1]), reason  # earlier record kept
    edits = db.execute("SELECT operation FROM lineage WHERE asset = 'deduped'").fetchall()
    assert ("dedup:repeated_paragraph",) in edits


def test_rerun_on_unchanged_input_does_no_minhash_work(demo_run) -> None:
    _, warehouse = demo_run
    from definitions import ASSETS
    from resources import ProjectResource, WarehouseResource

    deduped_asset = next(a for a in ASSETS if a.key.to_user_string() == "deduped")
    resources = {
        "project": ProjectResource(config_path=str(DEMO_CONFIG)),
        "warehouse": WarehouseResource(path=str(warehouse)),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([deduped_asset], instance=instance, resources=resources)
    metadata = result.get_asset_materialization_events()[0].materialization.metadata
    assert metadata["minhash_computed"].value == 0
    assert metadata["signatures_reused"].value > 0
    first = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in demo_run[0].get_asset_materialization_events()
    }["deduped"]
    assert metadata["data_version"].value == first["data_version"].value


def test_each_dataset_reports_its_content_hash_as_its_dagster_data_version(demo_run) -> None:
    """What the UI's staleness compares is what the CLI prints: raw included (it once reported none, so
    Dagster kept one version of raw for every content)."""
    result, warehouse = demo_run
    reported = {e.asset_key.to_user_string(): e.materialization for e in result.get_asset_materialization_events()}
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        for name in ("raw", "deduped", "filtered", "synthetic", "synthetic_mixed", "formatted"):
            materialization = reported[name]
            assert materialization.tags.get("dagster/data_version") == materialization.metadata["data_version"].value
            assert materialization.metadata["data_version"].value == content_hash(connection, name)


def test_the_readmes_audit_example_is_this_runs_audit(demo_run) -> None:
    """The README shows `distillery audit` on a real row of the demo, with its real output: the id exists and
    the chain printed is the one the audit gives now (bookkeeping tables such as the memos left out)."""
    import re

    from curation.audit.trace import audit_row
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text(encoding="utf-8")
    example = re.search(r"\$ \.venv/bin/distillery audit (\w+).*?\n(Row .*?)\n```", readme, re.S)
    assert example, "the README's audit example is missing"
    row_id, shown = example.group(1), example.group(2)
    with duckdb.connect(str(demo_run[1]), read_only=True) as connection:
        text = audit_row(connection, row_id).to_text()
    assert text.strip() == shown.strip()
    assert "_memo" not in text


_ROW_LINKS = {
    # child table -> SQL of (child row_id, parent row_id) for every row: the parent row a row comes from.
    "deduped": "SELECT c.row_id AS child, coalesce(l.parent_id, c.row_id) AS parent FROM deduped c "
    "LEFT JOIN lineage l ON l.asset = 'deduped' AND l.child_id = c.row_id",
    "filtered": "SELECT c.row_id AS child, coalesce(l.parent_id, c.row_id) AS parent FROM filtered c "
    "LEFT JOIN lineage l ON l.asset = 'filtered' AND l.child_id = c.row_id",
    "synthetic_mixed": "SELECT row_id AS child, row_id AS parent FROM synthetic_mixed",
    "formatted": "SELECT row_id AS child, parent_id AS parent FROM formatted",
}


def test_column_lineage_is_what_each_stage_does_checked_on_the_data(demo_run, db) -> None:
    """Every declared column dependency names real columns and is what the run reported to Dagster; every
    *copied* one holds on every row of the demo (the value is the parent row's); no same-name guesswork
    (formatted.row_id is a new id, its input's id is parent_id; synthetic.generator is the teacher)."""
    from assets.metadata import COLUMN_LINEAGE
    from curation.core.warehouse import table_columns

    result, _ = demo_run
    reported = {
        e.asset_key.to_user_string(): e.materialization.metadata for e in result.get_asset_materialization_events()
    }
    for asset, columns in COLUMN_LINEAGE.items():
        lineage = reported[asset]["dagster/column_lineage"].value.deps_by_column
        assert set(lineage) == set(columns)
        own = dict(table_columns(db, asset))
        for column, deps in columns.items():
            assert column in own, (asset, column)
            shown = {(d.asset_key.to_user_string(), d.column_name) for d in lineage[column]}
            assert shown == {(d.asset, d.column) for d in deps}, (asset, column)
            for dep in deps:
                assert dep.column in dict(table_columns(db, dep.asset)), (asset, column, dep)
            copied = [d for d in deps if d.copied]
            if not copied:
                continue
            parents = " UNION ALL ".join(
                f"SELECT row_id, CAST({d.column} AS VARCHAR) AS value FROM {d.asset}" for d in copied
            )
            (unmatched,) = db.execute(
                f"SELECT count(*) FROM ({_ROW_LINKS[asset]}) AS link JOIN {asset} AS c ON c.row_id = link.child "
                f"WHERE NOT EXISTS (SELECT 1 FROM ({parents}) AS p WHERE p.row_id = link.parent "
                f"AND p.value IS NOT DISTINCT FROM CAST(c.{column} AS VARCHAR))"
            ).fetchone()
            assert unmatched == 0, f"{asset}.{column} is not {copied} on {unmatched} rows"
    # Each linked row has its parent row, and the same-name guesses the UI once showed are gone.
    (orphans,) = db.execute(
        "SELECT count(*) FROM formatted WHERE parent_id NOT IN (SELECT row_id FROM synthetic_mixed)"
    ).fetchone()
    assert orphans == 0
    (same_ids,) = db.execute(
        "SELECT count(*) FROM formatted WHERE row_id IN (SELECT row_id FROM synthetic_mixed)"
    ).fetchone()
    assert same_ids == 0 and "row_id" not in {d.column for d in COLUMN_LINEAGE["formatted"]["row_id"] if d.copied}
    assert "generator" not in COLUMN_LINEAGE["synthetic"] and "raw" not in COLUMN_LINEAGE
    (unseeded,) = db.execute(
        "SELECT count(*) FROM lineage WHERE asset = 'synthetic' AND parent_id NOT IN (SELECT row_id FROM filtered)"
    ).fetchone()
    assert unseeded == 0
