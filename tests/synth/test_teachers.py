"""Procedural and transformers teachers, and the DuckDB generation cache."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from fractions import Fraction
from pathlib import Path

import duckdb
import pytest

from curation.core.provenance import Provenance, TeacherInfo
from curation.synth.cache import CachedTeacher, GenerationCache, cache_key
from curation.synth.teachers import (
    PERTURBATIONS,
    ChatRequest,
    Generation,
    GenerationParams,
    ProceduralTeacher,
    ResultCallback,
    Teacher,
    arithmetic_problem,
    convert_units,
    format_number,
    hash_model_dir,
    perturb,
    solve_arithmetic,
    unit_problem,
)
from tests.conftest import SHARED_DATA, require_shared_data


def ask(text: str, **params: object) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": text},), params=GenerationParams(**params))


# ----------------------------------------------------------------------------- procedural


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is 12 + 7?", "19"),
        ("Compute (3 + 4) * 5.", "35"),
        ("what is 7 divided by 2", "3.5"),
        ("What is 10 times 3 minus 4?", "26"),
        ("What is 1,000 + 2,500?", "3500"),
        ("What is 1/3?", "0.333333…"),
        ("Convert 5 km to m.", "5000"),
        ("How many minutes are in 2 hours?", "120"),
        ("Convert 100 degrees Celsius to degrees Fahrenheit.", "212"),
        ("Convert 1 mile to km", "1.609344"),
    ],
)
def test_procedural_teacher_answers_exactly(question: str, answer: str) -> None:
    gen = ProceduralTeacher().generate([ask(question)])[0]
    assert gen.finish_reason == "stop"
    assert answer in gen.text


@pytest.mark.parametrize(
    "question", ["Write a poem about the sea.", "What happened on 2024-01-15?", "Convert 5 km to kg.", "What is 3 / 0?"]
)
def test_procedural_teacher_declines_what_rules_cannot_answer(question: str) -> None:
    gen = ProceduralTeacher().generate([ask(question)])[0]
    assert (gen.text, gen.finish_reason) == ("", "unsupported")


def test_procedural_teacher_is_deterministic_and_seeded() -> None:
    questions = [arithmetic_problem(random.Random(i))[0] for i in range(40)]
    first = [g.text for g in ProceduralTeacher(seed=1).generate([ask(q) for q in questions])]
    again = [g.text for g in ProceduralTeacher(seed=1).generate([ask(q) for q in reversed(questions)])]
    other = [g.text for g in ProceduralTeacher(seed=2).generate([ask(q) for q in questions])]
    assert first == list(reversed(again))  # depends on (seed, prompt), not on batch order
    assert first != other  # the seed picks among answer wordings


def test_procedural_teacher_reports_each_result_and_its_identity() -> None:
    teacher = ProceduralTeacher()
    seen: list[int] = []
    teacher.generate([ask("What is 1 + 1?"), ask("hello")], on_result=lambda i, g: seen.append(i))
    assert seen == [0, 1]
    assert isinstance(teacher, Teacher)
    assert teacher.info.backend == "procedural" and teacher.info.revision


def test_generated_problems_match_independent_answers() -> None:
    rng = random.Random(7)
    for _ in range(200):
        question, answer = arithmetic_problem(rng)
        expression = re.search(r"[\d(][\d+\-*/() ]*[\d)]", question).group(0)  # type: ignore[union-attr]
        assert abs(float(answer.rstrip("…")) - eval(expression)) < 1e-6  # Python as the independent oracle
    rng = random.Random(8)
    for _ in range(200):
        question, answer = unit_problem(rng)
        reply = ProceduralTeacher().answer(question)
        assert reply is not None and answer in reply


def test_unit_conversion_known_values() -> None:
    assert convert_units(Fraction(1), "ft", "in") == 12
    assert convert_units(Fraction(1), "lb", "g") == Fraction("453.59237")
    assert convert_units(Fraction(-40), "celsius", "fahrenheit") == -40
    assert convert_units(Fraction(0), "c", "k") == Fraction("273.15")
    assert convert_units(Fraction(1), "m", "kg") is None
    assert format_number(Fraction(1, 8)) == "0.125"
    assert solve_arithmetic("What is 2 - 5?") == ("2 - 5", "-3")


def test_unit_answers_agree_with_a_public_dataset() -> None:
    # rasbt/LLMs-from-scratch preference data: "Convert N unit to unit." rows with reference outputs.
    path = SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json"
    require_shared_data(path)
    rows = json.loads(path.read_text())
    convert = [r for r in rows if re.fullmatch(r"Convert [\d,.]+ \w+ to \w+\.", r["instruction"].strip())]
    assert len(convert) >= 40
    teacher = ProceduralTeacher()
    for row in convert:
        reply = teacher.answer(row["instruction"])
        assert reply is not None, row["instruction"]
        ours = float(re.findall(r"\d+(?:\.\d+)?", reply.replace(",", ""))[-1])
        reference = float(re.findall(r"\d+(?:\.\d+)?", row["output"].replace(",", ""))[-1])
        assert ours == pytest.approx(reference, rel=5e-3), (row["instruction"], reply, row["output"])


def test_word_problems_are_not_answered_by_rules() -> None:
    # GSM8K questions contain numbers and operators in prose; rules must decline them, not guess.
    path = SHARED_DATA / "gsm8k-train" / "train.jsonl"
    require_shared_data(path)
    teacher = ProceduralTeacher()
    questions = [json.loads(line)["question"] for line in path.read_text().splitlines()[:2000]]
    assert [q for q in questions if teacher.answer(q) is not None] == []


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_perturbations_are_seeded_and_keep_the_words(kind: str) -> None:
    text = "Please summarise the following article about renewable energy in three sentences."
    once, twice = perturb(text, kind, seed=5), perturb(text, kind, seed=5)
    assert once == twice and once != text
    if kind == "word_swap":
        assert sorted(once.split()) != sorted(text.split()) or once.split() != text.split()
        assert sorted(once.replace(".", "").split()) == sorted(text.replace(".", "").split())
    if kind == "casing":
        assert once.casefold() == text.casefold()
    if kind == "typo":
        assert len(once.split()) == len(text.split())
    different = {perturb(text, kind, seed=s) for s in range(10)}
    assert len(different) > 1


def test_perturb_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb("x", "shuffle")
    assert perturb("", "typo") == ""


# ----------------------------------------------------------------------------- cache


@dataclass
class CountingTeacher:
    """Echoes prompts; counts what it was asked; can crash after ``fail_after`` generations."""

    info: TeacherInfo = field(default_factory=lambda: TeacherInfo("test", "echo", "r1", "MIT"))
    fail_after: int | None = None
    asked: list[str] = field(default_factory=list)

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        out = []
        for i, r in enumerate(requests):
            if self.fail_after is not None and len(self.asked) >= self.fail_after:
                raise RuntimeError("simulated crash")
            self.asked.append(r.messages[-1]["content"])
            gen = Generation(text=f"echo: {r.messages[-1]['content']}", finish_reason="stop")
            out.append(gen)
            if on_result:
                on_result(i, gen)
        return out


def test_second_run_sends_nothing_and_returns_the_same(tmp_path: Path) -> None:
    requests = [ask(f"q{i}") for i in range(5)] + [ask("q0")]
    teacher = CountingTeacher()
    with GenerationCache(tmp_path / "cache.duckdb") as cache:
        first = CachedTeacher(teacher, cache).generate(requests)
    assert teacher.asked == ["q0", "q1", "q2", "q3", "q4"]  # the duplicate is sent once
    with GenerationCache(tmp_path / "cache.duckdb") as cache:  # a new process would reopen the file
        cached = CachedTeacher(teacher, cache)
        second = cached.generate(requests)
        assert (cached.last_hits, cached.last_misses) == (6, 0)
    assert len(teacher.asked) == 5
    assert [g.text for g in first] == [g.text for g in second]
    assert all(g.cached for g in second) and not first[0].cached


@pytest.mark.parametrize("write_batch", [1, 3])
def test_crash_mid_run_keeps_finished_generations(tmp_path: Path, write_batch: int) -> None:
    requests = [ask(f"q{i}") for i in range(10)]
    crashing = CountingTeacher(fail_after=4)
    with GenerationCache(tmp_path / "c.duckdb") as cache, pytest.raises(RuntimeError, match="simulated"):
        CachedTeacher(crashing, cache, write_batch=write_batch).generate(requests)
    healthy = CountingTeacher()
    with GenerationCache(tmp_path / "c.duckdb") as cache:
        assert len(cache) == 4
        out = CachedTeacher(healthy, cache).generate(requests)
    assert healthy.asked == [f"q{i}" for i in range(4, 10)]
    assert [g.text for g in out] == [f"echo: q{i}" for i in range(10)]


def test_cache_key_covers_model_revision_prompt_and_params() -> None:
    info = TeacherInfo("x", "m", "r1", "MIT")
    base = cache_key(info, ask("hi"))
    assert base == cache_key(TeacherInfo("other-backend", "m", "r1", "Apache-2.0"), ask("hi"))
    assert base != cache_key(TeacherInfo("x", "m2", "r1", "MIT"), ask("hi"))
    assert base != cache_key(TeacherInfo("x", "m", "r2", "MIT"), ask("hi"))
    assert base != cache_key(info, ask("hi!"))
    assert base != cache_key(info, ask("hi", seed=1))
    assert base != cache_key(info, ask("hi", temperature=0.7))


def test_cache_table_contents_and_shared_connection() -> None:
    con = duckdb.connect(":memory:")
    cache = GenerationCache(con, table="gen_cache")
    CachedTeacher(ProceduralTeacher(), cache).generate([ask("What is 6 * 7?", seed=3), ask("poem please")])
    rows = con.execute(
        'SELECT model, revision, prompt_json, params_json, text, finish_reason FROM "gen_cache"'
    ).fetchall()
    assert len(rows) == 1  # "unsupported" replies are not cached, so a later rule may answer them
    model, revision, prompt, params, text, finish = rows[0]
    assert (model, revision, finish) == ("distillery-procedural", "1", "stop")
    assert '"What is 6 * 7?"' in prompt and '"seed":3' in params and "42" in text
    with pytest.raises(ValueError, match="plain SQL identifier"):
        GenerationCache(con, table='x"; DROP TABLE gen_cache; --')


# ----------------------------------------------------------------------------- transformers


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    from tests.model_fixtures import build_tiny_chat_model

    return build_tiny_chat_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_hash_model_dir_changes_with_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "w.bin").write_bytes(b"abc")
    first = hash_model_dir(tmp_path)
    assert first.startswith("sha256:") and first == hash_model_dir(tmp_path)
    (tmp_path / "w.bin").write_bytes(b"abd")
    assert hash_model_dir(tmp_path) != first
    second = hash_model_dir(tmp_path)
    (tmp_path / ".cache" / "huggingface").mkdir(parents=True)  # download metadata the hub rewrites
    (tmp_path / ".cache" / "huggingface" / "w.bin.metadata").write_text("etag, commit, time")
    assert hash_model_dir(tmp_path) == second
    with pytest.raises(FileNotFoundError):
        hash_model_dir(tmp_path / "missing")


@pytest.mark.slow
def test_transformers_teacher_batches_like_single_requests(tiny_model: Path, tmp_path: Path) -> None:
    from curation.synth.teachers import TransformersTeacher

    # Prompts of different lengths force left padding inside a batch; greedy output must not change.
    prompts = ["hello", "what is two plus three ?", "write a short poem about the sea and the sky please"]
    requests = [ask(p, max_new_tokens=6) for p in prompts]
    batched = TransformersTeacher(tiny_model, license="Apache-2.0", batch_size=3).generate(requests)
    single = TransformersTeacher(tiny_model, license="Apache-2.0", batch_size=1)
    one_by_one = single.generate(requests)
    assert [g.text for g in batched] == [g.text for g in one_by_one]
    assert all(g.completion_tokens is not None and 0 < g.completion_tokens <= 6 for g in batched)
    assert all(g.finish_reason in {"stop", "length"} for g in batched)
    assert single.info.revision == hash_model_dir(tiny_model) and single.info.backend == "transformers"
    sampled = single.generate([ask("hello", temperature=1.0, max_new_tokens=8, seed=s) for s in (1, 1, 2)])
    assert sampled[0].text == sampled[1].text  # the seed makes sampling reproducible

    teacher = CountingWrapper(single)
    with GenerationCache(tmp_path / "c.duckdb") as cache:
        CachedTeacher(teacher, cache).generate(requests)
        again = CachedTeacher(teacher, cache).generate(requests)
    assert teacher.calls == 1 and [g.text for g in again] == [g.text for g in batched]


@dataclass
class CountingWrapper:
    inner: Teacher
    calls: int = 0

    @property
    def info(self) -> TeacherInfo:
        return self.inner.info

    def generate(self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None) -> list[Generation]:
        self.calls += 1
        return self.inner.generate(requests, on_result)


def test_transformers_teacher_needs_a_model_dir(tmp_path: Path) -> None:
    from curation.synth.teachers import TransformersTeacher

    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        TransformersTeacher(tmp_path, license="MIT")


def test_build_teacher_from_project_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from curation.synth.teachers import OpenAICompatibleTeacher, build_teacher

    assert build_teacher({"backend": "procedural", "seed": 3}).generate([ask("What is 2 * 3?")])[0].text
    monkeypatch.setenv("DISTILLERY_TEST_KEY", "sk-secret-value")
    remote = build_teacher(
        {
            "backend": "openai-compatible",
            "base_url": "http://127.0.0.1:1/v1",
            "model": "m",
            "license": "MIT",
            "api_key_env": "DISTILLERY_TEST_KEY",
            "concurrency": 2,
        }
    )
    assert isinstance(remote, OpenAICompatibleTeacher) and "sk-secret-value" not in repr(remote)
    assert remote.concurrency == 2 and remote.info.license == "MIT"
    with pytest.raises(ValueError, match="api_key_env"):
        build_teacher({"backend": "openai-compatible", "api_key": "sk-x", "base_url": "http://x", "model": "m"})
    with pytest.raises(ValueError, match="DISTILLERY_MISSING_KEY"):
        build_teacher(
            {
                "backend": "openai-compatible",
                "base_url": "http://x",
                "model": "m",
                "license": "MIT",
                "api_key_env": "DISTILLERY_MISSING_KEY",
            }
        )
    with pytest.raises(ValueError, match=r"does not take \['temprature'\]"):
        build_teacher({"backend": "procedural", "temprature": 1})
    with pytest.raises(ValueError, match="unknown teacher backend"):
        build_teacher({"backend": "vllm"})
    with pytest.raises(ValueError, match="needs 'license'"):
        build_teacher({"backend": "transformers", "model_dir": str(tmp_path)})


# ----------------------------------------------------------------------------- weights fingerprint


def _safetensors_header(path: Path) -> bytes:
    """The JSON header of a safetensors file (tensor names, dtypes, shapes, offsets): 8-byte length, then it."""
    with path.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        return fh.read(size)


@pytest.mark.slow
def test_replaced_weights_miss_the_cache_and_change_the_fingerprint(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from transformers import AutoModelForCausalLM

    from curation.synth.teachers import build_teacher
    from tests.model_fixtures import build_tiny_chat_model

    model_dir = build_tiny_chat_model(tmp_path / "tiny")
    # As a project file that names a hub commit: the name cannot tell that the files in model_dir changed.
    spec = {"backend": "transformers", "model_dir": str(model_dir), "license": "Apache-2.0", "revision": "abc123"}
    requests = [ask("hello", max_new_tokens=6), ask("hello", temperature=1.0, max_new_tokens=6, seed=2)]
    with GenerationCache(tmp_path / "cache.duckdb") as cache:
        before = CountingWrapper(build_teacher(spec))
        old = CachedTeacher(before, cache).generate(requests)

    weights_file = model_dir / "model.safetensors"
    header = _safetensors_header(weights_file)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    model.lm_head.weight.data.neg_()  # a "fine-tune": the same tensors with other values
    model.save_pretrained(model_dir)
    # Names, dtypes, shapes and offsets are all unchanged: a fingerprint of the index and shard headers would be
    # too, which is why the fingerprint digests the bytes.
    assert _safetensors_header(weights_file) == header

    with GenerationCache(tmp_path / "cache.duckdb") as cache:
        after = CountingWrapper(build_teacher(spec))
        new = CachedTeacher(after, cache).generate(requests)
        unchanged = CountingWrapper(build_teacher(spec))
        again = CachedTeacher(unchanged, cache).generate(requests)
    assert after.calls == 1 and not any(g.cached for g in new)  # the old weights' generations were not reused
    assert [g.text for g in new] != [g.text for g in old]
    assert before.info.revision == after.info.revision == "abc123"  # the configured revision, as recorded
    assert before.info.weights.startswith("sha256:") and after.info.weights != before.info.weights
    assert Provenance("r", "responses", after.info, datetime(2026, 1, 1)).as_record()["teacher_weights"] == (
        after.info.weights
    )
    assert unchanged.calls == 0 and [g.text for g in again] == [g.text for g in new]  # same weights: cache hits
    # The sampling the backend applied, kept in the cache with each generation: greedy applies no temperature;
    # sampling applies transformers' default top_k 50, which no request asked for.
    assert new[0].effective_params is not None and again[0].effective_params == new[0].effective_params
    assert (new[0].effective_params["do_sample"], new[0].effective_params["temperature"]) == (False, None)
    assert again[1].effective_params is not None
    assert {k: again[1].effective_params[k] for k in ("do_sample", "temperature", "seed", "max_new_tokens")} == {
        "do_sample": True,
        "temperature": 1.0,
        "seed": 2,
        "max_new_tokens": 6,
    }


def test_the_weights_fingerprint_keys_the_cache_beside_the_revision() -> None:
    named = TeacherInfo("transformers", "m", "abc123", "MIT", weights="sha256:aaa")
    assert cache_key(named, ask("hi")) != cache_key(replace(named, weights="sha256:bbb"), ask("hi"))
    # No revision configured: the revision is the fingerprint, and keys are what they were before fingerprints.
    hashed = TeacherInfo("transformers", "m", "sha256:aaa", "MIT", weights="sha256:aaa")
    assert cache_key(hashed, ask("hi")) == cache_key(TeacherInfo("transformers", "m", "sha256:aaa", "MIT"), ask("hi"))


def test_a_cache_file_of_the_first_layout_is_upgraded_and_old_entries_are_not_confirmed(tmp_path: Path) -> None:
    path = tmp_path / "old.duckdb"
    info = TeacherInfo("openai-compatible", "m", "r1", "MIT")
    with duckdb.connect(str(path)) as con:  # the table as the first layout created it
        con.execute(
            "CREATE TABLE generation_cache (cache_key VARCHAR PRIMARY KEY, model VARCHAR NOT NULL, revision VARCHAR "
            "NOT NULL, prompt_json JSON NOT NULL, params_json JSON NOT NULL, text VARCHAR NOT NULL, finish_reason "
            "VARCHAR, prompt_tokens INTEGER, completion_tokens INTEGER, created_at TIMESTAMP NOT NULL)"
        )
        con.execute(
            "INSERT INTO generation_cache VALUES (?, 'm', 'r1', '[]', '{}', 'old answer', 'stop', 1, 2, now())",
            [cache_key(info, ask("q"))],
        )
    reported = Generation("new", "stop", served_model="m-0125", system_fingerprint="fp_1", effective_params={"a": 1})
    with GenerationCache(path) as cache:
        (old,) = cache.get_many([cache_key(info, ask("q"))]).values()
        cache.put(info, ask("q2"), reported)
        (new,) = cache.get_many([cache_key(info, ask("q2"))]).values()
    assert (old.text, old.served_model, old.effective_params) == ("old answer", None, None)
    assert (new.served_model, new.system_fingerprint, new.effective_params) == ("m-0125", "fp_1", {"a": 1})
