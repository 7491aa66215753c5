"""The filter registry, the runner (batching, first rejection wins, stats, edits) and the preview."""

from __future__ import annotations

import copy
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from curation.core.config import load_project
from curation.core.schema import iter_rows, new_row, rows_to_table
from curation.filter.base import CLEANERS, FILTERS, Cleaner, Filter, FilterError, FilterStats, reference_markdown
from curation.filter.chain import build_cleaners, build_filters, project_chain
from curation.filter.runner import preview, preview_markdown, run_filters
from tests.conftest import DEMO_CONFIG, SHARED_DATA


def sft(row_id: str, prompt: str, response: str) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        source="t",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
    )


def collect(rows, cleaners=(), filters=(), **kwargs):
    stats = FilterStats()
    kept, rejected, edited, sizes = [], [], [], []
    for batch in run_filters(rows, cleaners, filters, stats=stats, **kwargs):
        kept += batch.kept
        rejected += batch.rejected
        edited += batch.edited
        sizes.append(len(batch.kept) + len(batch.rejected))
    return kept, rejected, edited, stats, sizes


@pytest.fixture
def registry():
    """Filters and cleaners a test defines are forgotten afterwards (the registry is process-wide)."""
    filters, cleaners = dict(FILTERS), dict(CLEANERS)
    yield
    FILTERS.clear()
    FILTERS.update(filters)
    CLEANERS.clear()
    CLEANERS.update(cleaners)


# --- registry -------------------------------------------------------------------------------


def test_default_chain_is_cheapest_first_with_the_cleaners_in_their_order():
    filters = build_filters()
    assert [f.name for f in filters] == [
        "empty",
        "chosen_equals_rejected",
        "length",
        "chat_tokens",
        "encoding",
        "refusal",
        "echo",
        "gopher_quality",
        "repetition",
    ]
    costs = [f.cost for f in filters]
    assert costs == sorted(costs)
    assert [c.name for c in build_cleaners()] == ["fix_encoding", "html_to_text", "pii", "whitespace"]
    # Opt-in: which languages, terms and extra behaviours are unwanted is the user's decision.
    assert {"language", "blocklist", "patterns", "license", "pii"} <= set(FILTERS) - {f.name for f in filters}
    assert "markdown" in CLEANERS


def test_config_switches_off_tunes_adds_and_orders():
    filters = build_filters(
        {
            "echo": False,
            "length": {"min_response_words": 5},
            "patterns": {"preset": "unsolicited_suggestions"},
            "order": ["repetition", "empty"],
        }
    )
    names = [f.name for f in filters]
    assert "echo" not in names and "patterns" in names
    assert names[:2] == ["repetition", "empty"]
    assert next(f for f in filters if f.name == "length").min_response_words == 5
    only = build_filters({"defaults": False, "blocklist": {"terms": ["x"]}})
    assert [f.name for f in only] == ["blocklist"]


def test_project_chain_reads_the_whole_filters_section():
    config = load_project(DEMO_CONFIG)
    config = config.model_copy(
        update={
            "filters": {
                "cleaners": {"markdown": True, "html_to_text": False},
                "echo": False,
                "language": {"allowed": ["en"]},
            }
        }
    )
    cleaners, filters = project_chain(config)
    assert [c.name for c in cleaners] == ["fix_encoding", "pii", "markdown", "whitespace"]
    names = [f.name for f in filters]
    assert "language" in names and "echo" not in names and "cleaners" not in names
    assert names[0] == "license"  # bound to the project's intended use, and the cheapest


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"no_such_filter": {}}, "unknown filter 'no_such_filter'.*known filters:.*empty"),
        ({"no_such_filter": False}, "unknown filter 'no_such_filter'"),
        ({"length": {"min_words": 3}}, "filter 'length': bad parameters"),
        ({"length": 5}, "parameters must be a mapping"),
        ({"order": ["language"]}, "not enabled"),
    ],
)
def test_config_errors_name_the_filter(config, message):
    with pytest.raises(ValueError, match=message):
        build_filters(config)


