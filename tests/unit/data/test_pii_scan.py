"""Personal data in training texts (``tunelab.data.pii``): each kind found, near misses not, every value masked."""

import json

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig
from tunelab.data.check import check_data
from tunelab.data.pii import find_all, mask, scan_records
from tunelab.data.records import PreferenceRecord, SFTRecord

FOUND = [
    ("email", "write to john.doe@acme-mail.com today", "john.doe@acme-mail.com"),
    ("phone", "call +44 20 7946 0958 after six", "+44 20 7946 0958"),
    ("phone", "my number is (555) 123-4567.", "(555) 123-4567"),
    ("phone", "ring 555-123-4567 please", "555-123-4567"),
    ("phone", "tel. 020 7946 0958", "020 7946 0958"),
    ("phone", "portable 06 12 34 56 78", "06 12 34 56 78"),
    ("card", "card 4242 4242 4242 4242 was charged", "4242 4242 4242 4242"),
    ("card", "card 4111-1111-1111-1111", "4111-1111-1111-1111"),
    ("card", "card 4111111111111111", "4111111111111111"),
    ("card", "amex 3782 822463 10005", "3782 822463 10005"),
    ("iban", "IBAN DE89 3704 0044 0532 0130 00 OK", "DE89370400440532013000"),
    ("iban", "pay to GB82WEST12345698765432", "GB82WEST12345698765432"),
    ("ssn", "SSN 123-45-6789 on file", "123-45-6789"),
    ("ipv4", "login from 192.168.1.10.", "192.168.1.10"),
    # A dotted quad is an address: a version string is told apart only by v or "version" before it.
    ("ipv4", "server 1.2.3.4 is down", "1.2.3.4"),
]

NEAR_MISSES = [
    "card 4242 4242 4242 4241 (Luhn-invalid)",
    "card 4111111111111112",
    "IBAN DE89 3704 0044 0532 0130 01 (bad check sum)",
    "IBAN DE88370400440532013000",
    "born 2023-01-15, paid 15.01.2023, due 01/15/2023 at 12:30",
    "order 123456 shipped",
    "order #12345678 and order 1234567890",
    "order ORD-2023-0001-2345 and ticket 20230115-4567",
    "SSNs never issued: 000-12-3456 666-12-3456 912-34-5678 123-00-4567",
    "version 1.2.3.4, v1.2.3.4 and the OID 1.3.6.1.4.1",
    "not an address: 300.1.2.3",
    "total $1,234,567.89",
    "user@localhost is not an address",
    # Domains reserved for documentation (RFC 2606): an example dataset's made-up contacts are nobody's.
    "write to people@harbor-analytics.example, jane@example.com or ops@mail.example.org",
    "bounce@shop.test and nobody@host.invalid",
]


@pytest.mark.parametrize(("kind", "text", "value"), FOUND)
def test_each_kind_is_found_and_masked(kind, text, value):
    assert find_all(text) == [(kind, value)]
    masked = mask(kind, value)
    assert masked != value and value not in masked


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_not_found(text):
    assert find_all(text) == []


def test_masks_keep_only_what_tells_values_apart():
    assert mask("email", "john.doe@acme-mail.com") == "j***@acme-mail.com"
    assert mask("card", "4242 4242 4242 4242") == "**** **** **** 4242"
    assert mask("ssn", "123-45-6789") == "***-**-6789"
    assert mask("phone", "+44 20 7946 0958") == "+** ** **** **58"
    assert mask("iban", "DE89370400440532013000") == "DE** **** … 3000"
    assert mask("ipv4", "192.168.1.10") == "192.*.*.*"


