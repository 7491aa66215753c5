"""`distillery audit`: the chain of a row back to its raw records, on a warehouse with known answers.

The warehouse is built through the real table layouts (canonical DDL, lineage, provenance,
dedup_clusters, side tables), with one row of each kind the issue names: human, redacted,
near-duplicate kept row, synthetic (teacher + judge) and reverse instruction.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from curation.audit.trace import RowNotFound, audit_row
from curation.core.provenance import LINEAGE_SCHEMA, PROVENANCE_DDL, PROVENANCE_SCHEMA, lineage_record
from curation.core.schema import new_row, rows_to_table
from curation.core.warehouse import LINEAGE_DDL, Warehouse, canonical_ddl, index_lookup_columns
from curation.dedup.clusters import CLUSTERS_DDL
from curation.format.table import FORMAT_REJECTIONS_DDL, FORMATTED_COLUMNS
from curation.synth.stage import REJECTIONS_DDL as SYNTH_REJECTIONS_DDL

REJECTIONS_DDL = "row_id VARCHAR NOT NULL, filter VARCHAR NOT NULL, reason VARCHAR NOT NULL, value VARCHAR"
EXCLUDED_DDL = "row_id VARCHAR NOT NULL, reason VARCHAR NOT NULL"
QUARANTINE_DDL = (
    "source VARCHAR, source_uri VARCHAR, file VARCHAR, record_no BIGINT, line_no BIGINT, "
    "error VARCHAR, raw_text VARCHAR, ingested_at TIMESTAMP"
)
SECRET = "alice@example.com"
WHEN = datetime(2026, 1, 2, 3, 4, 5)


def _sft(row_id: str, source: str, uri: str, license_: str, prompt: str, answer: str, **fields) -> dict:
    return new_row(
        row_id=row_id,
        kind="sft",
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        source=source,
        source_uri=uri,
        license=license_,
        origin=fields.pop("origin", "human"),
        ingested_at=WHEN,
        **fields,
    )


def build_warehouse(path: Path, extra_raw: list[dict] | None = None) -> None:
    """The pipeline's tables for a handful of rows whose fate is known (see the module docstring)."""
    h1 = _sft("h1", "wiki", "data/a.jsonl#1", "CC-BY-4.0", "What is DNA?", "A molecule.")
    p1 = _sft("p1", "mail", "data/a.jsonl#2", "Apache-2.0", "Who to write?", f"Write to {SECRET}.")
    p1c = dict(p1, row_id="p1c", messages=[p1["messages"][0], {"role": "assistant", "content": "Write to [EMAIL]."}])
    k1 = _sft("k1", "forum", "data/b.jsonl#1", "MIT", "Capital of France?", "Paris.")
    d1 = _sft("d1", "scrape", "data/c.jsonl#5", "CC-BY-SA-4.0", "Capital of France ?", "Paris!")
    x1 = _sft("x1", "forum", "data/b.jsonl#2", "MIT", "Help?", "I cannot help with that.")
    nc1 = _sft("nc1", "nc_qa", "data/nc.csv#1", "CC-BY-NC-4.0", "Name a prime.", "Seven.")
    doc1 = new_row(
        row_id="doc1",
        kind="text",
        text="Rivers flow to the sea.",
        source="docs",
        source_uri="data/docs.jsonl#3",
        license="CC-BY-4.0",
        origin="human",
        ingested_at=WHEN,
    )
    s1 = _sft(
        "s1",
        "wiki",
        "data/a.jsonl#1",
        "CC-BY-4.0",
        "What is DNA?",
        "Deoxyribonucleic acid, a molecule.",
        origin="synthetic",
        generator="teacher-x",
        extra={"terms": {"forbids": ["commercial"], "terms": ["no-competing-models"], "models": ["teacher-x"]}},
    )
    r1 = _sft(
        "r1",
        "docs",
        "data/docs.jsonl#3",
        "LicenseRef-teacher-y",
        "Where do rivers flow?",
        "Rivers flow to the sea.",
        origin="augmented",
        generator="teacher-y",
        extra={"terms": {"forbids": ["commercial"], "terms": ["y-terms"], "models": ["teacher-y"]}},
    )
    m1 = _sft(
        "m1",
        "synthetic",
        "teacher:teacher-x/arith#1",
        "Apache-2.0",
        "1+1?",
        "2",
        origin="synthetic",
        generator="teacher-x",
    )
    z1 = _sft(
        "z1",
        "nc_qa",
        "data/nc.csv#1",
        "Apache-2.0",
        "Tell me a prime number.",
        "Seven.",
        origin="augmented",
        generator="teacher-z",
    )  # mislabelled: its parent is non-commercial
    raw = [h1, p1, k1, d1, x1, nc1, doc1, *(extra_raw or [])]
    filtered = [h1, p1c, k1, nc1, doc1]
    synthetic = [s1, r1, m1, z1]
    mixed = [*filtered, s1, r1, z1]
    formatted = [dict(r, row_id=f"f_{r['row_id']}") for r in mixed]

    connection = duckdb.connect(str(path))
    for table, rows in (
        ("raw", raw),
        ("deduped", [r for r in raw if r["row_id"] != "d1"]),
        ("filtered", filtered),
        ("synthetic", synthetic),
        ("synthetic_mixed", mixed),
    ):
        connection.execute(f"CREATE TABLE {table} ({canonical_ddl()})")
        connection.register("_in", rows_to_table(rows))
        connection.execute(f"INSERT INTO {table} SELECT * FROM _in")
    connection.execute(f"CREATE TABLE formatted ({canonical_ddl(FORMATTED_COLUMNS)})")
    connection.register("_in", rows_to_table(formatted))
    connection.execute(
        "INSERT INTO formatted BY NAME SELECT *, substr(row_id, 3) AS parent_id, "
        "CASE WHEN row_id = 'f_k1' THEN 'eval' ELSE 'train' END AS split FROM _in"
    )
    edges = [
        lineage_record("p1c", "p1", "filtered", "clean:pii", "messages[1].content: redacted 1 EMAIL"),
        lineage_record("s1", "h1", "synthetic", "generate:response", "new response from teacher-x"),
        lineage_record("r1", "doc1", "synthetic", "reverse_instruction", "instruction written for a document"),
        lineage_record("z1", "nc1", "synthetic", "paraphrase", "instruction paraphrased"),
        *[
            lineage_record(f"f_{r['row_id']}", r["row_id"], "formatted", "format", "template t1, 20 tokens")
            for r in mixed
        ],
    ]
    connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
    connection.register("_in", pa.Table.from_pylist(edges, schema=LINEAGE_SCHEMA))
    connection.execute("INSERT INTO lineage SELECT * FROM _in")
    connection.execute(f"CREATE TABLE dedup_clusters ({CLUSTERS_DDL})")
    connection.execute(
        "INSERT INTO dedup_clusters VALUES "
        "('c1', 'k1', 'k1', 'near:w5', 1.0, 'k1', 1.0, false, 'kept'), "
        "('c1', 'd1', 'k1', 'near:w5', 0.85, 'k1', 0.85, true, 'near duplicate')"
    )
    connection.execute(f"CREATE TABLE provenance ({PROVENANCE_DDL})")
    names = PROVENANCE_SCHEMA.names  # by name, so columns a newer layout adds stay NULL
    provenance = [
        dict(zip(names, values, strict=False))  # shorter tuples: the later columns stay NULL
        for values in (
            (
                "s1",
                "response",
                "openai-compatible",
                "teacher-x",
                "rev-7",
                "Apache-2.0",
                "no-competing-models",
                json.dumps({"temperature": 0.7, "seed": 3}),
                "answer-v1",
                json.dumps(["h1"]),
                "judge-j",
                4.5,
                json.dumps({"judge": "pass"}),
                WHEN,
            ),
            (
                "r1",
                "reverse_instruction",
                "transformers",
                "teacher-y",
                "abc",
                None,
                None,
                json.dumps({"temperature": 0}),
                "reverse-v2",
                json.dumps(["doc1"]),
                None,
                None,
                json.dumps({}),
                WHEN,
            ),
            (
                "m1",
                "template:arithmetic",
                "procedural",
                "teacher-x",
                "1",
                "Apache-2.0",
                None,
                "{}",
                "arithmetic",
                "[]",
                None,
                None,
                "{}",
                WHEN,
            ),
            (
                "z1",
                "paraphrase",
                "procedural",
                "teacher-z",
                "1",
                "Apache-2.0",
                None,
                "{}",
                "paraphrase-v1",
                json.dumps(["nc1"]),
                None,
                None,
                "{}",
                WHEN,
            ),
        )
    ]
    connection.register("_in", pa.Table.from_pylist(provenance, schema=PROVENANCE_SCHEMA))
    connection.execute("INSERT INTO provenance BY NAME SELECT * FROM _in")
    connection.execute(f"CREATE TABLE synthetic_rejections ({SYNTH_REJECTIONS_DDL})")
    connection.execute(
        "INSERT INTO synthetic_rejections VALUES ('cand1', 'responses', 'judge score 2.0 below 3.5', "
        "'[\"h1\"]', 'teacher-x', 2.0, ?, '{}', ?)",
        [json.dumps({"text": SECRET}), WHEN],
    )
    connection.execute(f"CREATE TABLE filter_rejections ({REJECTIONS_DDL})")
    connection.execute("INSERT INTO filter_rejections VALUES ('x1', 'refusal', 'boilerplate refusal', 'I cannot')")
    connection.execute(f"CREATE TABLE mix_excluded ({EXCLUDED_DDL})")
    connection.execute("INSERT INTO mix_excluded VALUES ('m1', 'over the synthetic cap of 30%')")
    connection.execute(f"CREATE TABLE format_rejections ({FORMAT_REJECTIONS_DDL})")
    connection.execute(f"CREATE TABLE quarantine ({QUARANTINE_DDL})")
    connection.execute(
        "INSERT INTO quarantine VALUES ('wiki', 'data/a.jsonl#9', 'data/a.jsonl', 9, 9, 'invalid JSON', '{', ?)", [WHEN]
    )
    connection.close()


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("audit") / "warehouse.duckdb"
    build_warehouse(path)
    connection = duckdb.connect(str(path), read_only=True)
    yield connection
    connection.close()


