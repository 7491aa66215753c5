"""Batch screens and shortcuts of the filter chain: each must give exactly the result of the slow path.

The RE2 screens (curation/filter/prefilter.py, the PII hints) must pass every text the Python pattern or
detector matches; the mojibake search and the ftfy shortcut must agree with ftfy; and a batch through
the runner must end exactly as each row through each step one at a time.
"""

from __future__ import annotations

import copy
import json
import random
import re
import sys
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser  # type: ignore[attr-defined]

import ftfy
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from ftfy.badness import BADNESS_RE, is_bad

from curation.core.schema import new_row
from curation.core.texts import CODE_SPANS, text_fields
from curation.filter import cleaners, language, pii, policy, quality, whitespace
from curation.filter.base import FilterStats
from curation.filter.chain import build_cleaners, build_filters
from curation.filter.cleaners import FixEncoding
from curation.filter.pii import REGEX_ENTITIES, find_pii, pii_candidates
from curation.filter.prefilter import DIGIT, OTHER_CASES, SPACE, WORD, passing, passing_rows, wider_re2
from curation.filter.quality import MOJIBAKE_WIDTH, looks_like_mojibake, mojibake_flags
from curation.filter.runner import filter_batch
from curation.ingest.readers import read_objects
from tests.conftest import SHARED_DATA
from tests.filter import one_at_a_time

PRESIDIO = SHARED_DATA / "presidio-synth-pii" / "synth_dataset_v2.json"
# Characters where Python's and RE2's ideas of digits, spaces, word characters and case differ.
TRICKY = list("aAbBiIkKsSzZ_ \n\t\r\x0b\x0c\x1c\x85\xa0\u2028İıſK0123456789٣۴߅.-:@<>[]|/\\'\"éÉßẞΣσςǅ")


def _corpus() -> list[str]:
    """Real texts (presidio's PII sentences, gsm8k's arithmetic) and random strings of tricky characters."""
    texts = [record["full_text"] for _, record in read_objects(PRESIDIO)][:600]
    gsm8k = SHARED_DATA / "gsm8k-train"
    for path in sorted(gsm8k.glob("*.jsonl"))[:1]:
        texts += [f"{r['question']}\n{r['answer']}" for _, r in list(read_objects(path))[:600]]
    rng = random.Random(11)
    texts += ["".join(rng.choice(TRICKY) for _ in range(rng.randrange(0, 24))) for _ in range(4000)]
    return texts


CORPUS = _corpus()


# ------------------------------------------------------------------ wider_re2


def _every_character() -> str:
    return "".join(chr(c) for c in range(sys.maxunicode + 1) if not 0xD800 <= c <= 0xDFFF)


def test_wide_classes_hold_every_character_python_matches() -> None:
    everything = _every_character()
    for python, re2 in ((r"\d", DIGIT), (r"\w", f"[{WORD}]"), (r"\s", f"[{SPACE}]")):
        chars = pa.array(re.findall(python, everything))
        assert pc.all(pc.match_substring_regex(chars, f"^{re2}$")).as_py(), python
    for letter in "abcdefghijklmnopqrstuvwxyz":
        cases = set(re.findall(letter, everything, re.IGNORECASE))
        assert cases == {letter, letter.upper(), *OTHER_CASES.get(letter, "")}, letter


def _patterns() -> list[re.Pattern[str]]:
    """Every pattern the filter modules compile, and constructs the translation must widen correctly."""
    found = [
        value
        for module in (quality, cleaners, pii, policy, language, whitespace)
        for value in vars(module).values()
        if isinstance(value, re.Pattern)
    ]
    found += [CODE_SPANS, quality.Refusal()._identity, quality.Refusal()._refusal, quality.EmptyFilter()._placeholder]
    edge_cases = [
        r"(?i)straße",
        r"\bfoo\d+",
        r"[^\W\d]+x",
        r"[\D]k",
        r"(a|b)\1c",
        r"x{1500}",
        r"(?i:K)s",
        r"(?i)[^a-z]I",
        r"(?i)[İ-ſ]",
        r"\S\s\S",
        r"[^\s]@",
        r"(?<=a)b(?=c)",
        r"(x)?(?(1)a|b)",
        r"(?i)σ",
        r"(?a)[\w-]+=",
        r"(?:ab){2,3000}",
        r"[^\S\n]x",
        r"(?i)[é]",
        r"(?>ab)c",
        r"a*+b",
        r"^\s|\s$",
        r"\A\s|\s\Z",
        r"(?m)^a$",
        r"x$\n",
        r"\Bb\b",
    ]
    return found + [re.compile(p) for p in edge_cases]


