"""A realistic post-training mix of any size, built from the shared public datasets, with known duplicates.

Rows are SFT (Code Alpaca, GSM8K, Self-Instruct user tasks), chat (OpenAssistant threads and FastChat
conversations, as one ShareGPT JSON array) and preference pairs (the LLMs-from-scratch set, ingested as
model-generated rows). Every emitted record is a base record with about a quarter of its alphabetic words
replaced by words drawn from the pool's own word distribution: stop-word ratios, lengths and language
stay realistic while the word 5-grams of two rows from one base share almost nothing, so rows are unique
for exact and near-duplicate detection alike.

Injected on top, with their record positions written to ``duplicates.json``:

* about 10% exact copies of earlier records, half in the same file, half in a mirror file declared with
  another licence (so the kept row must carry the absorbed copy's licence note);
* about 5% near copies: the last word of a record's longest text replaced (records of 30+ words, so the
  word 5-gram Jaccard stays above 0.8);
* a few malformed records (broken JSON, wrong field types) that must land in quarantine.

The mix is deterministic in ``(rows, seed)``; :func:`build_mix` writes it under a directory together with
a ``distillery.yaml`` that runs it with synthesis off, default filters, near duplicates on and the demo
tokenizer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

EXACT_SHARE = 0.10
NEAR_SHARE = 0.05
EDIT_SHARE = 0.25
NEAR_MIN_WORDS = 30
MALFORMED_PER_FILE = 3
# Share of rows per file; the chat array is the one JSON (not JSONL) file.
FILE_SHARES = {"sft": 0.40, "gsm8k": 0.20, "chat": 0.25, "preference": 0.15}
_WORD = re.compile(r"[A-Za-z]{2,}")


@dataclass
class _Pools:
    sft: list[dict[str, Any]]
    gsm8k: list[dict[str, Any]]
    chat: list[dict[str, Any]]
    preference: list[dict[str, Any]]
    vocabulary: list[str]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _oasst_threads(tree: dict[str, Any]) -> Iterator[list[dict[str, str]]]:
    """Root-to-leaf threads of one OpenAssistant tree, as ShareGPT turns."""
    speaker = {"prompter": "human", "assistant": "gpt"}

    def walk(message: dict[str, Any], turns: list[dict[str, str]]) -> Iterator[list[dict[str, str]]]:
        if message.get("deleted"):
            return
        turns = [*turns, {"from": speaker[message["role"]], "value": message["text"]}]
        replies = message.get("replies") or []
        if not replies and len(turns) >= 2:
            yield turns
        for reply in replies:
            yield from walk(reply, turns)

    yield from walk(tree["prompt"], [])


def _load_pools() -> _Pools:
    sft = json.loads((SHARED_DATA / "code-alpaca-2k" / "code_alpaca_2k.json").read_text("utf-8"))
    for task in _read_jsonl(SHARED_DATA / "self-instruct-user-oriented" / "user_oriented_instructions.jsonl"):
        for instance in task["instances"]:
            sft.append({"instruction": task["instruction"], "input": instance["input"], "output": instance["output"]})
    gsm8k = _read_jsonl(SHARED_DATA / "gsm8k-train" / "train.jsonl")
    chat = [
        {"conversations": turns}
        for tree in _read_jsonl(SHARED_DATA / "oasst-en-100-trees" / "en_100_tree.jsonl")
        for turns in _oasst_threads(tree)
    ]
    fastchat = json.loads((SHARED_DATA / "fastchat-dummy-conversation" / "dummy_conversation.json").read_text("utf-8"))
    chat += [{"conversations": record["conversations"]} for record in fastchat]
    preference = [
        {
            "prompt": (item["instruction"] + ("\n\n" + item["input"] if item.get("input") else "")),
            "chosen": item["chosen"],
            "rejected": item["rejected"],
        }
        for item in json.loads(
            (SHARED_DATA / "llms-from-scratch-preference" / "instruction-data-with-preference.json").read_text("utf-8")
        )
    ]
    vocabulary = [
        word
        for pool in (sft, gsm8k, preference)
        for record in pool
        for value in record.values()
        if isinstance(value, str)
        for word in _WORD.findall(value)
    ]
    return _Pools(sft, gsm8k, chat, preference, vocabulary)


def _edit(text: str, rng: random.Random, vocabulary: list[str], share: float) -> str:
    """Replace about ``share`` of the alphabetic words (numbers, code and punctuation untouched)."""

    def replace(match: re.Match[str]) -> str:
        return rng.choice(vocabulary) if rng.random() < share else match.group(0)

    return _WORD.sub(replace, text)


def _map_strings(record: Any, change: Any) -> Any:
    if isinstance(record, str):
        return change(record)
    if isinstance(record, list):
        return [_map_strings(item, change) for item in record]
    if isinstance(record, dict):
        return {key: (value if key == "from" else _map_strings(value, change)) for key, value in record.items()}
    return record


def _strings(record: Any) -> Iterator[tuple[tuple[Any, ...], str]]:
    """(path, text) of every string value except speaker names."""
    if isinstance(record, str):
        yield (), record
    elif isinstance(record, list):
        for index, item in enumerate(record):
            for path, text in _strings(item):
                yield (index, *path), text
    elif isinstance(record, dict):
        for key, value in record.items():
            if key != "from":
                for path, text in _strings(value):
                    yield (key, *path), text


def _longest_text(record: dict[str, Any]) -> tuple[tuple[Any, ...], str]:
    return max(_strings(record), key=lambda item: len(item[1]))


def _near_copy(record: dict[str, Any], rng: random.Random, vocabulary: list[str]) -> dict[str, Any] | None:
    """The record with the last word of its longest text replaced, or None when that text is too short for
    the copy to stay above the near-duplicate threshold."""
    path, text = _longest_text(record)
    spans = [m.span() for m in _WORD.finditer(text)]
    if len(text.split()) < NEAR_MIN_WORDS or not spans:
        return None
    start, end = spans[-1]
    replacement = rng.choice([w for w in ("quietly", "rapidly", "notably", "gently") if w != text[start:end]])
    copy = json.loads(json.dumps(record))
    target: Any = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = text[:start] + replacement + text[end:]
    return copy


@dataclass
class _File:
    name: str
    mapping: str
    license: str
    records: list[Any] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class MixInfo:
    rows: int
    records: int
    malformed: int
    exact_pairs: list[tuple[str, int, str, int]]
    near_pairs: list[tuple[str, int, str, int]]


def build_mix(directory: Path, rows: int, seed: int = 0) -> MixInfo:
    """Write the mix's files and ``distillery.yaml`` under ``directory``; return what was injected."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    pools = _load_pools()
    files = {
        "sft": _File("sft_alpaca.jsonl", "alpaca", "CC-BY-NC-4.0"),
        "gsm8k": _File("gsm8k.jsonl", "gsm8k", "MIT"),
        "chat": _File("chat_sharegpt.json", "sharegpt", "Apache-2.0"),
        "preference": _File(
            "preference.jsonl", "preference", "Apache-2.0", extra={"origin": "synthetic", "generator": "llama-3.1-70b"}
        ),
    }
    mirrors = {key: _File(f"mirror_{f.name}", f.mapping, "CC-BY-4.0", extra=f.extra) for key, f in files.items()}
    exact_pairs: list[tuple[str, int, str, int]] = []
    near_pairs: list[tuple[str, int, str, int]] = []
    long_records: dict[str, list[int]] = {key: [] for key in files}
    keys = list(FILE_SHARES)
    weights = [FILE_SHARES[k] for k in keys]
    for _ in range(rows):
        key = rng.choices(keys, weights)[0]
        target = files[key]
        roll = rng.random()
        if roll < EXACT_SHARE and target.records:
            original = rng.randrange(len(target.records))
            into = target if rng.random() < 0.5 else mirrors[key]
            into.records.append(target.records[original])
            exact_pairs.append((target.name, original + 1, into.name, len(into.records)))
            continue
        if roll < EXACT_SHARE + NEAR_SHARE and long_records[key]:
            original = rng.choice(long_records[key])
            copy = _near_copy(target.records[original], rng, pools.vocabulary)
            if copy is not None:
                target.records.append(copy)
                near_pairs.append((target.name, original + 1, target.name, len(target.records)))
                continue
        base = rng.choice(getattr(pools, key))
        target.records.append(_map_strings(base, lambda text: _edit(text, rng, pools.vocabulary, EDIT_SHARE)))
        if len(_longest_text(target.records[-1])[1].split()) >= NEAR_MIN_WORDS:
            long_records[key].append(len(target.records) - 1)
    malformed = 0
    sources = []
    for item in [*files.values(), *mirrors.values()]:
        if not item.records:
            continue
        path = directory / item.name
        if item.name.endswith(".json"):
            # A record with the wrong shape: the mapping quarantines it, the array stays valid JSON.
            broken = [{"conversations": "not a list of turns"}] * MALFORMED_PER_FILE
            path.write_text(json.dumps(item.records + broken, ensure_ascii=False, indent=1), "utf-8")
            malformed += len(broken)
        else:
            with path.open("w", encoding="utf-8") as handle:
                for record in item.records:
                    handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                for index in range(MALFORMED_PER_FILE):
                    handle.write('{"instruction": "truncated record ' + str(index) + "\n")
            malformed += MALFORMED_PER_FILE
        source = {"name": path.stem, "path": item.name, "mapping": item.mapping, "license": item.license}
        sources.append(source | item.extra)
    _write_project(directory, sources)
    info = MixInfo(
        rows=sum(len(f.records) for f in [*files.values(), *mirrors.values()]),
        records=sum(len(f.records) for f in [*files.values(), *mirrors.values()]) + malformed,
        malformed=malformed,
        exact_pairs=exact_pairs,
        near_pairs=near_pairs,
    )
    (directory / "duplicates.json").write_text(json.dumps(info.__dict__), "utf-8")
    return info


