"""PII and secret detection and redaction with typed placeholders.

Detectors are regular expressions followed by validators (Luhn, IBAN mod-97, IP octets, SSN
area rules, Shannon entropy), because in training data a false positive destroys content:
maths like ``600+950+1250`` must survive, dates and ordinary numbers are not phones.

Phone numbers are the one entity where format alone is not enough (``467 3395`` is a phone
in a contact card and a count elsewhere), so loose shapes need a context word nearby, the way
Presidio's context enhancement does; only unambiguous shapes (``+`` prefix, North-American
``(415) 555-0100`` style) fire on their own.

Person names need a model; pass an :class:`NerBackend` (see ``curation/filter/pii_ner.py``).
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import pyarrow.compute as pc

from curation.filter.batch import BatchTexts, Screen
from curation.filter.prefilter import any_of, text_array, wider_re2


@dataclass(frozen=True)
class PiiMatch:
    """One detected span: ``text == source[start:end]``."""

    entity: str
    start: int
    end: int
    text: str


NerBackend = Callable[[str], list[PiiMatch]]
"""Anything that maps text to PERSON (or other) matches; used for names, which regexes cannot do."""

# Highest priority first: when spans overlap, the earlier entity wins (a GitHub token inside
# ``password = "ghp_…"`` is an API_KEY, an SSN-shaped number is not re-read as a phone).
ENTITIES: tuple[str, ...] = (
    "PRIVATE_KEY",
    "URL_CREDENTIALS",
    "API_KEY",
    "EMAIL",
    "IBAN",
    "CREDIT_CARD",
    "US_SSN",
    "IP_ADDRESS",
    "PHONE",
    "SECRET",
    "STREET_ADDRESS",
    "PERSON",
)
_PRIORITY = {name: i for i, name in enumerate(ENTITIES)}


def placeholder(entity: str) -> str:
    """The typed placeholder that replaces a span, e.g. ``[EMAIL]``."""
    return f"[{entity}]"


# ---------------------------------------------------------------- validators


def luhn_valid(number: str) -> bool:
    """Luhn (mod-10) checksum over the digits of ``number`` (ISO/IEC 7812-1)."""
    digits = [int(c) for c in number if c.isdigit()]
    if not digits:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


# Country code → IBAN length, from the SWIFT IBAN Registry (release 99, 2024). An IBAN from a
# country not listed is rejected: a length check on top of mod-97 keeps random
# alphanumerics (1 in 97 pass mod-97 by chance) out.
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24,
    "AE": 23,
    "AL": 28,
    "AT": 20,
    "AZ": 28,
    "BA": 20,
    "BE": 16,
    "BG": 22,
    "BH": 22,
    "BI": 27,
    "BR": 29,
    "BY": 28,
    "CH": 21,
    "CR": 22,
    "CY": 28,
    "CZ": 24,
    "DE": 22,
    "DJ": 27,
    "DK": 18,
    "DO": 28,
    "EE": 20,
    "EG": 29,
    "ES": 24,
    "FI": 18,
    "FK": 18,
    "FO": 18,
    "FR": 27,
    "GB": 22,
    "GE": 22,
    "GI": 23,
    "GL": 18,
    "GR": 27,
    "GT": 28,
    "HR": 21,
    "HU": 28,
    "IE": 22,
    "IL": 23,
    "IQ": 23,
    "IS": 26,
    "IT": 27,
    "JO": 30,
    "KW": 30,
    "KZ": 20,
    "LB": 28,
    "LC": 32,
    "LI": 21,
    "LT": 20,
    "LU": 20,
    "LV": 21,
    "LY": 25,
    "MC": 27,
    "MD": 24,
    "ME": 22,
    "MK": 19,
    "MN": 20,
    "MR": 27,
    "MT": 31,
    "MU": 30,
    "NI": 28,
    "NL": 18,
    "NO": 15,
    "OM": 23,
    "PK": 24,
    "PL": 28,
    "PS": 29,
    "PT": 25,
    "QA": 29,
    "RO": 24,
    "RS": 22,
    "RU": 33,
    "SA": 24,
    "SC": 31,
    "SD": 18,
    "SE": 24,
    "SI": 19,
    "SK": 24,
    "SM": 27,
    "SO": 23,
    "ST": 25,
    "SV": 28,
    "TL": 23,
    "TN": 24,
    "TR": 26,
    "UA": 29,
    "VA": 22,
    "VG": 24,
    "XK": 20,
    "YE": 30,
}


def iban_valid(iban: str) -> bool:
    """ISO 13616 check: registered country, its length, and mod-97 == 1."""
    compact = re.sub(r"[\s-]", "", iban).upper()
    if IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact.isalnum():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """SSA rules: area not 000, 666 or 900-999; group not 00; serial not 0000."""
    return area not in ("000", "666") and not area.startswith("9") and group != "00" and serial != "0000"


def shannon_entropy(text: str) -> float:
    """Bits per character of ``text``'s own character distribution."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


