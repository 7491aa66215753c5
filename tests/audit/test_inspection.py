"""Inspection: statistics with known answers on real public files, agreement, plots and the asset."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from curation.audit.inspection import (
    inspect_version,
    inspect_versions,
    krippendorff_alpha_nominal,
    markdown_summary,
    pairwise_agreement,
    plots,
    write_inspection_report,
)
from curation.core.config import SourceConfig
from curation.core.schema import new_row, rows_to_table, utcnow
from curation.core.texts import prompt_text, response_text
from curation.core.warehouse import canonical_ddl
from curation.ingest.sources import Quarantined, ingest_file
from tests.conftest import DEMO_CONFIG, SHARED_DATA, require_shared_data


def load(connection: duckdb.DuckDBPyConnection, table: str, rows: list[dict]) -> None:
    connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
    connection.register("_rows", rows_to_table(rows))
    connection.execute(f"INSERT INTO {table} SELECT * FROM _rows")
    connection.unregister("_rows")


def shared_rows(relative: str, mapping: str, **settings) -> list[dict]:
    source = SourceConfig(
        name=relative.split("/")[0],
        path=relative,
        mapping=mapping,
        license=settings.pop("license", "Apache-2.0"),
        **settings,
    )
    require_shared_data(SHARED_DATA / relative)  # a missing file would be quarantined, not raised
    items = list(ingest_file(SHARED_DATA / relative, relative, source, utcnow(), 1_000_000))
    return [i for i in items if not isinstance(i, Quarantined)]


@pytest.fixture(scope="module")
def oasst() -> tuple[duckdb.DuckDBPyConnection, list[dict]]:
    rows = shared_rows("oasst-en-100-trees/en_100_tree.jsonl", "oasst")
    connection = duckdb.connect()
    load(connection, "raw", rows)
    yield connection, rows
    connection.close()


def test_lengths_in_sql_match_the_python_definitions_row_by_row(oasst) -> None:
    connection, rows = oasst
    from curation.audit.inspection import measures_sql

    measured = {
        r[0]: r[1:]
        for r in connection.execute(
            f"SELECT row_id, prompt_chars, response_chars, response_words, turns FROM ({measures_sql('raw', set())})"
        ).fetchall()
    }
    assert len(measured) == len(rows) == 626  # README: 626 root-to-leaf threads
    for row in rows:
        prompt, response = prompt_text(row), response_text(row)
        turns = sum(m["role"] == "user" for m in row["messages"])
        assert measured[row["row_id"]] == (len(prompt), len(response), len(response.split()), turns), row["row_id"]


def test_oasst_threads_known_answers(oasst) -> None:
    connection, rows = oasst
    result = inspect_version(connection, "raw", language_rows=200)
    assert result.rows == 626
    # Threads hold 2–6 messages (README: depth 2–6), alternating prompter/assistant from a prompter root.
    assert result.distributions["turns"]["min"] == 1 and result.distributions["turns"]["max"] == 3
    synthetic_threads = sum(1 for r in rows if r["origin"] == "synthetic")
    assert result.categories["origin"] == {"human": 626 - synthetic_threads, "synthetic": synthetic_threads}
    assert result.categories["teacher"]["chip20b"] == synthetic_threads
    # All messages are lang "en" in the file; fastText on a 200-row sample agrees (short prompts may be "und").
    assert result.language_sample == 200
    assert result.languages.get("en", 0) >= 190
    # OASST ranks are consensus ranks: the report counts them and computes no agreement from them.
    assert result.agreement["rows_with_consensus_ranks"] == 626
    assert result.agreement["krippendorff_alpha_nominal"] is None
    assert "consensus ranks" in result.agreement["note"]
    assert "n_tokens" not in result.distributions  # tokens exist only in formatted


def test_outliers_are_the_rows_beyond_tukeys_far_out_fences() -> None:
    connection = duckdb.connect()
    normal = [
        new_row(
            row_id=f"r{i}",
            kind="sft",
            source="s",
            license="MIT",
            origin="human",
            messages=[
                {"role": "user", "content": "q" * (40 + i)},
                {"role": "assistant", "content": "a" * (100 + 3 * i)},
            ],
        )
        for i in range(40)
    ]
    huge = new_row(
        row_id="huge",
        kind="sft",
        source="s",
        license="MIT",
        origin="human",
        messages=[{"role": "user", "content": "q" * 45}, {"role": "assistant", "content": "a" * 50_000}],
    )
    tiny = new_row(
        row_id="tiny",
        kind="sft",
        source="s",
        license="MIT",
        origin="human",
        messages=[{"role": "user", "content": "q" * 45}, {"role": "assistant", "content": "ok"}],
    )
    load(connection, "raw", [*normal, huge, tiny])
    result = inspect_version(connection, "raw", language_rows=0)
    flagged = {(o["row_id"], o["measure"], o["side"]) for o in result.outliers}
    assert flagged == {("huge", "response_chars", "long"), ("tiny", "response_chars", "short")}


def test_categories_and_splits_by_source_and_annotator() -> None:
    connection = duckdb.connect()
    bench = shared_rows("mt-bench/question.jsonl", "prompts", fields={"prompt": "turns"})
    for row in bench[:30]:
        row["annotator"] = "alice"
    load(connection, "raw", bench)
    result = inspect_version(connection, "raw", language_rows=0)
    # README: 80 questions, 10 per category, 2 turns each.
    assert result.rows == 80
    assert result.categories["task_type"] == {
        c: 10 for c in ("coding", "extraction", "humanities", "math", "reasoning", "roleplay", "stem", "writing")
    }
    assert result.distributions["turns"]["min"] == result.distributions["turns"]["max"] == 2
    by_annotator = {line["annotator"]: line["rows"] for line in result.splits["annotator"]}
    assert by_annotator == {"(none)": 50, "alice": 30}
    assert result.crosstabs["kind_by_source"] == {"mt-bench": {"prompt": 80}}
    assert [line["ingest_day"] for line in result.splits["ingest_day"]] == [utcnow().strftime("%Y-%m-%d")]


def test_krippendorff_alpha_reference_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", nominal example with four
    # observers and missing values: alpha = 0.743.
    observers = [
        "1 2 3 3 2 1 4 1 2 . . .",
        "1 2 3 3 2 2 4 1 2 5 . 3",
        ". 3 3 3 2 3 4 2 2 5 1 .",
        "1 2 3 3 2 4 4 1 2 5 1 .",
    ]
    table = [line.split() for line in observers]
    units = {u: [obs[u] for obs in table if obs[u] != "."] for u in range(12)}
    assert round(krippendorff_alpha_nominal(units), 3) == 0.743
    assert krippendorff_alpha_nominal({1: ["a", "a"], 2: ["b", "b"]}) == 1.0
    assert krippendorff_alpha_nominal({1: ["a", "a"], 2: ["a", "a"]}) is None  # no variation: undefined
    assert pairwise_agreement({1: ["a", "a", "b"], 2: ["c", "c"]}) == pytest.approx(2 / 4)


def test_agreement_over_preference_judgements_by_several_annotators() -> None:
    def judgement(item: int, annotator: str, first_wins: bool) -> dict:
        better, worse = ("A", "B") if first_wins else ("B", "A")
        return new_row(
            row_id=f"{item}-{annotator}",
            kind="preference",
            source="prefs",
            license="MIT",
            origin="human",
            annotator=annotator,
            messages=[{"role": "user", "content": f"q{item}"}],
            chosen=[{"role": "assistant", "content": f"{better}{item}"}],
            rejected=[{"role": "assistant", "content": f"{worse}{item}"}],
        )

    connection = duckdb.connect()
    rows = [
        judgement(1, "ann1", True),
        judgement(1, "ann2", True),
        judgement(1, "ann3", False),
        judgement(2, "ann1", False),
        judgement(2, "ann2", False),
        judgement(3, "ann1", True),
    ]  # item 3 has one label: not pairable
    load(connection, "raw", rows)
    result = inspect_version(connection, "raw", language_rows=0).agreement
    assert result["preference_items_with_several_annotators"] == 2
    assert result["pairwise_agreement"] == pytest.approx(round(2 / 4, 3))  # item 1: 1 of 3 pairs, item 2: 1 of 1
    # Same value computed by hand from the coincidence matrix: labels per item {A,A,B}, {B,B}.
    assert result["krippendorff_alpha_nominal"] == pytest.approx(
        round(krippendorff_alpha_nominal({1: ["A", "A", "B"], 2: ["B", "B"]}), 3)
    )


def test_plots_are_pngs_and_the_report_links_them(tmp_path: Path, oasst) -> None:
    connection, _ = oasst
    result = inspect_version(connection, "raw", language_rows=50)
    images = plots(result)
    assert set(images) == {"lengths", "by_source", "composition"}
    assert all(png.startswith(b"\x89PNG") and len(png) > 5_000 for png in images.values())
    report, pngs = write_inspection_report(tmp_path / "report", [result], {"raw": "abc123"})
    text = report.read_text()
    for name in images:
        assert f"src='raw_{name}.png'" in text and (tmp_path / "report" / f"raw_{name}.png").exists()
    assert "abc123" in text and "consensus ranks" in text
    stats = json.loads((tmp_path / "report" / "stats.json").read_text())
    assert stats["raw"]["rows"] == 626
    summary = markdown_summary(result, pngs["raw"])
    assert summary.count("data:image/png;base64,") == 3


def test_versions_are_plotted_in_workers_as_in_this_process(oasst) -> None:
    """``inspect_versions`` draws each version's plots in worker processes while it inspects the next: the
    figures are the ones :func:`plots` draws here, byte for byte, for each version present."""
    connection, _ = oasst
    connection.execute("CREATE OR REPLACE TABLE deduped AS SELECT * FROM raw WHERE kind = 'chat'")
    try:
        inspected, missing, drawn = inspect_versions(connection, workers=2)
    finally:
        connection.execute("DROP TABLE deduped")
    assert [version.table for version in inspected] == ["raw", "deduped"] and "formatted" in missing
    assert drawn == {version.table: plots(version) for version in inspected}


def test_inspecting_a_missing_table_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="materialize it first"):
        inspect_version(duckdb.connect(), "formatted")


def test_inspection_asset_reports_in_metadata_and_html(home: Path) -> None:
    from assets.inspection import inspection
    from resources import WarehouseResource

    source = SourceConfig(name="demo_sft", path="data/alpaca_sft.jsonl", mapping="alpaca", license="Apache-2.0")
    rows = [
        i
        for i in ingest_file(DEMO_CONFIG.parent / source.path, source.path, source, utcnow(), 20_000)
        if not isinstance(i, Quarantined)
    ]
    home.mkdir(parents=True)
    with duckdb.connect(str(home / "warehouse.duckdb")) as connection:
        load(connection, "raw", rows)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [inspection],
            instance=instance,
            resources={"warehouse": WarehouseResource(path=str(home / "warehouse.duckdb"))},
        )
        (event,) = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["versions_inspected"].value == ["raw"]
    assert metadata["versions_missing"].value == ["deduped", "filtered", "synthetic", "synthetic_mixed", "formatted"]
    assert metadata["raw_stats"].value["rows"] == len(rows)
    assert f"| raw | {len(rows)} |" in metadata["overview"].value
    assert metadata["raw"].value.count("data:image/png;base64,") == 3
    report = Path(metadata["report"].value)
    assert report == home / "reports" / "inspection" / "index.html" and report.exists()
    page = report.read_text(encoding="utf-8")
    assert "`" not in page and "<code>n_tokens</code>" in page  # the notes' Markdown code spans as HTML
    kinds = Counter(r["kind"] for r in rows)
    assert metadata["raw_stats"].value["categories"]["kind"] == dict(kinds)


def test_text_rows_are_measured_by_their_text_and_have_no_turns() -> None:
    connection = duckdb.connect()
    load(
        connection,
        "raw",
        [
            new_row(
                row_id="t1",
                kind="text",
                source="web",
                license="CC0-1.0",
                origin="human",
                text="Plain text for pretraining, seven words.",
            ),
            new_row(
                row_id="c1",
                kind="chat",
                source="chat",
                license="MIT",
                origin="human",
                messages=[
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "Bye"},
                ],
            ),
        ],
    )
    result = inspect_version(connection, "raw", language_rows=0)
    by_source = {line["source"]: line for line in result.splits["source"]}
    assert by_source["web"]["prompt_chars_median"] == len("Plain text for pretraining, seven words.")
    assert by_source["web"]["turns_mean"] is None and by_source["chat"]["turns_mean"] == 2
    assert by_source["chat"]["prompt_chars_median"] == len("Hi\nBye")


def test_an_empty_version_still_gets_a_report(tmp_path: Path) -> None:
    connection = duckdb.connect()
    load(connection, "filtered", [])
    result = inspect_version(connection, "filtered")
    assert result.rows == 0 and result.outliers == [] and result.languages == {}
    report, pngs = write_inspection_report(tmp_path, [result])
    assert "filtered" in report.read_text() and set(pngs["filtered"]) == {"lengths", "by_source", "composition"}


def test_large_versions_are_counted_whole_and_measured_on_a_seeded_sample() -> None:
    connection = duckdb.connect()
    rows = [
        new_row(
            row_id=f"r{i:03d}",
            kind="sft",
            source="a" if i % 3 else "b",
            license="MIT",
            origin="human" if i % 4 else "synthetic",
            generator=None if i % 4 else "teacher-x",
            messages=[{"role": "user", "content": "q" * (1 + i)}, {"role": "assistant", "content": "answer"}],
        )
        for i in range(300)
    ]
    load(connection, "raw", rows)
    result = inspect_version(connection, "raw", language_rows=0, sample_rows=50)
    assert (result.rows, result.measured) == (300, 50)
    assert result.categories["source"] == {"a": 200, "b": 100}
    assert result.categories["origin"] == {"human": 225, "synthetic": 75}
    by_source = {line["source"]: (line["rows"], line["human_share"]) for line in result.splits["source"]}
    assert by_source == {"a": (200, 0.75), "b": (100, 0.75)}
    assert result.crosstabs["origin_by_source"]["b"] == {"human": 75, "synthetic": 25}
    assert result.distributions["prompt_chars"]["count"] == 50
    assert "lengths and outliers: sampled 50 of 300 rows" in markdown_summary(result)
    again = inspect_version(connection, "raw", language_rows=0, sample_rows=50)
    assert again.distributions == result.distributions and again.outliers == result.outliers
