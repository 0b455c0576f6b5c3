"""Personal data in the training data of a provider run or a remote teacher: said (with the host) before anything is
sent, refused before anything is trained or sent under ``data.pii: refuse``, silent under ``off``."""

from __future__ import annotations

import json
import re

import pytest

from tunelab.config import parse_config
from tunelab.errors import BudgetExceeded, DataError
from tunelab.tasks.pipeline import run_pipeline

BASE_MODEL = "gpt-4o-mini-2024-07-18"
EMAIL = "jane.roe@acme-mail.com"
CARD = "4242 4242 4242 4242"


@pytest.fixture
def provider(cloud_provider):
    return cloud_provider


def _rows():
    rows = [{"text": f"my bill {i} is wrong", "label": "billing"} for i in range(8)]
    rows += [{"text": f"the app crashes on screen {i}", "label": "technical"} for i in range(8)]
    # Eight of sixteen: at most four go to the test split, so the uploaded training file holds some too.
    for i in range(4):
        rows[i]["text"] = f"refund {i} to {EMAIL} please"
        rows[8 + i]["text"] = f"card {CARD} declined {i} times"
    return rows


def cloud_config(tmp_path, provider, model, **data):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    return parse_config({
        "task": "classify", "name": "cloud", "model": {"name": str(model), "endpoint": {"base_url": provider.url, "name": BASE_MODEL}},
        "data": {"train": str(path), "test_size": 0.25, "validation_size": 0.0, **data},
        "train": {"backend": "openai", "epochs": 1, "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": ["base"], "bootstrap_samples": 100},
    })


def _host(provider):
    return provider.url.split("//", 1)[1].split("/", 1)[0]


def test_a_provider_run_says_what_it_uploads_and_where_before_the_upload(provider, tmp_path, tiny_model_dir):
    seen = []

    def on_event(step, status, details):
        message = str(details.get("message", ""))
        if "will be sent to" in message:
            # What had reached the provider when the line was said: nothing uploaded yet.
            seen.append((message, provider.count("POST", "/v1/files")))

    outcome = run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir), on_event=on_event)
    assert provider.count("POST", "/v1/files") >= 1  # warned, not blocked
    check_line, upload_line = seen[0], seen[-1]
    train = tmp_path / "train.jsonl"
    assert check_line == (f"data: {train} holds 4 e-mail addresses and 4 card numbers (e.g. {train}:1 text: j***@acme-mail.com; "
                          f"data check --json lists them, masked); they will be sent to {_host(provider)}", 0)
    assert upload_line[0].startswith("cloud_train.jsonl holds ") and upload_line[0].endswith(f"they will be sent to {_host(provider)}")
    assert upload_line[1] == 0
    # The run keeps the check's summary, masked.
    pii = json.loads((outcome.run_dir / "data_check.json").read_text())["pii"]
    assert pii["kinds"]["card"]["examples"] == [f"{tmp_path / 'train.jsonl'}:{line} text: **** **** **** 4242" for line in (9, 10, 11)]
    # (The check's rendered example is the data itself, as the run folder's split is.)
    assert EMAIL not in json.dumps(pii) and CARD not in json.dumps(pii)


def test_refuse_stops_the_run_before_anything_is_trained_or_sent(provider, tmp_path, tiny_model_dir):
    config = cloud_config(tmp_path, provider, tiny_model_dir, pii="refuse")
    with pytest.raises(DataError, match=r"holds 4 e-mail addresses and 4 card numbers \(e\.g\. \S+train\.jsonl:1 text: j\*\*\*@acme-mail\.com\) "
                                        "and data.pii is refuse") as refused:
        run_pipeline(config)
    assert EMAIL not in str(refused.value) and CARD not in str(refused.value)
    assert provider.requests == []  # no upload, no baseline asked of the provider's base model
    assert not (tmp_path / "runs" / "cloud").exists()


def test_off_says_nothing(provider, tmp_path, tiny_model_dir):
    config = cloud_config(tmp_path, provider, tiny_model_dir, pii="off")
    config = parse_config({**config.model_dump(mode="json"), "budget": {"max_usd": 1e-9}})  # stop at the estimate
    messages = []
    with pytest.raises(BudgetExceeded):
        run_pipeline(config, on_event=lambda step, status, details: messages.append(str(details.get("message", ""))))
    assert messages and not any("personal data" in m or "will be sent to" in m for m in messages)


