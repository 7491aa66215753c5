"""PII and secret detection: each detector on hand-made cases, redaction, and real-data checks."""

from __future__ import annotations

import importlib.util
import itertools
import json
import re

import pytest

from benchmarks.pii_eval import evaluate, load_presidio
from curation.filter.cleaners import PiiRedactor
from curation.filter.pii import (
    ENTITIES,
    PiiMatch,
    find_pii,
    iban_valid,
    luhn_valid,
    placeholder,
    redact,
    shannon_entropy,
    ssn_valid,
)
from curation.filter.pii_ner import SpacyPersonBackend, backend_from_spec
from tests.conftest import SHARED_DATA


def found(text: str, entity: str | None = None) -> list[tuple[str, str]]:
    return [(m.entity, m.text) for m in find_pii(text) if entity is None or m.entity == entity]


# ------------------------------------------------------------------ validators


def test_luhn_known_numbers() -> None:
    assert luhn_valid("79927398713")  # the worked example of ISO/IEC 7812
    assert not luhn_valid("79927398710")
    assert luhn_valid("4111 1111 1111 1111")
    assert not luhn_valid("")


def test_iban_checksum_and_length() -> None:
    assert iban_valid("GB82 WEST 1234 5698 7654 32")  # ECBS example IBANs
    assert iban_valid("DE89370400440532013000")
    assert iban_valid("gb82west12345698765432")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")  # one digit changed
    assert not iban_valid("GB82WEST123456987654")  # right checksum rules, wrong length for GB
    assert not iban_valid("ZZ82WEST12345698765432")  # no such country


def test_ssn_area_rules() -> None:
    assert ssn_valid("123", "45", "6789")
    for area, group, serial in [
        ("000", "12", "3456"),
        ("666", "12", "3456"),
        ("912", "34", "5678"),
        ("123", "00", "4567"),
        ("123", "45", "0000"),
    ]:
        assert not ssn_valid(area, group, serial)


def test_entropy() -> None:
    assert shannon_entropy("aaaa") == 0.0
    assert shannon_entropy("abcd") == pytest.approx(2.0)


# ------------------------------------------------------------------ detectors


def test_email() -> None:
    assert found("Write to jane.doe+news@mail.example.co.uk.") == [("EMAIL", "jane.doe+news@mail.example.co.uk")]
    assert found("ping @jane on chat, or root@localhost") == []
    # Reserved documentation domains (RFC 2606) name no one.
    assert found("john.doe@example.com, a@mail.example.org, b@host.test") == []
    assert found("john.doe@example.co") == [("EMAIL", "john.doe@example.co")]


@pytest.mark.parametrize(
    "text, phone",
    [
        ("Call +1 (415) 555-0100 now", "+1 (415) 555-0100"),
        ("reach the desk on 415-555-0100 ext. 23.", "415-555-0100 ext. 23"),
        ("or (415) 555-0100", "(415) 555-0100"),
        ("Tel: +44 20 7946 0958", "+44 20 7946 0958"),
        ("Can someone call me at 0490 75 40 81? Thanks", "0490 75 40 81"),
        ("Phone:\n467 3395\n", "467 3395"),
        ("Fax: 9498777106", "9498777106"),
        ("Mobile: 03.93.92.16.85", "03.93.92.16.85"),
        ("28-64-66-98 office", "28-64-66-98"),
    ],
)
def test_phone_found(text: str, phone: str) -> None:
    assert found(text) == [("PHONE", phone)]


@pytest.mark.parametrize(
    "text",
    [
        "Total: 600+950+1250 = 2800",
        "She paid 450,000-2000 = 448,000 dollars",
        "Released on 2021-03-04 at 10:15:30",
        "Born 12/25/1990 in Ohio",
        "The population grew to 1 200 000 people",
        "ISBN 978-3-16-148410-0",
        "my driver's license number is 2270-66-1551",
        "The office is at 17031 2202 Rissik St",
        "pi is 3.14159265358979",
    ],
)
def test_phone_not_found(text: str) -> None:
    assert found(text, "PHONE") == []


def test_credit_card() -> None:
    assert found("card 4111 1111 1111 1111 exp 12/29") == [("CREDIT_CARD", "4111 1111 1111 1111")]
    assert found("paid with 4111-1111-1111-1111") == [("CREDIT_CARD", "4111-1111-1111-1111")]
    assert found("amex 378282246310005") == [("CREDIT_CARD", "378282246310005")]
    assert found("card 4111 1111 1111 1112") == []  # Luhn fails
    assert found("order id 1234567812345670") == []  # Luhn passes, but 1xxx is no issuer
    assert found("credit card 060426070011 transactions") == [("CREDIT_CARD", "060426070011")]