# ---------------------------------------------------------------- detectors
# Each detector yields (start, end) spans of one entity in ``text``.

Span = tuple[int, int]

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]{0,62}[A-Za-z0-9_%+-])?"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)


# RFC 2606 / RFC 6761 reserved names: documentation addresses that can belong to no one.
_RESERVED_DOMAIN = re.compile(
    r"@(?:[^@]*\.)?(?:example\.(?:com|net|org)|[^@]*\.(?:example|test|invalid|localhost))$", re.IGNORECASE
)


def _emails(text: str) -> Iterator[Span]:
    for m in _EMAIL.finditer(text):
        if not _RESERVED_DOMAIN.search(m.group()):
            yield m.span()


# scheme://user:password@host — only the userinfo is replaced, so the host stays readable.
_URL_CREDENTIALS = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]{1,15}://([^\s:/@\[\]]+:[^\s/@\[\]]+)@[^\s/]")


def _url_credentials(text: str) -> Iterator[Span]:
    for m in _URL_CREDENTIALS.finditer(text):
        yield m.span(1)


# Vendor token formats, after gitleaks' default rules (github.com/gitleaks/gitleaks,
# config/gitleaks.toml) and the vendors' own documentation of their prefixes.
_API_KEY = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{36,255}"  # GitHub classic tokens
    r"|github_pat_[A-Za-z0-9_]{22,255}"  # GitHub fine-grained tokens
    r"|sk-ant-[a-z]{3,6}\d{2}-[A-Za-z0-9_-]{80,}"  # Anthropic
    r"|sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{20,}"  # OpenAI project/service keys
    r"|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}"  # OpenAI legacy keys
    r"|sk-[A-Za-z0-9]{32,}"  # other OpenAI-style sk- keys
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:sk|rk)_live_[0-9A-Za-z]{24,}"  # Stripe live keys
    r"|hf_[A-Za-z0-9]{34,}"  # Hugging Face
    r"|glpat-[A-Za-z0-9_-]{20,}"  # GitLab personal access token
    r"|eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"  # JSON Web Token
    r")(?![A-Za-z0-9])"
)
# The AWS secret key has no prefix; only trust it next to its conventional name.
_AWS_SECRET = re.compile(
    r"aws_?secret_?access_?key[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])", re.IGNORECASE
)


def _api_keys(text: str) -> Iterator[Span]:
    for m in _API_KEY.finditer(text):
        yield m.span()
    for m in _AWS_SECRET.finditer(text):
        yield m.span(1)


_PRIVATE_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?)-----"
    r"(?:[\s\S]*?-----END \1-----|[A-Za-z0-9+/=:,\-\s]*)"  # a truncated block: keep eating base64
)


def _private_keys(text: str) -> Iterator[Span]:
    for m in _PRIVATE_KEY.finditer(text):
        start, end = m.span()
        while end > start and text[end - 1].isspace():
            end -= 1
        yield start, end


_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")


def _ibans(text: str) -> Iterator[Span]:
    for m in _IBAN.finditer(text):
        start = m.start()
        # A space-grouped IBAN may be followed by an ordinary word; back off group by group.
        candidate = m.group()
        while True:
            if iban_valid(candidate):
                yield start, start + len(candidate)
                break
            if " " not in candidate:
                break
            candidate = candidate.rsplit(" ", 1)[0]


# 12-19 digits, bare or in the groupings printed on cards (4-4-4-4[-3], Amex 4-6-5, Diners 4-6-4).
_CARD = re.compile(
    r"(?<![\w+.,/-])(?:\d{12,19}"
    r"|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{1,3})?"
    r"|\d{4}([ -])\d{6}\2\d{4,5})(?![\w+]|[.,/-]\d)"
)
# Issuer prefixes in use (ISO/IEC 7812 IIN ranges): Visa 4, Mastercard 2/5, Amex 34/37,
# Discover/UnionPay/Maestro 6/5, Diners 30/36/38, JCB 35/2131/1800. Numbers starting 0, 7, 8,
# 9 or 1 (other than 1800) are account numbers or ids, not cards.
_CARD_PREFIX = re.compile(r"^(?:[2-6]|1800)")