def test_counts_are_per_record_and_per_field():
    def sft(source, user, answer):
        return SFTRecord(({"role": "user", "content": user}, {"role": "assistant", "content": answer}), source)

    records = [
        sft("f:1", "my mail is ann@acme-mail.org", "noted: ann@acme-mail.org and bob@acme-mail.org"),  # prompt and answer
        sft("f:2", "hello", "reach us at help@acme-mail.com"),  # answer only
        sft("f:3", "card 4242 4242 4242 4242", "thanks"),
        PreferenceRecord(({"role": "user", "content": "hi"},), "mail x@acme-mail.net", "no", "f:4"),
    ]
    report = scan_records(records)
    email = report.kinds["email"]
    assert (email.records, email.matches) == (3, 5)
    assert email.fields == {"prompt": 1, "answer": 2, "chosen": 1}
    assert email.examples == ["f:1 prompt: a***@acme-mail.org", "f:2 answer: h***@acme-mail.com", "f:4 chosen: x***@acme-mail.net"]
    assert report.kinds["card"].fields == {"prompt": 1}
    assert report.summary() == "5 e-mail addresses and 1 card number"


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


SECRETS = ["john.doe@acme-mail.com", "4242 4242 4242 4242", "DE89 3704 0044 0532 0130 00", "123-45-6789", "+44 20 7946 0958", "10.20.30.40"]


def _pii_file(tmp_path):
    rows = [{"prompt": f"question {i} about my account", "completion": f"answer {i}"} for i in range(6)]
    rows[1]["prompt"] = f"I am {SECRETS[0]}, card {SECRETS[1]}"
    rows[2]["completion"] = f"Wire it to {SECRETS[2]}; your SSN {SECRETS[3]} is on file"
    rows[3]["completion"] = f"Call {SECRETS[4]} from {SECRETS[5]}"
    return _write(tmp_path / "train.jsonl", rows)


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


def test_data_check_warns_once_per_kind_and_never_prints_a_value(tmp_path):
    path = _pii_file(tmp_path)
    text = _cli(["data", "check", str(path), "--task", "sft", "--no-tokens"])
    assert text.exit_code == 0, text.output  # a warning: the exit code is the data's errors' alone
    # Joined as one line: the console wraps long warnings at its width.
    lines = ["warning: personal data" + line for line in " ".join(text.output.split()).split("warning: personal data")[1:]]
    assert len(lines) == 6, text.output
    assert any("1 card number in 1 of 6 records (prompt 1)" in line and "**** **** **** 4242" in line for line in lines)
    assert any("1 IBAN in 1 of 6 records (answer 1)" in line for line in lines)
    as_json = _cli(["data", "check", str(path), "--task", "sft", "--no-tokens", "--json"])
    assert as_json.exit_code == 0
    pii = json.loads(as_json.output)["pii"]
    assert set(pii["kinds"]) == {"email", "phone", "card", "iban", "ssn", "ipv4"}
    assert pii["kinds"]["ssn"] == {"kind": "ssn", "records": 1, "matches": 1, "fields": {"answer": 1},
                                   "examples": [f"{path}:3 answer: ***-**-6789"]}
    for secret in SECRETS:
        for output in (" ".join(text.output.split()), as_json.output):
            assert secret not in output and secret.replace(" ", "") not in output


def test_data_pii_off_looks_for_nothing(tmp_path):
    path = _pii_file(tmp_path)
    report = check_data(str(path), "sft", DataConfig(pii="off"))
    assert report.pii is None and not any("personal data" in w for w in report.warnings)
    result = _cli(["data", "check", str(path), "--task", "sft", "--no-tokens", "--pii", "off"])
    assert result.exit_code == 0 and "personal data" not in result.output
    assert json.loads(_cli(["data", "check", str(path), "--task", "sft", "--no-tokens", "--pii", "off", "--json"]).output)["pii"] is None


def test_classify_and_text_records_are_scanned(tmp_path):
    path = _write(tmp_path / "c.jsonl", [{"text": "mail me at a@acme-mail.com", "label": "x"}, {"text": "hi", "label": "y"}])
    assert check_data(str(path), "classify", DataConfig()).pii.kinds["email"].fields == {"text": 1}
    doc = tmp_path / "doc.txt"
    doc.write_text("Contact 555-123-4567 for details.\n")
    assert check_data(str(doc), "text", DataConfig()).pii.kinds["phone"].records == 1
