"""Deduplication: exact, near, in-text, boilerplate, same-prompt conflicts, policy, incremental; the
stage's decisions are tested through what it writes (run_dedup over a small warehouse)."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest

import curation.dedup.stage
from curation.core.config import DedupConfig
from curation.core.schema import Row, decode_row, make_row_id, new_row, rows_to_table
from curation.core.warehouse import StagedWrite, canonical_ddl
from curation.dedup.clusters import KeepPolicy, kept_sql
from curation.dedup.exact import exact_key
from curation.dedup.facts import FACT_SCHEMA, DedupPlan, row_facts
from curation.dedup.fields import dedup_text
from curation.dedup.minhash import ShingleConfig, signature_bytes, signature_from_bytes
from curation.dedup.near import (
    NearConfig,
    NearDupIndex,
    compute_signatures,
    incremental_near_duplicates,
    near_duplicate_pairs,
)
from curation.dedup.repeats import (
    BoilerplateConfig,
    WithinConfig,
    boilerplate_floor,
    paragraph_keys,
    remove_repeats,
    strip_boilerplate,
)
from curation.dedup.stage import DedupRun, run_dedup
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


def _warehouse_with_raw(rows: list[Row]) -> duckdb.DuckDBPyConnection:
    connection = duckdb.connect()
    connection.execute(f"CREATE TABLE raw ({canonical_ddl()})")
    connection.register("_raw", rows_to_table(rows))
    connection.execute("INSERT INTO raw SELECT * FROM _raw")
    connection.unregister("_raw")
    return connection


@dataclass
class Deduped:
    """What one run of the stage wrote."""

    run: DedupRun
    kept: list[Row]
    members: list[dict[str, Any]]
    lineage: list[dict[str, Any]]
    connection: duckdb.DuckDBPyConnection

    def removed(self) -> dict[str, str]:
        """Removed row → the row kept in its place."""
        return {m["row_id"]: m["kept_row_id"] for m in self.members if m["removed"]}

    def by_row(self) -> dict[str, dict[str, Any]]:
        return {m["row_id"]: m for m in self.members}


def _records(connection: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cursor = connection.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]


def dedup(rows: list[Row], connection: duckdb.DuckDBPyConnection | None = None, **settings: Any) -> Deduped:
    """Run the stage over ``rows`` (or over the ``raw`` table of ``connection``) with these ``dedup:`` settings."""
    connection = connection or _warehouse_with_raw(rows)
    staged = StagedWrite(connection, "deduped")
    run = run_dedup(staged, DedupConfig(**settings), workers=1)
    staged.commit()
    kept = [decode_row(r) for r in _records(connection, "SELECT * FROM deduped ORDER BY row_id")]
    members = _records(connection, "SELECT * FROM dedup_clusters ORDER BY cluster_id, row_id")
    lineage = _records(connection, "SELECT * FROM lineage WHERE asset = 'deduped' ORDER BY child_id")
    return Deduped(run, kept, members, lineage, connection)


EXACT_ONLY: dict[str, Any] = {"near": False, "conflicts": {"mode": "off"}}


# --- exact -----------------------------------------------------------------------------------


def test_exact_ignores_case_whitespace_and_optionally_punctuation() -> None:
    rows = [sft("a", "What is  2+2?", "Four."), sft("b", "what is 2+2?\n", "four."), sft("c", "What is 2+2", "Four")]
    result = dedup(rows, **EXACT_ONLY)
    assert result.removed() == {"b": "a"}
    assert {m["kept_row_id"] for m in result.members} == {"a"}
    assert dedup(rows, strip_punctuation=True, **EXACT_ONLY).removed() == {"b": "a", "c": "a"}


def test_exact_field_sets_differ() -> None:
    rows = [sft("a", "Same prompt", "Answer one"), sft("b", "Same prompt", "Answer two")]
    assert dedup(rows, exact_fields="prompt_response", **EXACT_ONLY).members == []
    assert dedup(rows, exact_fields="prompt", **EXACT_ONLY).removed() == {"b": "a"}
    with pytest.raises(ValueError, match="field set"):
        exact_key(rows[0], "everything")  # type: ignore[arg-type]


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
    result = dedup(rows, near=False)
    assert len(result.kept) == 175
    assert {r["license"] for r in result.kept} == {"Apache-2.0"}
    removed = [m for m in result.members if m["removed"]]
    assert len(removed) == 175
    by_id = {r["row_id"]: r for r in rows}
    for m in removed:
        assert by_id[m["row_id"]]["license"] == "CC-BY-NC-4.0"
        assert by_id[m["kept_row_id"]]["license"] == "Apache-2.0"
        assert m["jaccard"] == 1.0 and "more permissive" in m["reason"]
    # One query explains a removed row: which row it duplicates and how similar.
    assert len(result.members) == 350 and {m["method"] for m in result.members} == {"exact:prompt_response"}
    # The kept row carries the absorbed row's provenance too.
    absorbed = {m["kept_row_id"]: m["row_id"] for m in removed}
    for row in result.kept:
        (source,) = row["extra"]["dedup_sources"]
        assert (source["source"], source["license"]) == ("stanford-alpaca-seed-tasks", "CC-BY-NC-4.0")
        assert source["row_id"] == absorbed[row["row_id"]]
        assert source["source_uri"] == by_id[source["row_id"]]["source_uri"]


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
    connection = _warehouse_with_raw(rows)
    removed = {
        fields: len(dedup([], connection, exact_fields=fields, **EXACT_ONLY).removed())
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
    config = NearConfig(fields="conversation")
    result = near_duplicate_pairs([dedup_text(r, config.fields) for r in rows], config)
    assert [tuple(p) for p in result.pairs.tolist()] == [(0, 1)]
    assert result.jaccard[0] == pytest.approx(truth, abs=1e-9)
    assert result.signatures is not None and result.signatures.shape == (3, 128)
    written = dedup(rows, near={"fields": "conversation"})
    assert written.removed() == {"edit": "base"}
    assert written.by_row()["edit"]["jaccard"] == pytest.approx(truth, abs=1e-9)
    assert written.by_row()["edit"]["method"] == "near:conversation:word5"


def test_threshold_decides() -> None:
    rows, truth = _near_rows()
    assert dedup(rows, near={"threshold": round(truth + 0.01, 3), "lsh_threshold": 0.6}).members == []


def test_chain_records_the_linking_neighbour() -> None:
    base = _words(300, "w")
    b = base[:100] + _words(12, "x") + base[112:]
    c = b[:200] + _words(12, "y") + b[212:]
    rows = [text_row(n, " ".join(t)) for n, t in (("a", base), ("b", b), ("c", c))]
    pairs = near_duplicate_pairs([dedup_text(r, "prompt_response") for r in rows]).pairs
    by_row = dedup(rows).by_row()
    assert by_row["a"]["removed"] is False and by_row["c"]["kept_row_id"] == "a"
    if (0, 2) not in {tuple(p) for p in pairs.tolist()}:
        assert by_row["c"]["matched_row_id"] == "b" and by_row["c"]["matched_jaccard"] >= 0.8
    assert by_row["c"]["jaccard"] == pytest.approx(_set_jaccard(" ".join(base), " ".join(c)), abs=1e-9)


def test_same_clusters_whatever_the_input_order() -> None:
    rows, _ = _near_rows()
    rows += _seed_rows()[:20] + _seed_rows()[175:195]
    first = dedup(rows)
    shuffled = list(rows)
    random.Random(3).shuffle(shuffled)
    second = dedup(shuffled)
    assert first.members == second.members
    assert first.kept == second.kept


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
    keys = paragraph_keys(rows[0], config)
    assert len(keys) == 1 and boilerplate_floor(len(rows), config) == 10
    cleaned, edits = strip_boilerplate(rows[0], keys, config)
    assert cleaned["messages"][1]["content"] == "Answer number 0 with detail."
    assert [(e.location, e.operation, e.removed) for e in edits] == [("messages[1]", "boilerplate", footer)]
    untouched, none = strip_boilerplate(rows[-1], keys, config)  # the footer is the whole answer
    assert untouched == rows[-1] and none == []
    # The stage counts the paragraph across rows and strips it from the rows that hold more.
    written = dedup(rows, boilerplate={"min_docs": 10, "min_fraction": 0.5})
    responses = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in written.kept}
    assert responses["Question number 3?"] == "Answer number 3 with detail."
    assert responses["Another question?"] == footer
    assert len(written.lineage) == 12 and {e["operation"] for e in written.lineage} == {"dedup:boilerplate"}
    assert written.run.counts["edited_rows"] == 12
    assert {r["row_id"] for r in written.kept} == {e["child_id"] for e in written.lineage} | {"only"}


def test_rows_stripped_of_boilerplate_are_computed_again_when_it_no_longer_is() -> None:
    """Which paragraphs are boilerplate depends on every row: a row stripped of one is left out of the facts
    memo, so once the paragraph falls under the floor the next run sees the row whole, as a fresh run does."""
    footer = "Thanks for asking, I hope this was useful to you and good luck!"
    rows = [sft(f"r{i}", f"Question number {i}?", f"Answer number {i} with detail.\n\n{footer}") for i in range(10)]
    settings: dict[str, Any] = {"boilerplate": {"min_docs": 10, "min_fraction": 0.5}}
    first = dedup(rows, **settings)
    assert first.run.counts["edited_rows"] == 10
    first.connection.execute("DELETE FROM raw WHERE row_id = 'r0'")  # the footer is now in 9 rows only
    again = dedup([], first.connection, **settings)
    fresh = dedup(rows[1:], **settings)
    assert again.run.counts["facts_reused"] == 0  # the nine rows were stripped: none is in the memo
    assert again.run.counts["edited_rows"] == fresh.run.counts["edited_rows"] == 0
    assert again.kept == fresh.kept and all(footer in r["messages"][1]["content"] for r in again.kept)


# --- same instruction, different responses ---------------------------------------------------


def test_conflicts_keep_best_by_policy_or_flag() -> None:
    rows = [
        sft("syn", "Explain gravity.", "Synthetic answer.", origin="synthetic", license="Apache-2.0"),
        sft("nc", "Explain gravity.", "Human answer, NC.", license="CC-BY-NC-4.0"),
        sft("mit", "explain  gravity.", "Human answer, MIT.", license="MIT"),
        sft("solo", "Something else?", "Fine."),
    ]
    best = dedup(rows, near=False)
    assert best.removed() == {"syn": "mit", "nc": "mit"}
    assert {m["kept_row_id"] for m in best.members} == {"mit"}
    reasons = {m["row_id"]: m["reason"] for m in best.members}
    assert "origin" in reasons["syn"] and "licence" in reasons["nc"]
    flagged = dedup(rows, near=False, conflicts={"mode": "flag"})
    assert len(flagged.members) == 3 and not any(m["removed"] for m in flagged.members)
    assert flagged.run.counts["flagged_not_removed"] == 2 and len(flagged.kept) == 4
    assert dedup(rows, near=False, conflicts={"mode": "off"}).members == []


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
    assert dedup(rows, exact_fields="first_prompt", **EXACT_ONLY).members == []
    copies = [{**r, "row_id": r["row_id"] + "-copy"} for r in rows]
    written = dedup(rows + copies, exact_fields="conversation", **EXACT_ONLY)
    assert sorted(written.removed()) == ["a0-copy", "a1-copy", "a2-copy"]


# --- the asset's run over the warehouse --------------------------------------------------------


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
    first = dedup(rows)
    published = {r["source_uri"]: r for r in first.kept}
    assert set(published) == {"b.jsonl#0", "b.jsonl#1"}  # the NC copy is absorbed by the MIT row
    assert published["b.jsonl#0"]["extra"]["dedup_sources"][0]["license"] == "CC-BY-NC-4.0"
    # The edited row is published under a derived id; its lineage edge names what was removed, and where.
    edited = published["b.jsonl#1"]
    assert edited["row_id"] != "rep" and edited["messages"][1]["content"].count(para) == 1
    assert [(e["child_id"], e["parent_id"], e["operation"]) for e in first.lineage] == [
        (edited["row_id"], "rep", "dedup:repeated_paragraph")
    ]
    assert first.lineage[0]["detail"] == f"messages[1]: removed repeated_paragraph {para!r}"
    assert first.run.counts == {
        "removed": 1,
        "edited_rows": 1,
        "flagged_not_removed": 0,
        "minhash_computed": 2,
        "signatures_reused": 0,
        "facts_reused": 0,
        "rows_in_place": 0,
    }
    assert len(first.members) == 2
    # A second run over the same rows reads the persisted signatures instead of MinHashing again.
    again = dedup([], first.connection)
    assert again.run.counts["minhash_computed"] == 0 and again.run.counts["signatures_reused"] == 2
    assert again.run.counts["facts_reused"] == 3  # nor are the rows' facts computed again
    assert again.run.counts["rows_in_place"] == 1  # the unedited kept row stays; the edited one is written again
    assert again.kept == first.kept
    # After appending a row, only its text is MinHashed.
    first.connection.register("_new", rows_to_table([sft("new", "Name a colour.", "Blue.", source="c")]))
    first.connection.execute("INSERT INTO raw SELECT * FROM _new")
    appended = dedup([], first.connection)
    assert (appended.run.counts["minhash_computed"], appended.run.counts["signatures_reused"]) == (1, 2)
    assert appended.run.counts["facts_reused"] == 3
    assert first.connection.execute("SELECT count(*) FROM dedup_signatures").fetchone() == (3,)


@pytest.mark.parametrize("min_share", [0.0, 1e9], ids=["workers hold the stored keys", "workers do not"])
def test_a_text_stored_by_an_earlier_run_is_stored_once_after_rows_are_appended(
    monkeypatch: pytest.MonkeyPatch, min_share: float
) -> None:
    """Workers skip MinHash for texts an earlier run stored when enough rows go through the facts pass to pay
    for holding every stored key (KNOWN_KEYS_MIN_SHARE); after a small change they do not hold them (~160 MB
    each at 10M rows), MinHash those texts again and the stage drops the copies in SQL. Either way each text's
    signature is stored once, only the new text counts as computed, and the same rows are kept."""
    monkeypatch.setattr(curation.dedup.stage, "KNOWN_KEYS_MIN_SHARE", min_share)
    first = dedup([sft("a", "What is 2+2?", "Four."), sft("b", "Name a colour.", "Blue.")])
    appended = [sft("copy", "What is 2+2?", "Four.", source="z"), sft("new", "Name a fruit.", "Apple.", source="z")]
    first.connection.register("_new", rows_to_table(appended))
    first.connection.execute("INSERT INTO raw SELECT * FROM _new")
    again = dedup([], first.connection)
    assert (again.run.counts["minhash_computed"], again.run.counts["signatures_reused"]) == (1, 2)
    stored = first.connection.execute("SELECT signature_key, count(*) FROM dedup_signatures GROUP BY 1").fetchall()
    assert len(stored) == 3 and {copies for _, copies in stored} == {1}
    assert again.removed() in ({"copy": "a"}, {"a": "copy"})  # the copy and its original: one is kept
    assert {row["row_id"] for row in again.kept} >= {"b", "new"} and len(again.kept) == 3


def test_a_text_met_in_several_batches_is_stored_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch MinHashes the texts no earlier run stored, so a text met again in a later batch (an exact
    copy) is MinHashed twice; ``dedup_signatures`` still holds one row per text, and the next run reuses it."""
    monkeypatch.setattr(curation.dedup.stage, "BATCH_ROWS", 2)
    copy = " ".join(_words(60, "c"))
    texts = [copy, " ".join(_words(60, "a")), copy, copy, " ".join(_words(60, "b")), copy]
    rows = [text_row(f"r{i}", text, source="s", source_uri=f"s.jsonl#{i}") for i, text in enumerate(texts)]
    first = dedup(rows)
    assert first.removed() == {"r2": "r0", "r3": "r0", "r5": "r0"}
    keys = first.connection.execute("SELECT count(*), count(DISTINCT signature_key) FROM dedup_signatures")
    assert keys.fetchone() == (3, 3)
    assert first.run.counts["minhash_computed"] == 3
    again = dedup([], first.connection)
    assert (again.run.counts["minhash_computed"], again.run.counts["signatures_reused"]) == (0, 3)
    assert again.kept == first.kept