def test_human_row_chain_reaches_its_source_record(db) -> None:
    audit = audit_row(db, "f_h1")
    assert audit.status() == "in formatted (split train)"
    assert [(o.row_id, o.info["source"], o.info["source_uri"], o.info["license"]) for o in audit.origins()] == [
        ("h1", "wiki", "data/a.jsonl#1", "CC-BY-4.0")
    ]
    assert [(e.child_id, e.parent_id, e.operation) for e in audit.parents("f_h1")] == [("f_h1", "h1", "format")]
    assert audit.rows["h1"].tables == ["raw", "deduped", "filtered", "synthetic_mixed"]
    assert audit.licenses() == ["CC-BY-4.0"] and audit.teachers() == []
    # What the human row also became: a synthetic answer made from it.
    assert {(e.child_id, e.operation) for e in audit_row(db, "h1").children("h1")} == {
        ("f_h1", "format"),
        ("s1", "generate:response"),
    }


def test_redacted_row_names_the_edit_and_never_shows_the_secret(db) -> None:
    audit = audit_row(db, "f_p1c")
    chain = [(e.child_id, e.parent_id, e.operation, e.detail) for e in audit.upstream]
    assert ("p1c", "p1", "clean:pii", "messages[1].content: redacted 1 EMAIL") in chain
    assert [o.row_id for o in audit.origins()] == ["p1"]
    assert audit.rows["p1"].info["source_uri"] == "data/a.jsonl#2"
    text, machine = audit.to_text(), audit.to_json()
    assert "clean:pii" in text and "redacted 1 EMAIL" in text
    assert SECRET not in text and SECRET not in machine
    # The raw row, audited forward, says it continued as its redacted copy.
    assert audit_row(db, "p1").status() == "continued as p1c (clean:pii in filtered)"


