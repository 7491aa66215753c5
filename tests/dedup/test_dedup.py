"""Deduplication: exact, near, in-text, boilerplate, same-prompt conflicts, policy, incremental."""

from __future__ import annotations

import json
import random

import duckdb
import numpy as np
import pytest

from curation.core.config import DedupConfig
from curation.core.normalize import NormalizeOptions
from curation.core.schema import Row, make_row_id, new_row, rows_to_table
from curation.core.warehouse import canonical_ddl
from curation.dedup.clusters import KeepPolicy, clusters_table, with_license_note
from curation.dedup.conflicts import ConflictConfig, same_prompt_conflicts
from curation.dedup.exact import ExactConfig, exact_duplicates
from curation.dedup.fields import dedup_text
from curation.dedup.minhash import ShingleConfig, signature_bytes, signature_from_bytes
from curation.dedup.near import (
    NearConfig,
    NearDupIndex,
    compute_signatures,
    incremental_near_duplicates,
    near_duplicate_pairs,
    near_duplicates,
)
from curation.dedup.repeats import (
    BoilerplateConfig,
    WithinConfig,
    boilerplate_keys,
    paragraph_counts,
    remove_repeats,
    strip_boilerplate,
)
from curation.dedup.stage import DedupPlan, dedup_rows, run_dedup
from tests.conftest import SHARED_DATA


def sft(row_id: str, prompt: str, response: str, **fields: object) -> Row:
    return new_row(
        row_id=row_id,
        kind="sft",
        origin=fields.pop("origin", "human"),
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
        **fields,
    )


def text_row(row_id: str, text: str, **fields: object) -> Row:
    return new_row(row_id=row_id, kind="text", text=text, origin="human", **fields)


