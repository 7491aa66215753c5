"""Exports of `formatted`: layouts that `datasets`, pandas and TRL read, the manifest, immutability."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.core.config import FormatConfig
from curation.core.progress import EVERY_S_ENV
from curation.core.provenance import PROVENANCE_DDL
from curation.core.schema import JSON_COLUMNS, new_row
from curation.core.warehouse import SOURCE_ORDER, canonical_ddl
from curation.format import export as export_module
from curation.format.export import (
    MANIFEST,
    ExportError,
    ExportInfo,
    ExportResult,
    export_records,
    jsonl_to_parquet,
    verify_export,
    verify_published,
    write_export,
)
from curation.format.render import load_tokenizer
from curation.format.stage import format_and_verify
from curation.format.table import FORMATTED_COLUMNS
from tests.conftest import REPO

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
LONG_ANSWER = " ".join(f"Step {i}: keep stirring the sauce slowly." for i in range(40))


def _row(row_id: str, kind: str, **fields) -> dict:
    defaults = {
        "source": "alpaca",
        "source_uri": f"data/alpaca.jsonl#{row_id}",
        "license": "Apache-2.0",
        "origin": "human",
    }
    return new_row(row_id=row_id, kind=kind, **{**defaults, **fields})


def _user_assistant(question: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


INPUT_ROWS = [  # (row, split, max_tokens, length policy)
    (
        _row("sft1", "sft", messages=_user_assistant("What is the capital of France?", "Paris is the capital.")),
        "train",
        4096,
        "drop",
    ),
    (
        _row(
            "chat1",
            "chat",
            source="chat",
            source_uri="data/chat.json#3",
            license="CC-BY-4.0",
            messages=[*_user_assistant("Hi", "Hello!"), *_user_assistant("2+2?", "4")],
        ),
        "eval",
        4096,
        "drop",
    ),
    (
        _row(
            "tool1",
            "tool",
            source="tools",
            source_uri="data/tools.jsonl#1",
            license="MIT",
            extra={"tools": TOOLS},
            messages=[
                {"role": "user", "content": "Weather in Paris?"},
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
                    ],
                },
                {"role": "tool", "name": "get_weather", "content": '{"temp_c": 18}'},
                {"role": "assistant", "content": "It is 18 °C in Paris."},
            ],
        ),
        "train",
        4096,
        "drop",
    ),
    (
        _row(
            "syn1",
            "sft",
            origin="synthetic",
            generator="teacher-x",
            license="CC-BY-NC-4.0",
            source="seeds",
            source_uri="data/seeds.jsonl#9",
            messages=_user_assistant("Name a prime.", "7 is prime."),
        ),
        "train",
        4096,
        "drop",
    ),
    (
        _row(
            "pref1",
            "preference",
            source="prefs",
            source_uri="data/prefs.jsonl#1",
            license="MIT",
            messages=[{"role": "user", "content": "Say hello politely."}],
            chosen=[{"role": "assistant", "content": "Hello, nice to meet you."}],
            rejected=[{"role": "assistant", "content": "What do you want?"}],
        ),
        "train",
        4096,
        "drop",
    ),
    (
        _row(
            "text1",
            "text",
            source="web",
            source_uri="data/web.txt#1",
            license="CC0-1.0",
            text="Plain text for language modelling.",
        ),
        "eval",
        4096,
        "drop",
    ),
    (
        _row("prompt1", "prompt", messages=[{"role": "user", "content": "Write a haiku about rain."}]),
        "train",
        4096,
        "drop",
    ),
    (_row("long1", "sft", messages=_user_assistant("How do I make sauce?", LONG_ANSWER)), "train", 40, "truncate"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(REPO / "demo" / "tokenizer")


def _encode(record: dict) -> dict:
    return {
        k: json.dumps(v) if k in JSON_COLUMNS and v is not None and not isinstance(v, str) else v
        for k, v in record.items()
    }


def build_formatted(path: Path, tokenizer, rows=INPUT_ROWS) -> dict[str, dict]:
    """A warehouse with `formatted` (rendered by the real code), provenance and format_rejections."""
    records = {}
    for row, split, max_tokens, policy in rows:
        settings = FormatConfig(tokenizer="demo/tokenizer", max_tokens=max_tokens, length_policy=policy)
        outcome = format_and_verify([row], [split], tokenizer, settings, None)
        assert not outcome.rejections, outcome.rejections
        [record] = outcome.records
        records[row["row_id"]] = record | {"subset": 0.5 if row["row_id"] == "sft1" else 1.0}
    connection = duckdb.connect(str(path))
    connection.execute(f"CREATE TABLE formatted ({canonical_ddl(FORMATTED_COLUMNS)})")
    table = pa.Table.from_pylist([_encode(r) for r in records.values()])
    connection.register("incoming", table)
    connection.execute(
        f"INSERT INTO formatted ({', '.join(table.schema.names)}) SELECT {', '.join(table.schema.names)} FROM incoming"
    )
    connection.execute(f"CREATE TABLE provenance ({PROVENANCE_DDL})")
    connection.execute(
        "INSERT INTO provenance (row_id, method, teacher_backend, teacher_model, teacher_revision, "
        "teacher_license) VALUES ('syn1', 'self_instruct', 'transformers', 'teacher-x', 'abc123', "
        "'Apache-2.0')"
    )
    connection.execute("CREATE TABLE format_rejections (row_id VARCHAR, stage VARCHAR, reason VARCHAR, detail VARCHAR)")
    connection.execute("INSERT INTO format_rejections VALUES ('gone', 'decontamination', 'matches', 'bench:1')")
    connection.close()
    return records


INFO = ExportInfo(
    project="unit",
    project_file_hash="feedface",
    intended_use="research",
    tokenizer="demo/tokenizer",
    chat_template=None,
    max_tokens=4096,
    length_policy="drop",
    eval_fraction=0.2,
    seed=0,
    benchmarks=["bench"],
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer):
    base = tmp_path_factory.mktemp("export")
    records = build_formatted(base / "w.duckdb", tokenizer)
    with duckdb.connect(str(base / "w.duckdb"), read_only=True) as connection:
        result = write_export(connection, base / "exports", INFO)
    return result, records, base


def _without_nulls(value):
    """Parquet gives every struct the union of keys (missing ones null); TRL strips them the same way."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