def test_a_kept_row_removed_later_passes_its_copies_on() -> None:
    """An exact pair whose kept row is itself a near copy of an earlier, preferred row: both copies end
    up pointing at the preferred row, which lists them in order, and no cluster names a removed row."""
    base = _words(200, "w")
    near = " ".join([*base[:90], "x", "y", "z", *base[96:]])
    rows = [
        text_row("best", " ".join(base), license="MIT", source="s", source_uri="s.jsonl#0"),
        text_row("copy", near, license="CC-BY-NC-4.0", source="s", source_uri="s.jsonl#1"),
        text_row("copy2", near, license="CC-BY-NC-4.0", source="s", source_uri="s.jsonl#2"),
    ]
    written = dedup(rows)
    assert written.removed() == {"copy": "best", "copy2": "best"}
    by_row = written.by_row()
    assert by_row["copy2"]["method"] == "exact:prompt_response" and by_row["copy2"]["matched_row_id"] == "copy"
    assert by_row["copy"]["method"] == "near:prompt_response:word5" and by_row["best"]["removed"] is False
    assert not any(m["row_id"] == "copy" and not m["removed"] for m in written.members)  # its kept entry went
    assert [k["row_id"] for k in written.kept] == ["best"]
    assert [s["row_id"] for s in written.kept[0]["extra"]["dedup_sources"]] == ["copy2", "copy"]