def test_adding_a_filter_is_one_class(registry):
    # Nothing else changes: defining the class registers it, the project file can name it, the runner
    # counts it and records its rejections, and the reference table lists it.
    @dataclass(frozen=True)
    class NeedsQuestion(Filter):
        """Prompts that are not questions."""

        name = "has_question_mark"
        cost = 0.01
        marker: str = "?"

        def decide(self, row):
            return None if self.marker in row["messages"][0]["content"] else "not a question"

    filters = build_filters({"defaults": False, "has_question_mark": True})
    kept, rejected, _, stats, _ = collect([sft("a", "Why?", "Because."), sft("b", "Do it.", "Done.")], filters=filters)
    assert [r["row_id"] for r in kept] == ["a"]
    assert rejected[0].as_record() == {
        "row_id": "b",
        "filter": "has_question_mark",
        "reason": "not a question",
        "value": None,
    }
    assert stats.seen == {"has_question_mark": 2} and stats.rejected == {"has_question_mark": 1}
    assert (
        "(../tests/filter/test_runner.py) | off | 0.01 | `marker` = `'?'` | Prompts that are not questions. |"
        in reference_markdown()
    )


def test_adding_a_cleaner_is_one_class(registry):
    @dataclass(frozen=True)
    class Shout(Cleaner):
        """Upper-case every text."""

        name = "shout"

        def clean_text(self, text):
            return text.upper(), "upper-cased"

    (cleaner,) = build_cleaners({"defaults": False, "shout": True})
    kept, _, edited, stats, _ = collect([sft("a", "hi", "HO")], cleaners=[cleaner])
    assert [m["content"] for m in kept[0]["messages"]] == ["HI", "HO"]
    assert [(e.cleaner, e.where, e.description) for e in edited[0].edits] == [
        ("shout", "messages[0].content", "upper-cased")
    ]  # the unchanged answer is no edit
    assert stats.edits == {"shout": 1}


def test_a_step_that_cannot_be_built_from_config_is_refused_when_defined(registry):
    with pytest.raises(TypeError, match="must declare a numeric cost"):

        class NoCost(Filter):
            """x"""

            name = "no_cost"

            def decide(self, row):
                return None

    with pytest.raises(TypeError, match="needs a docstring"):

        class NoDoc(Filter):
            name, cost = "no_doc", 1.0

            def decide(self, row):
                return None

    with pytest.raises(TypeError, match=r"already taken by curation\.filter\.quality\.EmptyFilter"):

        class Empty(Filter):
            """Another "empty"."""

            name, cost = "empty", 1.0

            def decide(self, row):
                return None

    with pytest.raises(TypeError, match="must implement clean_text"):

        class DoesNothing(Cleaner):
            """x"""

            name = "does_nothing"

    assert build_filters({"defaults": False}) == [] and "no_cost" not in FILTERS and "does_nothing" not in CLEANERS
    assert FILTERS["empty"].__module__ == "curation.filter.quality"


# --- runner ---------------------------------------------------------------------------------


def _sample_rows() -> list[dict]:
    return [
        sft("ok1", "What is 2+2?", "4"),
        sft("empty", "What is 2+2?", ""),
        sft("token", "What is 2+2?", "4<|im_end|>"),
        sft("refusal", "Tell me a joke", "As an AI language model, I cannot tell jokes."),
        sft("messy", "Capital of France?", "  The capital is <b>Paris</b>.  \r\n"),
        sft("ok2", "Name a colour.", "Blue."),
    ]


