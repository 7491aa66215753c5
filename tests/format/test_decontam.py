"""Benchmark decontamination against the public benchmarks in ../shared/data (known overlaps)."""

from __future__ import annotations

import gzip
import inspect
import json
import random
import re
import time
from pathlib import Path

import pytest

from curation.core.config import ConfigError, DecontamConfig, load_project
from curation.core.schema import Row, make_row_id, new_row
from curation.format.decontam import (
    BenchmarkItem,
    ContaminationIndex,
    Fields,
    FlaggedRow,
    check_row,
    contamination_report,
    index_for,
    load_benchmark,
    render_report_markdown,
    settings_record,
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
    with pytest.raises(ValueError, match="filled_template_min_ratio"):
        ContaminationIndex([item], filled_template_min_ratio=-0.1)
    with pytest.raises(ValueError, match="no benchmark items"):
        ContaminationIndex([])


# --------------------------------------------------------------------------------------------
# gsm8k-style templates (issue 15): same template, different question
# --------------------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+")


def _instance(question: str, rng: random.Random) -> str:
    """Another question on the template of a real gsm8k question, as GSM-Symbolic instantiates templates: its
    numbers drawn again with as many digits (single digits 2-9, the small values grade-school problems use)."""

    def redraw(number: re.Match[str]) -> str:
        digits = len(number.group())
        return str(rng.randint(10 ** (digits - 1) if digits > 1 else 2, 10**digits - 1))

    return _NUMBER.sub(redraw, question)


@pytest.fixture(scope="module")
def gsm8k() -> list[dict[str, str]]:
    with open(SHARED_DATA / "gsm8k-train" / "train.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _sft(row_id: str, question: str, answer: str) -> Row:
    return new_row(
        row_id=row_id,
        kind="sft",
        source="gsm8k",
        messages=[{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
    )


def test_gsm8k_template_questions_are_not_contamination_but_copies_are(gsm8k: list[dict[str, str]]) -> None:
    # A templated benchmark from real gsm8k questions: 60 templates x 20 instances. The text around the numbers
    # is shared by 20 items (template text); with single-digit values, a new question on a template also shares
    # literal 13-grams with the instances whose numbers happen to coincide.
    rng = random.Random(0)
    records = [r for r in gsm8k if _NUMBER.search(r["question"])][:60]
    items = [
        BenchmarkItem("gsm-symbolic", f"{t}-{k}", _instance(r["question"], rng))
        for t, r in enumerate(records)
        for k in range(20)
    ]
    others = [_sft(f"other{t}", _instance(r["question"], rng), r["answer"]) for t, r in enumerate(records)]
    copies = [_sft(f"copy{t}", items[t * 20].text, r["answer"]) for t, r in enumerate(records)]
    wrapped = [
        _sft(f"wrapped{t}", f"Solve step by step. {items[t * 20].text} Put the answer after ####.", r["answer"])
        for t, r in enumerate(records)
    ]
    # The copied question is in the response: found when responses are checked too (fields: all).
    in_answer = [_sft(f"answer{t}", "Write a word problem.", items[t * 20].text) for t in range(len(records))]

    def flagged(index: ContaminationIndex, rows: list[Row], fields: Fields = "prompt") -> int:
        return len(_flag(rows, index, fields))

    default = ContaminationIndex(items)
    assert flagged(default, others) <= 12  # 7 of the 60 measured
    assert flagged(default, copies) == flagged(default, wrapped) == 60
    assert flagged(default, in_answer) == 0 and flagged(default, in_answer, "all") == 60
    # Template text is recognised by the number of benchmark items sharing it, the values filled in by their
    # template: with every shared n-gram as evidence (GPT-3 without its frequency rule) most are flagged.
    every_ngram = ContaminationIndex(items, common_ngram_max_df=None)
    assert flagged(every_ngram, others) >= 45  # 56 measured
    # Ignoring only the n-grams more than 10 items share leaves those whose small numbers coincide.
    assert 20 <= flagged(ContaminationIndex(items, filled_template_min_ratio=0.0), others) <= 50  # 35 measured
    assert default.ignored["template"] > 0
    record = settings_record(default, "prompt")
    assert record["ngrams_of_filled_templates"] > 0
    assert "an item matched by those alone needs 50% of them" in render_report_markdown({}, record)
    # The real questions themselves (one instance each, no template) are matched as before.
    real = ContaminationIndex([BenchmarkItem("gsm8k", str(t), r["question"]) for t, r in enumerate(records)])
    assert flagged(real, [_sft(f"r{t}", f"Q: {r['question']}", "") for t, r in enumerate(records)]) == 60


def test_decontamination_settings_in_the_project_file_are_the_index_defaults(vicuna: list[BenchmarkItem]) -> None:
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(ContaminationIndex).parameters.items()
        if name in DecontamConfig.model_fields
    }
    assert defaults == DecontamConfig().model_dump(exclude={"fields"})
    assert inspect.signature(check_row).parameters["fields"].default == DecontamConfig().fields
    settings = DecontamConfig(fields="all", n=10, common_ngram_max_df=None, min_overlap_ratio=0.5)
    index = index_for(vicuna, settings)
    record = settings_record(index, settings.fields)
    assert record == {
        "fields": "all",
        "n": 10,
        "min_n": 8,
        "common_ngram_max_df": None,
        "background_max_df": None,
        "min_overlap_ratio": 0.5,
        "ignore_trivial": True,
        "filled_template_min_ratio": 0.5,
        "benchmark_items": 80,
        "ngrams_ignored": {"trivial": 0},
        "ngrams_of_filled_templates": 0,
    }
    markdown = render_report_markdown(contamination_report([], index), record)
    assert markdown.startswith("Checked every message (`fields: all`) against 80 benchmark items; exact text and ")
    assert "`common_ngram_max_df: null`" in markdown and "| vicuna-bench | 80 |" in markdown
    default = settings_record(index_for(vicuna, DecontamConfig()), "prompt")
    assert "Checked user turns" in render_report_markdown({}, default)
    assert "more than 10 items is template text" in render_report_markdown({}, default)


def test_decontamination_settings_are_validated_with_their_path(tmp_path: Path) -> None:
    def project(decontamination: str) -> Path:
        path = tmp_path / "distillery.yaml"
        path.write_text(
            "sources: [{name: s, path: x.jsonl, mapping: alpaca, license: MIT}]\n"
            f"format:\n  tokenizer: t\n{decontamination}"
        )
        return path

    assert load_project(project("")).format.decontamination == DecontamConfig()
    assert load_project(project("  decontamination: {fields: all}\n")).format.decontamination.fields == "all"
    for wrong, message in (
        ("{fields: responses}", "format.decontamination.fields"),
        ("{n: 5}", "min_n"),
        ("{ngram: 8}", "format.decontamination.ngram"),
        ("{common_ngram_max_df: 0}", "format.decontamination.common_ngram_max_df"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_project(project(f"  decontamination: {wrong}\n"))