def _distill_config(tmp_path, provider, model, pii):
    path = tmp_path / "train.jsonl"
    rows = [{"prompt": f"my card {CARD} was charged {i} times", "completion": f"answer {i}"} for i in range(12)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return parse_config({
        "task": "sft", "name": "distilled", "model": str(model),
        "data": {"train": str(path), "test_size": 0.25, "validation_size": 0.0, "pii": pii},
        "train": {"output_dir": str(tmp_path / "runs")},
        "distill": {"teacher": {"base_url": provider.url, "name": BASE_MODEL}},
    })


def test_distill_refuses_before_the_teacher_is_asked(provider, tmp_path, tiny_model_dir):
    from tunelab.tasks.distill import run_distill

    with pytest.raises(DataError, match=r"\d+ card numbers \(e\.g\. \S+:\d+ prompt: \*\*\*\* \*\*\*\* \*\*\*\* 4242\) and data.pii is refuse"):
        run_distill(_distill_config(tmp_path, provider, tiny_model_dir, "refuse"), calibrate=False)
    assert provider.requests == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("pii", "said"), [("warn", True), ("off", False)])
def test_distill_says_where_the_teachers_inputs_go(provider, tmp_path, tiny_model_dir, pii, said):
    from tunelab.data.split import make_split
    from tunelab.tasks.distill import _check_pii, teacher_inputs

    config = _distill_config(tmp_path, provider, tiny_model_dir, pii)
    _, inputs = teacher_inputs(config, make_split(config))
    events = []
    _check_pii(config, inputs, lambda step, status, details: events.append(details["message"]))
    expected = [f"what the teacher is asked (from {config.data.train}) holds {len(inputs)} card numbers (e.g. {inputs[0].source} prompt: "
                f"**** **** **** 4242; data check --json lists them, masked); they will be sent to {_host(provider)}"]
    assert events == (expected if said else [])


class _Stop(Exception):
    pass


@pytest.mark.parametrize("pii", ["warn", "refuse"])
def test_a_remote_baseline_names_the_host_its_test_requests_go_to(provider, tmp_path, tiny_model_dir, monkeypatch, pii):
    # A local run whose verdict asks a remote model: the test requests (here a --test file the check step never scanned)
    # go to that host. Said before the first request, refused under data.pii: refuse; stopped here at the estimate.
    from tunelab.tasks import pipeline

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(pipeline, "estimate_step", stop)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"plain request {i}", "label": "AB"[i % 2]}) + "\n" for i in range(24)))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": f"refund {i} to {EMAIL}" if i < 3 else f"other request {i}", "label": "AB"[i % 2]}) + "\n"
                            for i in range(8)))
    config = parse_config({
        "task": "classify", "name": "local", "model": str(tiny_model_dir),
        "data": {"train": str(train), "test": str(test), "validation_size": 0.2, "max_length": 64, "pii": pii},
        "train": {"output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": ["classical", {"endpoint": {"base_url": provider.url, "name": BASE_MODEL}, "as": "gpt"}]},
    })
    seen = []
    if pii == "refuse":
        with pytest.raises(DataError, match=r"the test split \(8 requests\) holds 3 e-mail addresses \(e\.g\. \S+test\.jsonl:[123] text: "
                                            r"j\*\*\*@acme-mail\.com\) and data.pii is refuse"):
            run_pipeline(config)
    else:
        with pytest.raises(_Stop):
            run_pipeline(config, on_event=lambda step, status, details: seen.append(str(details.get("message", ""))))
        said = [m for m in seen if "will be sent to" in m]
        assert len(said) == 1 and re.fullmatch(
            rf"data: the test split \(8 requests\) holds 3 e-mail addresses \(e\.g\. {re.escape(str(test))}:[123] text: j\*\*\*@acme-mail\.com; "
            rf"data check --json lists them, masked\); they will be sent to {re.escape(_host(provider))}", said[0]), said
    assert provider.chats_arrived == 0  # nothing was asked of the remote model