_CARD_CONTEXT = re.compile(r"\b(?:card|credit|debit|visa|mastercard|amex|cc)\b", re.IGNORECASE)


def _credit_cards(text: str) -> Iterator[Span]:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        # An unusual issuer prefix is accepted when the text says it is a card.
        plausible = _CARD_PREFIX.match(digits) or _CARD_CONTEXT.search(text, max(0, m.start() - 30), m.start())
        if plausible and luhn_valid(digits) and len(set(digits)) > 1:
            yield m.span()


_SSN = re.compile(r"(?<![\w.+/-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\w+]|[.,/-]\d)")
_SSN_BARE = re.compile(r"(?<![\w.+/-])(\d{3})(\d{2})(\d{4})(?![\w+]|[.,/-]\d)")
_SSN_CONTEXT = re.compile(r"\b(?:ssn|ss#|social\s+security|taxpayer|tin)\b", re.IGNORECASE)


def _ssns(text: str) -> Iterator[Span]:
    for m in _SSN.finditer(text):
        # Dashes are the SSN's own format; a space-grouped 3-2-4 needs the word nearby.
        if m.group(2) == " " and not _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()):
            continue
        if ssn_valid(m.group(1), m.group(3), m.group(4)):
            yield m.span()
    for m in _SSN_BARE.finditer(text):
        if _SSN_CONTEXT.search(text, max(0, m.start() - 40), m.start()) and ssn_valid(*m.groups()):
            yield m.span()


_IPV4 = re.compile(
    r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
    r"(?:/\d{1,2})?(?![\w]|\.\d)"
)
_IPV6 = re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])")
# "version 1.2.3.4" and "v1.2.3.4" are versions, not hosts.
_VERSION_CONTEXT = re.compile(r"(?:\bversion|\bver\.?|\brelease|\bbuild|\bv)\s*$", re.IGNORECASE)


def _identifies_a_host(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # Loopback (127.0.0.1, ::1) and 0.0.0.0 appear in every networking tutorial and name no one.
    return not (address.is_loopback or address.is_unspecified)


def _ip_addresses(text: str) -> Iterator[Span]:
    for m in _IPV4.finditer(text):
        if _VERSION_CONTEXT.search(text, max(0, m.start() - 12), m.start()):
            continue
        if _identifies_a_host(ipaddress.IPv4Address(m.group().split("/")[0])):
            yield m.span()
    for m in _IPV6.finditer(text):
        candidate = m.group()
        # Require real hex content: "a::b" in code and times like 12:30:45 are not addresses.
        if sum(c in "0123456789abcdefABCDEF" for c in candidate) < 4:
            continue
        try:
            address = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        if _identifies_a_host(address):
            yield m.span()


# A phone candidate: optional +CC / 00 / 001 prefix, optional "(0)" trunk and "(area)", then
# digit groups joined by a single space, dot or dash, then an optional extension.
_PHONE = re.compile(
    r"(?<![\w+./=*×÷^-])(?<!\d,)"
    r"(?:(?:\+|\b00)\d{1,3}[ .-]?|\b1[ .-])?"
    r"(?:\(0\)[ ]?)?"
    r"(?:\(\d{1,5}\)[ .-]?)?"
    r"\d{1,12}(?:[ .-]\d{1,8}){0,5}"
    r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6})?"
    r"(?![\w+*/=×÷^%]|[.,:-]\d)",
    re.IGNORECASE,
)
# Shapes that are phones without any context: an international "+" prefix, or the North-American
# "(415) 555-0100" / "415-555-0100" / "415.555.0100" layout with consistent separators.
_PHONE_STRONG = re.compile(
    r"^(?:\+\d.*"
    r"|(?:(?:00)?1[ .-])?(?:\(\d{3}\)[ ]?\d{3}-\d{4}|\d{3}([.-])\d{3}\1\d{4})"
    r"(?:[ ]?(?:x|ext\.?|extension)[ ]?\d{1,6})?)$",
    re.IGNORECASE,
)
# Words that announce a phone number, optionally followed by "me at", "us on", "is", …; labels
# such as "Office:" only count with their colon ("the office is at 17031 …" is an address).
_PHONE_CONTEXT_BEFORE = re.compile(
    r"(?:\b(?:phone|ph|tel|telephone|mobile|mob|cell|cellphone|fax|call|text|sms|whatsapp|contact|"
    r"reach|dial|ring|registered|messages\s+to|answering\s+at)\b[^\n\w]*"
    r"|\b(?:office|home|work|desk|direct|main)\s*:\s*)"
    r"(?:\n[^\n\w]*)?(?:(?:me|us|him|her|them|at|on|is|to|my|our|the|number)\s+){0,3}$",
    re.IGNORECASE,
)
_PHONE_CONTEXT_AFTER = re.compile(
    r"^[ \t]*[-–(,]?[ \t]*(?:phone|tel|mobile|cell|fax|desk|office|home|work)\b", re.IGNORECASE
)
_DATE_LIKE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")


