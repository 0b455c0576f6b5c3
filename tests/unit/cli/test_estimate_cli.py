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