def test_near_duplicate_kept_row_lists_the_copies_it_stands_for(db) -> None:
    audit = audit_row(db, "f_k1")
    absorbed = [e for e in audit.upstream if e.relation == "absorbed"]
    assert [(e.child_id, e.parent_id, e.operation) for e in absorbed] == [("k1", "d1", "dedup:near:w5")]
    assert "jaccard 0.850" in absorbed[0].detail
    assert {(o.row_id, o.info["source"], o.info["license"]) for o in audit.origins()} == {
        ("k1", "forum", "MIT"),
        ("d1", "scrape", "CC-BY-SA-4.0"),
    }
    assert audit.licenses() == ["CC-BY-SA-4.0", "MIT"]
    removed = audit_row(db, "d1")
    assert removed.status() == "removed at deduped as a duplicate of k1 (dedup:near:w5)"
    assert "f_k1" in {e.child_id for e in removed.downstream}


def test_synthetic_row_records_teacher_template_parameters_and_judge(db) -> None:
    audit = audit_row(db, "f_s1")
    provenance = audit.rows["s1"].provenance
    assert (provenance["teacher_model"], provenance["teacher_revision"], provenance["prompt_template"]) == (
        "teacher-x",
        "rev-7",
        "answer-v1",
    )
    assert provenance["generation_params"] == {"temperature": 0.7, "seed": 3}
    assert (provenance["judge_model"], provenance["judge_score"]) == ("judge-j", 4.5)
    assert audit.teachers() == ["judge-j", "teacher-x"]
    assert [o.row_id for o in audit.origins()] == ["h1"]
    # The provenance parent repeats the lineage edge: listed once.
    assert [(e.child_id, e.parent_id) for e in audit.parents("s1")] == [("s1", "h1")]
    text = audit.to_text()
    assert "generated by teacher-x rev rev-7" in text and "judged by judge-j with score 4.5" in text
    assert json.loads(audit.to_json())["rows"]["s1"]["provenance"]["generation_params"]["temperature"] == 0.7


