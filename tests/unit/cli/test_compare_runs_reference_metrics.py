"""``tunelab compare RUN RUN``'s "Baseline metrics" of a preference run: its base model is the reference the run's reward is
measured against, scored as itself; the table listed the reference's own preference_accuracy and a reward margin of 0
as its values, where the run's verdict (``compare_evaluations``) says "not compared", as every other renderer shows it."""

from __future__ import annotations

from tests.unit.evaluation.test_preference_comparison import _pair
from typer.testing import CliRunner

from tunelab.cli import main as cli_main
from tunelab.evaluation.compare import compare_with_baselines
from tunelab.registry import Registry

REFERENCE = {"likelihood_accuracy": 0.55, "preference_accuracy": 0.625, "reward_margin": 0.0}
TUNED = {"likelihood_accuracy": 0.6, "preference_accuracy": 0.9, "reward_margin": 0.4}


def test_compare_leaves_the_reference_metrics_of_a_preference_runs_base_not_compared(tmp_path, monkeypatch):
    from tunelab.cli.common import console

    monkeypatch.setattr(console, "width", 250)  # one line per table row
    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    registry = Registry(tmp_path / "registry.db")
    base, tuned = _pair()
    verdict = compare_with_baselines({"base": base}, tuned, samples=100).to_dict()  # as the pipeline registers it
    for name in ("dpo-a", "dpo-b"):
        registry.create_run(name=name, task="preference", model="m", status="finished", baseline_metrics=REFERENCE, tuned_metrics=TUNED,
                            comparison=verdict)
    result = CliRunner().invoke(cli_main.app, ["compare", "dpo-a", "dpo-b", "--registry", str(tmp_path / "registry.db")])
    assert result.exit_code == 0, result.output
    baseline = result.output.split("Baseline metrics", 1)[1]
    lines = {line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]] for line in baseline.splitlines() if line.count("│") > 2}
    assert lines["preference_accuracy"] == lines["reward_margin"] == ["not compared", "not compared"], lines
    assert lines["likelihood_accuracy"] == ["0.55", "0.55"], lines
