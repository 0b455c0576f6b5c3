"""Personal data in training texts: e-mail addresses, phone numbers, card numbers, IBANs, US SSNs, IPv4 addresses.

A fine-tuned model can repeat what it was trained on word for word, and a provider run uploads the file, so the
data check counts these before any compute is spent. Regular expressions with validation (Luhn for cards, mod 97 for
IBANs, the SSN's invalid areas) are what a check that runs on every ``tunelab data check`` can afford: Presidio and
spaCy's named-entity models would find names and addresses too, but are far too heavy for the default install and
slow on 100k records. Every match shown is masked (:func:`mask`): a report never repeats the value it warns about.

What is deliberately not matched (false positives would bury the real finds): a number without a phone's shape (bare
digits, a date, an order number run into letters or dashes), a 16-digit number that fails the Luhn check, an IBAN with
a wrong check sum. A dotted quad such as ``1.2.3.4`` is a valid IPv4 address and is counted, unless ``v`` or
``version`` comes right before it (a version string); longer dotted runs (``1.3.6.1.4.1``) are not addresses.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tunelab.data.records import ClassifyRecord, PreferenceRecord, Record, SFTRecord, TextRecord
from tunelab.errors import DataError

EXAMPLES = 3  # masked examples kept per kind

# kind -> (singular, plural) as a summary line says them
KINDS: dict[str, tuple[str, str]] = {
    "email": ("e-mail address", "e-mail addresses"),
    "phone": ("phone number", "phone numbers"),
    "card": ("card number", "card numbers"),
    "iban": ("IBAN", "IBANs"),
    "ssn": ("US social security number", "US social security numbers"),
    "ipv4": ("IPv4 address", "IPv4 addresses"),
}

_EMAIL = re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,24}(?![\w-])")
# International: + and a country code, then groups; national: the North American 3-3-4 shape, or a trunk 0 and
# groups. Letters, dashes and dots on either side mean an id or a date, not a phone number.
_PHONE = re.compile(
    r"(?<![\w+.-])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}"
    r"|(?:1[ .-])?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}"
    r"|0\d{1,4}(?:[ -]\d{2,8}){1,4}"
    r")(?![\w-]|\.\d)"
)
_CARD = re.compile(r"(?<![\w.-])(?:\d{13,19}|\d{4}(?:[ -]\d{4}){2,3}(?:[ -]\d{1,3})?|\d{4}[ -]\d{6}[ -]\d{4,5})(?![\w-]|\.\d)")
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?![A-Za-z0-9])")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.])(?<!version )(?<!Version )(?<!ver\. ){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")

# Lengths of the IBANs of the countries that issue them (ISO 13616 registry): the check sum is tested on exactly this
# many characters, so a word in capitals after the number does not spoil it.
_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29, "BY": 28,
    "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18,
    "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20,
    "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19,
    "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip


# One cheap first look (a leading character class lets the regex engine skip ahead): seven digits with at most two
# separators between any two of them, as every phone, card, IBAN and SSN has, or digits with dots as an IPv4 address
# has. Most texts have neither and skip the validating patterns, whose leading look-behinds are tried at every position
# (104k gsm8k-sized sft records, 209k texts: 1.3 s with this look, 8 s with the patterns alone).
_DIGITS_TO_LOOK_AT = re.compile(r"[0-9](?:[ .()-]{0,2}[0-9]){6}|[0-9]\.[0-9]{1,3}\.[0-9]")


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def luhn_valid(number: str) -> bool:
    """The Luhn check every payment card number passes (one random 16-digit number in ten does too)."""
    total = 0
    for position, ch in enumerate(reversed(number)):
        digit = int(ch)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def iban_valid(compact: str) -> bool:
    """ISO 13616: the country's length, and the number read with its first four characters moved to the end is 1 mod 97."""
    if _IBAN_LENGTHS.get(compact[:2]) != len(compact) or not compact[2:4].isdigit():
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _phone_ok(value: str) -> bool:
    digits = _digits(value)
    # E.164 allows 15 digits; a national number has at least 10 (fewer is a date, a time or a reference).
    if value.startswith("+"):
        return 8 <= len(digits) <= 15
    return 10 <= len(digits) <= 12


def _card_ok(value: str) -> bool:
    digits = _digits(value)
    # Card numbers start with the issuer's digit: 2 and 5 Mastercard, 3 Amex/Diners/JCB, 4 Visa, 6 Discover/UnionPay.
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