def _phones(text: str) -> Iterator[Span]:
    for m in _PHONE.finditer(text):
        candidate = m.group()
        main = re.split(r"(?i)[ ]?(?:x|ext)", candidate, maxsplit=1)[0]
        n_digits = sum(c.isdigit() for c in main)
        if not 7 <= n_digits <= 15 or _DATE_LIKE.match(candidate):
            continue
        if (_PHONE_STRONG.match(candidate) and n_digits >= 10) or candidate.startswith("+"):
            yield m.span()
            continue
        before = text[max(0, m.start() - 40) : m.start()]
        after = text[m.end() : m.end() + 15]
        if _PHONE_CONTEXT_BEFORE.search(before) or _PHONE_CONTEXT_AFTER.match(after):
            yield m.span()


# Generic secrets: a value assigned to a secret-sounding name, or a long random quoted string.
# Entropy limits are detect-secrets' defaults (Yelp/detect-secrets: base64 4.5, hex 3.0 bits/char).
_SECRET_ASSIGNMENT = re.compile(
    r"(?:password|passwd|pwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|"
    r"private[_-]?key|client[_-]?secret|auth[_-]?token|credentials?)[\"']?\s*(?:=|:|=>|:=)\s*"
    r"[\"']?([A-Za-z0-9+/=_.!@#$%^&*~\-]{8,200})",
    re.IGNORECASE,
)
_QUOTED_RANDOM = re.compile(r"[\"']([A-Za-z0-9+/=_-]{24,200})[\"']")
_PLACEHOLDER_WORDS = re.compile(
    r"your|example|sample|xxxx|changeme|placeholder|dummy|redacted|secret|password|token|here|none|null",
    re.IGNORECASE,
)
_BASE64_ENTROPY = 4.5
_HEX_ENTROPY = 3.0


# Subresource-integrity hashes are public digests of public files, not credentials.
_NOT_SECRET_PREFIX = re.compile(r"^(?:sha256|sha384|sha512)-", re.IGNORECASE)


def _has_alphabet_run(value: str, length: int = 8) -> bool:
    """True for character-set constants such as "ABCDEFGH…0123456789" (high entropy, no secret)."""
    run = 1
    for a, b in itertools.pairwise(value):
        run = run + 1 if ord(b) == ord(a) + 1 else 1
        if run >= length:
            return True
    return False


def _looks_random(value: str) -> bool:
    if _PLACEHOLDER_WORDS.search(value) or _NOT_SECRET_PREFIX.match(value) or _has_alphabet_run(value):
        return False
    if re.fullmatch(r"[0-9a-fA-F]+", value):
        return len(value) >= 16 and shannon_entropy(value) >= _HEX_ENTROPY
    has_digit = any(c.isdigit() for c in value)
    has_alpha = any(c.isalpha() for c in value)
    # An assigned short password needs less entropy than an unlabelled string to count.
    return has_digit and has_alpha and shannon_entropy(value) >= min(_BASE64_ENTROPY, 3.0 + len(value) / 40)


def _secrets(text: str) -> Iterator[Span]:
    for m in _SECRET_ASSIGNMENT.finditer(text):
        value = m.group(1).rstrip(".,;")
        if _looks_random(value):
            yield m.start(1), m.start(1) + len(value)
    for m in _QUOTED_RANDOM.finditer(text):
        value = m.group(1)
        if shannon_entropy(value) >= _BASE64_ENTROPY and _looks_random(value):
            yield m.span(1)