def test_every_layout_loads_with_datasets_from_the_dataset_card(exported, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    result, records, _ = exported
    loaded = {
        config: datasets.load_dataset(str(result.path), config, cache_dir=str(tmp_path))
        for config in ("sft", "sft_tokenized", "preference", "preference_text", "prompts", "text")
    }
    counts = {config: {split: d.num_rows for split, d in dd.items()} for config, dd in loaded.items()}
    assert counts == {
        "sft": {"train": 3, "eval": 1},
        "sft_tokenized": {"train": 4, "eval": 1},
        "preference": {"train": 1},
        "preference_text": {"train": 1},
        "prompts": {"train": 1},
        "text": {"eval": 1},
    }
    sft = {r["id"]: r for r in loaded["sft"]["train"]}
    sft1, tool1 = records["sft1"], records["tool1"]
    assert _without_nulls(sft[sft1["row_id"]]["messages"]) == sft1["messages"]
    assert _without_nulls(sft[tool1["row_id"]]["messages"]) == tool1["messages"]
    assert _without_nulls(sft[tool1["row_id"]]["tools"]) == TOOLS
    assert sft[sft1["row_id"]]["license"] == "Apache-2.0" and sft[sft1["row_id"]]["subset"] == 0.5
    preference = loaded["preference"]["train"][0]
    assert preference["prompt"] == [{"role": "user", "content": "Say hello politely."}]
    assert preference["chosen"][0]["content"] == "Hello, nice to meet you."
    assert preference["rejected"][0]["content"] == "What do you want?"
    assert loaded["text"]["eval"][0]["text"] == "Plain text for language modelling."
    default = datasets.load_dataset(str(result.path), cache_dir=str(tmp_path))  # no config name: sft
    assert default["train"]["id"] == loaded["sft"]["train"]["id"]


def test_jsonl_loads_with_datasets_and_pandas_and_matches_parquet(exported, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    result, _, _ = exported
    for config in ("sft", "sft_tokenized", "preference", "preference_text"):
        jsonl = result.path / config / "train.jsonl"
        from_json = datasets.load_dataset("json", data_files=str(jsonl), split="train", cache_dir=str(tmp_path))
        frame = pd.read_json(jsonl, lines=True)
        parquet = pd.read_parquet(result.path / config / "train.parquet")
        assert from_json.num_rows == len(frame) == len(parquet)
        assert list(frame["id"]) == list(parquet["id"]) == from_json["id"]
        assert list(frame.columns) == list(parquet.columns)


def test_tokenized_layout_carries_exact_ids_and_assistant_only_masks(exported, tokenizer) -> None:
    result, records, _ = exported
    frame = pd.read_parquet(result.path / "sft_tokenized" / "train.parquet").set_index("id")
    sft1 = frame.loc[records["sft1"]["row_id"]]
    ids, mask = list(sft1["input_ids"]), list(sft1["assistant_masks"])
    assert len(ids) == len(mask) == sft1["n_tokens"]
    assert tokenizer.decode(ids) == sft1["text"] == records["sft1"]["text"]
    # The loss covers the reply and its end-of-turn token, nothing of the user turn or the headers.
    assert tokenizer.decode([i for i, m in zip(ids, mask, strict=True) if m]) == "Paris is the capital.<|im_end|>"
    long1 = frame.loc[records["long1"]["row_id"]]
    assert long1["n_tokens"] == 40 and len(long1["input_ids"]) == 40
    assert not tokenizer.decode(list(long1["input_ids"])).endswith("<|im_end|>")  # cut reply: no stop token


def test_rows_cut_inside_the_reply_are_only_in_the_tokenized_layout(exported) -> None:
    result, records, _ = exported
    long_id = records["long1"]["row_id"]
    assert records["long1"]["truncation"].startswith("truncated_last_assistant")
    sft_ids = set(pd.read_json(result.path / "sft" / "train.jsonl", lines=True)["id"])
    tokenized_ids = set(pd.read_json(result.path / "sft_tokenized" / "train.jsonl", lines=True)["id"])
    assert long_id not in sft_ids and long_id in tokenized_ids
    assert tokenized_ids - sft_ids == {long_id}


def test_preference_text_is_the_trl_split_of_the_rendering(exported, tokenizer) -> None:
    result, records, _ = exported
    row = pd.read_parquet(result.path / "preference_text" / "train.parquet").iloc[0]
    pref = records["pref1"]
    full = tokenizer.apply_chat_template(pref["messages"] + pref["chosen"], tokenize=False)
    assert row["prompt"] + row["chosen"] == full
    assert row["prompt"].endswith("<|im_start|>assistant\n") and row["chosen"].startswith("Hello, nice")


def test_manifest_lists_versions_counts_licences_attribution_teachers_and_tokenizer(exported) -> None:
    result, records, _ = exported
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["data_version"] == result.data_version == result.path.name
    assert manifest["project_file_hash"] == "feedface" and manifest["rows"]["sft"] == {"train": 3, "eval": 1}
    licenses = {lic["license"]: lic for lic in manifest["licenses"]}
    assert licenses["CC-BY-NC-4.0"]["commercial"] is False and licenses["CC-BY-4.0"]["attribution"] is True
    assert licenses["Apache-2.0"]["rows"] == 3  # sft1, prompt1, long1
    credited = {(a["source"], a["license"]): a["files"] for a in manifest["attribution"]}
    assert credited[("chat", "CC-BY-4.0")] == ["data/chat.json"]
    assert ("web", "CC0-1.0") not in credited  # CC0 asks for no attribution
    teachers = manifest["teachers"]
    assert [(t["model"], t["revision"], t["rows"]) for t in teachers] == [("teacher-x", "abc123", 1)]
    assert manifest["tokenizer"]["tokenizer_id"] == records["sft1"]["tokenizer_id"]
    assert manifest["tokenizer"]["template_id"] == records["sft1"]["template_id"]
    assert manifest["rows_removed_at_formatting"] == {"decontamination": 1}
    assert set(manifest["files"]) == {f"{c}/{s}.jsonl" for c, splits in manifest["rows"].items() for s in splits}
    assert verify_export(result.path) == []


def test_published_versions_are_checked_without_hashing_every_version_every_time(
    exported, tmp_path, monkeypatch
) -> None:
    """Each check hashes the files new to it or changed since they last matched, and re-hashes a bounded
    number of bytes of the others in rotation, those hashed longest ago first, so its cost does not grow with
    the versions kept or their size, and an edit is still found: at once when it touched the file's stat,
    within as many checks as there are files (here, one re-hashed per check) when it did not. (The versions
    here hold copies, not links to one another's files, so an edit touches one version.)"""

    def no_links(source: str, target: str) -> None:
        raise OSError(f"no hard links here: {source} -> {target}")

    monkeypatch.setattr(os, "link", no_links)  # a file system without hard links: versions get copies
    monkeypatch.setattr(export_module, "ROTATION_BYTES", 1)  # one file per check: the smallest rotation
    _, _, base = exported
    root = tmp_path / "exports"
    root.mkdir()
    with duckdb.connect(str(base / "w.duckdb"), read_only=True) as connection:
        versions = [
            write_export(connection, root, ExportInfo(**{**INFO.__dict__, "project_file_hash": f"v{n}"})).path
            for n in range(3)
        ]
    files = len(list(versions[0].rglob("*.jsonl"))) + len(list(versions[0].rglob("*.parquet")))
    first = verify_published(root)
    assert (first.versions, first.files_hashed, first.files_rotated, first.files_trusted) == (3, 3 * files, 0, 0)
    assert (first.problems, first.checks_since_oldest_hash) == ([], 0)
    rounds = [verify_published(root) for _ in range(3 * files)]
    assert [(r.files_hashed, r.files_rotated, r.files_trusted, r.problems) for r in rounds] == [
        (0, 1, 3 * files - 1, [])
    ] * (3 * files)
    assert all(r.bytes_hashed > 0 for r in rounds)
    # Oldest first: the first check's hashes age one check a round until the last of them is re-hashed, and by
    # then every file has been hashed again once (the oldest hash is from the round after the first check).
    assert [r.checks_since_oldest_hash for r in rounds] == [*range(1, 3 * files), 3 * files - 1]

    # An edit that kept the size and put the modification time back: the status-change time still moved.
    edited = versions[1] / "sft" / "train.jsonl"
    stat = edited.stat()
    text = edited.read_text()
    edited.write_text(text.replace('"', "'", 1))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    found = verify_published(root)
    assert found.problems == [
        {"version": versions[1].name, "problem": "sft/train.jsonl: content differs from the manifest's sha256"}
    ]

    # An edit the stat cannot show (here: the record altered to match it) is found when the file's turn comes.
    edited.write_text(text)
    verify_published(root)
    edited.write_text(text.replace('"', "'", 1))
    record = json.loads(export_module.verified_record(root).read_text())
    record["versions"][versions[1].name]["files"]["sft/train.jsonl"] = list(export_module._file_stat(edited))
    export_module.verified_record(root).write_text(json.dumps(record))
    rounds = [verify_published(root) for _ in range(3 * files)]
    found_in = next(number for number, r in enumerate(rounds) if r.problems)
    assert all(r.problems for r in rounds[found_in:])  # a file that failed is not recorded: hashed each check
    edited.write_text(text)
    assert verify_published(root).problems == []

    # A record edited by hand or cut short counts as none: everything is hashed again, nothing raises.
    record_file = export_module.verified_record(root)
    good = record_file.read_text()
    broken = json.loads(good)
    broken["checks"] = "many"
    for garbage in (json.dumps(broken), good[: len(good) // 2], '{"versions": {"x": {"files": {"a": 5}}}}', "[]"):
        record_file.write_text(garbage)
        again = verify_published(root)
        assert (again.files_hashed, again.files_rotated, again.problems) == (3 * files, 0, [])
        assert json.loads(record_file.read_text())["checks"] == 1  # written anew

    # A record of the earlier shape (one check per version) is read: nothing is hashed for its sake, and the
    # version hashed in full longest ago is the first rotated.
    record = json.loads(record_file.read_text())
    record["checks"] = 10
    for version, hashed_in_check in zip(versions, (5, 2, 7), strict=True):
        record["versions"][version.name]["hashed_in_check"] = hashed_in_check
        del record["versions"][version.name]["hashed_in"]
    record_file.write_text(json.dumps(record))
    check = verify_published(root)
    assert (check.files_hashed, check.files_rotated, check.problems) == (0, 1, [])
    assert check.checks_since_oldest_hash == 11 - 2
    hashed_in = {
        name: sorted(entry["hashed_in"].values())
        for name, entry in json.loads(record_file.read_text())["versions"].items()
    }
    assert hashed_in == {
        versions[0].name: [5] * files,
        versions[1].name: [2] * (files - 1) + [11],
        versions[2].name: [7] * files,
    }

    # A file that cannot be read is a problem of its version, not the end of the check.
    unreadable = versions[2] / "sft" / "train.jsonl"
    edited.write_text(text.replace('"', "'", 1))  # changed: hashed this check
    real_digest = export_module.file_digest

    def failing_digest(path: Path) -> str:
        if Path(path) == unreadable:
            raise PermissionError(f"[Errno 13] Permission denied: '{path}'")
        return real_digest(path)

    monkeypatch.setattr(export_module, "file_digest", failing_digest)
    os.utime(unreadable)  # its stat changed: hashed this check
    found = verify_published(root)
    assert found.problems == [
        {"version": versions[1].name, "problem": "sft/train.jsonl: content differs from the manifest's sha256"},
        {
            "version": versions[2].name,
            "problem": f"sft/train.jsonl: unreadable ([Errno 13] Permission denied: '{unreadable}')",
        },
    ]


def test_an_export_is_immutable_and_a_new_data_version_gets_a_new_folder(exported, tokenizer) -> None:
    result, _, base = exported
    root = base / "exports"
    before = {p: p.stat().st_mtime_ns for p in result.path.rglob("*")}
    with duckdb.connect(str(base / "w.duckdb"), read_only=True) as connection:
        again = write_export(connection, root, INFO)
    assert again.reused and again.data_version == result.data_version
    assert {p: p.stat().st_mtime_ns for p in result.path.rglob("*")} == before

    changed = [(row, split, n, policy) for row, split, n, policy in INPUT_ROWS if row["row_id"] != "prompt1"]
    build_formatted(base / "w2.duckdb", tokenizer, changed)
    with duckdb.connect(str(base / "w2.duckdb"), read_only=True) as connection:
        newer = write_export(connection, root, INFO)
    assert not newer.reused and newer.data_version != result.data_version
    assert "prompts" not in newer.manifest["rows"]
    assert verify_export(result.path) == [] and verify_export(newer.path) == []
    assert (root / "LATEST").read_text().strip() == newer.data_version
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]

    # A changed project file (same rows) is a new version too: the manifest is part of the hash.
    with duckdb.connect(str(base / "w2.duckdb"), read_only=True) as connection:
        other = write_export(connection, root, ExportInfo(**{**INFO.__dict__, "project_file_hash": "beef"}))
    assert other.data_version not in (newer.data_version, result.data_version)

    (newer.path / "sft" / "train.jsonl").write_text("{}\n")  # someone edits a published version
    assert verify_export(newer.path) == ["sft/train.jsonl: content differs from the manifest's sha256"]
    with (
        duckdb.connect(str(base / "w2.duckdb"), read_only=True) as connection,
        pytest.raises(ExportError, match="immutable"),
    ):
        write_export(connection, root, INFO)
    assert (newer.path / "sft" / "train.jsonl").read_text() == "{}\n"  # left as found, not overwritten


def test_parquet_conversion_unions_nested_keys_and_names_the_file_on_bad_types(tmp_path) -> None:
    source = tmp_path / "train.jsonl"
    source.write_text(
        json.dumps({"messages": [{"role": "user", "content": "a"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "tool", "content": "b", "name": "f"}]})
        + "\n"
    )
    assert jsonl_to_parquet(source, tmp_path / "train.parquet", batch_rows=1) == 2
    back = pd.read_parquet(tmp_path / "train.parquet")["messages"].tolist()
    assert back[0][0]["name"] is None and back[1][0]["name"] == "f"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"score": 1}\n{"score": "high"}\n')
    with pytest.raises(ExportError, match=r"bad\.jsonl"):
        jsonl_to_parquet(bad, tmp_path / "bad.parquet", batch_rows=1)


def test_unknown_kind_is_an_error_naming_the_row() -> None:
    with pytest.raises(ExportError, match="row r9: unknown kind 'video'"):
        list(export_records({"row_id": "r9", "kind": "video"}))


def test_no_temporary_folder_is_left_when_an_export_fails(tmp_path) -> None:
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    connection.execute(f"CREATE TABLE formatted ({canonical_ddl(FORMATTED_COLUMNS)})")
    connection.execute("INSERT INTO formatted (row_id, kind, split) VALUES ('r1', 'video', 'train')")
    with pytest.raises(ExportError):
        write_export(connection, tmp_path / "exports", INFO)
    assert os.listdir(tmp_path / "exports") == []


def test_reading_formatted_range_by_range_writes_the_same_files(exported, tmp_path, monkeypatch) -> None:
    import curation.format.export

    result, _, base = exported
    monkeypatch.setattr(curation.format.export, "_RANGE_ROWS", 2)  # four ranges of row ids instead of one
    with duckdb.connect(str(base / "w.duckdb"), read_only=True) as connection:
        again = write_export(connection, tmp_path / "exports", INFO)
    assert again.data_version == result.data_version
    assert again.manifest["files"] == result.manifest["files"]


# --------------------------------------------------------------------------- the writer, column by column

ODD_TEXT = 'héllo 😀 \u2028\u2029 \x00\x01\x1f\x7f "quoted" back\\slash / tab\t newline\n 100%s'
TOOL_CALL = {"type": "function", "function": {"name": "f", "arguments": {"x": 1e-05, "y": 1e16, "n": 2**62, "z": 0.1}}}
SCORES = [0.5, 1e-05, 1e16, -2.5e-07, 123456789.123, 0.0, 1e22]


def _stored(value):
    """A JSON column as ``encode_row`` stores it."""
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _odd_rows(n: int = 120, scores=SCORES) -> list[dict]:
    """``formatted`` rows as stored, every kind and the awkward values: escapes and astral characters,
    floats that print with exponents, big ints, nulls, empty and missing splits, token ids stored as
    ``json.dumps`` writes them (or NULL), tools given as objects, as JSON text or empty, rows cut inside
    their reply; tools only from row 60 on, so files see them first in a later batch."""
    kinds = ["sft", "chat", "tool", "preference", "reward", "text", "prompt", "sft"]
    rows = []
    for k in range(n):
        kind = kinds[k % len(kinds)]
        content = f"{ODD_TEXT} {k} " * (1 + k % 3)
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content[::-1]}]
        if k % 6 == 2:
            messages[1] = {"role": "assistant", "content": "", "tool_calls": [TOOL_CALL]}
        extras = [{"tools": TOOLS}, {"tools": json.dumps(TOOLS)}, {"tools": []}, {"other": "tools"}, [1, 2], None]
        extra = extras[k % len(extras)] if k >= 60 else {"other": f"x\\u{k}"}
        ids = list(range(k % 7))
        rows.append(
            {
                "row_id": f"r{k:03d}",
                "kind": kind,
                "split": ["train", "eval", None, "", "train"][k % 5],
                "messages": _stored(messages if kind != "text" else None),
                "chosen": _stored([{"role": "assistant", "content": content}] if kind == "preference" else None),
                "rejected": _stored([{"role": "assistant", "content": "no"}] if kind == "preference" else None),
                "score": scores[(k // 8) % len(scores)] if kind == "reward" else None,
                "text": None if k % 11 == 0 else f"{ODD_TEXT} text {k}",
                "source": ["alpaca", "chat", "wiki"][k % 3],
                "license": ["MIT", None, "CC-BY-4.0"][k % 3],
                "origin": "human",
                "extra": _stored(extra),
                "subset": [0.25, 0.5, 1.0, None][k % 3 if k < 100 else 3],
                "n_tokens": None if k % 9 == 0 else k,
                "prompt_text": f"prompt {ODD_TEXT} {k}" if kind == "preference" else None,
                "chosen_text": f"chosen {k}" if kind == "preference" else None,
                "rejected_text": f"rejected {k}" if kind == "preference" else None,
                "input_ids": None if k % 13 == 0 else json.dumps(ids),
                "assistant_mask": None if k % 13 == 0 else json.dumps([i % 2 for i in ids]),
                "truncation": "truncated_last_assistant_turn" if k % 10 == 1 else None,
            }
        )
    # A split whose rows leave a column null throughout and carry no token ids (null-typed Parquet columns).
    for k in range(3):
        rows.append({**rows[k], "row_id": f"h{k}", "split": "holdout", "kind": "chat", "license": None})
        rows[-1].update(input_ids="[]", assistant_mask="[]", extra=None)
    # A text row longer than half the smallest JSON block, set below (the reader's block grows with it).
    rows.append({**rows[5], "row_id": "r999", "kind": "text", "split": "train", "text": "long " * 2_000})
    return rows


def _warehouse_of(path: Path, rows: list[dict]) -> Path:
    connection = duckdb.connect(str(path))
    connection.execute(f"CREATE TABLE formatted ({canonical_ddl(FORMATTED_COLUMNS)})")
    table = pa.Table.from_pylist(rows)
    connection.register("incoming", table)
    names = ", ".join(table.schema.names)
    connection.execute(f"INSERT INTO formatted ({names}) SELECT {names} FROM incoming")
    connection.close()
    return path


def _lines_record_by_record(path: Path) -> dict[str, bytes]:
    """The JSONL files as the definition says: ``json.dumps`` of each ``export_records`` record, rows in
    source order (one shard per split and one range: these tables are small)."""
    with duckdb.connect(str(path), read_only=True) as connection:
        rows = connection.sql(f"SELECT * FROM formatted ORDER BY {SOURCE_ORDER}").to_arrow_table().to_pylist()
    files: dict[str, bytes] = {}
    for row in rows:
        for column in JSON_COLUMNS:
            if isinstance(row[column], str):
                row[column] = json.loads(row[column])
        for config, record in export_records(row):
            relative = f"{config}/{row['split'] or 'train'}.jsonl"
            files[relative] = files.get(relative, b"") + export_module._json_line(record)
    return files


@pytest.mark.parametrize("batch_rows", [4, 2_000])
def test_lines_are_json_dumps_of_each_record_byte_for_byte(tmp_path, batch_rows) -> None:
    rows = _odd_rows(scores=[*SCORES, float("nan"), float("inf"), -float("inf")])
    warehouse = _warehouse_of(tmp_path / "w.duckdb", rows)
    expected = _lines_record_by_record(warehouse)
    assert {"sft/train.jsonl", "sft_tokenized/holdout.jsonl", "reward/eval.jsonl", "prompts/train.jsonl"} <= set(
        expected
    )
    assert any(b'"tools":' in lines for lines in expected.values())
    assert b"NaN" in expected["reward/train.jsonl"] + expected["reward/eval.jsonl"]
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        result = write_export(connection, tmp_path / "exports", INFO, batch_rows=batch_rows)
    written = {relative: (result.path / relative).read_bytes() for relative in result.manifest["files"]}
    assert written == expected


def test_parquet_written_alongside_is_the_file_the_json_reader_makes(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "_MIN_BLOCK", 4_096)  # several row groups per file
    converted = []

    def convert(source: Path, *args, **kwargs) -> int:
        converted.append(f"{source.parent.name}/{source.name}")
        return jsonl_to_parquet(source, *args, **kwargs)

    monkeypatch.setattr(export_module, "jsonl_to_parquet", convert)
    warehouse = _warehouse_of(tmp_path / "w.duckdb", _odd_rows())
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        result = write_export(connection, tmp_path / "exports", INFO, batch_rows=5)
    # Written alongside: flat and nested layouts. Converted instead: tools or tool calls first seen in a later
    # batch (sft, prompts), null-typed columns and no token ids (holdout), a line longer than half a block (text).
    assert {"sft_tokenized/train.jsonl", "preference/train.jsonl"}.isdisjoint(converted)
    assert {"sft/train.jsonl", "prompts/train.jsonl", "sft_tokenized/holdout.jsonl", "text/train.jsonl"} <= set(
        converted
    )
    assert pq.ParquetFile(result.path / "sft_tokenized" / "train.parquet").metadata.num_row_groups > 2
    for relative, entry in result.manifest["parquet_files"].items():
        jsonl = result.path / relative.replace(".parquet", ".jsonl")
        reference = tmp_path / "reference.parquet"
        rows = jsonl_to_parquet(jsonl, reference)  # schema inferred here, from the JSONL alone
        assert entry["rows"] == rows == result.manifest["files"][jsonl.relative_to(result.path).as_posix()]["rows"]
        assert (result.path / relative).read_bytes() == reference.read_bytes(), relative


def test_files_are_the_same_with_one_or_two_worker_processes(tmp_path) -> None:
    warehouse = _warehouse_of(tmp_path / "w.duckdb", _odd_rows())
    hashes = []
    for workers in (1, 2):
        with duckdb.connect(str(warehouse), read_only=True) as connection:
            result = write_export(connection, tmp_path / f"exports{workers}", INFO, batch_rows=7, workers=workers)
        hashes.append(
            {
                name: entry["sha256"]
                for name, entry in {**result.manifest["files"], **result.manifest["parquet_files"]}.items()
            }
        )
    assert hashes[0] == hashes[1]


def test_row_groups_are_the_json_readers_blocks_even_where_a_line_ends_on_a_block_edge(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "_MIN_BLOCK", 1_024)
    # Sixteen 64-byte lines end exactly on the first block's last byte; then lines of every length.
    sizes = [64] * 16 + [30 + (k * 37) % 200 for k in range(60)]
    records = [{"id": f"{k:04d}", "text": ""} for k in range(len(sizes))]
    for record, size in zip(records, sizes, strict=True):
        record["text"] = "x" * (size - len(json.dumps(record, separators=(",", ":"))) - 1)
    jsonl = tmp_path / "train.jsonl"
    jsonl.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    assert [len(line) for line in jsonl.read_bytes().splitlines(keepends=True)] == sizes
    reference = tmp_path / "reference.parquet"
    jsonl_to_parquet(jsonl, reference)
    schema = pq.read_schema(reference)
    written = export_module._RowGroups(tmp_path / "written.parquet", schema)
    for start in range(0, len(records), 7):  # arriving batch by batch
        rows = records[start : start + 7]
        written.add(pa.Table.from_pylist(rows, schema=schema), np.array(sizes[start : start + 7]))
    written.close()
    assert not written.abandoned and written.rows == len(records)
    assert pq.ParquetFile(reference).metadata.num_row_groups > 4
    assert (tmp_path / "written.parquet").read_bytes() == reference.read_bytes()


def test_rows_in_a_narrower_type_are_widened_and_others_end_the_file_written_alongside() -> None:
    plain = pa.chunked_array([pa.array([[{"role": "user", "content": "hi"}]])])
    wide = pa.array([[{"role": "user", "content": "hi", "tool_calls": [{"type": "function"}]}]]).type
    widened = export_module._widened(plain, wide)
    assert widened is not None and widened.type == wide
    assert widened.to_pylist() == [[{"role": "user", "content": "hi", "tool_calls": None}]]
    assert export_module._widened(pa.chunked_array([pa.array([1, 2])]), pa.float64()).to_pylist() == [1.0, 2.0]
    assert export_module._widened(pa.chunked_array([pa.array([1.0])]), pa.int64()) is None  # narrower, not wider
    assert export_module._widened(pa.chunked_array([pa.array([1])]), pa.string()) is None  # the reader would fail
    assert export_module._widened(pa.chunked_array([pa.array([None])]), pa.string()).type == pa.string()


@pytest.mark.parametrize(
    ("ids", "error"),
    [
        ("[1.5, 2]", "incompatible value types"),  # as before: Arrow's JSON reader refuses them
        ('["7"]', "incompatible value types"),
        ('["a"]', "not lists of 64-bit ints"),
        ("[9223372036854775808]", "not lists of 64-bit ints"),
    ],
)
def test_token_ids_that_are_not_ints_stop_the_export(tmp_path, ids, error) -> None:
    rows = _odd_rows(20)
    rows[3] = {**rows[0], "row_id": "bad", "kind": "sft", "input_ids": ids}
    warehouse = _warehouse_of(tmp_path / "w.duckdb", rows)
    with duckdb.connect(str(warehouse), read_only=True) as connection, pytest.raises(ExportError, match=error):
        write_export(connection, tmp_path / "exports", INFO)
    assert os.listdir(tmp_path / "exports") == []


def test_export_reports_rows_written_of_formatted(tmp_path, monkeypatch) -> None:
    """`exports` was silent until done (issue 13): it now logs rows written of `formatted`'s total."""
    monkeypatch.setenv(EVERY_S_ENV, "0")  # a line per batch
    warehouse = _warehouse_of(tmp_path / "w.duckdb", _odd_rows())
    lines: list[str] = []
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        total = connection.execute("SELECT count(*) FROM formatted").fetchone()[0]
        write_export(connection, tmp_path / "exports", INFO, batch_rows=5, log=lines.append)
    done = [
        int(m[1].replace(",", ""))
        for line in lines
        if (m := re.fullmatch(rf"exports: ([\d,]+) of {total} rows .*", line))
    ]
    assert len(done) >= 2 and done == sorted(done) and done[-1] == total
    assert re.fullmatch(rf"exports: done, {total} rows in [\d.]+ s", lines[-1])


# --------------------------------------------------------------------------- shards


def _sourced_rows(n: int) -> list[dict]:
    """:func:`_odd_rows` read from three sources, record by record (``<source>.jsonl#<k>``)."""
    rows = _odd_rows(n)
    for row in rows:
        if row["row_id"].startswith("r"):
            row["source_uri"] = f"{row['source']}.jsonl#{int(row['row_id'][1:])}"
    return rows


def _files_of(result) -> dict[str, bytes]:
    names = [*result.manifest["files"], *result.manifest["parquet_files"]]
    return {name: (result.path / name).read_bytes() for name in names}


def test_a_split_is_cut_into_shards_in_source_order_read_as_one_dataset(tmp_path, monkeypatch) -> None:
    """Shards of a split are its one file cut in pieces: their lines, in order, are the single file's, and
    every shard's Parquet has the split's schema (tools only in later shards), so ``datasets`` reads them as
    one dataset from the card."""
    rows = _sourced_rows(400)
    warehouse = _warehouse_of(tmp_path / "w.duckdb", rows)
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        whole = write_export(connection, tmp_path / "whole", INFO)
        monkeypatch.setattr(export_module, "_SHARD_ROWS", 16)
        sharded = write_export(connection, tmp_path / "sharded", INFO, batch_rows=7)
    assert set(whole.manifest["files"]) == set(_lines_record_by_record(warehouse))
    shards = [name for name in sharded.manifest["files"] if name.startswith("sft/train-")]
    assert len(shards) > 5 and shards[0].endswith(f"-00000-of-{len(shards):05d}.jsonl")
    assert sharded.manifest["rows"] == whole.manifest["rows"]
    for name in whole.manifest["files"]:
        config, split = name.split("/")[0], name.split("/")[1].removesuffix(".jsonl")
        pieces = sorted(p for p in sharded.manifest["files"] if p.split("/")[0] == config and _split(p) == split)
        assert b"".join((sharded.path / p).read_bytes() for p in pieces) == (whole.path / name).read_bytes()
        schemas = {pq.read_schema(sharded.path / p.replace(".jsonl", ".parquet")) for p in pieces}
        assert schemas == {pq.read_schema(whole.path / name.replace(".jsonl", ".parquet"))}, name
    tools_first_seen = [p for p in shards if b'"tools":' in (sharded.path / p).read_bytes()]
    assert tools_first_seen and tools_first_seen[0] != shards[0]  # the schema is not just the first shard's
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(sharded.path), "sft", cache_dir=str(tmp_path / "cache"))
    assert loaded["train"].num_rows == whole.manifest["rows"]["sft"]["train"]
    reference = pd.read_parquet(whole.path / "sft" / "train.parquet")
    assert loaded["train"]["id"] == reference["id"].tolist()


def _split(relative: str) -> str:
    return export_module.split_of(relative)


def _written_anew(version: ExportResult, earlier: list[ExportResult]) -> list[Path]:
    """The files of ``version`` (JSONL and Parquet) that are no file of the ``earlier`` versions (not linked)."""
    theirs = [e.path / name for e in earlier for name in (*e.manifest["files"], *e.manifest["parquet_files"])]
    mine = [version.path / name for name in (*version.manifest["files"], *version.manifest["parquet_files"])]
    return [path for path in mine if not any(path.exists() and os.path.samefile(path, other) for other in theirs)]


def test_a_new_version_takes_over_the_shards_whose_rows_did_not_change(tmp_path, monkeypatch) -> None:
    """Records appended to a source and one row edited: only the shards they fall in are written again; every
    other file of the new version is the previous version's file, linked, and the version is byte for byte
    what an export from scratch gives. The check of published versions then hashes, besides its one file in
    rotation, only the files the new version wrote: the ones it links are the previous version's, trusted as
    they are."""
    monkeypatch.setattr(export_module, "_SHARD_ROWS", 16)
    rows = _sourced_rows(400)
    root = tmp_path / "exports"
    with duckdb.connect(str(_warehouse_of(tmp_path / "v1.duckdb", rows)), read_only=True) as connection:
        first = write_export(connection, root, INFO)
    assert verify_published(root).problems == []

    grown = [dict(row) for row in rows]
    grown[150]["text"] = "edited " + grown[150]["text"]  # a row in the middle of a source changes
    for k in range(400, 430):  # records appended to one source's file
        grown.append({**grown[k - 300], "row_id": f"r{k}", "source": "alpaca", "source_uri": f"alpaca.jsonl#{k}"})
    # The last one's messages have a key no other row has: the sft split's Parquet schema gains a field.
    messages = json.loads(grown[-1]["messages"])
    grown[-1]["messages"] = json.dumps([{**messages[0], "weight": 1}, *messages[1:]])
    assert grown[-1]["kind"] == "chat"
    warehouse = _warehouse_of(tmp_path / "v2.duckdb", grown)
    lines: list[str] = []
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        second = write_export(connection, root, INFO, log=lines.append)
        fresh = write_export(connection, tmp_path / "fresh", INFO)

    assert second.data_version == fresh.data_version != first.data_version
    assert _files_of(second) == _files_of(fresh)
    assert verify_export(second.path) == []
    previous_keys = {entry["key"]: name for name, entry in first.manifest["files"].items()}
    linked = written = 0
    for name, entry in second.manifest["files"].items():
        old = previous_keys.get(entry["key"])
        same_inode = old is not None and os.path.samefile(second.path / name, first.path / old)
        assert same_inode == (old is not None), name  # taken over exactly when the key is the previous one's
        linked, written = linked + same_inode, written + (not same_inode)
    assert linked == second.files_taken_over and linked > 3 * written > 0
    assert any(f"{linked:,} of {len(second.manifest['files']):,} files taken over" in line for line in lines)

    # Every sft/train shard is in the grown schema: a taken-over JSONL file gets a Parquet file of its own.
    regrown = [
        (name, previous_keys[entry["key"]])
        for name, entry in second.manifest["files"].items()
        if name.startswith("sft/train") and entry["key"] in previous_keys
    ]
    assert len(regrown) > 3
    for name, old in regrown:
        new_parquet, old_parquet = (
            folder / n.replace(".jsonl", ".parquet") for folder, n in ((second.path, name), (first.path, old))
        )
        assert "weight" in pq.read_schema(new_parquet).field("messages").type.value_type.names
        assert "weight" not in pq.read_schema(old_parquet).field("messages").type.value_type.names
        assert not os.path.samefile(new_parquet, old_parquet)

    monkeypatch.setattr(export_module, "ROTATION_BYTES", 1)  # one unchanged file re-hashed in rotation
    check = verify_published(root)
    written_anew = len(_written_anew(second, [first]))
    assert (check.problems, check.files_hashed, check.files_rotated) == ([], written_anew, 1)
    files_of_first = len(first.manifest["files"]) + len(first.manifest["parquet_files"])
    assert check.files_trusted == files_of_first - 1  # the linked ones among them, counted once

    # A linked file is one file in both versions: editing it in place is found in both.
    shared = next(
        name
        for name in second.manifest["files"]
        if name in first.manifest["files"] and os.path.samefile(second.path / name, first.path / name)
    )
    with (second.path / shared).open("ab") as handle:
        handle.write(b"{}\n")
    assert {problem["version"] for problem in verify_published(root).problems} == {
        first.data_version,
        second.data_version,
    }


def test_a_file_is_written_again_only_when_what_its_layout_writes_changed(tmp_path, monkeypatch) -> None:
    """A kept row that absorbed a copy gains a licence note in ``extra``, which no file shows: every file
    holding it is taken over. A row whose token ids changed (its messages did not) is written again in
    ``sft_tokenized`` only. Before keys hashed what each layout writes, both rewrote every file holding them,
    and a +1% re-run at 1M rows rewrote 46 of 136 files whose bytes had not changed."""
    monkeypatch.setattr(export_module, "_SHARD_ROWS", 16)
    rows = _sourced_rows(400)
    root = tmp_path / "exports"
    with duckdb.connect(str(_warehouse_of(tmp_path / "v1.duckdb", rows)), read_only=True) as connection:
        first = write_export(connection, root, INFO)

    changed = [dict(row) for row in rows]
    noted = next(k for k, row in enumerate(rows) if k > 100 and row["kind"] == "sft" and row["input_ids"])
    extra = json.loads(changed[noted]["extra"])
    changed[noted]["extra"] = _stored({**extra, "dedup_sources": [{"row_id": "r999", "license": "MIT"}]})
    retokenized = next(k for k, row in enumerate(rows) if k > 300 and row["kind"] == "sft" and row["input_ids"])
    changed[retokenized]["input_ids"] = _stored([*json.loads(rows[retokenized]["input_ids"]), 7])
    with duckdb.connect(str(_warehouse_of(tmp_path / "v2.duckdb", changed)), read_only=True) as connection:
        second = write_export(connection, root, INFO)
        fresh = write_export(connection, tmp_path / "fresh", INFO)
    assert _files_of(second) == _files_of(fresh)

    def holding(result, row_id: str) -> set[str]:
        needle = f'"id":"{row_id}"'.encode()
        return {name for name in result.manifest["files"] if needle in (result.path / name).read_bytes()}

    noted_files, retokenized_files = (
        holding(second, rows[noted]["row_id"]),
        holding(second, rows[retokenized]["row_id"]),
    )
    assert {name.split("/")[0] for name in noted_files | retokenized_files} == {"sft", "sft_tokenized"}
    previous = {entry["key"]: name for name, entry in first.manifest["files"].items()}
    written = {
        name
        for name, entry in second.manifest["files"].items()
        if entry["key"] not in previous or not os.path.samefile(second.path / name, first.path / previous[entry["key"]])
    }
    assert written == {name for name in retokenized_files if name.startswith("sft_tokenized/")}
    assert second.files_taken_over == len(second.manifest["files"]) - 1


def test_what_decides_a_taken_over_file_is_its_exported_content(tmp_path, monkeypatch) -> None:
    """A score that becomes -0.0 (JSON tells it from 0.0, DuckDB's hash does not) makes a new version; a
    change to a column no file shows does not; a row id held twice is written twice, not four times; a
    corrupt key in the previous manifest is ignored; links through a chain of versions keep every version's
    record current."""
    monkeypatch.setattr(export_module, "_SHARD_ROWS", 16)
    rows = _sourced_rows(200)
    reward = next(k for k, row in enumerate(rows) if row["kind"] == "reward")
    rows[reward]["score"] = 0.0
    root = tmp_path / "exports"

    def export(name: str, table: list[dict]):
        with duckdb.connect(str(_warehouse_of(tmp_path / f"{name}.duckdb", table)), read_only=True) as connection:
            return write_export(connection, root, INFO), write_export(connection, tmp_path / f"fresh-{name}", INFO)

    first, _ = export("v1", rows)
    verify_published(root)
    negative = [dict(row) for row in rows]
    negative[reward]["score"] = -0.0
    second, fresh = export("v2", negative)
    assert second.data_version == fresh.data_version != first.data_version
    assert any(b'"score":-0.0' in (second.path / n).read_bytes() for n in second.manifest["files"])

    unseen = [dict(row) for row in negative]
    unseen[5]["extra"] = _stored({"other": "not exported"})  # `extra` shows only its tools
    third, _ = export("v3", unseen)
    assert third.reused and third.data_version == second.data_version

    # Chain: v2 took files over from v1; a v4 that takes them over again leaves no stale stat behind.
    doubled = [dict(row) for row in negative] + [dict(negative[7])]  # one row id twice
    manifest = json.loads((second.path / MANIFEST).read_text())
    name = next(iter(manifest["files"]))
    manifest["files"][name]["key"] = ["not", "a", "key"]  # corrupt, and outside the version's hash
    (second.path / MANIFEST).write_text(json.dumps(manifest))
    verify_published(root)
    fourth, _ = export("v4", doubled)
    lines = b"".join((fourth.path / n).read_bytes() for n in fourth.manifest["files"] if n.startswith("sft_tokenized"))
    assert lines.count(f'"id":"{negative[7]["row_id"]}"'.encode()) == 2
    assert 0 < fourth.files_taken_over < len(fourth.manifest["files"]) - 1
    # Linking changed the taken-over files' status time: every version's record has their new stat.
    record = json.loads(export_module.verified_record(root).read_text())
    for version in (first, second):
        recorded = record["versions"][version.data_version]["files"]
        assert recorded and all(
            tuple(stat) == export_module._file_stat(version.path / name) for name, stat in recorded.items()
        )
    check = verify_published(root)  # so only what v4 wrote is hashed as new, not the files it links
    assert (check.problems, check.files_hashed) == ([], len(_written_anew(fourth, [first, second])))


def test_a_previous_file_changed_while_it_is_taken_over_stops_the_export(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(export_module, "_SHARD_ROWS", 16)
    rows = _sourced_rows(200)
    root = tmp_path / "exports"
    with duckdb.connect(str(_warehouse_of(tmp_path / "v1.duckdb", rows)), read_only=True) as connection:
        write_export(connection, root, INFO)
    grown = [*rows, {**rows[100], "row_id": "r900", "source_uri": "alpaca.jsonl#900", "source": "alpaca"}]
    checked = export_module._taken_over

    def edited_after_the_check(*args):
        found = checked(*args)
        victim = next(iter(found.values())).jsonl
        data = victim.read_bytes()
        victim.write_bytes(data.replace(b'"', b"'", 1))  # same size, same inode, new content
        return found

    monkeypatch.setattr(export_module, "_taken_over", edited_after_the_check)
    warehouse = _warehouse_of(tmp_path / "v2.duckdb", grown)
    with (
        duckdb.connect(str(warehouse), read_only=True) as connection,
        pytest.raises(ExportError, match="changed while this export was taking it over"),
    ):
        write_export(connection, root, INFO)
    assert [p.name for p in root.iterdir() if p.name.startswith(".tmp")] == []