def test_tunelab_eval_of_a_remote_model_names_the_host_before_asking(cli, provider, tmp_path):
    from tunelab.cli.main import app

    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"prompt": f"write to {EMAIL} about order {i}" if i == 0 else f"question {i}",
                                        "completion": f"answer {i}"}) + "\n" for i in range(3)))
    result = cli.invoke(app, ["eval", "--data", str(test), "--task", "sft", "--endpoint", provider.url, "--endpoint-model", BASE_MODEL,
                              "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "the test file (3 requests) holds 1 e-mail address (e.g. " in said
    assert f"prompt: j***@acme-mail.com; data check --json lists them, masked); they will be sent to {_host(provider)}" in said
    assert json.loads(result.stdout)["n"] == 3 and EMAIL not in result.stderr


def test_refuse_uploads_no_validation_file_holding_personal_data(provider, tmp_path, tiny_model_dir):
    # data.validation is a file of its own: the check step scans data.train (and data.test), so the upload is where
    # its personal data is first seen. Refused there, before any file reaches the provider.
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps({"text": f"call me on +44 20 7946 0{i}58", "label": "billing"}) + "\n" for i in range(4)))
    config = cloud_config(tmp_path, provider, tiny_model_dir, pii="refuse", validation=str(validation))
    clean = tmp_path / "train.jsonl"
    clean.write_text("".join(json.dumps({"text": f"plain request {i}", "label": ["billing", "technical"][i % 2]}) + "\n" for i in range(16)))
    with pytest.raises(DataError, match=r"cloud_validation\.jsonl holds 4 phone numbers \(e\.g\. cloud_validation\.jsonl:\d+ prompt: "):
        run_pipeline(config)
    assert provider.count("POST", "/v1/files") == 0


def test_a_remote_baseline_with_an_out_of_scope_label_is_not_asked_the_validation_rows(provider, tmp_path, tiny_model_dir, monkeypatch):
    # With data.out_of_scope_label a remote baseline has no threshold to choose on the validation rows (its confidence is
    # always 1: it is offered the label in its prompt instead), so they never leave the machine: personal data only in
    # them is neither said nor refused (here only the validation file holds some). Stopped at the estimate.
    from tunelab.tasks import pipeline

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(pipeline, "estimate_step", stop)
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"plain request {i}", "label": "AB"[i % 2]}) + "\n" for i in range(24)))
    validation = tmp_path / "validation.jsonl"
    validation.write_text("".join(json.dumps({"text": f"refund {i} to {EMAIL}", "label": "AB"[i % 2]}) + "\n" for i in range(4)))
    outside = tmp_path / "outside.jsonl"
    outside.write_text("".join(json.dumps({"text": f"weather today {i}", "label": "other"}) + "\n" for i in range(8)))
    config = parse_config({
        "task": "classify", "name": "local", "model": str(tiny_model_dir),
        "data": {"train": str(train), "validation": str(validation), "out_of_scope": str(outside), "out_of_scope_label": "other",
                 "test_size": 0.25, "max_length": 64, "pii": "refuse"},
        "train": {"output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": [{"endpoint": {"base_url": provider.url, "name": BASE_MODEL}, "as": "gpt"}]},
    })
    seen = []
    with pytest.raises(_Stop):
        run_pipeline(config, on_event=lambda step, status, details: seen.append(str(details.get("message", ""))))
    assert not [m for m in seen if "will be sent to" in m or "personal data" in m], seen
    assert provider.chats_arrived == 0


def test_tunelab_eval_names_the_host_of_a_remote_baseline_and_sends_it_no_validation_rows(cli, provider, tmp_path, tiny_model_dir, monkeypatch):
    # A remote baseline of --baselines is asked the test file (the check read eval_config.baselines, which tunelab eval
    # never sets: no line was said), named with the host before the first request. With an out-of-scope label it is
    # offered the label and has no threshold to choose on --validation: those rows are never sent, so never named.
    from tunelab.cli.main import app

    monkeypatch.setattr("tunelab.config.OPENAI_BASE_URL", provider.url)  # openai:NAME, answered by the loopback fake
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.setattr("fake_provider.BASE_ANSWER", "A")  # a category: the baseline's threshold is chosen on its answers

    def write(name, rows):
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return str(path)

    test = write("test.jsonl", [{"text": f"plain request {i}" + (f" from {EMAIL}" if i == 0 else ""), "label": "AB"[i % 2]} for i in range(6)])
    validation = write("validation.jsonl", [{"text": f"refund {i} to {EMAIL}", "label": "AB"[i % 2]} for i in range(4)]
                       + [{"text": "the weather", "label": "other"}])
    train = write("train.jsonl", [{"text": f"training request {i}", "label": "AB"[i % 2]} for i in range(8)])
    result = cli.invoke(app, ["eval", "--data", test, "--task", "classify", "--model", str(tiny_model_dir), "--train", train,
                              "--validation", validation, "--out-of-scope-label", "other", "--baselines", f"openai:{BASE_MODEL}",
                              "--json"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.stderr.split())
    assert "the test file (6 requests) holds 1 e-mail address (e.g. " in said, said
    assert "the validation file" not in said, said
    assert provider.chats_arrived == 6  # the test rows only
    assert f"they will be sent to {_host(provider)}" in said and EMAIL not in result.stderr
