"""`tunelab eval --endpoint URL --endpoint-model NAME`: a served model scored from the command line, with baselines."""

from __future__ import annotations

import json

from tunelab.cli.main import app


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_eval_endpoint_scores_the_served_model_with_a_retrieval_baseline(cli, served, tmp_path):
    url, name, _ = served
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."} for i in range(4)])
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": f"What is {i} times two?", "completion": f"It is {2 * i}."} for i in range(6)])
    arguments = ["eval", "--data", str(test), "--task", "sft", "--endpoint", url, "--endpoint-model", name, "--max-new-tokens", "6",
                 "--train", str(train), "--baselines", "retrieval", "--samples", "200", "--json", "--out", str(tmp_path / "eval.json")]
    result = cli.invoke(app, arguments)
    assert result.exit_code == 0, result.output
    output = json.loads(result.stdout)  # stdout: the price line goes to stderr
    assert output["model"] == f"{name} @ {url}" and output["n"] == 4
    assert output["usage"]["requests"] == 4 and output["usage"]["cost_usd"] is None
    assert set(output["baselines"]) == {"retrieval"} and output["verdict"] is not None
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "eval.retrieval.json").is_file()
    again = json.loads(cli.invoke(app, arguments).stdout)
    assert again["usage"]["cached"] == 4  # the rerun paid nothing


def test_eval_endpoint_refuses_the_base_baseline_and_a_half_given_endpoint(cli, served, tmp_path):
    url, name, _ = served
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "hi", "completion": "hello"}])
    refused = cli.invoke(app, ["eval", "--data", str(test), "--task", "sft", "--endpoint", url, "--endpoint-model", name, "--baselines", "base"])
    assert refused.exit_code != 0 and "remote model has none" in str(refused.exception or refused.output)
    half = cli.invoke(app, ["eval", "--data", str(test), "--task", "sft", "--endpoint", url])
    assert half.exit_code != 0 and "--endpoint-model" in str(half.exception or half.output)


def test_eval_endpoint_that_is_down_is_one_clear_error(cli, tmp_path):
    test = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "hi", "completion": "hello"}])
    result = cli.invoke(app, ["eval", "--data", str(test), "--task", "sft", "--endpoint", "http://127.0.0.1:9/v1", "--endpoint-model", "m"])
    assert result.exit_code != 0 and "cannot reach http://127.0.0.1:9/v1" in str(result.exception)
