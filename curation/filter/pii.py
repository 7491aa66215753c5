"""PII and secret detection and redaction with typed placeholders.

Detectors are regular expressions followed by validators (Luhn, IBAN mod-97, IP octets, SSN
area rules, Shannon entropy), because in training data a false positive destroys content:
maths like ``600+950+1250`` must survive, dates and ordinary numbers are not phones.

Phone numbers are the one entity where format alone is not enough (``467 3395`` is a phone
in a contact card and a count elsewhere), so loose shapes need a context word nearby, the way
Presidio's context enhancement does; only unambiguous shapes (``+`` prefix, North-American
``(415) 555-0100`` style) fire on their own.

Person names need a model; pass an :class:`NerBackend` (see ``curation/filter/pii_ner.py``).

One detector serves the `pii` cleaner, the `pii` filter and the `no_pii_left` check, and they agree:
the detectors judge a text as the `whitespace` cleaner (which runs after `pii`) will store it
(:func:`whitespace_view`), and :func:`redact` repeats until nothing is found, so whatever the check
would flag in a cleaned text the cleaner has already redacted.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from curation.filter.batch import BatchTexts, Screen
from curation.filter.prefilter import any_of, text_array, wider_re2
from curation.filter.whitespace import WHITESPACE_RULES, needs_whitespace_rules


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
# "(415) 555-0100" / "415-555-0100" / "415.555.0100" layout with consistent separators (a bracketed
# area code may be followed by any of them: "(415) 555 0100", "(415)-555-0100"). "415 555 0100" still
# needs a context word: space-grouped digits are how large numbers are written.
_PHONE_STRONG = re.compile(
    r"^(?:\+\d.*"
    r"|(?:(?:00)?1[ .-])?(?:\(\d{3}\)[ -]?\d{3}[ .-]\d{4}|\d{3}([.-])\d{3}\1\d{4})"
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


# Street addresses, "where feasible". Four shapes, each with a mark that ordinary prose, maths and
# code lack (rules written from the `dev` split of presidio-synth-pii and checked for false positives
# on gsm8k, Code Alpaca and Self-Instruct; see benchmarks/pii_eval.py):
# * English: a house number, one to four capitalised words and a street type, optionally a unit;
# * continental, type first: "Rue de Piétrain 371", "Via Roma 131", "ul. Zamkowa 33";
# * continental, type last: "Wingertweg 126", "Loorenstrasse 149", "Koepenicker Str. 74";
# * postal: "P.O. Box 149", "PSC 6477, Box 2981", "APO AE 83700", and unit lines ("Apt. 322", "Suite 578").
# A house number after a bare name ("Pavlou Drandaki 214") and lone postcodes are not attempted.
_STREET_TYPES = (
    r"Street|St|Avenue|Ave|Road|Rd|Boulevard|Blvd|Lane|Ln|Drive|Dr|Court|Ct|Place|Pl|Square|Sq|"
    r"Terrace|Parkway|Pkwy|Highway|Hwy|Way|Crescent|Cres|Circle|Cir|Close|Grove|Gardens|Row|Walk|"
    r"Trail|Alley|Plaza|Mews|Hill|Park"
)
_UNIT = r"(?:Apt\.?|Apartment|Suite|Ste\.?|Unit|Fl\.?|Floor)"
_STREET = re.compile(
    rf"(?<![\w.,-])\d{{1,5}}[A-Za-z]?[ \t]+(?:[A-Z][a-zA-Z'’.-]+[ \t]+){{1,4}}(?:{_STREET_TYPES})\.?"
    rf"(?:,?\s+{_UNIT}\s*#?\w{{1,6}})?(?![\w])"
)
# A capitalised word in any Latin script, and the particles that join the words of a street name.
_NAME_WORD = r"[A-ZÀ-ÖØ-ÞĀ-ſ][\w'’.-]*"
_PARTICLE = r"(?:de|del|della|delle|dei|di|da|do|dos|das|du|des|la|le|les|el|los|las|e|y|am|an|der|im|van|den)"
_HOUSE_NUMBER = r"[0-9]{1,4}[A-Za-z]?(?![\w/-]|[.,]\d)"
_TYPE_FIRST = (
    r"Rue|Rua|Via|Viale|Piazza|Piazzale|Corso|Largo|Vicolo|Calle|Carrer|Avenida|Avda\.|Paseo|Praça|Travessa|"
    r"Rambla|Camino|Carretera|Ronda|Chemin|Allée|Quai|Impasse|ul\.|ulica|Aleja|Plac|Strada|Str\.|"
    r"Bulevardul|Calea|Odos|Leoforos"
)
_STREET_TYPE_FIRST = re.compile(
    rf"(?<![\w.-])(?:{_TYPE_FIRST})[ \t]+(?:(?:{_NAME_WORD}|{_PARTICLE})[ \t]+){{0,4}}{_NAME_WORD}[ \t]+{_HOUSE_NUMBER}"
)
# German, Dutch, Scandinavian, Finnish and Hungarian street words, as a word's ending or on their own.
_TYPE_LAST = (
    r"strasse|straße|str\.|gasse|weg|allee|platz|damm|ufer|vej|gade|gata|gatan|vägen|veien|vegen|laan|straat|"
    r"gracht|plein|katu|tie|utca"
)
_STREET_TYPE_LAST = re.compile(
    rf"(?<![\w.-])(?:[A-ZÀ-ÖØ-Þ][\w'’-]{{2,}}(?:{_TYPE_LAST})"
    rf"|(?:{_NAME_WORD}[ \t]+){{1,3}}(?:{_TYPE_LAST.title()}|u\.))[ \t]+{_HOUSE_NUMBER}"
)
_POSTAL = re.compile(
    r"(?<![\w.-])(?:P\.?[ ]?O\.?[ ]?Box[ \t]+[0-9]{1,6}|PSC[ \t]+[0-9]{3,5},?[ \t]+Box[ \t]+[0-9]{1,5}"
    r"|(?:APO|FPO|DPO)[ \t]+A[AEP][ \t]+[0-9]{5}|(?:Apt\.|Apartment|Suite)[ \t]*#?[0-9]{1,5}[A-Za-z]?)(?![\w-])"
)


def _street_addresses(text: str) -> Iterator[Span]:
    for pattern in (_STREET, _STREET_TYPE_FIRST, _STREET_TYPE_LAST, _POSTAL):
        for m in pattern.finditer(text):
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
# Second hints, run as a second union: the continental and postal street shapes' marks (a street word
# before a name or an ASCII house number, a postal word before a number). Joined to the first union
# they would make its automaton larger than RE2's DFA keeps fast (about 14 against 10 µs a row of chat
# text); alone they cost about 3.
_EXTRA_HINTS: dict[str, str] = {
    "STREET_ADDRESS": rf"(?:{_TYPE_FIRST})[ \t]"
    rf"|(?:{_TYPE_LAST}|{_TYPE_LAST.title()}|[^\s][ \t]+u\.)[ \t]+[0-9]"
    r"|Box[ \t]+[0-9]|(?:APO|FPO|DPO)[ \t]|(?:Apt\.|Apartment|Suite)[ \t]*#?[0-9]",
}
# The detectors judge the whitespace cleaner's view of a text (:func:`whitespace_view`), in which a
# no-break space is a space and a zero-width character is gone: a text holding one is searched for
# every entity (the second union holds that screen too). (The view's other rules cannot make a hint
# match: they only drop spaces before line breaks, turn CR into LF and shorten runs of blank lines.)
_INVISIBLE = r"[\x{a0}\x{202f}\x{200b}\x{feff}]"
_SCREENS: dict[str, str | None] = {entity: wider_re2(re.compile(hint)) for entity, hint in _HINTS.items()}
_EXTRA_SCREENS: dict[str, str | None] = {entity: wider_re2(re.compile(hint)) for entity, hint in _EXTRA_HINTS.items()}


def _unions(entities: Collection[str]) -> tuple[str | None, str | None]:
    """The two unions a text must pass one of to hold one of ``entities`` (``None`` first: no screen)."""
    first = any_of(_SCREENS.get(entity) for entity in entities)
    second = any_of([*(_EXTRA_SCREENS[entity] for entity in entities if entity in _EXTRA_SCREENS), _INVISIBLE])
    return first, second


def pii_screen(entities: Collection[str]) -> str | None:
    """One RE2 pattern that every text holding one of ``entities`` matches (``None``: no screen)."""
    if not entities:
        return None
    first, second = _unions(entities)
    return None if first is None else any_of([first, second])


def pii_candidates(texts: Sequence[str], entities: Collection[str] | None = None) -> list[tuple[str, ...]]:
    """For each text, the regex-detected entities of ``entities`` (default: all) that it may hold:
    ``find_pii(text, pii_candidates(texts)[i])`` finds exactly what ``find_pii(text)`` finds, and an empty
    tuple means nothing can be found. PERSON is never named (it needs a model, not a pattern)."""
    wanted = [entity for entity in _check_entities(entities) if entity in _SCREENS]
    found: list[tuple[str, ...]] = [()] * len(texts)
    if not wanted or not texts:
        return found
    first, second = _unions(wanted)
    if first is None or second is None:  # no screen for an entity: every text is searched for every one
        return [tuple(wanted)] * len(texts)
    array, unscreened = text_array(texts)
    for position in unscreened:
        found[position] = tuple(wanted)
    passed = pc.or_(pc.match_substring_regex(array, first), pc.match_substring_regex(array, second))
    positions = pc.indices_nonzero(passed)
    if len(positions):
        flagged = array.take(positions)

        def hits(pattern: str | None) -> list[bool]:
            return pc.match_substring_regex(flagged, pattern).to_pylist() if pattern else [False] * len(flagged)

        own = [hits(_SCREENS[entity]) for entity in wanted]
        extra = [hits(_EXTRA_SCREENS.get(entity)) for entity in wanted]
        invisible = hits(_INVISIBLE)
        for k, position in enumerate(positions.to_pylist()):
            found[position] = tuple(
                entity for entity, a, b in zip(wanted, own, extra, strict=True) if a[k] or b[k] or invisible[k]
            )
    return found


def batch_candidates(batch: BatchTexts, entities: Collection[str] | None = None) -> dict[int, tuple[str, ...]]:
    """:func:`pii_candidates` of ``batch.texts`` for the texts that may hold something, by position,
    screened with the batch's own Arrow array (:class:`curation.filter.batch.BatchTexts`)."""
    wanted = [entity for entity in _check_entities(entities) if entity in _SCREENS]
    if not wanted or not batch.texts:
        return {}
    first, second = _unions(wanted)
    if first is None or second is None:  # no screen for an entity: every text is searched for every one
        return dict.fromkeys(range(len(batch.texts)), tuple(wanted))
    passed = batch.screen(first) | batch.screen(second)
    positions = np.flatnonzero(passed)
    if not len(positions):
        return {}
    # Each entity's screens, as the batch has them (run on the texts its union passed when prefetched).
    none = np.zeros(len(positions), dtype=bool)
    invisible = batch.screen(_INVISIBLE, within=second)[positions]
    hits = [
        batch.screen(_SCREENS[entity], within=first)[positions]
        | (batch.screen(extra, within=second)[positions] if (extra := _EXTRA_SCREENS.get(entity)) else none)
        | invisible
        for entity in wanted
    ]
    found = {}
    for k, position in enumerate(positions.tolist()):
        entities_found = tuple(entity for entity, hit in zip(wanted, hits, strict=True) if hit[k])
        if entities_found:
            found[position] = entities_found
    return found