def test_reverse_instruction_row_goes_back_to_its_document(db) -> None:
    audit = audit_row(db, "f_r1")
    assert [(e.child_id, e.parent_id, e.operation) for e in audit.parents("r1")] == [
        ("r1", "doc1", "reverse_instruction")
    ]
    assert [(o.row_id, o.info["source_uri"], o.info["license"]) for o in audit.origins()] == [
        ("doc1", "data/docs.jsonl#3", "CC-BY-4.0")
    ]
    assert audit.rows["r1"].provenance["method"] == "reverse_instruction"
    assert audit.teachers() == ["teacher-y"]
    assert audit.licenses() == ["CC-BY-4.0", "LicenseRef-teacher-y"]


def test_removed_rows_say_where_and_why_they_stopped(db) -> None:
    assert audit_row(db, "x1").status() == "stopped at filtered (filter_rejections: refusal - boilerplate refusal)"
    assert audit_row(db, "m1").status() == ("stopped at synthetic_mixed (mix_excluded: over the synthetic cap of 30%)")
    candidate = audit_row(db, "cand1")
    assert candidate.status() == ("stopped at synthetic (synthetic_rejections: responses - judge score 2.0 below 3.5)")
    assert [o.row_id for o in candidate.origins()] == ["h1"]
    assert SECRET not in candidate.to_json()  # the rejected candidate's content is not shown
    quarantined = audit_row(db, "data/a.jsonl#9")
    assert quarantined.row_id is None
    assert quarantined.status() == "quarantined at raw: invalid JSON"


def test_a_source_record_can_be_audited_by_its_uri(db) -> None:
    assert audit_row(db, "data/docs.jsonl#3").row_id == "doc1"


def test_unknown_id_is_reported_with_what_to_give(db) -> None:
    with pytest.raises(RowNotFound, match=r"no row 'zzz'.*source_uri like file.jsonl#12"):
        audit_row(db, "zzz")