# Domains reserved for documentation and tests (RFC 2606, RFC 6761): no one's address can be there, so an example
# dataset's made-up contacts (people@shop.example, jane@example.com) are not reported as personal data.
_DOCUMENTATION_DOMAINS = ("example.com", "example.net", "example.org")
_DOCUMENTATION_TLDS = ("example", "test", "invalid", "localhost")


def _documentation_domain(address: str) -> bool:
    domain = address.rpartition("@")[2].lower()
    return domain.rsplit(".", 1)[-1] in _DOCUMENTATION_TLDS or any(
        domain == reserved or domain.endswith("." + reserved) for reserved in _DOCUMENTATION_DOMAINS
    )


def find_all(text: str) -> list[tuple[str, str]]:
    """(kind, value) of every validated match in ``text``. An IBAN's or card's digits are not read again as a card
    or a phone number: each value counts once, as its most specific kind."""
    found: list[tuple[str, str]] = []
    taken: list[tuple[int, int]] = []

    def free(match: re.Match) -> bool:
        return all(match.end() <= start or match.start() >= end for start, end in taken)

    if "@" in text:
        found += [("email", m.group()) for m in _EMAIL.finditer(text) if not _documentation_domain(m.group())]
    if not _DIGITS_TO_LOOK_AT.search(text):
        return found
    if "." in text:
        found += [("ipv4", m.group()) for m in _IPV4.finditer(text)]
    for m in _IBAN.finditer(text):
        compact = m.group().replace(" ", "")
        size = _IBAN_LENGTHS.get(compact[:2])
        if size is None:
            continue
        taken.append(m.span())  # shaped like an IBAN: its digits are no card or phone number even when its check sum fails
        if len(compact) >= size and iban_valid(compact[:size]):
            found.append(("iban", compact[:size]))
    for m in _CARD.finditer(text):
        if free(m) and _card_ok(m.group()):
            found.append(("card", m.group()))
            taken.append(m.span())
    if "-" in text:
        for m in _SSN.finditer(text):
            found.append(("ssn", m.group()))
            taken.append(m.span())
    found += [("phone", m.group()) for m in _PHONE.finditer(text) if free(m) and _phone_ok(m.group())]
    return found


def mask(kind: str, value: str) -> str:
    """``value`` with all but what tells one from another hidden: an address's first letter and domain, the last four
    digits of a card, IBAN or SSN, a phone number's last two, an IPv4 address's first number."""
    if kind == "email":
        local, _, domain = value.partition("@")
        return f"{local[0]}***@{domain}"
    if kind == "ipv4":
        return value.split(".")[0] + ".*.*.*"
    if kind == "iban":
        return f"{value[:2]}** **** … {value[-4:]}"
    keep = 2 if kind == "phone" else 4
    seen = len(_digits(value))
    out = []
    for ch in value:
        if ch.isdigit():
            seen -= 1
            out.append(ch if seen < keep else "*")
        else:
            out.append(ch)
    return "".join(out)


def message_fields(messages: Iterable[Any]) -> Iterator[tuple[str, str]]:
    """(field, text) of chat messages: an assistant turn is an ``answer``, any other turn a ``prompt``."""
    for message in messages:
        yield ("answer" if message.get("role") == "assistant" else "prompt"), _content(message)


def record_fields(record: Record) -> Iterator[tuple[str, str]]:
    """(field, text) of every text the model is trained on or given: an sft conversation's assistant turns are its
    ``answer`` (what the model learns to say), the other turns its ``prompt``; a preference pair's prompt, chosen and
    rejected answers; a classify or text record's text."""
    if isinstance(record, SFTRecord):
        yield from message_fields(record.messages)
    elif isinstance(record, PreferenceRecord):
        for message in record.prompt:
            yield "prompt", _content(message)
        yield "chosen", record.chosen
        yield "rejected", record.rejected
    elif isinstance(record, (ClassifyRecord, TextRecord)):
        yield "text", record.text


def _content(message: Any) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: the text parts are what is trained
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict) and isinstance(part.get("text"), str))
    return "" if content is None else str(content)


@dataclass
class PiiKind:
    """One kind of personal data found: how many records hold it (per field), how many values, masked examples."""

    kind: str
    records: int = 0
    matches: int = 0
    fields: dict[str, int] = field(default_factory=dict)  # field -> records holding it there
    examples: list[str] = field(default_factory=list)  # "file:line field: masked value"