def _write_project(directory: Path, sources: list[dict[str, Any]]) -> None:
    import yaml

    project = {
        "name": "distillery-scale",
        "sources": sources,
        "synthesis": {"methods": {}},
        "format": _checkout_format(),
        "policy": {"intended_use": "research"},
    }
    (directory / "distillery.yaml").write_text(yaml.safe_dump(project, sort_keys=False), "utf-8")


def _checkout_format() -> dict[str, Any]:
    """The mix's ``format:`` settings, with the paths of this checkout (its demo tokenizer, the shared
    benchmark file)."""
    return {
        "tokenizer": str(REPO / "demo" / "tokenizer"),
        "max_tokens": 2048,
        "benchmarks": [
            {"name": "mt_bench", "path": str(SHARED_DATA / "mt-bench" / "question.jsonl"), "text_fields": ["turns"]}
        ],
    }


def point_at_checkout(directory: Path) -> None:
    """Rewrite a cached mix's project file for this checkout: a mix built from another checkout (a worktree
    since removed) names that checkout's tokenizer, and its run would fail at ``formatted``."""
    import yaml

    path = directory / "distillery.yaml"
    project = yaml.safe_load(path.read_text("utf-8"))
    if project.get("format") != _checkout_format():
        project["format"] = _checkout_format()
        path.write_text(yaml.safe_dump(project, sort_keys=False), "utf-8")
