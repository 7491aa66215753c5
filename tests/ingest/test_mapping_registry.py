"""Mappings are registered in one place: the project file's `mapping` and `options`, the ingester's dispatch
and docs/mappings.md all come from one @mapping registration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from curation.core.config import ConfigError, load_project
from curation.core.warehouse import Warehouse, table_rows
from curation.ingest.mappings import (
    MAPPINGS,
    FieldReader,
    Mapped,
    MappingOptions,
    NoOptions,
    mapping,
    mappings_reference,
)
from curation.ingest.sources import ingest_sources, quarantine_overview

PROJECT = """
sources:
  - name: first
    path: first.jsonl
    mapping: alpaca
    license: MIT
  - name: second
    path: second.jsonl
{source}
format:
  tokenizer: tok
"""


def project_file(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "distillery.yaml"
    path.write_text(PROJECT.format(source=source))
    return path


def config_error(tmp_path: Path, source: str) -> str:
    with pytest.raises(ConfigError) as error:
        load_project(project_file(tmp_path, source))
    return str(error.value)


@pytest.fixture
def scratch_registry() -> Iterator[None]:
    """Mappings a test registers are forgotten afterwards, so other tests (and the docs check) see the
    built-in ones only."""
    built_in = dict(MAPPINGS)
    yield
    MAPPINGS.clear()
    MAPPINGS.update(built_in)


# ---- the project file -----------------------------------------------------------------------


def test_unknown_mapping_names_the_key_and_lists_every_registered_mapping(tmp_path: Path) -> None:
    message = config_error(tmp_path, "    mapping: alpacca\n    license: MIT")
    line = next(line for line in message.splitlines() if "sources.1.mapping" in line)
    assert line.startswith("  - sources.1.mapping: Input should be 'alpaca', ")
    assert line.endswith(", got 'alpacca'")
    assert all(f"'{name}'" in line for name in MAPPINGS)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            "    mapping: oasst\n    options: {mdoe: best}",
            "  - sources.1.options.mdoe: unknown key (check the spelling",
        ),
        (
            "    mapping: oasst\n    options: {mode: all}",
            "  - sources.1.options.mode: Input should be 'threads', 'best' or 'preference', got 'all'",
        ),
        ("    mapping: alpaca\n    options: {mode: best}", "  - sources.1.options.mode: unknown key"),
        (
            "    mapping: sharegpt\n    options: {role_key: [from]}",
            "  - sources.1.options.role_key: Input should be a valid string",
        ),
    ],
)
def test_options_are_checked_by_the_mappings_model_and_errors_name_the_key_path(
    tmp_path: Path, source: str, expected: str
) -> None:
    message = config_error(tmp_path, source + "\n    license: MIT")
    assert expected in message
    assert message.startswith(f"{tmp_path / 'distillery.yaml'}: the project file is invalid:")


def test_every_bad_key_of_a_source_is_reported_at_once(tmp_path: Path) -> None:
    message = config_error(tmp_path, "    mapping: oasst\n    options: {mode: all, depth: 2}\n    licence: MIT")
    assert "sources.1.options.mode:" in message and "sources.1.options.depth: unknown key" in message
    assert "sources.1.licence: unknown key" in message and "sources.1.license: required key is missing" in message


def test_valid_options_load(tmp_path: Path) -> None:
    project = load_project(project_file(tmp_path, "    mapping: oasst\n    options: {mode: best}\n    license: MIT"))
    assert project.sources[1].options == {"mode": "best"}


# ---- adding a mapping -----------------------------------------------------------------------


def test_a_new_mapping_is_one_decorated_function(tmp_path: Path, scratch_registry: None) -> None:
    class QaOptions(MappingOptions):
        shout: bool = False

    @mapping(
        "qa_pairs",
        kinds=["sft"],
        fields={"question": "q", "answer": "a"},
        options=QaOptions,
        doc="Question/answer pairs: `{q, a}`.",
    )
    def map_qa_pairs(fields: FieldReader, options: QaOptions) -> list[Mapped]:
        question, answer = fields.text("question") or "", fields.text("answer") or ""
        if options.shout:
            answer = answer.upper()
        return [
            Mapped(
                kind="sft",
                messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                extra=fields.extra(),
            )
        ]

    records = [{"q": "Capital of France?", "reply": "Paris", "id": 1}, {"q": "No answer here", "id": 2}]
    (tmp_path / "first.jsonl").write_text(json.dumps({"instruction": "Hi", "output": "Hello"}) + "\n")
    (tmp_path / "second.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    config = project_file(
        tmp_path, "    mapping: qa_pairs\n    fields: {answer: reply}\n    options: {shout: true}\n    license: MIT"
    )
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.write("raw") as staged:
        summary = ingest_sources(load_project(config), staged)
        quarantined, sample = quarantine_overview(staged)
    assert summary.rows_added == 2 and quarantined == 1
    assert sample[0]["source_uri"] == "second.jsonl#2" and sample[0]["line"] == 2
    assert "missing required field 'reply' (the answer)" in sample[0]["error"]
    with warehouse.connect(read_only=True) as connection:
        (row,) = [r for r in table_rows(connection, "raw") if r["source"] == "second"]
    assert row["kind"] == "sft" and row["messages"][1]["content"] == "PARIS" and row["extra"] == {"id": 1}
    assert (
        "| `qa_pairs` | Question/answer pairs: `{q, a}`. | `question` ← `q`<br>`answer` ← `a` |" in mappings_reference()
    )
    assert "sources.1.options.loud: unknown key" in config_error(
        tmp_path, "    mapping: qa_pairs\n    options: {loud: true}\n    license: MIT"
    )


def test_a_mapping_must_produce_only_the_kinds_it_declares(scratch_registry: None) -> None:
    @mapping("mislabelled", kinds=["sft"], fields={"text": "text"}, doc="Says sft, gives text.")
    def map_mislabelled(fields: FieldReader, options: NoOptions) -> list[Mapped]:
        return [Mapped(kind="text", text=fields.text("text"))]

    with pytest.raises(RuntimeError, match=r"'mislabelled' produced a 'text' row but declares the kinds \['sft'\]"):
        MAPPINGS["mislabelled"].map({"text": "a document"}, {}, NoOptions())


def test_registration_refuses_what_would_break_the_registry(scratch_registry: None) -> None:
    def map_anything(fields: FieldReader, options: NoOptions) -> list[Mapped]:
        return []

    with pytest.raises(ValueError, match="'alpaca' is registered twice"):
        mapping("alpaca", kinds=["sft"], fields={}, doc="")(map_anything)
    with pytest.raises(ValueError, match="kinds must be some of"):
        mapping("dialogue", kinds=["dialogue"], fields={}, doc="")(map_anything)
    with pytest.raises(ValueError, match=r"optional fields \['system'\] are not declared"):
        mapping("loose", kinds=["sft"], fields={"prompt": "prompt"}, optional=["system"], doc="")(map_anything)
    assert {"dialogue", "loose"}.isdisjoint(MAPPINGS)


def test_reading_an_undeclared_field_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="'output' is not declared by the mapping"):
        FieldReader({"output": "x"}, {"text": "text"}).text("output")


# ---- the reference page ---------------------------------------------------------------------


def test_the_mappings_reference_lists_every_mapping_with_its_options_and_kinds() -> None:
    generated = mappings_reference()
    for name in MAPPINGS:
        assert f"\n| `{name}` |" in generated
    oasst = next(line for line in generated.splitlines() if line.startswith("| `oasst` |"))
    assert "`mode` (`threads` \\| `best` \\| `preference`, default `threads`)" in oasst
    assert oasst.endswith("| `chat`, `preference` |")