def test_iban() -> None:
    text = "Pay to IBAN GB82 WEST 1234 5698 7654 32 please"
    assert found(text) == [("IBAN", "GB82 WEST 1234 5698 7654 32")]
    assert found("iban: de89370400440532013000.") == [("IBAN", "de89370400440532013000")]
    assert found("ref GB82 WEST 1234 5698 7654 33") == []


def test_ip_address() -> None:
    assert found("ssh to 192.168.1.20 then") == [("IP_ADDRESS", "192.168.1.20")]
    assert found("block 10.0.0.0/8") == [("IP_ADDRESS", "10.0.0.0/8")]
    assert found("host 2001:db8::8a2e:370:7334 is up") == [("IP_ADDRESS", "2001:db8::8a2e:370:7334")]
    for text in [
        "version 1.2.3.4",
        "tag v1.2.3.4",
        "oid 1.3.6.1.4.1",
        "256.1.1.1",
        "connect to 127.0.0.1",
        "bind 0.0.0.0",
        "at 12:30:45",
        "std::vector<int> a::b",
    ]:
        assert found(text, "IP_ADDRESS") == [], text


def test_us_ssn() -> None:
    assert found("SSN 123-45-6789.") == [("US_SSN", "123-45-6789")]
    assert found("social security number: 123456789") == [("US_SSN", "123456789")]
    assert found("ssn 123 45 6789") == [("US_SSN", "123 45 6789")]
    assert found("id 123456789") == []  # nine bare digits need the word nearby
    assert found("code 666-12-3456 and 912-34-5678") == []  # never-issued areas


def test_street_address() -> None:
    assert found("She lives at 221B Baker Street, London") == [("STREET_ADDRESS", "221B Baker Street")]
    assert found("HQ: 1600 Pennsylvania Avenue NW") == [("STREET_ADDRESS", "1600 Pennsylvania Avenue")]
    assert found("Send it to 42 Elm St., Apt. 5 today") == [("STREET_ADDRESS", "42 Elm St., Apt. 5")]
    assert found("Read 5 Ways To Win and 3 Big Ideas") == []


AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"  # the example id in AWS's documentation
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" + "k1L2m3N4o5P6"[:12] + "q7R8"


@pytest.mark.parametrize(
    "token",
    [
        AWS_KEY_ID,
        GITHUB_TOKEN,
        "github_pat_11ABCDEFG0123456789_abcdefghijklmnopqrstuvwxyzABCDEFGHIJ",
        "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
        "sk-" + "Q" * 10 + "a1b2c3d4e5" + "T3BlbkFJ" + "z9y8x7w6v5" + "u4t3s2r1q0",
        "AIza" + "SyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
        "xoxb-123456789012-abcdefABCDEF",
        "hf_" + "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3h",
    ],
)
def test_api_keys(token: str) -> None:
    assert found(f"token = {token}\n") == [("API_KEY", token)]


def test_aws_secret_key_needs_its_name() -> None:
    assert found(f"aws_secret_access_key = {AWS_SECRET}") == [("API_KEY", AWS_SECRET)]
    assert found(f"the string {AWS_SECRET} alone", "API_KEY") == []


def test_private_key_block() -> None:
    block = (
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7Zq3bYv0\nc2VjcmV0a2V5ZGF0YQ==\n-----END RSA PRIVATE KEY-----"
    )
    text, matches = redact(f"key:\n{block}\nthanks")
    assert text == "key:\n[PRIVATE_KEY]\nthanks"
    assert [m.text for m in matches] == [block]
    truncated, _ = redact("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n")
    assert truncated == "[PRIVATE_KEY]\n"


def test_url_credentials_keep_the_host() -> None:
    text, matches = redact("DATABASE_URL=postgres://admin:s3cr3t@db.internal:5432/app")
    assert text == "DATABASE_URL=postgres://[URL_CREDENTIALS]@db.internal:5432/app"
    assert [m.entity for m in matches] == ["URL_CREDENTIALS"]
    assert found("see https://example.com/a:b@c") == []  # no userinfo before the host