@pytest.mark.parametrize("pattern", _patterns(), ids=lambda p: p.pattern[:40])
def test_wider_screen_passes_every_text_the_pattern_matches(pattern: re.Pattern[str]) -> None:
    screen = wider_re2(pattern)
    assert screen is not None
    passed = set(passing(CORPUS, screen))
    assert [text for i, text in enumerate(CORPUS) if i not in passed and pattern.search(text)] == []


def test_a_text_that_is_not_utf8_always_passes() -> None:
    assert passing(["abc", "\ud800 lone surrogate", "x"], "x") == [1, 2]
    assert passing(["anything", "else"], None) == [0, 1]
    assert passing_rows([["a", "b"], [], ["c", "xa"], ["x"]], "x") == [2, 3]


# ------------------------------------------------------------------ PII hints


def test_pii_candidates_find_exactly_what_the_detectors_find() -> None:
    rng = random.Random(5)
    pieces = ["jane@corp.com", "+1 415-555-0100", "4111 1111 1111 1111", "DE89 3704 0044 0532 0130 00"]
    pieces += ["123-45-6789", "SSN 123456789", "10.0.0.7", "2001:db8::1", "password = 'Zq8kL2mN7v'"]
    pieces += ["ghp_" + "a1" * 18, "postgres://admin:s3cr3t@db:5432", "12 Baker Street", "tel: 467 3395"]
    pieces += ["-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----", "PAſſWORD: Zq8#kL2!mN"]
    texts = CORPUS + [
        f"{base[:80]} {rng.choice(pieces)} {base[80:160]}" for base in rng.sample(CORPUS, 2000) for _ in range(1)
    ]
    candidates = pii_candidates(texts)
    assert sum(1 for c in candidates if c) < len(texts)  # the screen does screen
    for text, entities in zip(texts, candidates, strict=True):
        assert find_pii(text, entities) == find_pii(text, REGEX_ENTITIES), text


# ------------------------------------------------------------------ mojibake and ftfy


def _branches(pattern: re.Pattern[str]) -> list:
    (op, av), *rest = _parser.parse(pattern.pattern, pattern.flags).data
    assert op is sre.BRANCH and not rest
    return list(av[1])


def _only_non_ascii(op: object, av: object) -> bool:
    if op is sre.LITERAL:
        return isinstance(av, int) and av > 0x7F
    if op is sre.IN:
        return all((o is sre.LITERAL and a > 0x7F) or (o is sre.RANGE and a[0] > 0x7F) for o, a in av)  # type: ignore[union-attr]
    return False


def test_ftfy_mojibake_pattern_is_short_local_and_needs_a_non_ascii_character() -> None:
    parsed = _parser.parse(BADNESS_RE.pattern, BADNESS_RE.flags)
    assert parsed.getwidth()[1] <= MOJIBAKE_WIDTH

    def assertions(items: list) -> set:
        found = set()
        for op, av in items:
            if op is sre.AT:
                found.add(av)
            elif op in (sre.ASSERT, sre.ASSERT_NOT, sre.GROUPREF):
                found.add(op)
            elif op is sre.BRANCH:
                for branch in av[1]:
                    found |= assertions(list(branch))
            elif op is sre.SUBPATTERN:
                found |= assertions(list(av[3]))
            elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                found |= assertions(list(av[2]))
        return found

    assert assertions(list(parsed)) <= {sre.AT_BEGINNING}  # only "^", which search(pos=…) keeps at 0
    assert all(any(_only_non_ascii(op, av) for op, av in branch) for branch in _branches(BADNESS_RE))


def _unicode_texts() -> list[str]:
    rng = random.Random(3)
    pool = [chr(c) for c in [*range(0x80, 0x250), *range(0x370, 0x460), *range(0x2000, 0x2070), *range(0x2500, 0x2580)]]
    pool += [
        *"\u20ac\u2122\u201c\u201d\u2019\ufb01\ufb02\ufeff\ufffd\u221a\u2248\xb0\xd7\xb2",
        *"abcXYZ .,?!\n\t0123456789",
    ]
    known = ["â€™", "Ã©tÃ©", "Ã ", "sÃ³", "voilÃ le travail", "ГўВЂВ™x", "√±", "вЂ", "a Ã ", "e\u0301", "ﬁne"]
    known += ["x\u2028y", "\x1b[31mred", "tab\x85", "\x00nul", "plain ascii", "naïve café", "Привет, мир"]
    texts = known + [f"hello {k} world" for k in known]
    return texts + ["".join(rng.choice(pool) for _ in range(rng.randrange(1, 40))) for _ in range(6000)]


def test_mojibake_searched_near_non_ascii_is_ftfy_is_bad() -> None:
    texts = _unicode_texts()
    expected = [is_bad(t) for t in texts]
    assert [looks_like_mojibake(t) for t in texts] == expected == mojibake_flags(texts)
    assert any(expected) and not all(expected)