def _words(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _set_jaccard(a: str, b: str, n: int = 5) -> float:
    cfg = ShingleConfig("word", n)
    sa, sb = set(cfg.shingles(a)), set(cfg.shingles(b))
    return len(sa & sb) / len(sa | sb)


# --- exact -----------------------------------------------------------------------------------


def test_exact_ignores_case_whitespace_and_optionally_punctuation() -> None:
    rows = [sft("a", "What is  2+2?", "Four."), sft("b", "what is 2+2?\n", "four."), sft("c", "What is 2+2", "Four")]
    members = exact_duplicates(rows)
    assert {m.row_id for m in members if m.removed} == {"b"}
    assert {m.kept_row_id for m in members} == {"a"}
    loose = ExactConfig(normalize=NormalizeOptions(strip_punctuation=True))
    assert {m.row_id for m in exact_duplicates(rows, loose) if m.removed} == {"b", "c"}


def test_exact_field_sets_differ() -> None:
    rows = [sft("a", "Same prompt", "Answer one"), sft("b", "Same prompt", "Answer two")]
    assert exact_duplicates(rows, ExactConfig(fields="prompt_response")) == []
    assert [m.row_id for m in exact_duplicates(rows, ExactConfig(fields="prompt")) if m.removed] == ["b"]
    with pytest.raises(ValueError, match="field set"):
        exact_duplicates(rows, ExactConfig(fields="everything"))  # type: ignore[arg-type]


def _seed_rows() -> list[Row]:
    rows = []
    for folder, spdx in (("stanford-alpaca-seed-tasks", "CC-BY-NC-4.0"), ("self-instruct-seed-tasks", "Apache-2.0")):
        for k, line in enumerate((SHARED_DATA / folder / "seed_tasks.jsonl").read_text().splitlines()):
            record = json.loads(line)
            instance = record["instances"][0]
            prompt = record["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else "")
            rows.append(
                sft(
                    make_row_id(folder, str(k)),
                    prompt,
                    instance["output"],
                    source=folder,
                    license=spdx,
                    source_uri=f"{folder}/seed_tasks.jsonl#{k}",
                )
            )
    return rows


def test_seed_tasks_collapse_and_keep_the_permissive_licence() -> None:
    rows = _seed_rows()  # the CC-BY-NC copy comes first in the input on purpose
    result = dedup_rows(rows, DedupPlan(near=None))
    assert len(result.kept) == 175
    assert {r["license"] for r in result.kept} == {"Apache-2.0"}
    removed = [m for m in result.members if m.removed]
    assert len(removed) == 175
    by_id = {r["row_id"]: r for r in rows}
    for m in removed:
        assert by_id[m.row_id]["license"] == "CC-BY-NC-4.0"
        assert by_id[m.kept_row_id]["license"] == "Apache-2.0"
        assert m.jaccard == 1.0 and "more permissive" in m.reason
    # One query explains a removed row: which row it duplicates and how similar.
    table = clusters_table(result.members)
    assert table.num_rows == 350 and set(table.column("method").to_pylist()) == {"exact:prompt_response"}
    # The kept row carries the absorbed row's provenance too.
    noted = with_license_note(result.kept[0], result.members, by_id)
    assert [(s["source"], s["license"]) for s in noted["extra"]["dedup_sources"]] == [
        ("stanford-alpaca-seed-tasks", "CC-BY-NC-4.0")
    ]


def test_fastchat_prompt_level_and_conversation_level_differ() -> None:
    convs = json.loads((SHARED_DATA / "fastchat-dummy-conversation" / "dummy_conversation.json").read_text())
    rows = [
        new_row(
            row_id=c["id"],
            kind="chat",
            origin="human",
            license="Apache-2.0",
            messages=[
                {"role": "user" if m["from"] == "human" else "assistant", "content": m["value"]}
                for m in c["conversations"]
            ],
        )
        for c in convs
    ]
    removed = {
        fields: sum(m.removed for m in exact_duplicates(rows, ExactConfig(fields=fields)))
        for fields in ("conversation", "prompt", "first_prompt")
    }
    assert removed["conversation"] == 0
    assert removed["first_prompt"] == 500 - 52
    distinct_user_turns = len({tuple(m["value"] for m in c["conversations"] if m["from"] == "human") for c in convs})
    assert removed["prompt"] == 500 - distinct_user_turns


# --- near ------------------------------------------------------------------------------------


def _near_rows() -> tuple[list[Row], float]:
    base = _words(200, "w")
    edited = [*base[:90], "x", "y", "z", *base[96:]]  # one contiguous span replaced
    unrelated = _words(200, "u")
    texts = [" ".join(base), " ".join(edited), " ".join(unrelated)]
    rows = [
        text_row("base", texts[0], license="MIT"),
        text_row("edit", texts[1], license="CC-BY-NC-4.0"),
        text_row("other", texts[2]),
    ]
    return rows, _set_jaccard(texts[0], texts[1])


def test_near_duplicate_is_verified_with_true_jaccard() -> None:
    rows, truth = _near_rows()
    assert 0.8 < truth < 0.95
    members, result = near_duplicates(rows, NearConfig(fields="conversation"))
    assert [tuple(p) for p in result.pairs.tolist()] == [(0, 1)]
    assert result.jaccard[0] == pytest.approx(truth, abs=1e-9)
    removed = [m for m in members if m.removed]
    assert [(m.row_id, m.kept_row_id) for m in removed] == [("edit", "base")]
    assert removed[0].jaccard == pytest.approx(truth, abs=1e-9)
    assert result.signatures.shape == (3, 128)


def test_threshold_decides() -> None:
    rows, truth = _near_rows()
    strict = NearConfig(threshold=round(truth + 0.01, 3), lsh_threshold=0.6)
    assert near_duplicates(rows, strict)[0] == []


def test_chain_records_the_linking_neighbour() -> None:
    base = _words(300, "w")
    b = base[:100] + _words(12, "x") + base[112:]
    c = b[:200] + _words(12, "y") + b[212:]
    rows = [text_row(n, " ".join(t)) for n, t in (("a", base), ("b", b), ("c", c))]
    members, result = near_duplicates(rows)
    by_row = {m.row_id: m for m in members}
    assert by_row["a"].removed is False and by_row["c"].kept_row_id == "a"
    if (0, 2) not in {tuple(p) for p in result.pairs.tolist()}:
        assert by_row["c"].matched_row_id == "b" and by_row["c"].matched_jaccard >= 0.8
    assert by_row["c"].jaccard == pytest.approx(_set_jaccard(" ".join(base), " ".join(c)), abs=1e-9)


def test_same_clusters_whatever_the_input_order() -> None:
    rows, _ = _near_rows()
    rows += _seed_rows()[:20] + _seed_rows()[175:195]
    first = dedup_rows(rows)
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    second = dedup_rows(shuffled)
    summary = lambda res: sorted((m.row_id, m.kept_row_id, m.method, m.removed) for m in res.members)  # noqa: E731
    assert summary(first) == summary(second)
    assert sorted(r["row_id"] for r in first.kept) == sorted(r["row_id"] for r in second.kept)


def test_stored_signatures_skip_minhash_and_match() -> None:
    rows, _ = _near_rows()
    texts = [dedup_text(r, "prompt_response") for r in rows]
    config = NearConfig()
    sig, counts = compute_signatures(texts, config)
    blobs = [signature_bytes(s) for s in sig]  # what the warehouse stores
    restored = np.stack([signature_from_bytes(b, 128) for b in blobs])
    again = near_duplicate_pairs(texts, config, restored, counts)
    assert again.signatures is restored
    assert again.pairs.tolist() == near_duplicate_pairs(texts, config).pairs.tolist()


def test_incremental_batch_against_stored_corpus() -> None:
    base = _words(250, "w")
    old = [text_row("old1", " ".join(base)), text_row("old2", " ".join(_words(250, "v")))]
    new = [
        text_row("new1", " ".join([*base[:120], "q", "r", *base[123:]])),  # near old1
        text_row("new2", " ".join(_words(250, "n"))),
        text_row("new3", " ".join([*_words(250, "n")[:-1], "end"])),
    ]  # near new2
    index = NearDupIndex(NearConfig())
    old_texts = {r["row_id"]: dedup_text(r, "prompt_response") for r in old}
    sig, _ = compute_signatures(list(old_texts.values()), index.config)
    index.add(list(old_texts), sig)
    fetched: list[str] = []

    def fetch(ids: list[str]) -> list[str]:
        fetched.extend(ids)
        return [old_texts[i] for i in ids]

    members, _ = incremental_near_duplicates(new, index, fetch)
    removed = {m.row_id: m.kept_row_id for m in members if m.removed}
    assert removed == {"new1": "old1", "new3": "new2"}
    assert fetched == ["old1"]  # only the matching stored text is read back
    assert "new2" in index and "new1" not in index and len(index) == 3


# --- in-text edits ---------------------------------------------------------------------------


def test_repeated_paragraphs_removed_code_untouched() -> None:
    para = "This paragraph is repeated by a copy-paste accident."
    code = "```python\nx = 1\nx = 1\n```\n"
    text = f"{para}\n\nSomething else entirely here.\n\n{para}\n\n{code}\nok\n\nok"
    cleaned, removed = remove_repeats(text)
    assert removed == [para]
    assert cleaned.count(para) == 1 and "x = 1\nx = 1" in cleaned and cleaned.count("ok") == 2  # short: kept
    lines, removed_lines = remove_repeats(
        "a long enough line of text\nb\na long enough line of text\nb", WithinConfig(unit="line")
    )
    assert removed_lines == ["a long enough line of text"]
    assert lines == "a long enough line of text\nb\nb"  # the short line repeats legitimately


def test_boilerplate_across_documents_removed_row_kept() -> None:
    footer = "Disclaimer: I am an AI language model and this is not professional advice."
    rows = [sft(f"r{i}", f"Question number {i}?", f"Answer number {i} with detail.\n\n{footer}") for i in range(12)]
    rows.append(sft("only", "Another question?", footer))
    config = BoilerplateConfig(min_docs=10, min_fraction=0.5)
    counts, n = paragraph_counts(rows, config)
    keys = boilerplate_keys(counts, n, config)
    assert len(keys) == 1
    cleaned, edits = strip_boilerplate(rows[0], keys, config)
    assert cleaned["messages"][1]["content"] == "Answer number 0 with detail."
    assert [(e.location, e.operation, e.removed) for e in edits] == [("messages[1]", "boilerplate", footer)]
    untouched, none = strip_boilerplate(rows[-1], keys, config)  # the footer is the whole answer
    assert untouched == rows[-1] and none == []


# --- same instruction, different responses ---------------------------------------------------


def test_conflicts_keep_best_by_policy_or_flag() -> None:
    rows = [
        sft("syn", "Explain gravity.", "Synthetic answer.", origin="synthetic", license="Apache-2.0"),
        sft("nc", "Explain gravity.", "Human answer, NC.", license="CC-BY-NC-4.0"),
        sft("mit", "explain  gravity.", "Human answer, MIT.", license="MIT"),
        sft("solo", "Something else?", "Fine."),
    ]
    best = same_prompt_conflicts(rows)
    assert {m.row_id for m in best if m.removed} == {"syn", "nc"}
    assert {m.kept_row_id for m in best} == {"mit"}
    reasons = {m.row_id: m.reason for m in best}
    assert "origin" in reasons["syn"] and "licence" in reasons["nc"]
    flagged = same_prompt_conflicts(rows, ConflictConfig(mode="flag"))
    assert len(flagged) == 3 and not any(m.removed for m in flagged)
    assert same_prompt_conflicts(rows, ConflictConfig(mode="off")) == []


def test_policy_quality_then_earliest() -> None:
    policy = KeepPolicy()
    rows = [sft("empty", "Q?", ""), sft("full", "Q?", "An answer.")]
    assert rows[policy.choose(rows, [0, 1])]["row_id"] == "full"
    tied = [sft("first", "Q?", "A."), sft("second", "Q?", "B.")]
    assert tied[policy.choose(tied, [0, 1])]["row_id"] == "first"


def test_streaming_signatures_give_the_same_pairs() -> None:
    rows, _ = _near_rows()
    texts = [dedup_text(r, "prompt_response") for r in rows] * 2  # exact copies too
    kept = near_duplicate_pairs(texts, NearConfig(batch_size=2))
    batches: list[tuple[int, np.ndarray]] = []
    streamed = near_duplicate_pairs(
        texts,
        NearConfig(batch_size=2),
        keep_signatures=False,
        sink=lambda start, sig, counts: batches.append((start, sig)),
    )
    assert streamed.signatures is None
    assert streamed.pairs.tolist() == kept.pairs.tolist() and len(kept.pairs) == 7  # 3 copies + 4 near
    np.testing.assert_array_equal(np.concatenate([s for _, s in sorted(batches, key=lambda b: b[0])]), kept.signatures)


def test_incremental_cluster_follows_its_kept_row_to_the_stored_one() -> None:
    base = _words(250, "w")
    first = [*base[:40], *_words(16, "a"), *base[56:]]  # ~0.85 to base
    second = [*first[:160], *_words(16, "b"), *first[176:]]  # ~0.85 to first, ~0.72 to base
    texts = [" ".join(t) for t in (base, first, second)]
    assert _set_jaccard(texts[0], texts[1]) >= 0.8 and _set_jaccard(texts[1], texts[2]) >= 0.8
    assert _set_jaccard(texts[0], texts[2]) < 0.8
    index = NearDupIndex(NearConfig())
    sig, _ = compute_signatures(texts[:1], index.config)
    index.add(["stored"], sig)
    rows = [text_row("first", texts[1]), text_row("second", texts[2])]
    members, _ = incremental_near_duplicates(rows, index, lambda ids: [texts[0] for _ in ids])
    by_row = {m.row_id: m for m in members}
    assert set(by_row) == {"first", "second"} and all(m.removed for m in members)
    assert by_row["first"].kept_row_id == "stored" == by_row["second"].kept_row_id
    assert by_row["second"].jaccard == pytest.approx(_set_jaccard(texts[0], texts[2]), abs=1e-9)
    assert by_row["second"].matched_row_id == "first"
    assert by_row["second"].matched_jaccard == pytest.approx(_set_jaccard(texts[1], texts[2]), abs=1e-9)
    assert len(index) == 1


def test_rows_with_nothing_to_compare_are_not_duplicates() -> None:
    rows = [
        new_row(
            row_id=f"a{i}", kind="chat", origin="human", messages=[{"role": "assistant", "content": f"unprompted {i}"}]
        )
        for i in range(3)
    ]
    assert exact_duplicates(rows, ExactConfig(fields="first_prompt")) == []
    copies = [{**r, "row_id": r["row_id"] + "-copy"} for r in rows]
    members = exact_duplicates(rows + copies, ExactConfig(fields="conversation"))
    assert sorted(m.row_id for m in members if m.removed) == ["a0-copy", "a1-copy", "a2-copy"]


# --- the asset's run over the warehouse --------------------------------------------------------


def _warehouse_with_raw(rows: list[Row]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE raw ({canonical_ddl()})")
    connection.register("_raw", rows_to_table(rows))
    connection.execute("INSERT INTO raw SELECT * FROM _raw")
    connection.unregister("_raw")
    return connection


def test_run_dedup_publishes_edited_rows_under_new_ids_and_reuses_signatures() -> None:
    para = "This paragraph is repeated by a copy-paste accident."
    rows = [
        sft("nc", "What is 2+2?", "Four.", license="CC-BY-NC-4.0", source="a", source_uri="a.jsonl#0"),
        sft("mit", "What is 2+2?", "Four.", license="MIT", source="b", source_uri="b.jsonl#0"),
        sft(
            "rep",
            "Tell me twice.",
            f"{para}\n\nSomething else.\n\n{para}",
            license="MIT",
            source="b",
            source_uri="b.jsonl#1",
        ),
    ]
    connection = _warehouse_with_raw(rows)
    run = run_dedup(connection, DedupConfig())
    published = {r["source_uri"]: r for r in run.tables["deduped"][1].to_pylist()}
    assert set(published) == {"b.jsonl#0", "b.jsonl#1"}  # the NC copy is absorbed by the MIT row
    assert json.loads(published["b.jsonl#0"]["extra"])["dedup_sources"][0]["license"] == "CC-BY-NC-4.0"
    # The edited row is published under a derived id; its lineage edge names what was removed, and where.
    edited = published["b.jsonl#1"]
    assert edited["row_id"] != "rep" and json.loads(edited["messages"])[1]["content"].count(para) == 1
    assert [(e["child_id"], e["parent_id"], e["operation"]) for e in run.lineage] == [
        (edited["row_id"], "rep", "dedup:repeated_paragraph")
    ]
    assert run.lineage[0]["detail"] == f"messages[1]: removed repeated_paragraph {para!r}"
    assert run.counts() == {
        "removed": 1,
        "edited_rows": 1,
        "flagged_not_removed": 0,
        "minhash_computed": 2,
        "signatures_reused": 0,
    }
    assert run.tables["dedup_clusters"][1].num_rows == 2
    # A second run over the same rows reads the persisted signatures instead of MinHashing again.
    ddl, signatures = run.tables["dedup_signatures"]
    connection.execute(f"CREATE TABLE dedup_signatures ({ddl})")
    connection.register("_signatures", signatures)
    connection.execute("INSERT INTO dedup_signatures SELECT * FROM _signatures")
    again = run_dedup(connection, DedupConfig())
    assert again.counts()["minhash_computed"] == 0 and again.counts()["signatures_reused"] == 2
    assert again.tables["deduped"][1].equals(run.tables["deduped"][1])