def test_runner_first_rejection_wins_and_stats_add_up():
    rows = _sample_rows()
    before = copy.deepcopy(rows)
    kept, rejected, edited, stats, sizes = collect(rows, build_cleaners(), build_filters(), batch_size=4)
    assert sizes == [4, 2]
    assert [r["row_id"] for r in kept if not r["row_id"].startswith("ok")] == [edited[0].child_id]
    assert {r.row_id: r.rejection.filter for r in rejected} == {
        "empty": "empty",
        "token": "chat_tokens",
        "refusal": "refusal",
    }
    assert stats.rows_in == 6 and stats.rows_kept == 3 and stats.rows_edited == 1
    assert stats.rows_kept + sum(stats.rejected.values()) == stats.rows_in
    order = [f.name for f in build_filters()]
    for earlier, later in itertools.pairwise(order):  # a filter sees what earlier ones passed
        assert stats.seen[later] == stats.seen[earlier] - stats.rejected[earlier]
    assert rows == before  # the runner never mutates its input


def test_edited_rows_get_a_derived_id_and_a_lineage_edge():
    kept, _, edited, stats, _ = collect([sft("messy", "Capital?", "  <b>Paris</b>  ")], build_cleaners())
    assert kept[0]["messages"][1]["content"] == "Paris"
    edge = edited[0]
    assert edge.parent_id == "messy" and edge.child_id == kept[0]["row_id"] != "messy"
    assert edge.operation == "clean:html_to_text,whitespace"
    assert [e.where for e in edge.edits] == ["messages[1].content", "messages[1].content"]
    assert stats.edits == {"fix_encoding": 0, "html_to_text": 1, "pii": 0, "whitespace": 1}
    # Same content → same derived id (re-runs are stable); reid=False keeps the parent's id.
    again, *_ = collect([sft("messy", "Capital?", "  <b>Paris</b>  ")], build_cleaners())
    assert again[0]["row_id"] == kept[0]["row_id"]
    same, *_ = collect([sft("messy", "Capital?", "  <b>Paris</b>  ")], build_cleaners(), reid=False)
    assert same[0]["row_id"] == "messy"


def test_runner_reads_arrow_batches_and_returns_tables():
    table = rows_to_table(_sample_rows())
    batches = list(run_filters(iter_rows(table.to_batches(max_chunksize=2)), build_cleaners(), build_filters()))
    out = batches[0].kept_table()
    assert out.schema == table.schema and out.num_rows == len(batches[0].kept)


def test_a_crashing_step_names_itself_and_the_row(registry):
    @dataclass(frozen=True)
    class Broken(Filter):
        """Fails on every row."""

        name, cost = "broken", 1.0

        def decide(self, row):
            return 1 / 0

    with pytest.raises(FilterError, match=r"filter 'broken' failed on row ok1: ZeroDivisionError"):
        collect(_sample_rows(), filters=[Broken()])

    @dataclass(frozen=True)
    class BrokenCleaner(Cleaner):
        """Fails on every text."""

        name = "broken_cleaner"

        def clean_text(self, text):
            raise KeyError(text)

    with pytest.raises(FilterError, match=r"cleaner 'broken_cleaner' failed on row ok1: KeyError"):
        collect(_sample_rows(), cleaners=[BrokenCleaner()])


# --- preview --------------------------------------------------------------------------------


def test_preview_shows_what_would_be_removed_and_why():
    result = preview(_sample_rows(), build_cleaners(), build_filters(), examples=1)
    assert set(result.rejected_examples) == {"empty", "chat_tokens", "refusal"}
    row_id, rejection, snippet = result.rejected_examples["refusal"][0]
    assert row_id == "refusal" and "As an AI language model" in snippet
    assert rejection.reason == "AI-identity boilerplate"
    markdown = preview_markdown(result)
    assert "**6** rows in, **3** kept (50.0%), **1** edited." in markdown
    assert "| refusal | `refusal` | AI-identity boilerplate |" in markdown
    assert "| html_to_text | `messy` | messages[1].content | HTML residue to text" in markdown


# --- public data ----------------------------------------------------------------------------


