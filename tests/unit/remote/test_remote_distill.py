"""`tunelab distill`: `tunelab serve` as the teacher on the loopback, the tiny model as the student."""

from __future__ import annotations

import json

import pytest

from tunelab.config import parse_config
from tunelab.runs import RunFolder
from tunelab.tasks.distill import read_distill_file, run_distill


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def chat_requests(counter) -> int:
    """Chat requests that reached the server so far."""
    return counter.chat


def sft_config(tmp_path, teacher, student, **distill):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."} for i in range(10)])
    unlabeled = write_jsonl(tmp_path / "unlabeled.jsonl", [{"prompt": f"Tell me about number {i}."} for i in range(3)])
    return parse_config({
        "task": "sft", "name": "distilled", "model": str(student),
        "data": {"train": train, "test_size": 0.3, "validation_size": 0.15, "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "output_dir": str(tmp_path / "runs"), "threads": 1},
        "eval": {"max_new_tokens": 6, "baselines": ["base"], "bootstrap_samples": 200, "batch_size": 8},
        "distill": {"teacher": teacher, "unlabeled": unlabeled, "margin": 0.2, **distill},
    })


def test_distill_from_a_served_teacher_trains_the_student_and_compares_them(served, endpoint, tiny_model_dir, tmp_path):
    url, name, counter = served
    config = sft_config(tmp_path, {"base_url": url, "name": name}, tiny_model_dir, concurrency=3)
    events = []
    outcome = run_distill(config, calibrate=False, on_event=lambda step, status, details: events.append((step, status)))
    lines = read_distill_file(outcome.distill_file)
    # The training and validation prompts plus the 3 unlabeled ones; never the held-out test prompts.
    assert outcome.asked == len(lines) == 10 - 3 + 3
    test_prompts = {json.loads(row)["messages"][0]["content"] for row in (outcome.run_dir / "distill" / "test.jsonl").read_text().splitlines()}
    assert not test_prompts & {line.input[0]["content"] for line in lines.values()}
    assert all(line.teacher.startswith(name) and line.input_tokens > 0 and line.cost_usd is None for line in lines.values())
    student_train = (outcome.run_dir / "distill" / "train.jsonl").read_text().splitlines()
    assert len(student_train) == outcome.accepted
    report = outcome.report
    assert report["n"] == 3 and report["primary"] == "rougeL"
    assert set(report["against_references"]) == {"teacher", "student", "untuned_student"}
    assert {"rougeL", "bleu"} <= set(report["student_vs_teacher"])
    low, high = report["comparison"]["metrics"][0]["low"], report["comparison"]["metrics"][0]["high"]
    assert low <= high and ("within" in report["statement"])
    # 3 test prompts: under MIN_TEST_EXAMPLES the bootstrap interval is too narrow to claim non-inferiority either way
    # (the run's own split step said "too few test examples to decide"; the report said "the student is within ...").
    assert report["statement"].startswith("too few test examples to decide") and report["non_inferior"] is False
    assert report["cost_per_1000_requests_usd"] == {"teacher": None, "student": None}  # unknown, never 0
    assert report["latency_s"]["teacher"] > 0 and report["latency_s"]["student"] > 0
    assert (outcome.run_dir / "eval" / "teacher.json").is_file() and (outcome.run_dir / "distill_report.md").is_file()
    assert outcome.run is not None and outcome.run.registry_id
    assert ("teacher", "done") in events and ("train", "done") in events

    # Resuming the finished run asks the teacher nothing: every input has its line already.
    before = chat_requests(counter)
    again = run_distill(resume=outcome.run_dir, calibrate=False)
    assert chat_requests(counter) == before and again.asked == outcome.asked


def test_a_crashed_distillation_asks_only_what_has_no_line(served, tiny_model_dir, tmp_path):
    from tunelab.config import EndpointConfig
    from tunelab.data.split import make_split
    from tunelab.evaluation.answering import RemoteModel
    from tunelab.evaluation.remote import remote_client
    from tunelab.tasks.distill import _input_of, ask_teacher, distill_run_dir

    url, name, counter = served
    config = sft_config(tmp_path, {"base_url": url, "name": name}, tiny_model_dir)
    run_dir = distill_run_dir(config)
    run_dir.mkdir(parents=True)
    # A run that crashed after two answers, the second torn mid-line.
    (run_dir / "distill_config.json").write_text(json.dumps(config.model_dump(mode="json")))
    split = make_split(config)
    inputs = [_input_of(r, "sft") for r in split.train[:2]]
    ask_teacher(RemoteModel(remote_client(EndpointConfig(base_url=url, name=name))), inputs, config, [], RunFolder(run_dir).distill_file)
    text = (RunFolder(run_dir).distill_file).read_text()
    (RunFolder(run_dir).distill_file).write_text(text[: len(text) - 20])  # the second line torn
    assert len(read_distill_file(RunFolder(run_dir).distill_file)) == 1
    served_before = chat_requests(counter)
    outcome = run_distill(resume=run_dir, calibrate=False)
    lines = read_distill_file(outcome.distill_file)
    assert len(lines) == 10
    # The whole line is not asked again; the torn one comes from the request cache; the 8 others are new
    # requests, and the teacher's evaluation on the 3 test prompts makes 3 more.
    assert chat_requests(counter) - served_before == 8 + 3


def test_distill_refuses_a_teacher_equal_to_the_student(tiny_model_dir, tmp_path):
    from tunelab.errors import ConfigError

    config = sft_config(tmp_path, str(tiny_model_dir), tiny_model_dir)
    with pytest.raises(ConfigError, match="student's own model"):
        run_distill(config, calibrate=False)


def classify_config(tmp_path, teacher, student):
    texts = {"billing": ["my bill is wrong", "charged twice", "refund my invoice", "billing error again", "invoice too high"],
             "technical": ["app crashes", "cannot login", "screen freezes", "error on startup", "login fails again"]}
    rows = [{"text": text, "label": label} for label, items in texts.items() for text in items]
    unlabeled = write_jsonl(tmp_path / "unlabeled.jsonl", [{"text": "the invoice is wrong"}, {"text": "the app will not open"}])
    return parse_config({
        "task": "classify", "name": "distilled-classify", "model": str(student),
        "data": {"train": write_jsonl(tmp_path / "train.jsonl", rows), "test_size": 0.3, "validation_size": 0.15, "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "output_dir": str(tmp_path / "runs"), "threads": 1},
        "eval": {"baselines": ["base"], "bootstrap_samples": 200, "batch_size": 8},
        "distill": {"teacher": teacher, "unlabeled": unlabeled, "local_usd_per_hour": 1.0},
    })


def test_distill_classify_from_a_local_teacher_reports_agreement_and_cost(talkative_model_dir, tiny_model_dir, tmp_path):
    outcome = run_distill(classify_config(tmp_path, str(talkative_model_dir), tiny_model_dir), calibrate=False)
    lines = read_distill_file(outcome.distill_file)
    assert outcome.asked == 7 + 2 and all(line.label in ("billing", "technical") for line in lines.values())
    report = outcome.report
    agreement = report["student_vs_teacher"]
    assert 0.0 <= agreement["low"] <= agreement["agreement"] <= agreement["high"] <= 1.0 and agreement["n"] == report["n"]
    # A local model's cost is its machine's price x its latency.
    cost, latency = report["cost_per_1000_requests_usd"], report["latency_s"]
    assert cost["student"] == pytest.approx(1000 * latency["student"] * 1.0 / 3600)
    assert report["against_references"]["teacher"]["accuracy"] is not None


def test_bad_teacher_answers_are_listed_and_left_out(served, tiny_model_dir, tmp_path):
    from tunelab.errors import DataError

    url, name, _ = served
    # The tiny served model answers noise, which names no category: every answer is rejected, none is used.
    with pytest.raises(DataError, match="no usable answer"):
        run_distill(classify_config(tmp_path, {"base_url": url, "name": name}, tiny_model_dir), calibrate=False)
    lines = read_distill_file(RunFolder(tmp_path / "runs" / "distilled-classify").distill_file)
    assert len(lines) == 9 and {line.status for line in lines.values()} == {"rejected"}
    assert all(line.reason.startswith("names no category") and line.answer is not None for line in lines.values())


def test_tunelab_distill_prints_the_student_vs_teacher_table(served, tiny_model_dir, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    if not any(c.name == "distill" for c in app.registered_commands):
        _register_commands()
    url, name, _ = served
    config = sft_config(tmp_path, {"base_url": url, "name": name}, tiny_model_dir)
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    result = CliRunner().invoke(app, ["distill", str(path), "--no-calibrate"])
    assert result.exit_code == 0, result.output
    assert "vs teacher" in result.output and "cost / 1,000 requests" in result.output and "of the teacher on rougeL" in result.output
    assert (tmp_path / "runs" / "distilled" / "distill_report.md").is_file()
    # The tiny teacher never stops before eval.max_new_tokens: the user is told the student learns cut answers.
    assert "cut at eval.max_new_tokens (6 tokens)" in result.output
    # What the teacher's answers used is on the terminal, not only in the report file: tokens, and a cost that is
    # unknown (the served model has no price), never $0.
    lines = read_distill_file(tmp_path / "runs" / "distilled" / "distill.jsonl").values()
    tokens_in, tokens_out = sum(line.input_tokens for line in lines), sum(line.output_tokens for line in lines)
    assert f"{tokens_in:,} tokens in, {tokens_out:,} out, cost unknown" in " ".join(result.output.split())


def test_the_local_training_command_refuses_the_cloud_backend(tmp_path):
    from tunelab.errors import ConfigError
    from tunelab.tasks import run_training

    config = parse_config({"task": "sft", "model": {"name": "default", "endpoint": {"base_url": "http://127.0.0.1:9/v1", "name": "m"}},
                           "train": {"backend": "openai"}})
    with pytest.raises(ConfigError, match="tunelab run"):
        run_training(config, None, run_dir=tmp_path)


def test_unlabeled_inputs_match_their_column_whatever_its_case(tmp_path):
    # A spreadsheet's "Text" header failed every row as "no 'text' text", as training data's did.
    from tunelab.tasks.distill import read_unlabeled

    unlabeled = tmp_path / "tickets.csv"
    unlabeled.write_text("Id,Text\n1,the invoice is wrong\n2,the app will not open\n")
    config = parse_config({"task": "classify", "data": {"train": str(unlabeled)}})
    assert [item.text for item in read_unlabeled(str(unlabeled), config)] == ["the invoice is wrong", "the app will not open"]


def test_an_unlabeled_txt_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    # It was a UnicodeDecodeError traceback.
    from tunelab.errors import DataError
    from tunelab.tasks.distill import read_unlabeled

    unlabeled = tmp_path / "prompts.txt"
    unlabeled.write_bytes("What is a café?\nWhy?\n".encode("cp1252"))
    config = parse_config({"task": "sft", "data": {"train": str(unlabeled)}})
    with pytest.raises(DataError, match=rf"^{unlabeled}:1: undecodable bytes: not UTF-8 text \(byte 0xe9 at byte 14\)"):
        read_unlabeled(str(unlabeled), config)
