"""``tunelab train`` / ``export`` end to end on the tiny model (the split is built from records here)."""

import json
import sys

import pytest
import yaml
from train_helpers import records_split, sft_records
from typer.testing import CliRunner

from tunelab.errors import ConfigError


@pytest.fixture
def cli(monkeypatch):
    import tunelab.data.split as data_split
    from tunelab.cli.main import _register_commands, app

    # The CLI asks the data layer for the split at call time; these tests hand it records directly.
    monkeypatch.setattr(data_split, "make_split", lambda config: records_split(sft_records(8), sft_records(10)[8:]))
    if not any(c.name == "train" for c in app.registered_commands):
        _register_commands()
    return app


def test_train_resume_and_export_through_the_cli(cli, tiny_model_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "sft", "model": str(tiny_model_dir), "name": "cli-run",
                                      "train": {"output_dir": str(tmp_path / "runs"), "precision": "fp32"}}))
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(config), "train.max_steps=2", "train.batch_size=4", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["steps"] == 2 and summary["run_dir"].endswith("cli-run")
    run_dir = tmp_path / "runs" / "cli-run"
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["lr"] == 2e-4  # defaults resolved
    # Resuming a finished run continues from its last checkpoint: nothing left to do, same result.
    again = runner.invoke(cli, ["train", "--resume", str(run_dir), "--json"])
    assert again.exit_code == 0, again.output
    exported = runner.invoke(cli, ["export", "--merge", str(run_dir), str(tmp_path / "merged")])
    assert exported.exit_code == 0, exported.output
    assert (tmp_path / "merged" / "config.json").is_file()


def test_a_trained_run_is_registered_and_listed(cli, tiny_model_dir, tmp_path):
    """`tunelab train` keeps its run in the registry (as `tunelab run` does): `tunelab runs` and the web interface list it."""
    from tunelab.registry.store import Registry
    from tunelab.runs import Run

    config = tmp_path / "run.yaml"
    registry_path = tmp_path / "registry.db"
    config.write_text(yaml.safe_dump({"task": "sft", "model": str(tiny_model_dir), "name": "listed", "registry": str(registry_path),
                                      "train": {"output_dir": str(tmp_path / "runs"), "precision": "fp32"}}))
    runner = CliRunner()
    result = runner.invoke(cli, ["train", str(config), "train.max_steps=1", "train.batch_size=4", "--json"])
    assert result.exit_code == 0, result.output
    run = Run.open(tmp_path / "runs" / "listed")
    record = Registry(registry_path).get_run(run.registry_id)
    assert record.name == "listed" and record.status == "finished" and record.task == "sft"
    assert record.run_dir == str(run.root) and record.artifacts["train"]["steps"] == 1
    # Its validation passes' time is recorded as `tunelab run` records it (`tunelab show`'s time table).
    assert record.timings["validation"]["actual_s"] > 0
    # The same command again is refused, and the finished run's row stays finished (it was marked failed with the
    # refusal as its error, the first run's result lost from `tunelab runs`).
    again = runner.invoke(cli, ["train", str(config), "train.max_steps=1", "train.batch_size=4", "--json"])
    assert isinstance(again.exception, ConfigError) and "already exists" in str(again.exception), repr(again.exception)
    record = Registry(registry_path).get_run(run.registry_id)
    assert record.status == "finished" and record.error is None, (record.status, record.error)
    listed = runner.invoke(cli, ["runs", "--registry", str(registry_path), "--json"])
    assert listed.exit_code == 0, listed.output
    assert "listed" in listed.stdout


def test_unknown_override_names_the_valid_keys(cli, tiny_model_dir, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "sft", "model": str(tiny_model_dir)}))
    result = CliRunner().invoke(cli, ["train", str(config), "train.lrr=1"])
    assert isinstance(result.exception, ConfigError)
    assert "train.lrr" in str(result.exception) and "lr" in str(result.exception)


def test_cli_exits_2_on_a_bad_key(tiny_model_dir, tmp_path):
    import subprocess

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "sft", "model": str(tiny_model_dir)}))
    done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "train", str(config), "train.epoch=1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Did you mean 'epochs'" in done.stderr


def test_a_config_file_beside_resume_is_refused_not_ignored(cli, tiny_model_dir, tmp_path):
    from tunelab.config import dump_config, load_config

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"task": "sft", "model": str(tiny_model_dir),
                                      "train": {"max_steps": 1, "precision": "fp32", "output_dir": str(tmp_path / "runs")}}))
    run_dir = tmp_path / "runs" / "old"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(load_config(config, ["train.lr=1e-3"])))
    # The file (a changed learning rate, say) was silently dropped for the run's own config.yaml.
    result = CliRunner().invoke(cli, ["train", str(config), "--resume", str(run_dir)])
    assert isinstance(result.exception, ConfigError)
    assert str(config) in str(result.exception) and "--resume" in str(result.exception)
    # --run-dir beside --resume: the run went on in the --resume folder, the other one unused.
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir), "--run-dir", str(tmp_path / "elsewhere")])
    assert isinstance(result.exception, ConfigError) and "--run-dir" in str(result.exception)
    assert not (run_dir / "checkpoints").exists()