def _alpaca(file: Path) -> list[dict]:
    rows = []
    for i, rec in enumerate(json.loads(file.read_text(encoding="utf-8"))):
        prompt = rec["instruction"] + (f"\n\n{rec['input']}" if rec.get("input") else "")
        if "chosen" in rec:
            rows.append(
                new_row(
                    row_id=str(i),
                    kind="preference",
                    messages=[{"role": "user", "content": prompt}],
                    chosen=[{"role": "assistant", "content": rec["chosen"]}],
                    rejected=[{"role": "assistant", "content": rec["rejected"]}],
                )
            )
        else:
            rows.append(sft(str(i), prompt, rec["output"]))
    return rows


def test_default_chain_on_code_alpaca_drops_only_the_empty_outputs():
    rows = _alpaca(SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json")
    kept, rejected, edited, stats, _ = collect(rows, build_cleaners(), build_filters())
    assert {(r.row_id, r.rejection.reason) for r in rejected} == {("237", "empty response"), ("1859", "empty response")}
    assert stats.edits["html_to_text"] == 0  # HTML in code answers is the point here
    assert len(kept) == 2015 and len(edited) == stats.rows_edited


def test_default_chain_on_llms_from_scratch_drops_the_degenerate_pairs():
    rows = _alpaca(SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json")
    _, rejected, _, _, _ = collect(rows, build_cleaners(), build_filters())
    assert sorted(int(r.row_id) for r in rejected) == [122, 226, 400, 566, 628, 676]
    assert {r.rejection.filter for r in rejected} == {"chosen_equals_rejected"}


# --- the stage ------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_stage_writes_the_same_tables_with_one_or_two_workers(tmp_path, monkeypatch):
    import duckdb

    import curation.core.parallel
    from curation.core.warehouse import Warehouse, canonical_ddl, content_hash
    from curation.filter.runner import filter_table

    monkeypatch.setattr(curation.core.parallel, "MIN_ROWS_PER_WORKER", 1)  # two workers even for a few rows
    # Every sample row 20 times over: rejections, edits and clean rows in every batch.
    rows = [{**row, "row_id": f"{row['row_id']}-{i:02d}"} for i in range(20) for row in _sample_rows()]
    demo = load_project(DEMO_CONFIG)
    outcomes = {}
    for workers in (1, 2):
        path = tmp_path / f"workers{workers}.duckdb"
        with duckdb.connect(str(path)) as connection:
            connection.execute(f"CREATE TABLE deduped ({canonical_ddl()})")
            connection.register("_rows", rows_to_table(rows))
            connection.execute("INSERT INTO deduped SELECT * FROM _rows")
        config = demo.model_copy(update={"compute": demo.compute.model_copy(update={"workers": workers})})
        assert curation.core.parallel.workers_for(len(rows), config.compute.workers) == workers
        with Warehouse(path).write("filtered") as staged:
            # Batches of seven rows: many batches in flight, results must come back in input order.
            stats = filter_table(staged, "deduped", config, log=lambda _: None, batch_rows=7).stats
        with duckdb.connect(str(path), read_only=True) as connection:
            outcomes[workers] = {
                "versions": {t: content_hash(connection, t) for t in ("filtered", "filter_rejections", "lineage")},
                "kept": connection.execute("SELECT list(row_id) FROM filtered").fetchone(),
                "rejected": connection.execute("SELECT * FROM filter_rejections").fetchall(),
                "edited": connection.execute("SELECT * FROM lineage").fetchall(),
                "counts": (stats.rows_in, stats.rows_kept, stats.rows_edited, stats.seen, stats.rejected, stats.edits),
            }
    assert outcomes[1] == outcomes[2]
    counts = outcomes[1]["counts"]
    assert counts[:3] == (120, 60, 20) and counts[4]["refusal"] == 20 and counts[5]["html_to_text"] == 20


def _deduped(path: Path, rows: list[dict]) -> None:
    import duckdb

    from curation.core.warehouse import canonical_ddl

    with duckdb.connect(str(path)) as connection:
        connection.execute(f"CREATE OR REPLACE TABLE deduped ({canonical_ddl()})")
        connection.register("_rows", rows_to_table(rows))
        connection.execute("INSERT INTO deduped SELECT * FROM _rows")


@pytest.mark.slow
@pytest.mark.parametrize("patched", [False, True], ids=["copied", "patched"])
def test_a_rerun_filters_only_new_and_changed_rows_and_matches_a_fresh_run(tmp_path, monkeypatch, patched):
    import duckdb

    from curation.core import memo
    from curation.core.warehouse import StagedWrite, Warehouse, content_hash
    from curation.filter.runner import filter_table

    # The re-run either copies the kept rows into a new `filtered` or changes the current one in place.
    monkeypatch.setattr(memo, "PATCH_MAX_CHANGE", 1.0 if patched else 0.0)
    patches = []
    original_patch = StagedWrite.patch
    monkeypatch.setattr(
        StagedWrite, "patch", lambda self, *args: patches.append(original_patch(self, *args)) or patches[-1]
    )

    rows = [{**row, "row_id": f"{row['row_id']}-{i}"} for i in range(3) for row in _sample_rows()]
    # The next run: one clean row gains an HTML answer, one rejected row is fixed, two rows are new.
    changed = {
        "ok1-0": sft("ok1-0", "What is 2+2?", "<p>4</p>"),
        "empty-1": sft("empty-1", "What is 2+2?", "Four."),
    }
    later = [changed.get(row["row_id"], row) for row in rows] + [
        {**row, "row_id": f"{row['row_id']}-new"} for row in _sample_rows()[:2]
    ]
    demo = load_project(DEMO_CONFIG)
    tables = ("filtered", "filter_rejections", "filter_edits", "lineage")

    def run(path: Path, config=demo):
        with Warehouse(path).write("filtered") as staged:
            return filter_table(staged, "deduped", config, log=lambda _: None, batch_rows=5)

    def counts(result) -> tuple:
        stats = result.stats
        return stats.rows_in, stats.rows_kept, stats.rows_edited, stats.seen, stats.rejected, stats.edits

    again, fresh = tmp_path / "again.duckdb", tmp_path / "fresh.duckdb"
    _deduped(again, rows)
    assert run(again).rows_reused == 0
    with duckdb.connect(str(again)) as connection:  # marks what the re-run copies
        connection.execute("UPDATE filtered SET source_uri = coalesce(source_uri, '') || ' [copied]'")
        connection.execute("UPDATE filter_rejections SET reason = reason || ' [copied]'")
    _deduped(again, later)
    rerun = run(again)
    assert [patch is not None for patch in patches] == ([True] if patched else [])
    with duckdb.connect(str(again)) as connection:
        (copied,) = connection.execute("SELECT count(*) FROM filtered WHERE source_uri LIKE '% [copied]'").fetchone()
        (copied_rejections,) = connection.execute(
            "SELECT count(*) FROM filter_rejections WHERE reason LIKE '% [copied]'"
        ).fetchone()
        recomputed = connection.execute(
            "SELECT list(row_id ORDER BY row_id) FROM filtered WHERE coalesce(source_uri, '') NOT LIKE '% [copied]'"
        ).fetchone()[0]
        connection.execute("UPDATE filtered SET source_uri = nullif(replace(source_uri, ' [copied]', ''), '')")
        connection.execute("UPDATE filter_rejections SET reason = replace(reason, ' [copied]', '')")
        rerun_versions = {table: content_hash(connection, table) for table in tables}
    assert rerun.rows_reused == len(rows) - 2 == copied + copied_rejections
    assert len(recomputed) == 3  # the corrected answers and the new clean row ("empty-new" is rejected again)

    _deduped(fresh, later)
    first = run(fresh)
    with duckdb.connect(str(fresh), read_only=True) as connection:
        assert rerun_versions == {table: content_hash(connection, table) for table in tables}
    assert counts(rerun) == counts(first) and first.stats.edits["html_to_text"] == 4

    # Other filter settings: nothing is reused.
    without_refusals = demo.model_copy(update={"filters": {**demo.filters, "refusal": False}})
    assert run(fresh, without_refusals).rows_reused == 0
