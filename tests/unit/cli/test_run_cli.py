"""``tunelab run`` from the command line: a bad key is one clear error; --json prints the outcome; runs lists it."""

import json
import subprocess
import sys

from tunelab.config import parse_config

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


def _config(tmp_path, tiny_model_dir):
    rows = [{"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i}", "label": "AB"[i % 2]} for i in range(48)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return parse_config(
        {
            "task": "classify",
            "model": str(tiny_model_dir),
            "name": "quick",
            "data": {"train": str(data), "test_size": 0.25, "validation_size": 0.1, "max_length": 64},
            "train": {"method": "full", "lr": 3e-3, "epochs": 8, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
            "eval": {"bootstrap_samples": 200},
        }
    )


def test_cli_run_bad_key_and_json(tmp_path, tiny_model_dir):
    config = _config(tmp_path, tiny_model_dir)
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    bad = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "run", str(path), "train.epoch=3"], capture_output=True, text=True)
    assert bad.returncode == 2 and "train.epoch" in bad.stderr and "epochs" in bad.stderr
    ok = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "run", str(path), "train.epochs=2", "--json", "--no-calibrate"],
        capture_output=True, text=True, timeout=600,
    )
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    # 48 rows, a quarter of them test: 12 paired test examples, under the verdict's minimum of 30. The split
    # step warned before any compute, and the verdict refuses to decide.
    assert result["split"]["test"] == 12
    assert any("a verdict needs at least 30" in warning for warning in result["warnings"])
    assert result["comparison"]["verdict"] == "too few test examples to decide"
    assert "n=12" in result["comparison"]["summary"]
    # Every default baseline is scored or skipped with its reason, never silently absent.
    assert set(result["baselines"]) | set(result["baselines_skipped"]) == {"base", "classical", "embedding", "few_shot"}
    assert all(reason for reason in result["baselines_skipped"].values())
    listed = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "runs", "--registry", str(tmp_path / "runs" / "registry.db"), "--json"], capture_output=True, text=True)
    assert listed.returncode == 0 and "quick" in listed.stdout


def test_cli_sweep_refuses_ray_options_with_the_local_engine(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.errors import ConfigError
    from tunelab.tasks import sweep

    def never(*args, **kwargs):
        raise AssertionError("the sweep ran")

    monkeypatch.setattr(sweep, "run_sweep", never)
    _register_commands()
    for option in (["--name", "night"], ["--asha"], ["--max-hours", "2"], ["--search", "optuna", "--trials", "4"]):
        result = CliRunner().invoke(app, ["sweep", str(tmp_path / "c.yaml"), "--grid", "train.lr=1e-4,2e-4", *option])
        assert isinstance(result.exception, ConfigError), (option, result.output, result.exception)
        assert option[0] in result.exception.message and "--engine ray" in result.exception.hint


def test_the_estimate_line_never_says_about_dash():
    # `--no-calibrate` (no time measured) and a provider's fine-tuning both printed "about - on this machine".
    from tunelab.cli.run import _step_summary

    untimed = _step_summary("estimate", {"estimate": {"total_seconds": None, "tokens": {"train_tokens": 5000}}})
    assert "about -" not in untimed and "not measured" in untimed and "5,000 training tokens" in untimed
    cloud = _step_summary("estimate", {"estimate": {"backend": "openai", "usd": 0.1234, "training_tokens": 90000, "total_seconds": None}})
    assert cloud == "the provider's fine-tuning: $0.12, 90,000 training tokens"
    unknown = _step_summary("estimate", {"estimate": {"backend": "openai", "usd": None, "training_tokens": 10, "total_seconds": None}})
    assert "price unknown" in unknown
    timed = _step_summary("estimate", {"estimate": {"total_seconds": 120.0, "here": "2 cores, idle, 2 threads"}})
    assert timed == "2 cores, idle, 2 threads: about 2.0 min"


def test_the_estimate_line_of_tunelab_run_says_what_it_priced_that_may_not_run():
    # The estimate prices a base or few-shot baseline eval.skip_hopeless may skip; `tunelab estimate` said so in a note,
    # `tunelab run`'s one line did not, so the quickstart read "about 5.8 min" and took 4 with no word why.
    from tunelab.cli.run import _step_summary

    note = "base may be skipped by eval.skip_hopeless when its validation score shows it cannot beat classical: skipping saves about 40.0 s (base) of the baseline time"
    line = _step_summary("estimate", {"estimate": {"total_seconds": 120.0, "here": "2 cores, idle, 2 threads", "notes": [note]}})
    assert line == f"2 cores, idle, 2 threads: about 2.0 min; {note}"


def test_tunelab_run_prints_the_calibrations_ece_before_and_after(tmp_path, capsys, monkeypatch):
    # A classify run calibrated on validation kept the ECE before and after in calibration.json; `tunelab run` printed the
    # verdict and nothing of the calibration.
    import json
    from types import SimpleNamespace

    from tunelab.cli.common import console
    from tunelab.cli.run import render_outcome

    monkeypatch.setattr(console, "width", 250)
    (tmp_path / "calibration.json").write_text(json.dumps({"queries": 40, "temperature": 1.8312, "applied": True,
                                                           "ece_before": 0.1234, "ece_after": 0.0456}))
    outcome = SimpleNamespace(comparison=None, tuned_metrics={"accuracy": 0.9}, baseline_skipped={}, estimate=None, train=None,
                              generation=None, run_dir=tmp_path, report={})
    render_outcome(outcome)
    assert "temperature 1.831 fitted on 40 validation queries: ECE 0.1234 before, 0.0456 after" in capsys.readouterr().out
