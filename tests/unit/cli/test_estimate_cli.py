"""``tunelab estimate``: JSON, the table, and a user mistake."""

import json


def _sft_config(tmp_path, tiny_model_dir):
    """A small sft config over 10 examples, with the CLI's commands registered."""
    from tunelab.cli import main as cli_main

    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps({"prompt": f"question {i}?", "completion": f"answer {i}."}) for i in range(10)) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"task: sft\nmodel: {tiny_model_dir}\ndata:\n  train: train.jsonl\n  max_length: 32\n")
    return config


def test_cli_estimate_json_and_errors(tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main
    from tunelab.errors import TunelabError

    config = _sft_config(tmp_path, tiny_model_dir)
    runner = CliRunner()
    result = runner.invoke(cli_main.app, ["estimate", str(config), "train.epochs=2", "--no-calibrate", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["tokens"]["epochs"] == 2.0 and data["calibration"] is None and data["seconds"] is None
    assert {gpu["name"] for gpu in data["gpus"]} >= {"H100-SXM", "A10G"}
    table = runner.invoke(cli_main.app, ["estimate", str(config), "--no-calibrate"])
    assert table.exit_code == 0 and "On GPUs" in table.output
    bad = runner.invoke(cli_main.app, ["estimate", str(config), "budget.gpu=V100", "--no-calibrate"])
    assert isinstance(bad.exception, TunelabError) and "unknown GPU" in str(bad.exception)


def test_a_tiny_runs_price_reads_as_money_not_scientific_notation(tmp_path, tiny_model_dir):
    """The GPU and hosted prices of a small run printed as 1.2e-07 in `tunelab estimate`'s table."""
    import re

    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main

    config = _sft_config(tmp_path, tiny_model_dir)
    table = CliRunner().invoke(cli_main.app, ["estimate", str(config), "--no-calibrate"], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert not re.search(r"\d[eE]-\d", table.output), table.output
    assert re.search(r"H100-SXM .*\$0\.0+\d", table.output), table.output


def test_the_optimizer_steps_say_how_they_were_counted(tmp_path, tiny_model_dir):
    """The table printed "epochs × rows → optimizer steps" as "5 × 45 → 120" for 180 BANKING77 rows: 45 packed rows, 23
    steps an epoch (batch 8), 115 steps raised to 120 by the classify default train.min_steps; nothing said so."""
    import re

    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main

    config = _sft_config(tmp_path, tiny_model_dir)  # 8 training examples, batch 8: one step an epoch, 2 epochs (sft)
    runner = CliRunner()

    def words(*overrides):
        result = runner.invoke(cli_main.app, ["estimate", str(config), *overrides, "--no-calibrate"])
        assert result.exit_code == 0, result.output
        return " ".join(re.findall(r"[^│┃\s]+", result.output))  # the table's cells, wrapped lines joined

    assert "optimizer steps 2 epochs × 1 per epoch = 2 " in words() and "min_steps" not in words()
    assert "optimizer steps 2 epochs × 1 per epoch = 2, raised to 30 by train.min_steps " in words("train.min_steps=30")
    assert "optimizer steps 5, set by train.max_steps (2 epochs × 1 per epoch: 2) " in words("train.max_steps=5")
    data = json.loads(runner.invoke(cli_main.app, ["estimate", str(config), "train.min_steps=30", "--no-calibrate", "--json"]).output)
    assert (data["tokens"]["steps_per_epoch"], data["tokens"]["optimizer_steps"], data["tokens"]["steps_set_by"]) == (1, 30, "train.min_steps")


def test_the_table_notes_a_baseline_skip_hopeless_may_skip(tmp_path, tiny_model_dir):
    """The quickstart's estimate priced base and few-shot in full and said nothing; eval.skip_hopeless then skipped
    both after scoring the validation rows. The estimate keeps the price and says what skipping would save."""
    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main

    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    rows = [{"text": f"my card number {i} has not arrived yet", "label": f"label{i % 4}"} for i in range(60)]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"task: classify\nmodel: {tiny_model_dir}\ndata:\n  train: train.jsonl\n  test_size: 0.2\n  max_length: 32\n"
                      "train:\n  threads: 1\n  precision: fp32\neval:\n  baselines: [classical, base]\n")  # fmt: skip
    table = CliRunner().invoke(cli_main.app, ["estimate", str(config), "--steps", "1"], terminal_width=200)
    assert table.exit_code == 0, table.output
    printed = " ".join(table.output.split())  # the console wraps long lines
    assert "note: base may be skipped by eval.skip_hopeless when its validation score shows it cannot beat classical" in printed, printed
    quiet = CliRunner().invoke(cli_main.app, ["estimate", str(config), "--steps", "1", "eval.skip_hopeless=false"], terminal_width=200)
    assert quiet.exit_code == 0 and "skip_hopeless" not in quiet.output, quiet.output


def test_a_provider_runs_estimate_is_its_price_and_budget_as_tunelab_run_checks_them(tmp_path, tiny_model_dir):
    """A `train.backend: openai` config: `tunelab estimate` timed LoRA steps here, priced GPUs, said "budget.max_usd not
    checked" and then "within budget", while `tunelab run` of the same config stopped before uploading, over
    budget.max_usd at the provider's per-token price. The estimate is now the provider's price `tunelab run` computes."""
    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main
    from tunelab.config import load_config
    from tunelab.data.split import make_split
    from tunelab.remote.finetune import chat_lines, estimate_cloud_cost
    from tunelab.runs import load_model
    from tunelab.tasks.pipeline import cloud_conversations

    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": f"answer {i}."}) + "\n" for i in range(40)))
    config = tmp_path / "cloud.yaml"
    config.write_text(
        f"task: sft\nmodel:\n  name: {tiny_model_dir}\n  endpoint: {{base_url: 'http://127.0.0.1:9/v1', name: gpt-4o-mini-2024-07-18, "
        "api_key_env: null}\ndata:\n  train: train.jsonl\n  max_length: 32\ntrain:\n  backend: openai\n  epochs: 3\n"
        "budget:\n  max_usd: 0.000001\n"
    )
    resolved = load_config(config, [])
    tokenizer = load_model(str(tiny_model_dir)).tokenizer
    rows = chat_lines(cloud_conversations(make_split(resolved).train, resolved, []))
    expected = estimate_cloud_cost(rows, 3, "gpt-4o-mini-2024-07-18", count_tokens=lambda text: len(tokenizer.encode(text, add_special_tokens=False)))
    assert expected.usd > 0.000001  # tunelab run stops this run before uploading

    runner = CliRunner()
    data = json.loads(runner.invoke(cli_main.app, ["estimate", str(config), "--json"]).output)
    assert data["backend"] == "openai" and data["usd"] == expected.usd and data["training_tokens"] == expected.training_tokens
    assert data["budget"]["over"] is True and "budget.max_usd" in data["budget"]["reasons"][0]
    assert data.get("calibration") is None  # nothing trains here: no timed steps
    table = runner.invoke(cli_main.app, ["estimate", str(config)], terminal_width=200)
    assert table.exit_code == 0, table.output
    assert "over budget" in table.output and "within budget" not in table.output and "On GPUs" not in table.output, table.output
    assert "gpt-4o-mini-2024-07-18" in table.output, table.output
    within = runner.invoke(cli_main.app, ["estimate", str(config), "budget.max_usd=5"], terminal_width=200)
    assert "within budget" in within.output and "over budget" not in within.output, within.output