def batch_screens(entities: Collection[str] | None = None) -> list[Screen]:
    """The screens :func:`batch_candidates` asks a batch for: the two unions, and each entity's own on
    the texts its union passed."""
    wanted = [entity for entity in _check_entities(entities) if entity in _SCREENS]
    if not wanted:
        return []
    first, second = _unions(wanted)
    if first is None or second is None:
        return []
    return [
        Screen(first, alone=True),
        Screen(second, alone=True),
        *(Screen(_SCREENS[entity], within=first) for entity in wanted),
        *(Screen(_EXTRA_SCREENS[entity], within=second) for entity in wanted if entity in _EXTRA_SCREENS),
        Screen(_INVISIBLE, within=second),
    ]


def _check_entities(entities: Collection[str] | None) -> Collection[str]:
    if entities is None:
        return ENTITIES
    unknown = set(entities) - set(ENTITIES)
    if unknown:
        raise ValueError(f"unknown PII entity types {sorted(unknown)}; known: {', '.join(ENTITIES)}")
    return entities


# ---------------------------------------------------------------- the text as it will be stored
# The chain's last cleaner normalises white space (``whitespace``, after ``pii``): it turns no-break
# spaces into spaces, deletes zero-width characters, trailing spaces and extra blank lines. Each of
# those can make a match out of what was none ("555\u200b1234", "call" followed by spaces and a line
# break, …), so a redactor that looked at the text before it would leave PII that the `no_pii_left`
# check finds afterwards. The detectors therefore look at the text as that cleaner will leave it (the
# *view*) and report spans in the text they were given. The view applies the cleaner's own rules
# (:mod:`curation.filter.whitespace`); trimming the ends is left out (it
# can neither make nor break a match).

