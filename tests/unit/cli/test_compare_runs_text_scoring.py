"""`tunelab compare RUN RUN` of two text runs whose evaluations were scored by different rules for which tokens a text's
NLL covers (``metrics.TEXT_SCORING``): their perplexities stood side by side with nothing said; now one line says they
are not comparable and which run to evaluate again (the check ``compare_evaluations`` makes, not a second rule)."""

import json
import math

from typer.testing import CliRunner

from tunelab.evaluation.metrics import TEXT_SCORING
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.runs import RunFolder


def _cli(*args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _text_run(store, root, name, perplexity, settings):
    """A finished text run as `tunelab run` leaves it: its tuned evaluation with the settings it was scored under."""
    folder = root / name
    rows = [{"id": f"d{i}", "source": "", "prompt": "", "reference": "", "prediction": "",
             "scores": {"nll": 50 * math.log(perplexity), "tokens": 50.0, "bytes": 200.0}} for i in range(20)]
    EvalResult("text", name, len(rows), {"perplexity": perplexity}, rows, settings=settings, test_fingerprint="docs-v1").save(
        RunFolder(folder).tuned_eval)
    store.create_run(name=name, task="text", status="finished", run_dir=str(folder), tuned_metrics={"perplexity": perplexity})


def test_runs_scored_by_different_text_rules_are_flagged_with_the_run_to_evaluate_again(tmp_path):
    store = Registry(tmp_path / "registry.db")
    # lm-old's evaluation was written before the rule was recorded (no text_scoring: rule 1), as a real old run's is.
    _text_run(store, tmp_path, "lm-old", 12.0, {"stride": 256})
    _text_run(store, tmp_path, "lm-new", 10.0, {"stride": 256, "text_scoring": TEXT_SCORING})
    shown = _cli("compare", "lm-old", "lm-new", "--registry", store.path)
    assert shown.exit_code == 0, shown.output
    lines = [line for line in shown.output.splitlines() if "not comparable" in line]
    assert len(lines) == 1 and "evaluate run lm-old again" in lines[0], shown.output
    as_json = _cli("compare", "lm-new", "lm-old", "--registry", store.path, "--json")
    warnings = json.loads(as_json.output)["warnings"]
    assert any("not comparable" in w and "evaluate run lm-old again" in w for w in warnings), warnings


def test_runs_scored_by_the_same_rule_get_no_such_warning(tmp_path):
    store = Registry(tmp_path / "registry.db")
    _text_run(store, tmp_path, "lm-a", 12.0, {"text_scoring": TEXT_SCORING})
    _text_run(store, tmp_path, "lm-b", 10.0, {"text_scoring": TEXT_SCORING})
    shown = _cli("compare", "lm-a", "lm-b", "--registry", store.path, "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["warnings"] == []