# Street addresses, "where feasible": a house number, one to four capitalised words and a street
# type (US/UK/Commonwealth suffixes), optionally followed by a unit. Continental formats
# ("Rua do Arenque 1634") and bare unit lines are not attempted: too close to ordinary prose.
_STREET_TYPES = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|"
    r"Terrace|Parkway|Pkwy|Highway|Hwy|Way|Crescent|Cres|Circle|Cir|Close|Grove|Gardens|Row|Walk|"
    r"Trail|Alley|Plaza|Mews|Hill|Park"
)
_STREET = re.compile(
    rf"(?<![\w.,-])\d{{1,5}}[A-Za-z]?[ \t]+(?:[A-Z][a-zA-Z'’.-]+[ \t]+){{1,4}}(?:{_STREET_TYPES})\.?"
    r"(?:,?\s+(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Fl\.?|Floor)\s*#?\w{1,6})?(?![\w])"
)


def _street_addresses(text: str) -> Iterator[Span]:
    for m in _STREET.finditer(text):
        yield m.span()


_DETECTORS: dict[str, Callable[[str], Iterator[Span]]] = {
    "PRIVATE_KEY": _private_keys,
    "URL_CREDENTIALS": _url_credentials,
    "API_KEY": _api_keys,
    "EMAIL": _emails,
    "IBAN": _ibans,
    "CREDIT_CARD": _credit_cards,
    "US_SSN": _ssns,
    "IP_ADDRESS": _ip_addresses,
    "PHONE": _phones,
    "SECRET": _secrets,
    "STREET_ADDRESS": _street_addresses,
}
REGEX_ENTITIES: tuple[str, ...] = tuple(_DETECTORS)
"""Entities found without a model; PERSON needs an NER backend."""


# ---------------------------------------------------------------- screening a batch
# Almost no text holds PII, yet every detector's pattern is tried at every position of every text
# (~150 µs for a 200-character text). :func:`pii_candidates` screens a whole batch first, in Arrow's
# RE2 (:mod:`curation.filter.prefilter`, ~1 µs a text): each entity's hint is a pattern that every
# match of its detector contains, so a text its hint does not match cannot hold that entity. All hints
# at once pick the few texts worth a closer look, each hint alone then says what to search them for.

_HINTS: dict[str, str] = {
    "PRIVATE_KEY": "-----BEGIN ",
    "URL_CREDENTIALS": r"://[^\s/@\[\]]*:[^\s/@\[\]]*@",
    "API_KEY": r"(?:^|[^A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|gh[pousr]_|github_pat_|sk-|AIza|xox[abposr]-|[sr]k_live_|hf_"
    r"|glpat-|eyJ)|(?i:aws_?secret)",
    "EMAIL": r"[A-Za-z0-9_%+-]@[A-Za-z0-9]",
    "IBAN": r"[A-Za-z]{2}\d{2}(?:[ ]?[A-Za-z0-9]){11}",
    "CREDIT_CARD": r"\d{12}|\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{4}|\d{4}[ -]\d{6}[ -]\d{4}",
    "US_SSN": r"\d{3}[- ]\d{2}[- ]\d{4}|\d{9}",
    "IP_ADDRESS": r"\d\.\d{1,3}\.\d{1,3}\.\d|:[0-9A-Fa-f]{0,4}:",
    # Seven digits (the fewest a phone has), each at most three of " .()-" after the previous one:
    # "+44 (0) (20) 7946 0958" has the widest gaps the pattern allows.
    "PHONE": r"\d(?:[ .()-]{0,3}\d){6}",
    "SECRET": r"(?i:password|passwd|pwd|passphrase|secret|token|key|credentials?)[\"']?\s*[=:]"
    r"|[\"'][A-Za-z0-9+/=_-]{24,200}[\"']",
    "STREET_ADDRESS": rf"\d[A-Za-z]?[ \t]+(?:[A-Z][a-zA-Z'’.-]+[ \t]+){{1,4}}(?:{_STREET_TYPES})",
}
_SCREENS: dict[str, str | None] = {entity: wider_re2(re.compile(hint)) for entity, hint in _HINTS.items()}


def pii_screen(entities: Collection[str]) -> str | None:
    """One RE2 pattern that every text holding one of ``entities`` matches (``None``: no screen)."""
    return any_of(_SCREENS.get(entity) for entity in entities) if entities else None