def test_the_keep_policy_in_sql_is_the_policy_in_python() -> None:
    rng = random.Random(7)
    policy = KeepPolicy()
    plan = DedupPlan(policy=policy)
    rows = [
        sft(
            f"r{i:02d}",
            "Q?",
            rng.choice(["", "An answer."]),
            origin=rng.choice(["human", "synthetic", "augmented"]),
            license=rng.choice(["MIT", "CC-BY-NC-4.0", "Apache-2.0", None]),
        )
        for i in range(40)
    ]
    facts = pa.Table.from_pylist([row_facts(r, i, plan, False)[0] for i, r in enumerate(rows)], schema=FACT_SCHEMA)
    connection = duckdb.connect()
    connection.register("facts", facts)
    kept, reasons = zip(
        *connection.execute(
            f"SELECT c.kept_position, {KeepPolicy.reason_sql('k', 'c')} "
            f"FROM ({kept_sql('SELECT position, 1 AS cluster FROM facts', 'facts')}) AS c "
            "JOIN facts AS k ON k.position = c.kept_position ORDER BY c.position"
        ).fetchall(),
        strict=True,
    )
    best = policy.choose(rows, list(range(len(rows))))
    assert set(kept) == {best}
    for i, row in enumerate(rows):
        if i != best:
            assert reasons[i] == policy.reason(rows[best], row, best, i)