def test_generic_secrets() -> None:
    assert found('password = "Tr0ub4dor&3xK9q"') == [("SECRET", "Tr0ub4dor&3xK9q")]
    assert found('"api_key": "9f86d081884c7d659a2feaa0c55ad015"') == [("SECRET", "9f86d081884c7d659a2feaa0c55ad015")]
    assert found("const k = 'Zx8Qp2Lm9Rt4Vb7Nc1Kd6Fg3Hj5Ws0Ea'") == [("SECRET", "Zx8Qp2Lm9Rt4Vb7Nc1Kd6Fg3Hj5Ws0Ea")]
    for text in [
        'password = "your_password_here"',
        'password = os.environ["DB_PASSWORD"]',
        'chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"',
        '<script integrity="sha384-JcKb8q3iqJ61gNV9KGb8thSsNjpSL0n8PARn9HuZOnIxN0hoP+VmmDGMN5t9UJ0Z">',
        'token = "short1"',
    ]:
        assert found(text) == [], text


# ------------------------------------------------------------------ combining and redacting


def test_overlaps_resolved_by_priority() -> None:
    # The GitHub token sits inside a password assignment: one API_KEY match, not also a SECRET.
    assert found(f'password = "{GITHUB_TOKEN}"') == [("API_KEY", GITHUB_TOKEN)]
    # An SSN-shaped number after "call" is still an SSN, not a phone.
    assert found("call 123-45-6789") == [("US_SSN", "123-45-6789")]


def test_matches_are_sorted_non_overlapping_and_exact() -> None:
    text = "Mail a@b.io or call +1 415-555-0100; SSN 123-45-6789, card 4111111111111111."
    matches = find_pii(text)
    assert [m.entity for m in matches] == ["EMAIL", "PHONE", "US_SSN", "CREDIT_CARD"]
    for m in matches:
        assert text[m.start : m.end] == m.text
    assert all(a.end <= b.start for a, b in itertools.pairwise(matches))


def test_entity_filter_and_unknown_entity() -> None:
    text = "a@b.io, 123-45-6789"
    assert found(text) == [("EMAIL", "a@b.io"), ("US_SSN", "123-45-6789")]
    assert [m.entity for m in find_pii(text, {"US_SSN"})] == ["US_SSN"]
    with pytest.raises(ValueError, match="PHONE_NUMBER"):
        find_pii(text, {"PHONE_NUMBER"})


def test_redact_uses_typed_placeholders() -> None:
    text, matches = redact("Mail jane@corp.com or call +1 415-555-0100.")
    assert text == "Mail [EMAIL] or call [PHONE]."
    assert [m.entity for m in matches] == ["EMAIL", "PHONE"]
    assert redact("nothing here") == ("nothing here", [])


HAND_MADE = [
    "Mail jane@corp.com or call +1 415-555-0100.",
    "Phone: [PHONE]\nE-mail: [EMAIL]",
    'password = "Tr0ub4dor&3xK9q" and token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8',
    "postgres://admin:s3cr3t@db.internal/app, IBAN GB82 WEST 1234 5698 7654 32",
    "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----",
    "10.1.2.3 and 2001:db8::1 at 221B Baker Street",
    " ".join(placeholder(e) for e in ENTITIES),
    "\n".join(f"{e.lower()}: {placeholder(e)}" for e in ENTITIES),
]


def test_placeholders_are_never_detected_again() -> None:
    for text in HAND_MADE:
        once, _ = redact(text)
        assert find_pii(once) == [], once
        assert redact(once) == (once, [])


def test_pii_cleaner_redacts_every_text_field_and_says_what() -> None:
    row = {
        "row_id": "r1",
        "kind": "preference",
        "text": None,
        "source": "s",
        "messages": [{"role": "user", "content": "I am jane@corp.com"}],
        "chosen": [{"role": "assistant", "content": "Call 415-555-0100 or 415-555-0199"}],
        "rejected": [{"role": "assistant", "content": "No PII"}],
    }
    out, edits = PiiRedactor()(row)
    assert out["messages"][0]["content"] == "I am [EMAIL]"
    assert out["chosen"][0]["content"] == "Call [PHONE] or [PHONE]"
    assert out["rejected"] is row["rejected"]
    assert out["source"] == "s"
    assert row["messages"][0]["content"] == "I am jane@corp.com"  # the input is not mutated
    assert [(e.where, e.description) for e in edits] == [
        ("messages[0].content", "redacted 1 EMAIL"),
        ("chosen[0].content", "redacted 2 PHONE"),
    ]
    text_row, text_edits = PiiRedactor()({"kind": "text", "text": "ssn 123-45-6789"})
    assert text_row["text"] == "ssn [US_SSN]" and [e.where for e in text_edits] == ["text"]
    kept, _ = PiiRedactor(exclude=("PHONE",))(row)
    assert kept["chosen"] is row["chosen"]  # excluded types are left for the pii filter to drop


# ------------------------------------------------------------------ NER backend interface