def pii_candidates(texts: Sequence[str], entities: Collection[str] | None = None) -> list[tuple[str, ...]]:
    """For each text, the regex-detected entities of ``entities`` (default: all) that it may hold:
    ``find_pii(text, pii_candidates(texts)[i])`` finds exactly what ``find_pii(text)`` finds, and an empty
    tuple means nothing can be found. PERSON is never named (it needs a model, not a pattern)."""
    wanted = [entity for entity in _check_entities(entities) if entity in _SCREENS]
    found: list[tuple[str, ...]] = [()] * len(texts)
    if not wanted or not texts:
        return found
    union = pii_screen(wanted)
    if union is None:  # no screen for an entity: every text is searched for every one
        return [tuple(wanted)] * len(texts)
    array, unscreened = text_array(texts)
    for position in unscreened:
        found[position] = tuple(wanted)
    positions = pc.indices_nonzero(pc.match_substring_regex(array, union))
    if len(positions):
        flagged = array.take(positions)
        hits = [pc.match_substring_regex(flagged, _SCREENS[entity]).to_pylist() for entity in wanted]
        for k, position in enumerate(positions.to_pylist()):
            found[position] = tuple(entity for entity, hit in zip(wanted, hits, strict=True) if hit[k])
    return found


def batch_candidates(batch: BatchTexts, entities: Collection[str] | None = None) -> dict[int, tuple[str, ...]]:
    """:func:`pii_candidates` of ``batch.texts`` for the texts that may hold something, by position,
    screened with the batch's own Arrow array (:class:`curation.filter.batch.BatchTexts`)."""
    wanted = [entity for entity in _check_entities(entities) if entity in _SCREENS]
    if not wanted or not batch.texts:
        return {}
    union = pii_screen(wanted)
    if union is None:  # no screen for an entity: every text is searched for every one
        return dict.fromkeys(range(len(batch.texts)), tuple(wanted))
    positions = batch.passing(union)
    if not positions:
        return {}
    # Each entity's screen, as the batch has it (run on the texts the union passed when prefetched).
    hits = [batch.screen(_SCREENS[entity], within=union)[positions].tolist() for entity in wanted]
    found = {}
    for k, position in enumerate(positions):
        entities_found = tuple(entity for entity, hit in zip(wanted, hits, strict=True) if hit[k])
        if entities_found:
            found[position] = entities_found
    return found


def batch_screens(entities: Collection[str] | None = None) -> list[Screen]:
    """The screens :func:`batch_candidates` asks a batch for: the union, and each entity's own on the
    texts the union passed."""
    wanted = [entity for entity in _check_entities(entities) if entity in _SCREENS]
    union = pii_screen(wanted)
    if not wanted or union is None:
        return []
    return [Screen(union, alone=True), *(Screen(_SCREENS[entity], within=union) for entity in wanted)]


def _check_entities(entities: Collection[str] | None) -> Collection[str]:
    if entities is None:
        return ENTITIES
    unknown = set(entities) - set(ENTITIES)
    if unknown:
        raise ValueError(f"unknown PII entity types {sorted(unknown)}; known: {', '.join(ENTITIES)}")
    return entities


def find_pii(text: str, entities: Collection[str] | None = None, ner: NerBackend | None = None) -> list[PiiMatch]:
    """Non-overlapping PII spans in ``text``, sorted by position.

    ``entities`` limits the types searched (default: all). ``ner`` adds model-based matches
    (PERSON); without it PERSON is silently not searched. Overlaps are resolved by
    :data:`ENTITIES` priority, then by the longer span.
    """
    wanted = _check_entities(entities)
    candidates: list[PiiMatch] = []
    for entity, detect in _DETECTORS.items():
        if entity in wanted:
            candidates.extend(PiiMatch(entity, s, e, text[s:e]) for s, e in detect(text) if e > s)
    if ner is not None:
        candidates.extend(m for m in ner(text) if m.entity in wanted and m.end > m.start)
    candidates.sort(key=lambda m: (_PRIORITY.get(m.entity, len(ENTITIES)), m.start - m.end, m.start))
    chosen: list[PiiMatch] = []
    for match in candidates:
        if all(match.end <= c.start or match.start >= c.end for c in chosen):
            chosen.append(match)
    return sorted(chosen, key=lambda m: m.start)


def redact(
    text: str, entities: Collection[str] | None = None, ner: NerBackend | None = None
) -> tuple[str, list[PiiMatch]]:
    """``text`` with every match replaced by its placeholder (``[EMAIL]``), and the matches.

    Placeholders are never detected again, so redacting twice changes nothing.
    """
    matches = find_pii(text, entities, ner)
    if not matches:
        return text, matches
    parts: list[str] = []
    cursor = 0
    for m in matches:
        parts.append(text[cursor : m.start])
        parts.append(placeholder(m.entity))
        cursor = m.end
    parts.append(text[cursor:])
    return "".join(parts), matches