_VIEW_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (pattern, replacement) for pattern, replacement, _, _ in WHITESPACE_RULES
)


def _view_text(text: str) -> str:
    """:func:`whitespace_view`'s text alone (``text`` itself when no rule changes it), without offsets."""
    if not needs_whitespace_rules(text):
        return text
    view = text
    for pattern, replacement in _VIEW_RULES:
        view = pattern.sub(replacement, view)
    return text if view == text else view


def whitespace_view(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """``text`` as the whitespace cleaner leaves it (but for its ends), and for each character of it
    the span of ``text`` it came from (``None``, ``None`` when nothing changes: the view is the text)."""
    if not needs_whitespace_rules(text):
        return text, None, None
    view = text
    starts: list[int] = list(range(len(text)))
    ends: list[int] = list(range(1, len(text) + 1))
    for pattern, replacement in _VIEW_RULES:
        pieces: list[str] = []
        new_starts: list[int] = []
        new_ends: list[int] = []
        cursor = 0
        for m in pattern.finditer(view):
            s, e = m.span()
            pieces.append(view[cursor:s])
            new_starts += starts[cursor:s]
            new_ends += ends[cursor:s]
            pieces.append(replacement)
            # A replacing character stands for the whole replaced run.
            new_starts += [starts[s]] * len(replacement)
            new_ends += [ends[e - 1]] * len(replacement)
            cursor = e
        if cursor == 0 and not pieces:
            continue
        pieces.append(view[cursor:])
        new_starts += starts[cursor:]
        new_ends += ends[cursor:]
        view, starts, ends = "".join(pieces), new_starts, new_ends
    return view, starts, ends


def find_pii(text: str, entities: Collection[str] | None = None, ner: NerBackend | None = None) -> list[PiiMatch]:
    """Non-overlapping PII spans in ``text``, sorted by position.

    ``entities`` limits the types searched (default: all). ``ner`` adds model-based matches
    (PERSON); without it PERSON is silently not searched. Overlaps are resolved by
    :data:`ENTITIES` priority, then by the longer span. The detectors judge the text as the
    whitespace cleaner will store it (:func:`whitespace_view`); spans are in ``text``.
    """
    wanted = _check_entities(entities)
    view = _view_text(text)
    candidates: list[PiiMatch] = []
    for entity, detect in _DETECTORS.items():
        if entity in wanted:
            candidates.extend(PiiMatch(entity, s, e, view[s:e]) for s, e in detect(view) if e > s)
    if ner is not None:
        # A model may read a placeholder ("[PERSON]") as a name; it is already redacted.
        candidates.extend(
            m for m in ner(view) if m.entity in wanted and m.end > m.start and m.text.strip("[]") not in _PRIORITY
        )
    candidates.sort(key=lambda m: (_PRIORITY.get(m.entity, len(ENTITIES)), m.start - m.end, m.start))
    chosen: list[PiiMatch] = []
    for match in candidates:
        if all(match.end <= c.start or match.start >= c.end for c in chosen):
            chosen.append(match)
    chosen.sort(key=lambda m: m.start)
    if view is text or not chosen:
        return chosen
    # Offsets back into ``text``: worked out only for the few texts that hold a match.
    _, starts, ends = whitespace_view(text)
    assert starts is not None and ends is not None
    mapped = []
    for m in chosen:
        start, end = starts[m.start], ends[m.end - 1]
        mapped.append(PiiMatch(m.entity, start, end, text[start:end]))
    return mapped


REDACT_ROUNDS = 8
"""Rounds of :func:`redact` at most. Replacing a span can make a match appear next to it (a number
that a phone number hid from a context word, a context window that now reaches further); one more
round redacts it, and text that needs more than two is already unusual."""


def _replace(text: str, matches: Sequence[PiiMatch]) -> str:
    parts: list[str] = []
    cursor = 0
    for m in matches:
        parts.append(text[cursor : m.start])
        parts.append(placeholder(m.entity))
        cursor = m.end
    parts.append(text[cursor:])
    return "".join(parts)


def redact(
    text: str, entities: Collection[str] | None = None, ner: NerBackend | None = None
) -> tuple[str, list[PiiMatch]]:
    """``text`` with every match replaced by its placeholder (``[EMAIL]``), and the matches.

    Redaction reaches a fixed point: the result holds nothing :func:`find_pii` finds with the same
    ``entities`` (the ``ner`` model is asked once), so redacting twice changes nothing and the
    ``no_pii_left`` check, which runs the same detectors, agrees with it. A match found in a later
    round is reported with offsets in the text of that round.
    """
    found: list[PiiMatch] = []
    for round_ in range(REDACT_ROUNDS):
        # The model runs once: what the rounds after it look for is what the regexes (and the check,
        # which runs no model) can newly see around a placeholder.
        matches = find_pii(text, entities, ner if round_ == 0 else None)
        if not matches:
            break
        found += matches
        text = _replace(text, matches)
    return text, found