def fake_ner(text: str) -> list[PiiMatch]:
    return [PiiMatch("PERSON", m.start(), m.end(), m.group()) for m in re.finditer(r"Alice Smith|alice", text)]


def test_ner_backend_adds_person_and_loses_overlaps() -> None:
    text, matches = redact("Alice Smith wrote from alice@corp.com", ner=fake_ner)
    assert text == "[PERSON] wrote from [EMAIL]"  # "alice" inside the e-mail is the e-mail's
    assert [m.entity for m in matches] == ["PERSON", "EMAIL"]
    assert found("Alice Smith") == []  # no backend, no names
    assert [m.entity for m in find_pii("Alice Smith, a@b.io", {"EMAIL"}, ner=fake_ner)] == ["EMAIL"]


class _Ent:
    def __init__(self, text: str, start: int, label: str) -> None:
        self.text, self.start_char, self.end_char, self.label_ = text, start, start + len(text), label


class _Doc:
    def __init__(self, ents: list[_Ent]) -> None:
        self.ents = ents


def test_spacy_backend_keeps_only_people() -> None:
    # A stand-in pipeline: no spaCy model is installed in the test environment.
    def nlp(text: str) -> _Doc:
        return _Doc([_Ent("Ada Lovelace", text.index("Ada"), "PERSON"), _Ent("London", text.index("London"), "GPE")])

    backend = SpacyPersonBackend(nlp=nlp)
    assert backend("Ada Lovelace lived in London") == [PiiMatch("PERSON", 0, 12, "Ada Lovelace")]
    assert redact("Ada Lovelace lived in London", ner=backend)[0] == "[PERSON] lived in London"


def test_spacy_backend_splits_text_longer_than_the_model_limit() -> None:
    seen: list[str] = []

    def nlp(text: str) -> _Doc:
        assert len(text) <= nlp.max_length  # what spaCy itself enforces
        seen.append(text)
        return _Doc([_Ent("Ada", i, "PERSON") for i in range(len(text)) if text.startswith("Ada", i)])

    nlp.max_length = 20  # type: ignore[attr-defined]
    text = "Ada was here.\nThen Ada left.\nAda!"
    matches = SpacyPersonBackend(nlp=nlp)(text)
    assert len(seen) > 1
    assert [(m.start, m.text) for m in matches] == [(i, "Ada") for i in (0, 19, 29)]
    assert all(text[m.start : m.end] == "Ada" for m in matches)


@pytest.mark.skipif(importlib.util.find_spec("spacy") is not None, reason="spaCy is installed")
def test_spacy_backend_explains_missing_spacy() -> None:
    with pytest.raises(ImportError, match="pip install spacy"):
        backend_from_spec("spacy:en_core_web_sm")
    with pytest.raises(ValueError, match="supported"):
        backend_from_spec("gliner")


# ------------------------------------------------------------------ real data


def test_gsm8k_arithmetic_is_not_redacted() -> None:
    naive_us_phone = re.compile(r"\d{3}[-.+\s]?\d{3}[-.+\s]?\d{4}")
    phone_like, flagged = [], []
    with (SHARED_DATA / "gsm8k-train" / "train.jsonl").open(encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            for text in (record["question"], record["answer"]):
                phone_like.extend(naive_us_phone.findall(text))
                flagged.extend(m.text for m in find_pii(text))
    assert len(phone_like) >= 29  # the README's arithmetic strings, e.g. 600+950+1250
    assert "600+950+1250" in phone_like
    assert flagged == []


@pytest.fixture(scope="module")
def presidio_scores() -> dict:
    return evaluate(load_presidio(SHARED_DATA / "presidio-synth-pii" / "synth_dataset_v2.json"))


@pytest.mark.parametrize(
    "entity, target",
    [
        ("EMAIL", 0.95),
        ("CREDIT_CARD", 0.95),
        ("IBAN", 0.95),
        ("IP_ADDRESS", 0.95),
        ("US_SSN", 0.95),
        ("PHONE", 0.90),
    ],
)
def test_presidio_precision_and_recall(presidio_scores: dict, entity: str, target: float) -> None:
    score = presidio_scores[entity]
    assert score.gold > 0
    assert score.precision >= target, f"{entity} precision {score.precision:.3f}"
    assert score.recall >= target, f"{entity} recall {score.recall:.3f}"


def test_presidio_redaction_leaves_no_pattern() -> None:
    for record in load_presidio(SHARED_DATA / "presidio-synth-pii" / "synth_dataset_v2.json"):
        once, _ = redact(record["full_text"])
        assert find_pii(once) == [], once
