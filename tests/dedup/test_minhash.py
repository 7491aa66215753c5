"""Batched MinHash: equal to datasketch's, tokens equal to normalize.words, LSH and exact Jaccard."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH

from curation.core.normalize import words
from curation.dedup.minhash import (
    EMPTY_VALUE,
    HAVE_JIT,
    LSHIndex,
    MinHasher,
    ShingleConfig,
    band_keys,
    candidate_pairs,
    exact_jaccard,
    iter_signature_batches,
    lsh_params,
    pairs_jaccard,
    signature_bytes,
    signature_from_bytes,
    token_hash64,
    word_shingle_hash64,
)
from tests.conftest import SHARED_DATA

EDGE_CASES = [
    "",
    "   \n\t ",
    "!!! ... ???",
    "one",
    "Two Words",
    "exactly five words here now",
    "Ünïcode “quotes” — ﬁne ＡＢＣ café naïve Straße ΣΊΣΥΦΟΣ text with enough words",
    "snake_case_identifier and a verylongwordthatisexactly32bytes! and 12345678 9",
    "tabs\tand\nnewlines\r\nmixed   spacing,punctuation;everywhere",
]


def _corpus_texts() -> list[str]:
    texts = []
    for line in (SHARED_DATA / "self-instruct-seed-tasks" / "seed_tasks.jsonl").read_text().splitlines()[:40]:
        record = json.loads(line)
        texts.append(record["instruction"] + "\n" + record["instances"][0]["output"])
    convs = json.loads((SHARED_DATA / "fastchat-dummy-conversation" / "dummy_conversation.json").read_text())
    texts += [" ".join(m["value"] for m in c["conversations"]) for c in convs[:20]]
    return texts + EDGE_CASES


def _datasketch(hasher: MinHasher, text: str) -> np.ndarray:
    m = MinHash(num_perm=hasher.num_perm, seed=hasher.seed, hashfunc=hasher.hashfunc)
    for shingle in hasher.shingles.shingles(text):
        m.update(shingle)
    return m.hashvalues


@pytest.mark.parametrize("use_jit", [False, True] if HAVE_JIT else [False])
@pytest.mark.parametrize(
    ("unit", "n", "num_perm", "seed"),
    [("word", 5, 128, 1), ("word", 3, 64, 7), ("char", 5, 128, 1), ("char", 12, 32, 3)],
)
def test_signatures_equal_datasketch(use_jit: bool, unit: str, n: int, num_perm: int, seed: int) -> None:
    hasher = MinHasher(num_perm, seed, ShingleConfig(unit, n), use_jit=use_jit)  # type: ignore[arg-type]
    texts = _corpus_texts()
    sig, counts = hasher.signatures_and_counts(texts)
    assert sig.dtype == np.uint32 and sig.shape == (len(texts), num_perm)
    for i, text in enumerate(texts):
        np.testing.assert_array_equal(sig[i], _datasketch(hasher, text), err_msg=repr(text[:60]))
        assert counts[i] == len(hasher.shingles.shingles(text))


def test_jit_and_numpy_paths_agree() -> None:
    if not HAVE_JIT:
        pytest.skip("numba not installed: only the numpy path exists")
    texts = _corpus_texts()
    fast, slow = MinHasher(use_jit=True), MinHasher(use_jit=False)
    np.testing.assert_array_equal(fast.signatures(texts), slow.signatures(texts))


def test_empty_document_has_empty_signature() -> None:
    sig, counts = MinHasher().signatures_and_counts(["", "?!", "real words in this one"])
    assert (sig[0] == EMPTY_VALUE).all() and (sig[1] == EMPTY_VALUE).all()
    assert list(counts) == [0, 0, 1]


def test_word_tokens_are_normalize_words() -> None:
    one_grams = ShingleConfig("word", 1)
    for text in _corpus_texts():
        got = [s.decode("utf-8") for s in one_grams.shingles(text)]
        assert got == words(text), text[:60]
    batch = MinHasher(shingles=one_grams).shingle_batch(_corpus_texts())
    for i, text in enumerate(_corpus_texts()):
        expected = [one_grams.hashfunc64(w) for w in words(text)]
        assert batch.hashes[batch.offsets[i] : batch.offsets[i + 1]].tolist() == expected


def test_token_hash_distinguishes_lengths_and_long_tokens() -> None:
    assert token_hash64(b"a") != token_hash64(b"a\0")
    long_a, long_b = b"x" * 20 + b"a", b"x" * 20 + b"b"
    assert token_hash64(long_a) != token_hash64(long_b)


def test_lean_minhash_roundtrip_and_datasketch_lsh() -> None:
    hasher = MinHasher()
    base = " ".join(f"word{i}" for i in range(200))
    near = base.replace("word100 ", "changed ")
    other = " ".join(f"other{i}" for i in range(200))
    sig = hasher.signatures([base, near, other])
    lean = [hasher.lean(s) for s in sig]
    restored = LeanMinHash.deserialize(bytearray(_serialise(lean[0])))
    np.testing.assert_array_equal(restored.hashvalues, sig[0])
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    lsh.insert("base", lean[0])
    lsh.insert("other", lean[2])
    assert lsh.query(lean[1]) == ["base"]
    assert lean[0].jaccard(lean[1]) > 0.8


def _serialise(lean: LeanMinHash) -> bytearray:
    buf = bytearray(lean.bytesize())
    lean.serialize(buf)
    return buf


def test_signature_bytes_roundtrip() -> None:
    sig = MinHasher().signatures(["some text with a few words in it"])[0]
    np.testing.assert_array_equal(signature_from_bytes(signature_bytes(sig), 128), sig)
    with pytest.raises(ValueError, match="num_perm"):
        signature_from_bytes(signature_bytes(sig), 64)


@pytest.mark.parametrize("threshold", [0.5, 0.6, 0.8, 0.9])
def test_lsh_params_are_datasketch_optimum(threshold: float) -> None:
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    assert lsh_params(threshold, 128) == (lsh.b, lsh.r)


def test_candidate_pairs_and_index() -> None:
    hasher = MinHasher()
    base = " ".join(f"w{i}" for i in range(300))
    texts = [base, base.replace("w150 ", "x "), " ".join(f"v{i}" for i in range(300)), base]
    sig = hasher.signatures(texts)
    b, r = lsh_params(0.6, 128)
    pairs = {tuple(p) for p in candidate_pairs(band_keys(sig, b, r)).tolist()}
    assert pairs == {(0, 1), (0, 3), (1, 3)}
    index = LSHIndex(b, r)
    index.add(sig[:2])
    index.add(sig[2:3])
    found = {tuple(p) for p in index.query(sig[3:]).tolist()}
    assert found == {(0, 0), (0, 1)}


def test_exact_jaccard_known_answers() -> None:
    a = np.array([1, 2, 3, 4], dtype=np.uint64)
    b = np.array([3, 4, 5, 6], dtype=np.uint64)
    assert exact_jaccard(a, b) == pytest.approx(2 / 6)
    assert exact_jaccard(a, a) == 1.0
    assert exact_jaccard(a, np.array([], dtype=np.uint64)) == 0.0


def test_two_processes_give_the_same_signatures() -> None:
    hasher = MinHasher()
    texts = _corpus_texts() * 3
    serial = np.concatenate([s for _, s, _ in iter_signature_batches(hasher, texts, batch_size=16)])
    parallel = np.concatenate([s for _, s, _ in iter_signature_batches(hasher, texts, batch_size=16, workers=2)])
    np.testing.assert_array_equal(serial, parallel)


def test_bad_configuration_is_reported() -> None:
    with pytest.raises(ValueError, match="unit"):
        ShingleConfig("sentence", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n must be"):
        ShingleConfig("word", 9)


@pytest.mark.parametrize("use_jit", [False, True] if HAVE_JIT else [False])
def test_exact_sets_and_pair_jaccard_match_python_sets(use_jit: bool) -> None:
    hasher = MinHasher(use_jit=use_jit)
    texts = _corpus_texts()
    texts.append("la la la la la la la la la la la la")  # repeated shingles count once
    values, offsets = hasher.shingle_hashes(texts)
    set_values, set_offsets = hasher.shingle_sets(texts)
    pairs = np.array([(i, j) for i in range(0, len(texts), 7) for j in range(len(texts))], dtype=np.int64)
    from_hashes = pairs_jaccard(values, offsets, pairs)
    from_sets = pairs_jaccard(set_values, set_offsets, pairs)
    python_sets = [set(hasher.shingles.shingles(t)) for t in texts]
    for (i, j), a, b in zip(pairs.tolist(), from_hashes, from_sets, strict=True):
        union = python_sets[i] | python_sets[j]
        expected = len(python_sets[i] & python_sets[j]) / len(union) if union else 1.0
        assert a == pytest.approx(expected, abs=1e-12) and b == pytest.approx(expected, abs=1e-12)
    sizes = np.diff(set_offsets)
    assert sizes.tolist() == [len(s) for s in python_sets]


def test_batch_tokens_equal_normalize_words_on_random_unicode() -> None:
    # Letters, digits, marks, punctuation and symbols from many scripts, including characters that
    # NFKC composes with a preceding ASCII letter (e + U+0301) or expands (U+FB01 -> "fi").
    alphabet = ("aZ9_ -.,'\"\n\té\u0301\u0327ßİΣςﬁ①Ａ＿—“”…─│ß中文ж\u200b\u00a0ǅ\u2163٣ﷺ") * 3
    rng = random.Random(7)
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(300)]
    hasher = MinHasher(shingles=ShingleConfig("word", 1))
    values, offsets = hasher.shingle_hashes(texts)
    for i, text in enumerate(texts):
        toks = words(text)
        expected = [word_shingle_hash64(t) for t in toks] or []
        assert values[offsets[i] : offsets[i + 1]].tolist() == expected, repr(text)