def test_fix_encoding_shortcut_changes_exactly_what_ftfy_changes() -> None:
    cleaner = FixEncoding()
    texts = [text for text in _unicode_texts() if not text.isascii()]  # ASCII: only control characters go
    fixed = [ftfy.fix_and_explain(text, config=cleaner._config()).text for text in texts]
    expected = [(f, f != text) for text, f in zip(texts, fixed, strict=True)]
    assert [(new, description is not None) for new, description in map(cleaner.clean_text, texts)] == expected
    assert [(new, description is not None) for new, description in cleaner.clean_screened(texts)] == expected


# ------------------------------------------------------------------ batch against row by row


def _rows() -> list[dict]:
    """Rows made to trigger every cleaner and filter, some of them several at once."""
    rng = random.Random(7)
    fragments = [
        "<p>Hello <b>world</b> &amp; more</p>",
        "jane@corp.com",
        "+1 415-555-0100",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        "<|im_start|>",
        "[INST]",
        "</s>",
        "As an AI language model, I cannot",
        "I'm sorry, but I can't help with that.",
        "â€™",
        "Ã©tÃ©",
        "\ufffd",
        "\x07",
        "ﬁne",
        "\r\n",
        "\u00a0",
        "  \n\n\n\n",
        "Привет мир, как дела сегодня утром у тебя, мой друг?",
        "```python\ndef f(x):\n    return x\n```",
        "**bold** and [a link](http://x.io)",
        "lorem ipsum",
        "I like it. " * 40,
        "bad word",
        "let me know if you have any questions",
        "",
    ]
    texts = [t for t in CORPUS if len(t) > 20][:400]
    rows = []
    for i in range(600):
        prompt, answer = rng.choice(texts), rng.choice(texts)
        for _ in range(rng.randrange(0, 3)):
            answer = f"{answer[:40]} {rng.choice(fragments)} {answer[40:]}"
        if i % 7 == 0:
            answer = rng.choice(["", "TBD", prompt])
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
        kind = rng.choice(["sft", "chat", "preference", "text"])
        if kind == "preference":
            rows.append(
                new_row(
                    row_id=f"r{i}",
                    kind=kind,
                    messages=messages[:1],
                    chosen=messages[1:],
                    rejected=copy.deepcopy(messages[1:]) if i % 5 == 0 else [{"role": "assistant", "content": "x"}],
                    source="s",
                    license="MIT",
                )
            )
        elif kind == "text":
            rows.append(new_row(row_id=f"r{i}", kind=kind, text=f"{prompt}\n\n{answer}", source="s", license="MIT"))
        else:
            rows.append(new_row(row_id=f"r{i}", kind=kind, messages=messages, source="s", license="MIT"))
    return rows


@pytest.mark.parametrize(
    "config",
    [
        {},
        {
            "language": {"allowed": ["en"]},
            "blocklist": {"terms": ["bad word"], "patterns": [r"\bfoo\d+"]},
            "patterns": {"preset": "unsolicited_suggestions", "where": "all"},
            "pii": {"entities": ["PRIVATE_KEY", "EMAIL"]},
            "cleaners": {"markdown": True, "pii": {"exclude": ["PRIVATE_KEY", "EMAIL"]}},
        },
    ],
    ids=["defaults", "opt_in_steps"],
)
def test_a_batch_ends_exactly_as_each_row_through_each_step(config: dict) -> None:
    steps_cleaners = build_cleaners(config.get("cleaners"))
    steps_filters = build_filters({k: v for k, v in config.items() if k != "cleaners"})
    rows = _rows()
    batch = filter_batch(rows, steps_cleaners, steps_filters, FilterStats(), reid=False)
    rejected = {item.row_id: item.rejection for item in batch.rejected}
    edits = {item.parent_id: item.edits for item in batch.edited}
    kept = {row["row_id"]: row for row in batch.kept}
    in_batch = [(json.dumps(kept[row["row_id"]], sort_keys=True) if row["row_id"] in kept else None) for row in rows]
    expected = one_at_a_time(rows, steps_cleaners, steps_filters)
    for row, (cleaned, row_edits, rejection), kept_json in zip(rows, expected, in_batch, strict=True):
        assert rejected.get(row["row_id"]) == rejection, row["row_id"]
        if rejection is None:
            assert kept_json == cleaned and edits.get(row["row_id"], ()) == row_edits, row["row_id"]
    assert len(rejected) > 50 and len(edits) > 50  # the rows do exercise the steps
    assert {f for f in (r.filter for r in rejected.values())} >= {"empty", "chat_tokens", "encoding", "refusal"}
    assert any(t.text for r in rows for t in text_fields(r))
