"""Benchmark decontamination against the public benchmarks in ../shared/data (known overlaps)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest

from curation.core.schema import Row, make_row_id, new_row
from curation.format.decontam import (
    BenchmarkItem,
    ContaminationIndex,
    Fields,
    FlaggedRow,
    check_row,
    contamination_report,
    load_benchmark,
    render_report_markdown,
)
from tests.conftest import SHARED_DATA


def _prompt_rows(items: list[BenchmarkItem]) -> list[Row]:
    """Benchmark questions used as training prompts (one user turn each, row_id = item id)."""
    return [
        new_row(
            row_id=item.item_id, kind="prompt", source=item.benchmark, messages=[{"role": "user", "content": item.text}]
        )
        for item in items
    ]


def _flag(rows: list[Row], index: ContaminationIndex, fields: Fields = "prompt") -> list[FlaggedRow]:
    """The rows the formatted stage rejects as contaminated, recorded as it records them: ``check_row`` per
    row, a ``FlaggedRow`` for each row with a match."""
    flagged = []
    for row in rows:
        matches = check_row(row, index, fields)
        if matches:
            flagged.append(FlaggedRow(row["row_id"], row["source"], tuple(matches)))
    return flagged


def _flagged_pairs(flagged: list[FlaggedRow]) -> set[tuple[str, str]]:
    return {(row.row_id, m.item_id) for row in flagged for m in row.matches}


@pytest.fixture(scope="module")
def vicuna() -> list[BenchmarkItem]:
    return load_benchmark(SHARED_DATA / "vicuna-bench" / "question.jsonl", "vicuna-bench")


@pytest.fixture(scope="module")
def mt_bench() -> list[BenchmarkItem]:
    return load_benchmark(SHARED_DATA / "mt-bench" / "question.jsonl", "mt-bench")


@pytest.fixture(scope="module")
def wizardlm() -> list[BenchmarkItem]:
    return load_benchmark(SHARED_DATA / "wizardlm-testset" / "WizardLM_testset.jsonl", "wizardlm", id_field="idx")


@pytest.fixture(scope="module")
def humaneval() -> list[BenchmarkItem]:
    return load_benchmark(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "humaneval", text_fields=["prompt"])


@pytest.fixture(scope="module")
def code_alpaca_rows() -> list[Row]:
    records = json.loads((SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json").read_text(encoding="utf-8"))
    rows = []
    for number, record in enumerate(records):
        prompt = (record["instruction"] + "\n" + record["input"]).strip()
        rows.append(
            new_row(
                row_id=f"ca{number}",
                kind="sft",
                source="code-alpaca-2k",
                messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}],
            )
        )
    return rows


# ---- loading --------------------------------------------------------------------------------


def test_load_mt_bench_gives_one_item_per_turn(mt_bench: list[BenchmarkItem]) -> None:
    # README: 80 questions (IDs 81-160), each with 2 turns.
    assert len(mt_bench) == 160
    assert mt_bench[0].item_id == "81#turn1" and mt_bench[1].item_id == "81#turn2"
    assert mt_bench[0].text.startswith("Compose an engaging travel blog post about a recent trip to Hawaii")
    assert {item.benchmark for item in mt_bench} == {"mt-bench"}


def test_load_gzip_jsonl_and_guessed_fields(humaneval: list[BenchmarkItem], wizardlm: list[BenchmarkItem]) -> None:
    assert len(humaneval) == 164 and humaneval[0].item_id == "HumanEval/0"
    assert "def has_close_elements" in humaneval[0].text
    assert len(wizardlm) == 218
    # Without naming fields, "Instruction" and "idx" are found by the guesses.
    guessed = load_benchmark(SHARED_DATA / "wizardlm-testset" / "WizardLM_testset.jsonl", "wizardlm")
    assert guessed == wizardlm


def test_load_json_array_joins_string_fields(tmp_path: Path) -> None:
    path = tmp_path / "bench.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        json.dump([{"id": 7, "instruction": "Add the numbers.", "input": "2 and 3"}], handle)
    items = load_benchmark(path, "tiny", text_fields=["instruction", "input"])
    assert items == [BenchmarkItem("tiny", "7", "Add the numbers.\n2 and 3")]
    # A byte-order mark (common in files saved by Windows tools) is not part of the first record.
    bom = tmp_path / "bom.jsonl"
    bom.write_text('\ufeff{"question": "Why is the sky blue?"}\n', encoding="utf-8")
    assert load_benchmark(bom, "bom") == [BenchmarkItem("bom", "1", "Why is the sky blue?")]


def test_load_errors_name_the_benchmark_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="benchmark 'gone'"):
        load_benchmark(tmp_path / "missing.jsonl", "gone")
    path = tmp_path / "odd.jsonl"
    path.write_text('{"id": 1, "body": "some text"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"benchmark 'odd'.*\['body', 'id'\].*set text_fields"):
        load_benchmark(path, "odd")
    with pytest.raises(ValueError, match="text_fields"):
        load_benchmark(SHARED_DATA / "humaneval" / "HumanEval.jsonl.gz", "humaneval", text_fields=["turns"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"turns": ["ok"]}\n{not json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"benchmark 'bad': .*bad.jsonl, line 2: invalid JSON"):
        load_benchmark(bad, "bad")
    notes = tmp_path / "notes.txt"
    notes.write_text("What is 2+2?\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"benchmark 'notes': .*use \.jsonl, \.json, \.csv or \.parquet"):
        load_benchmark(notes, "notes")


def test_benchmarks_are_read_by_the_ingestion_readers_parquet_included(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "bench.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [{"task_id": "T/0", "prompt": "Reverse a list."}, {"task_id": "T/1", "prompt": "Sort a list."}]
        ),
        path,
    )
    assert load_benchmark(path, "tiny") == [
        BenchmarkItem("tiny", "T/0", "Reverse a list."),
        BenchmarkItem("tiny", "T/1", "Sort a list."),
    ]
    truncated = tmp_path / "cut.json"
    truncated.write_text('[{"prompt": "Reverse a list."},\n {"prompt": "Sort', encoding="utf-8")
    with pytest.raises(ValueError, match=r"cut\.json, line 2: invalid or truncated JSON"):
        load_benchmark(truncated, "cut")


# ---- known overlaps between the shared benchmarks -------------------------------------------


def test_vicuna_vs_mt_bench_flags_exactly_the_two_shared_questions(
    vicuna: list[BenchmarkItem], mt_bench: list[BenchmarkItem]
) -> None:
    index = ContaminationIndex(mt_bench)  # both turns of every question
    flagged = _flag(_prompt_rows(vicuna), index)
    # README: vicuna IDs 67 and 77 are MT-bench questions 130 and 81.
    assert _flagged_pairs(flagged) == {("67#turn1", "130#turn1"), ("77#turn1", "81#turn1")}
    assert all(m.kind == "exact" and m.ratio == 1.0 for row in flagged for m in row.matches)

    report = contamination_report(flagged, index)
    assert report["mt-bench"]["items_total"] == 160
    assert report["mt-bench"]["items_hit"] == 2 and report["mt-bench"]["rows_hit"] == 2
    assert report["mt-bench"]["item_ids"] == ["130#turn1", "81#turn1"]


def test_mt_bench_conversations_vs_vicuna_checks_every_turn(
    vicuna: list[BenchmarkItem], mt_bench: list[BenchmarkItem]
) -> None:
    # Training rows are whole two-turn conversations; the shared question is their first turn.
    conversations: dict[str, list[dict[str, str]]] = {}
    for item in mt_bench:
        conversations.setdefault(item.item_id.split("#")[0], []).append({"role": "user", "content": item.text})
    rows = [new_row(row_id=qid, kind="chat", source="mt-bench", messages=turns) for qid, turns in conversations.items()]
    flagged = _flag(rows, ContaminationIndex(vicuna))
    assert _flagged_pairs(flagged) == {("81", "77#turn1"), ("130", "67#turn1")}


def test_vicuna_vs_wizardlm_flags_exactly_the_two_shared_questions(
    vicuna: list[BenchmarkItem], wizardlm: list[BenchmarkItem]
) -> None:
    flagged = _flag(_prompt_rows(vicuna), ContaminationIndex(wizardlm))
    # README: vicuna IDs 26 and 39 are WizardLM test-set items 135 and 110.
    assert _flagged_pairs(flagged) == {("26#turn1", "135"), ("39#turn1", "110")}
    reverse = _flag(_prompt_rows(wizardlm), ContaminationIndex(vicuna))
    assert _flagged_pairs(reverse) == {("135", "26#turn1"), ("110", "39#turn1")}


def test_one_index_over_several_benchmarks_reports_each(
    vicuna: list[BenchmarkItem], mt_bench: list[BenchmarkItem], wizardlm: list[BenchmarkItem]
) -> None:
    index = ContaminationIndex(mt_bench + wizardlm)
    flagged = _flag(_prompt_rows(vicuna), index)
    report = contamination_report(flagged, index)
    assert {name: entry["rows_hit"] for name, entry in report.items()} == {"mt-bench": 2, "wizardlm": 2}
    markdown = render_report_markdown(report)
    assert "| mt-bench | 160 | 2 | 2 | 2 | 0 |" in markdown
    assert "| wizardlm | 218 | 2 | 2 | 2 | 0 |" in markdown
    assert "`77#turn1`" in markdown and "`81#turn1`" in markdown


# ---- false positives: HumanEval vs Code-Alpaca ----------------------------------------------


def test_code_alpaca_vs_humaneval_default_flags_nothing_small_n_does(
    humaneval: list[BenchmarkItem], code_alpaca_rows: list[Row]
) -> None:
    default = ContaminationIndex(humaneval)
    assert default.n == 13
    for fields in ("prompt", "all"):
        assert _flag(code_alpaca_rows, default, fields) == [], fields

    # README: 31 Code-Alpaca rows share an 8-word n-gram with a HumanEval prompt, all generic
    # phrasing or number runs; with n=8 and no common-n-gram rules they are all flagged.
    loose = ContaminationIndex(humaneval, n=8, common_ngram_max_df=None, ignore_trivial=False)
    flagged = _flag(code_alpaca_rows, loose)
    assert len(flagged) == 31
    # They are incidental: no row shares even a tenth of a HumanEval prompt's 8-grams.
    assert max(m.ratio for row in flagged for m in row.matches) < 0.1
    assert any(m.overlap == "a function that takes a string and returns" for row in flagged for m in row.matches)


def test_trivial_number_runs_are_not_evidence(humaneval: list[BenchmarkItem], code_alpaca_rows: list[Row]) -> None:
    # Code-Alpaca row 1747's answer holds "0 1 2 … 9 a b c d e f", also in HumanEval/78's prompt.
    row = next(r for r in code_alpaca_rows if r["row_id"] == "ca1747")
    assert check_row(row, ContaminationIndex(humaneval), fields="all") == []
    strict = ContaminationIndex(humaneval, ignore_trivial=False)
    matches = check_row(row, strict, fields="all")
    assert [(m.item_id, m.overlap) for m in matches] == [("HumanEval/78", "0 1 2 3 4 5 6 7 8 9 a b c d e f")]


# ---- n-gram matching behaviour ---------------------------------------------------------------


def test_benchmark_inside_a_longer_prompt_is_an_ngram_match(humaneval: list[BenchmarkItem]) -> None:
    index = ContaminationIndex(humaneval)
    item = humaneval[0]
    full = index.check("Complete the following Python function.\n\n" + item.text + "\nThanks!")
    assert [(m.item_id, m.kind, m.ratio, m.n) for m in full] == [("HumanEval/0", "ngram", 1.0, 13)]
    # A truncated copy (its first 200 characters) is still caught, with a partial ratio.
    partial = index.check(item.text[:200])
    assert [m.item_id for m in partial] == ["HumanEval/0"]
    assert 0.2 < partial[0].ratio < 1.0
    assert partial[0].overlap.startswith("from typing import list def has_close_elements")
    # min_overlap_ratio turns such partial copies into non-matches.
    assert ContaminationIndex(humaneval, min_overlap_ratio=0.9).check(item.text[:200]) == []


def test_exact_match_ignores_case_spacing_and_punctuation(mt_bench: list[BenchmarkItem]) -> None:
    index = ContaminationIndex(mt_bench)
    variant = (
        "  IMPLEMENT a program to find the common elements in two arrays, without using any extra data-structures  "
    )
    matches = index.check(variant)
    assert [(m.item_id, m.kind) for m in matches] == [("130#turn1", "exact")]


def test_short_items_match_whole_when_at_least_min_n_words(vicuna: list[BenchmarkItem]) -> None:
    index = ContaminationIndex(vicuna)
    # Vicuna 1 has 8 words: fewer than 13, so it is found whole inside a longer prompt.
    text = "Quick one. How can I improve my time management skills? Bullet points please."
    assert [(m.item_id, m.kind, m.n) for m in index.check(text)] == [("1#turn1", "ngram", 8)]
    # Under min_n words an item only matches exactly.
    tiny = ContaminationIndex([BenchmarkItem("toy", "q1", "What is machine learning?")])
    assert tiny.check("Explain: what is machine learning? Use an example.") == []
    assert [m.kind for m in tiny.check("what is Machine Learning")] == ["exact"]


def test_word_pair_prefilter_finds_every_match_a_full_scan_finds(
    humaneval: list[BenchmarkItem], vicuna: list[BenchmarkItem], mt_bench: list[BenchmarkItem]
) -> None:
    # check() only builds the n-grams whose first two words start some benchmark n-gram (or short item);
    # with the filter off it builds every n-gram, as it did before. Both must find the same matches, in the
    # same order, on texts stitched from pieces of items (whole items, partial copies, mixed with noise).
    import random

    items = humaneval[:40] + vicuna + mt_bench
    filtered = ContaminationIndex(items)
    scanning = ContaminationIndex(items)
    scanning._gram_pairs = scanning._short_pairs = None
    rng = random.Random(11)
    texts, found = [], 0
    for _ in range(300):
        pieces = []
        for _ in range(rng.randrange(1, 4)):
            words = rng.choice(items).text.split()
            start = rng.randrange(len(words))
            pieces.append(" ".join(words[start : start + rng.randrange(1, 40)]))
            pieces.append(rng.choice(["and then", "", "please", "x y z", "the of a"]))
        texts.append(" ".join(pieces))
    for text in texts:
        matches = filtered.check(text)
        assert matches == scanning.check(text), text
        found += bool(matches)
    assert found > 30  # the texts do hit items, so the comparison means something


def _template_items(count: int) -> list[BenchmarkItem]:
    template = "Write a python function that reads the input list and returns the number of"
    tails = [
        "even values",
        "odd values",
        "prime values",
        "negative values",
        "zeros",
        "ones",
        "twos",
        "threes",
        "duplicates",
        "palindromes",
        "squares",
        "cubes",
    ]
    return [BenchmarkItem("toy", str(k), f"{template} {tails[k]} in it.") for k in range(count)]


def test_ngrams_common_to_many_benchmark_items_are_ignored() -> None:
    training = "Please write a python function that reads the input list and returns the number of vowels."
    # The 14-word template is shared by 12 items, above the default of 10: template, not evidence.
    assert ContaminationIndex(_template_items(12)).check(training) == []
    assert len(ContaminationIndex(_template_items(12), common_ngram_max_df=None).check(training)) == 12
    # Shared by only 3 items it still counts.
    assert len(ContaminationIndex(_template_items(3)).check(training)) == 3


def test_ngrams_common_in_a_background_corpus_are_ignored() -> None:
    item = BenchmarkItem(
        "toy",
        "1",
        "Licensed under the Apache License, Version 2.0 (the License); you may not "
        "use this file except in compliance with the License. Compute the sum of primes.",
    )
    boilerplate = (
        "Licensed under the Apache License, Version 2.0 (the License); you may not use this file "
        "except in compliance with the License."
    )
    background = [f"{boilerplate} Module {k}." for k in range(11)]
    assert ContaminationIndex([item]).check(boilerplate) != []
    assert ContaminationIndex([item], background=background).check(boilerplate) == []
    # The rest of the item is still protected.
    rest = "you may not use this file except in compliance with the License. Compute the sum of primes."
    assert ContaminationIndex([item], background=background).check(rest) != []


def test_fields_choose_what_is_scanned_and_flags_become_contamination_records(vicuna: list[BenchmarkItem]) -> None:
    index = ContaminationIndex(vicuna)
    answer_leak = new_row(
        row_id=make_row_id("t", "1"),
        kind="sft",
        source="toy",
        messages=[
            {"role": "user", "content": "Give me a study tip."},
            {"role": "assistant", "content": vicuna[0].text},
        ],
    )
    clean = new_row(
        row_id=make_row_id("t", "2"),
        kind="sft",
        source="toy",
        messages=[{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
    )
    # The formatted stage scans the user turns (the default): a benchmark question as an answer passes.
    assert check_row(answer_leak, index) == [] and check_row(clean, index) == []
    flagged = _flag([answer_leak, clean], index, fields="all")
    assert [f.row_id for f in flagged] == [answer_leak["row_id"]]
    # One `contamination` table record per match, as the formatted stage writes them.
    (record,) = flagged[0].records()
    assert record == {
        "row_id": answer_leak["row_id"],
        "source": "toy",
        "benchmark": "vicuna-bench",
        "item_id": "1#turn1",
        "kind": "exact",
        "overlap": record["overlap"],
        "ratio": 1.0,
        "n": 0,
    }
    assert record["overlap"].startswith("how can i improve my time management skills")
    with pytest.raises(ValueError, match="fields"):
        check_row(clean, index, fields="response")  # type: ignore[arg-type]


def test_clean_benchmarks_still_appear_in_the_report(vicuna: list[BenchmarkItem]) -> None:
    index = ContaminationIndex(vicuna)
    report = contamination_report([], index)
    assert report == {
        "vicuna-bench": {
            "items_total": 80,
            "items_hit": 0,
            "rows_hit": 0,
            "matches_exact": 0,
            "matches_ngram": 0,
            "item_ids": [],
            "examples": [],
        }
    }


def test_gsm8k_train_is_clean_and_checked_quickly(
    vicuna: list[BenchmarkItem],
    mt_bench: list[BenchmarkItem],
    wizardlm: list[BenchmarkItem],
    humaneval: list[BenchmarkItem],
) -> None:
    # Negative control: grade-school maths vs chat and code benchmarks, questions and worked answers.
    rows = []
    with open(SHARED_DATA / "gsm8k-train" / "train.jsonl", encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            record = json.loads(line)
            rows.append(
                new_row(
                    row_id=f"gsm{number}",
                    kind="sft",
                    source="gsm8k",
                    messages=[
                        {"role": "user", "content": record["question"]},
                        {"role": "assistant", "content": record["answer"]},
                    ],
                )
            )
    assert len(rows) == 7473
    index = ContaminationIndex(vicuna + mt_bench + wizardlm + humaneval)
    start = time.perf_counter()
    flagged = _flag(rows, index, fields="all")
    elapsed = time.perf_counter() - start
    assert flagged == []
    # ~1 s here; a generous bound that an O(rows x items) scan (600 items) would break.
    assert elapsed < 15, elapsed


def test_index_rejects_bad_settings() -> None:
    item = BenchmarkItem("toy", "1", "one two three")
    with pytest.raises(ValueError, match="min_n"):
        ContaminationIndex([item], n=5, min_n=8)
    with pytest.raises(ValueError, match="min_overlap_ratio"):
        ContaminationIndex([item], min_overlap_ratio=2.0)
    with pytest.raises(ValueError, match="no benchmark items"):
        ContaminationIndex([])
