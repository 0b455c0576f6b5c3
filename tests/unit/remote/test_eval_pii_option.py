"""`tunelab eval --pii warn|refuse|off`: personal data in the requests a remote model (the one evaluated, or a remote
baseline) is asked is said with its host (warn, the default as data.pii's), refused with nothing asked, or not looked for."""

from __future__ import annotations

import json
import sys

import pytest

from tunelab.cli.main import main

BASE_MODEL = "gpt-4o-mini-2024-07-18"
EMAIL = "jane.roe@acme-mail.com"


@pytest.fixture
def files(cloud_provider, tmp_path, monkeypatch):
    monkeypatch.setattr("tunelab.config.OPENAI_BASE_URL", cloud_provider.url)  # openai:NAME, answered by the loopback fake
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    test = write("test.jsonl", [{"text": f"plain request {i}" + (f" from {EMAIL}" if i == 1 else ""), "label": "AB"[i % 2]} for i in range(6)])
    train = write("train.jsonl", [{"text": f"training request {i}", "label": "AB"[i % 2]} for i in range(8)])
    return test, train


def _tunelab(monkeypatch, capsys, *arguments) -> tuple[int, str, str]:
    """`tunelab ARGUMENTS` as the installed command runs it: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tunelab", *arguments])
    with pytest.raises(SystemExit) as ended:
        main()
    said = capsys.readouterr()
    return ended.value.code, said.out, said.err


def test_refuse_asks_a_remote_model_or_baseline_nothing_and_says_one_line(cloud_provider, files, tiny_model_dir, monkeypatch, capsys):
    test, train = files
    # The remote model evaluated is looked up first (GET /v1/models: reachable, named), which carries none of the data.
    for model, asked in (([str(tiny_model_dir), "--train", train, "--baselines", f"openai:{BASE_MODEL}"], []),
                         ([f"openai:{BASE_MODEL}"], [("GET", "/v1/models", 200)])):
        code, out, err = _tunelab(monkeypatch, capsys, "eval", "--data", test, "--task", "classify", "--model", *model, "--pii", "refuse")
        assert code == 2 and out == "" and "data.pii is refuse" in err, err
        line, fix = err.strip().split("\n")
        assert line.startswith("error: the test file (6 requests) holds 1 e-mail address (e.g. ") and "data.pii is refuse" in line, err
        assert fix.startswith("  fix: ") and EMAIL not in err
        assert cloud_provider.requests == asked
        cloud_provider.requests.clear()


def test_warn_is_the_default_and_off_says_nothing(cloud_provider, files, monkeypatch, capsys):
    test, _ = files
    command = ["eval", "--data", test, "--task", "classify", "--model", f"openai:{BASE_MODEL}", "--json"]
    code, _, err = _tunelab(monkeypatch, capsys, *command)
    said = " ".join(err.split())
    assert code == 0 and "holds 1 e-mail address" in said and "they will be sent to 127.0.0.1:" in said, err
    code, _, err = _tunelab(monkeypatch, capsys, *command, "--pii", "off")
    assert code == 0 and "e-mail" not in err, err
    code, _, err = _tunelab(monkeypatch, capsys, *command, "--pii", "maybe")
    assert code != 0 and "--pii" in err, err