def build_million(path: Path, n: int = 1_000_000) -> None:
    """raw, filtered and formatted with ``n`` rows each and ``1.1 n`` lineage edges (every 10th row
    redacted in filtered, every row formatted)."""
    connection = duckdb.connect(str(path))
    connection.execute(f"CREATE TABLE raw ({canonical_ddl()})")
    connection.execute(f"""INSERT INTO raw (row_id, kind, messages, source, source_uri, license, origin, ingested_at)
        SELECT 'r' || i, 'sft', '[]', 'src' || (i % 7), 'data/f' || (i % 7) || '.jsonl#' || i,
               CASE WHEN i % 5 = 0 THEN 'CC-BY-NC-4.0' ELSE 'Apache-2.0' END, 'human', TIMESTAMP '2026-01-01'
        FROM range({n}) t(i)""")
    connection.execute(f"CREATE TABLE lineage ({LINEAGE_DDL})")
    connection.execute(
        f"INSERT INTO lineage SELECT 'c' || i, 'r' || i, 'filtered', 'clean:pii', 'redacted 1 EMAIL' "
        f"FROM range(0, {n}, 10) t(i)"
    )
    connection.execute(f"CREATE TABLE filtered ({canonical_ddl()})")
    connection.execute(
        "INSERT INTO filtered SELECT * REPLACE (CASE WHEN CAST(substr(row_id, 2) AS BIGINT) % 10 = 0 "
        "THEN 'c' || substr(row_id, 2) ELSE row_id END AS row_id) FROM raw"
    )
    connection.execute(f"CREATE TABLE formatted ({canonical_ddl(FORMATTED_COLUMNS)})")
    connection.execute(
        "INSERT INTO formatted BY NAME SELECT * REPLACE ('f' || substr(row_id, 2) AS row_id), "
        "row_id AS parent_id, 'train' AS split FROM filtered"
    )
    connection.execute(
        "INSERT INTO lineage SELECT row_id, parent_id, 'formatted', 'format', 'template t' FROM formatted"
    )
    connection.execute(f"CREATE TABLE dedup_clusters ({CLUSTERS_DDL})")
    connection.execute(f"CREATE TABLE provenance ({PROVENANCE_DDL})")
    connection.execute(f"CREATE TABLE synthetic_rejections ({SYNTH_REJECTIONS_DDL})")
    connection.execute(f"CREATE TABLE filter_rejections ({REJECTIONS_DDL})")
    for table in ("raw", "lineage", "filtered", "formatted", "dedup_clusters", "provenance", "filter_rejections"):
        index_lookup_columns(connection, table)  # what every asset write does
    connection.close()


@pytest.mark.slow
def test_audit_of_a_million_row_warehouse_takes_milliseconds(tmp_path: Path) -> None:
    path = tmp_path / "warehouse.duckdb"
    build_million(path)
    with duckdb.connect(str(path), read_only=True) as connection:
        assert connection.execute("SELECT count(*) FROM lineage").fetchall() == [(1_100_000,)]
        audit_row(connection, "f1")  # the first lookups read the index roots from disk
        timings = []
        for key in ("f500000", "f123457", "r999990", "c500000", "r123457"):
            start = time.perf_counter()
            audit = audit_row(connection, key)
            timings.append(time.perf_counter() - start)
        assert audit_row(connection, "r999990").status() == "continued as c999990 (clean:pii in filtered)"
        assert audit.status() == "continued as f123457 (format in formatted)"
        assert [(e.child_id, e.parent_id) for e in audit_row(connection, "f500000").upstream] == [
            ("f500000", "c500000"),
            ("c500000", "r500000"),
        ]
    print(f"audit on 1M rows: median {statistics.median(timings) * 1000:.0f} ms")
    # ~20-60 ms on 2 busy cores; a scan per lookup (no indexes) takes ~0.5 s.
    assert statistics.median(timings) < 0.25, timings


def test_every_table_an_asset_writes_is_indexed_on_its_lookup_columns(tmp_path: Path) -> None:
    warehouse = Warehouse(tmp_path / "warehouse.duckdb")
    for attempt in range(2):  # the second write replaces the asset's lineage partition: indexes rebuilt
        with warehouse.write("filtered") as staged:
            rows = staged.create("filtered", canonical_ddl())
            staged.append(rows, rows_to_table([_sft(f"c{attempt}", "s", "a.jsonl#1", "MIT", "q", "a")]))
            edges = staged.partition("lineage", LINEAGE_DDL)
            staged.append_rows(edges, [lineage_record(f"c{attempt}", "r1", "filtered", "clean:pii")], LINEAGE_SCHEMA)
            # A stage's reuse bookkeeping is read whole by its joins, never one id at a time: no index.
            for bookkeeping in ("filter_memo", "dedup_facts"):
                staged.connection.execute(f"INSERT INTO {staged.create(bookkeeping, 'row_id VARCHAR')} VALUES ('c1')")
    with warehouse.connect(read_only=True) as connection:
        indexed = set(connection.execute("SELECT table_name, sql FROM duckdb_indexes()").fetchall())
        assert {(table, column) for table, column in _index_columns(indexed)} == {
            ("filtered", "row_id"),
            ("lineage", "child_id"),
            ("lineage", "parent_id"),
        }
        assert connection.execute("SELECT child_id FROM lineage").fetchall() == [("c1",)]
        assert audit_row(connection, "c1").upstream[0].parent_id == "r1"


def _index_columns(indexes: set[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(table, sql.split("(")[-1].rstrip(");")) for table, sql in indexes]