@dataclass
class PiiReport:
    records: int = 0  # records scanned
    kinds: dict[str, PiiKind] = field(default_factory=dict)

    @property
    def found(self) -> bool:
        return bool(self.kinds)

    def warnings(self) -> list[str]:
        """One line per kind found, its examples masked."""
        lines = []
        for kind in self.kinds.values():
            singular, plural = KINDS[kind.kind]
            where = ", ".join(f"{name} {n}" for name, n in kind.fields.items())
            lines.append(
                f"personal data: {kind.matches} {singular if kind.matches == 1 else plural} in {kind.records} of "
                f"{self.records} records ({where}), e.g. {'; '.join(kind.examples)} (a tuned model can repeat them; "
                "data.pii: off if they are fake or public)"
            )
        return lines

    def summary(self) -> str:
        """'12 e-mail addresses and 3 card numbers': every kind found, with its count of values."""
        parts = [f"{k.matches} {KINDS[k.kind][0] if k.matches == 1 else KINDS[k.kind][1]}" for k in self.kinds.values()]
        return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


    def first_example(self) -> str:
        """The first masked example found (``file:line field: value``): the one line about them says where to look."""
        return next(kind.examples[0] for kind in self.kinds.values() if kind.examples)

    def sent_to(self, what: str, base_url: str) -> str:
        """The line said before ``what`` goes to a provider: what it holds, where one is, and which host receives it."""
        host = urlsplit(base_url).netloc or base_url
        return (f"{what} holds {self.summary()} (e.g. {self.first_example()}; data check --json lists them, masked); "
                f"they will be sent to {host}")

    def refusal(self, what: str) -> DataError:
        """The one-line error of ``data.pii: refuse``, naming where one of them is (masked)."""
        return DataError(
            f"{what} holds {self.summary()} (e.g. {self.first_example()}) and data.pii is refuse: nothing is trained, uploaded or sent",
            "remove or replace them (`tunelab data check --json` lists where, masked), "
            "or set data.pii: warn (or off) if they are fake or public",
        )


def scan_texts(items: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> PiiReport:
    """Scan ``(source, [(field, text), ...])`` items: what ``scan_records`` does for any texts (the inputs a teacher is sent)."""
    report = PiiReport()
    found: dict[str, PiiKind] = {}
    for source, fields in items:
        report.records += 1
        kinds_here: set[str] = set()
        fields_here: set[tuple[str, str]] = set()
        for name, text in fields:
            if not text:
                continue
            for kind, value in find_all(text):
                entry = found.setdefault(kind, PiiKind(kind))
                entry.matches += 1
                if (kind, name) not in fields_here:
                    entry.fields[name] = entry.fields.get(name, 0) + 1
                    fields_here.add((kind, name))
                if kind not in kinds_here:
                    entry.records += 1
                    kinds_here.add(kind)
                    if len(entry.examples) < EXAMPLES:  # one example per record: three records, not one record thrice
                        entry.examples.append(f"{source} {name}: {mask(kind, value)}")
    report.kinds = {kind: found[kind] for kind in KINDS if kind in found}
    return report


def scan_records(records: Iterable[Record]) -> PiiReport:
    """Every kind of personal data in the texts of ``records`` (:func:`record_fields`), counted per kind and field."""
    return scan_texts((record.source, record_fields(record)) for record in records)


def check_sent(records: Sequence[Record], base_urls: Sequence[str], setting: str, what: str) -> list[str]:
    """Before ``records`` are sent to the endpoints at ``base_urls`` (a remote model asked the test requests):
    :func:`check_texts_sent` of their texts (:func:`record_fields`).

    Raises:
        DataError: under ``data.pii: refuse`` when they hold some (nothing is sent).
    """
    return check_texts_sent(((record.source, record_fields(record)) for record in records), base_urls, setting, what)


def check_texts_sent(
    items: Iterable[tuple[str, Iterable[tuple[str, str]]]], base_urls: Sequence[str], setting: str, what: str
) -> list[str]:
    """Before the texts of ``items`` (``(source, [(field, text), ...])``, as :func:`scan_texts` reads them) are sent to
    the endpoints at ``base_urls``: the line to say per host when they hold personal data (``data.pii: warn``), none
    when they hold none, nothing is sent or ``setting`` is off. A loopback endpoint (``localhost:8000``) is named like
    any other: it may be a tunnel to a provider as well as a local vLLM, and this module cannot tell which.

    Raises:
        DataError: under ``data.pii: refuse`` when they hold some (nothing is sent).
    """
    if setting == "off" or not base_urls:
        return []
    pii = scan_texts(items)
    if not pii.found:
        return []
    if setting == "refuse":
        raise pii.refusal(what)
    return [pii.sent_to(what, url) for url in dict.fromkeys(base_urls)]
