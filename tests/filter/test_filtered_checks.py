"""The `filtered` asset and its checks through real Dagster runs on public data: licence policy for the
intended use, per-source languages, known bad rows rejected with reasons, legitimate HTML kept, and
checks that fail when the data they guard is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from tests.conftest import REPO, SHARED_DATA, require_shared_data

CODE_ALPACA = SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json"
LLMS_PREFERENCE = SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json"
TOKENIZER = REPO / "demo" / "tokenizer"

FORUM_FR = [
    {
        "instruction": "Quelle est la capitale de la France et pourquoi est-elle si célèbre dans le monde entier ?",
        "output": "La capitale de la France est Paris, célèbre pour ses musées, sa cuisine et son histoire.",
    },
    {
        "instruction": "Peux-tu m'expliquer comment on prépare une bonne pâte à crêpes à la maison ?",
        "output": "Mélangez la farine, les œufs, le lait et une pincée de sel, puis laissez reposer la pâte.",
    },
    {
        "instruction": "What is the best way to learn to play the guitar as an adult beginner?",
        "output": "Practise a little every day, learn a few open chords first and play songs you enjoy.",
    },
]
CONTACTS = [
    {
        "instruction": "Who should I write to about the order?",
        "output": "Write to maria.rivera@rivera-family.net and mention the order number in the subject line.",
    },
    {"instruction": "Name a primary colour.", "output": "Red"},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def project(
    folder: Path, sources: str, *, intended_use: str = "research", filters: str = "{}", name: str = "distillery.yaml"
) -> Path:
    path = folder / name
    path.write_text(
        f"sources:\n{sources}\nfilters: {filters}\nformat: {{tokenizer: {TOKENIZER}}}\n"
        f"policy: {{intended_use: {intended_use}}}\n",
        encoding="utf-8",
    )
    return path


def stage_defs():
    from assets.deduped import deduped
    from assets.filtered import filtered
    from assets.raw import raw
    from checks import ALL_CHECKS

    assets = [raw, deduped, filtered]
    keys = {a.key for a in assets}
    return assets, [c for c in ALL_CHECKS if all(k.asset_key in keys for k in c.check_keys)]


def materialize(
    config: Path, warehouse: Path, selection: dg.AssetSelection | None = None, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    from resources import ProjectResource, WarehouseResource

    assets, checks = stage_defs()
    resources = {
        "project": ProjectResource(config_path=str(config)),
        "warehouse": WarehouseResource(path=str(warehouse)),
    }
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [*assets, *checks],
            selection=selection,
            instance=instance,
            resources=resources,
            raise_on_error=False,
            run_config=run_config,
        )


def evaluations(result: dg.ExecuteInProcessResult, asset: str = "filtered") -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key.to_user_string() == asset}


def filtered_metadata(result: dg.ExecuteInProcessResult) -> dict:
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "filtered"]
    return event.materialization.metadata


# ----------------------------------------------------------------------------- research build


@pytest.fixture(scope="module")
def research(tmp_path_factory: pytest.TempPathFactory) -> tuple[dg.ExecuteInProcessResult, Path]:
    require_shared_data(CODE_ALPACA)
    require_shared_data(LLMS_PREFERENCE)
    folder = tmp_path_factory.mktemp("research")
    write_jsonl(folder / "forum_fr.jsonl", FORUM_FR)
    config = project(
        folder,
        f"""\
  - {{name: code_alpaca, path: {CODE_ALPACA}, mapping: alpaca, license: CC-BY-NC-4.0}}
  - name: llms_pref
    path: {LLMS_PREFERENCE}
    mapping: preference
    fields: {{prompt: [instruction, input]}}
    license: Apache-2.0
    origin: synthetic
    generator: Llama-3.1-70B
  - {{name: forum_fr, path: forum_fr.jsonl, mapping: alpaca, license: CC-BY-4.0, allowed_languages: [fr]}}""",
    )
    warehouse = folder / "warehouse.duckdb"
    return materialize(config, warehouse), warehouse


@pytest.fixture
def research_db(research) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect(str(research[1]), read_only=True)
    yield connection
    connection.close()


def rejections_by_record(db: duckdb.DuckDBPyConnection, source: str) -> dict[int, tuple[str, str, str | None]]:
    """0-based record index in the source file → (filter, reason, value)."""
    rows = db.execute(
        "SELECT r.source_uri, f.filter, f.reason, f.value FROM filter_rejections f "
        "JOIN raw r USING (row_id) WHERE r.source = ?",
        [source],
    ).fetchall()
    return {int(uri.rsplit("#", 1)[1]) - 1: (flt, reason, value) for uri, flt, reason, value in rows}


@pytest.mark.slow
def test_research_build_passes_every_check(research) -> None:
    result, _ = research
    assert result.success
    checks = evaluations(result)
    assert {
        "expectations",
        "no_pii_left",
        "licenses_allowed",
        "rejections_explained",
        "rows_conserved",
        "canonical_schema",
    } <= set(checks)
    assert [name for name, e in checks.items() if not e.passed] == []
    suite = checks["expectations"].metadata
    assert suite["unsuccessful_expectations"].value == 0 and suite["evaluated_expectations"].value >= 10
    with duckdb.connect(str(research[1]), read_only=True) as db:
        (kept,) = db.execute("SELECT count(*) FROM filtered").fetchone()
    assert suite["rows_validated"].value == suite["rows_total"].value == kept  # whole table: under the sample
    assert checks["no_pii_left"].metadata["rows_scanned"].value == kept
    assert evaluations(result, "raw")["expectations"].passed


@pytest.mark.slow
def test_known_bad_rows_are_rejected_with_their_reason(research_db) -> None:
    # README answers: code-alpaca rows 237 and 1859 have an empty output; llms-from-scratch rows 122, 226,
    # 400, 566, 628, 676 have chosen == rejected. Nothing else in these two sources is rejected.
    assert rejections_by_record(research_db, "code_alpaca") == {
        237: ("empty", "empty response", None),
        1859: ("empty", "empty response", None),
    }
    assert rejections_by_record(research_db, "llms_pref") == {
        i: ("chosen_equals_rejected", "chosen identical to rejected", None) for i in (122, 226, 400, 566, 628, 676)
    }


@pytest.mark.slow
def test_code_alpacas_legitimate_html_is_kept_unchanged(research_db) -> None:
    tag = re.compile(
        r"</?(?:html|head|body|div|span|p|a|h[1-6]|table|tr|td|th|ul|ol|li|form|input|button|img|"
        r"script|style|title|label|select|option|nav|header|footer)\b[^<>]*>",
        re.IGNORECASE,
    )
    rows = research_db.execute("""
        SELECT CAST(r.messages AS VARCHAR), CAST(f.messages AS VARCHAR) FROM raw r
        LEFT JOIN lineage l ON l.parent_id = r.row_id AND l.asset = 'filtered'
        LEFT JOIN filtered f ON f.row_id = coalesce(l.child_id, r.row_id)
        WHERE r.source = 'code_alpaca'""").fetchall()
    with_html = [(before, after) for before, after in rows if tag.search(before)]
    assert len(with_html) >= 106  # README: 106 rows hold HTML as code (this tag list finds a few more)
    assert [before for before, after in with_html if after is None] == []  # none dropped
    assert all(tag.findall(before) == tag.findall(after) for before, after in with_html)  # no tag touched


@pytest.mark.slow
def test_allowed_languages_of_a_source_apply_only_to_that_source(research, research_db) -> None:
    assert rejections_by_record(research_db, "forum_fr") == {2: ("language", "language en (0.98), allowed: fr", "en")}
    # English code and preference rows are not restricted: no language rejection outside forum_fr.
    assert (
        research_db.execute(
            "SELECT count(*) FROM filter_rejections f JOIN raw r USING (row_id) "
            "WHERE f.filter = 'language' AND r.source <> 'forum_fr'"
        ).fetchone()[0]
        == 0
    )
    metadata = filtered_metadata(research[0])
    assert metadata["language_policy"].value == {"allowed": None, "by_source": {"forum_fr": ["fr"]}}


@pytest.mark.slow
def test_materialization_reports_per_filter_counts_a_plot_and_examples(research, research_db) -> None:
    metadata = filtered_metadata(research[0])
    counted = dict(research_db.execute("SELECT filter, count(*) FROM filter_rejections GROUP BY 1").fetchall())
    assert {k: v for k, v in metadata["rejected_by_filter"].value.items() if v} == counted
    assert counted == {"empty": 2, "chosen_equals_rejected": 6, "language": 1}
    order = metadata["filter_order"].value
    assert order[0] == "license" and order.index("empty") < order.index("language")  # cheapest first
    table = metadata["per_filter"].value
    (deduped,) = research_db.execute("SELECT count(*) FROM deduped").fetchone()
    assert f"| empty | filter | 0.1 | {deduped} | 2 |" in table  # every row reaches the second filter
    assert metadata["rejections_plot"].value.startswith("![rejections per filter](data:image/png;base64,")
    sample = metadata["rejection_sample"].value
    assert all(name in sample for name in counted)  # every filter that rejected shows examples
    assert "| forum_fr | language | 1 |" in metadata["rejected_by_source"].value


# ----------------------------------------------------------------------------- commercial build


@pytest.mark.slow
def test_commercial_build_drops_the_non_commercial_source(tmp_path: Path) -> None:
    require_shared_data(CODE_ALPACA)
    write_jsonl(tmp_path / "contacts.jsonl", CONTACTS)
    config = project(
        tmp_path,
        f"""\
  - {{name: code_alpaca, path: {CODE_ALPACA}, mapping: alpaca, license: CC-BY-NC-4.0}}
  - {{name: contacts, path: contacts.jsonl, mapping: alpaca, license: MIT}}""",
        intended_use="commercial",
    )
    result = materialize(config, tmp_path / "warehouse.duckdb")
    assert result.success
    checks = evaluations(result)
    assert [name for name, e in checks.items() if not e.passed] == []
    assert checks["licenses_allowed"].metadata["intended_use"].value == "commercial"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb"), read_only=True) as db:
        assert db.execute("SELECT filter, reason, count(*) FROM filter_rejections GROUP BY ALL").fetchall() == [
            ("license", "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build", 2017)
        ]
        assert db.execute("SELECT DISTINCT source, license FROM filtered").fetchall() == [("contacts", "MIT")]
        # The e-mail address was redacted, so the PII check had something real to look at.
        texts = " ".join(r[0] for r in db.execute("SELECT CAST(messages AS VARCHAR) FROM filtered").fetchall())
        assert "[EMAIL]" in texts and "maria.rivera" not in texts


# ----------------------------------------------------------------------------- checks that must fail


@pytest.mark.slow
def test_licence_check_blocks_a_commercial_build_whose_licence_filter_is_off(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "qa.jsonl", FORUM_FR[2:] + CONTACTS[1:])
    config = project(
        tmp_path,
        "  - {name: nc_qa, path: qa.jsonl, mapping: alpaca, license: CC-BY-NC-4.0}",
        intended_use="commercial",
        filters="{license: false}",
    )
    result = materialize(config, tmp_path / "warehouse.duckdb")
    check = evaluations(result)["licenses_allowed"]
    assert not check.passed and check.blocking
    assert check.metadata["rows_disallowed"].value == 2
    assert check.metadata["disallowed"].value == {
        "CC-BY-NC-4.0": "CC-BY-NC-4.0 is non-commercial: not allowed in a commercial build"
    }


@pytest.mark.slow
def test_suite_and_pii_checks_fail_when_the_filters_were_bypassed(tmp_path: Path) -> None:
    """Data filtered with PII redaction and the length filter off, checked against a project that asks
    for both: the checks must notice, and must not republish the address they found."""
    write_jsonl(tmp_path / "contacts.jsonl", CONTACTS)
    sources = "  - {name: contacts, path: contacts.jsonl, mapping: alpaca, license: MIT}"
    lax = project(tmp_path, sources, filters="{cleaners: {pii: false}, length: false}", name="lax.yaml")
    strict = project(tmp_path, sources, filters="{length: {min_response_words: 3}}", name="strict.yaml")
    warehouse = tmp_path / "warehouse.duckdb"
    assert materialize(lax, warehouse).success

    from checks.filtered import filtered_expectations, filtered_no_pii_left

    result = materialize(
        strict, warehouse, selection=dg.AssetSelection.checks(filtered_expectations, filtered_no_pii_left)
    )
    checks = evaluations(result)
    assert set(checks) == {"expectations", "no_pii_left"}
    pii = checks["no_pii_left"]
    assert not pii.passed and pii.metadata["rows_by_entity"].value == {"EMAIL": 1}
    assert "maria.rivera" not in json.dumps({k: str(v.value) for k, v in pii.metadata.items()})
    suite = checks["expectations"]
    assert not suite.passed
    (failure,) = suite.metadata["failures"].value
    assert (failure["column"], failure["unexpected_count"], failure["examples"]) == ("response_words", 1, "1")


@pytest.mark.slow
def test_suite_sample_size_is_configurable(research) -> None:
    from checks.filtered import filtered_expectations, filtered_no_pii_left

    result = materialize(
        Path(str(research[1]).replace("warehouse.duckdb", "distillery.yaml")),
        research[1],
        selection=dg.AssetSelection.checks(filtered_expectations, filtered_no_pii_left),
        run_config={
            "ops": {
                "filtered_expectations": {"config": {"sample_rows": 500}},
                "filtered_no_pii_left": {"config": {"sample_rows": 100}},
            }
        },
    )
    with duckdb.connect(str(research[1]), read_only=True) as db:
        (kept,) = db.execute("SELECT count(*) FROM filtered").fetchone()
    pii = evaluations(result)["no_pii_left"]
    assert pii.passed and (pii.metadata["rows_scanned"].value, pii.metadata["rows_total"].value) == (100, kept)
    suite = evaluations(result)["expectations"]
    assert suite.passed
    assert (suite.metadata["rows_validated"].value, suite.metadata["rows_total"].value) == (500, kept)
    assert suite.metadata["sampled"].value is True


@pytest.mark.slow
def test_raw_suite_warns_about_rows_whose_licence_the_project_no_longer_declares(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "contacts.jsonl", CONTACTS)
    before = project(
        tmp_path, "  - {name: contacts, path: contacts.jsonl, mapping: alpaca, license: MIT}", name="before.yaml"
    )
    after = project(
        tmp_path, "  - {name: contacts, path: contacts.jsonl, mapping: alpaca, license: Apache-2.0}", name="after.yaml"
    )
    warehouse = tmp_path / "warehouse.duckdb"
    assert materialize(before, warehouse, selection=dg.AssetSelection.assets("raw")).success

    from checks.expectations import raw_expectations

    suite = evaluations(materialize(after, warehouse, selection=dg.AssetSelection.checks(raw_expectations)), "raw")[
        "expectations"
    ]
    assert not suite.passed and suite.severity == dg.AssetCheckSeverity.WARN and not suite.blocking
    (failure,) = suite.metadata["failures"].value
    assert (failure["column"], failure["unexpected_count"], failure["examples"]) == ("license", 2, "MIT, MIT")


# ----------------------------------------------------------------------------- units (no Dagster run)


def sources(**allowed: list[str] | None) -> list:
    from curation.core.config import SourceConfig

    return [
        SourceConfig(name=name, path="x.jsonl", mapping="alpaca", license="MIT", allowed_languages=langs)
        for name, langs in allowed.items()
    ]


def test_allowed_languages_restrict_only_their_source_unless_a_global_list_is_set() -> None:
    from curation.filter.chain import build_filters, filter_settings

    settings = filter_settings({}, "research", {}, sources(forum=["fr"], docs=None))
    assert settings["language"] == {"allowed": None, "by_source": {"forum": ["fr"]}}
    (language,) = [f for f in build_filters(settings) if f.name == "language"]
    assert language.allowed_for({"source": "forum"}) == ["fr"] and language.allowed_for({"source": "docs"}) is None
    # A global list stays in force for the other sources; `true` means the filter's default (English).
    assert filter_settings({"language": {"allowed": ["en", "de"]}}, "research", {}, sources(forum=["fr"]))[
        "language"
    ] == {"allowed": ["en", "de"], "by_source": {"forum": ["fr"]}}
    assert filter_settings({"language": True}, "research", {}, sources(forum=["fr"]))["language"] == {
        "by_source": {"forum": ["fr"]}
    }
    # No per-source setting and no language section: the filter stays off (it is opt-in).
    assert "language" not in filter_settings({}, "research", {}, sources(docs=None))


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"language": False}, "filters.language is false"),
        ({"language": {"by_source": {"forum": ["de"]}}}, "disagrees with filters.language.by_source['forum']"),
        ({"language": {"by_source": {"froum": ["fr"]}}}, "names ['froum'], which are not sources"),
    ],
)
def test_contradictory_language_settings_are_errors(filters: dict, message: str) -> None:
    from curation.filter.chain import filter_settings

    with pytest.raises(ValueError, match=re.escape(message)):
        filter_settings(filters, "research", {}, sources(forum=["fr"]))


def test_pii_hits_name_the_row_and_type_but_never_the_text() -> None:
    from curation.filter.rechecks import pii_left

    def row(row_id: str, answer: str) -> dict:
        return {
            "row_id": row_id,
            "source": "s",
            "kind": "sft",
            "messages": [{"role": "user", "content": "mail me"}, {"role": "assistant", "content": answer}],
        }

    rows = [row("a", "at joe_doe@gmail.com or +44 20 7946 0958"), row("b", "[EMAIL] and [PHONE] stay redacted")]
    scanned, per_entity, hits = pii_left(rows, ("EMAIL", "PHONE"))
    assert scanned == 2 and per_entity == {"EMAIL": 1, "PHONE": 1}
    assert hits == [{"row_id": "a", "source": "s", "entity": "EMAIL", "offset": 11, "length": 17}]


def test_private_keys_and_url_credentials_are_looked_for_in_every_row() -> None:
    """The SQL screen runs over the stored JSON, where newlines and quotes are escaped: it must still
    find what the detectors find in the decoded texts."""
    from curation.core.schema import new_row, rows_to_table
    from curation.core.warehouse import canonical_ddl
    from curation.filter.pii import find_pii
    from curation.filter.rechecks import EVERY_ROW_ENTITIES, pii_left_in_every_row

    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"
    answers = [key, 'use "postgres://ad"min:s3cr\u0001t@db.internal:5432/app"', "nothing here", "[PRIVATE_KEY]"]
    rows = [
        new_row(
            row_id=f"r{i}",
            kind="sft",
            source="s",
            messages=[{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
        )
        for i, answer in enumerate(answers * 50)
    ]
    assert [m.entity for answer in answers for m in find_pii(answer, EVERY_ROW_ENTITIES)] == [
        "PRIVATE_KEY",
        "URL_CREDENTIALS",
    ]
    with duckdb.connect() as connection:
        connection.execute(f"CREATE TABLE filtered ({canonical_ddl()})")
        connection.register("_rows", rows_to_table(rows))
        connection.execute("INSERT INTO filtered SELECT * FROM _rows")
        screened, per_entity, hits = pii_left_in_every_row(connection, "filtered", EVERY_ROW_ENTITIES)
    assert per_entity == {"PRIVATE_KEY": 50, "URL_CREDENTIALS": 50}
    assert screened == 100  # only the rows that hold one were searched
    assert [hit["row_id"] for hit in hits[:2]] == ["r0", "r1"] and "s3cr" not in repr(hits)


def test_great_expectations_suite_reports_which_column_broke_which_rule() -> None:
    import pandas as pd

    from checks.expectations import in_set, not_null, validate_frame

    frame = pd.DataFrame({"kind": ["sft", "bogus", "chat"], "license": ["MIT", None, "MIT"]})
    outcome = validate_frame(frame, "unit", [in_set("kind", ["sft", "chat"]), *not_null("kind", "license")])
    assert not outcome.success
    assert outcome.statistics["evaluated_expectations"] == 3 and outcome.statistics["successful_expectations"] == 1
    assert [(f["expectation"], f["column"], f["unexpected_count"]) for f in outcome.failures()] == [
        ("expect_column_values_to_be_in_set", "kind", 1),
        ("expect_column_values_to_not_be_null", "license", 1),
    ]
    assert outcome.failures()[0]["examples"] == "bogus"
    assert outcome.metadata()["success_percent"] == pytest.approx(100 / 3)


def test_formatted_suite_holds_token_counts_to_the_projects_budget() -> None:
    import pandas as pd

    from checks.expectations import formatted_suite, validate_frame
    from curation.core.config import load_project
    from tests.conftest import DEMO_CONFIG

    demo = load_project(DEMO_CONFIG)  # format.max_tokens: 512
    frame = pd.DataFrame(
        {
            "row_id": ["a", "b", "c"],
            "parent_id": ["p", "q", "r"],
            "split": ["train", "eval", "test"],
            "text": ["x", "y", "z"],
            "n_tokens": [12, 512, 513],
        }
    )
    failures = validate_frame(frame, "formatted", formatted_suite(demo)).failures()
    assert [(f["column"], f["examples"]) for f in failures] == [("split", "test"), ("n_tokens", "513")]
