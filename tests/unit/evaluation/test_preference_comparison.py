"""A preference run's reference (its baseline ``base``, scored as itself) has no value of the metrics measured against
it: its implicit reward, reward margin and log-ratios to itself are zero by definition, and its ``preference_accuracy``
is another rule's (its own per-token likelihood). A DPO report showed ``base 0.625 (tuned +0.375 [+0.25, +0.5])`` on
preference_accuracy and ``0 (tuned +4.8e-05 [+4.7e-05, +5.0e-05])`` on reward_margin, green in the CLI and the web
interface, for a policy one step at lr 1e-7 away from its reference whose own ranking of the pairs had not changed.

The comparison says it once (``compare_evaluations``): such a metric is not compared (no before, no difference, no
interval, outcome "not compared"), and the report, the CLI and the web interface show the tuned model's value alone.
"""

from __future__ import annotations

import math

import numpy as np
from rich.console import Console

from tunelab.evaluation.compare import (
    NOT_COMPARED,
    SAME,
    Comparison,
    Verdict,
    compare_evaluations,
    compare_with_baselines,
)
from tunelab.evaluation.result import EvalResult

MEASURED_AGAINST_THE_REFERENCE = ("preference_accuracy", "reward_margin", "log_ratio_chosen", "log_ratio_rejected")
N = 40


def _row(i: int, chosen: float, rejected: float, *, correct: float, margin: float, ratio: float) -> dict:
    scores = {"correct": correct, "margin": margin, "likelihood_correct": float(chosen / 4 > rejected / 5),
              "chosen_log_prob": chosen, "rejected_log_prob": rejected, "chosen_tokens": 4, "rejected_tokens": 5,
              "log_ratio_chosen": ratio, "log_ratio_rejected": -ratio}  # fmt: skip
    return {"id": str(i), "source": f"pairs.jsonl:{i + 1}", "prompt": f"p{i}", "reference": "c", "prediction": "c", "scores": scores}


def _pair() -> tuple[EvalResult, EvalResult]:
    """The reference as evaluation scores it (``baseline=True``: its likelihood ranks the pairs, its reward is zero) and a
    policy that barely moved: the same likelihoods, every reward a hair towards the chosen answer."""
    rng = np.random.default_rng(0)
    chosen, rejected = rng.uniform(-9, -3, N), rng.uniform(-9, -3, N)
    base = [_row(i, c, r, correct=float(c / 4 > r / 5), margin=0.0, ratio=0.0) for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))]
    tuned = [_row(i, c, r, correct=1.0, margin=5e-5, ratio=2e-6) for i, (c, r) in enumerate(zip(chosen, rejected, strict=True))]
    return (EvalResult("preference", "sft-parent", N, {}, base, test_fingerprint="f", baseline=True, baseline_name="base"),
            EvalResult("preference", "dpo", N, {}, tuned, test_fingerprint="f"))


def test_the_metrics_measured_against_the_reference_are_not_compared_with_it():
    base, tuned = _pair()
    comparison = compare_evaluations(base, tuned, samples=200)
    for name in MEASURED_AGAINST_THE_REFERENCE:
        metric = comparison.metric(name)
        assert metric.outcome == NOT_COMPARED, name
        assert math.isnan(metric.before) and math.isnan(metric.difference) and math.isnan(metric.low) and math.isnan(metric.high), name
        assert metric.after == tuned_value(tuned, name) and "reference" in metric.not_compared, name
    # The like-for-like rule is compared as ever: the policy's own ranking did not change.
    likelihood = comparison.metric("likelihood_accuracy")
    assert likelihood.before == likelihood.after and likelihood.outcome == SAME
    # Saved and read back (eval/comparison.json, the registry), it stays so.
    again = Comparison.from_dict(comparison.to_dict())
    assert again.metric("reward_margin").outcome == NOT_COMPARED and again.metric("likelihood_accuracy").not_compared is None
    assert again.to_dict() == comparison.to_dict()


def tuned_value(result: EvalResult, name: str) -> float:
    from tunelab.evaluation.metrics import metric_values

    return metric_values("preference", result.rows)[name]


def test_two_policies_are_compared_on_every_metric():
    # Two DPO runs' evaluations (`tunelab compare`, a retrain's challenger against its champion) both have rewards.
    base, tuned = _pair()
    other = EvalResult("preference", "dpo-2", N, {}, [dict(row, scores={**row["scores"], "margin": 1e-4}) for row in tuned.rows], test_fingerprint="f")
    comparison = compare_evaluations(tuned, other, samples=200)
    assert all(metric.not_compared is None for metric in comparison.metrics)
    assert comparison.metric("reward_margin").difference > 0


def _verdict() -> Verdict:
    base, tuned = _pair()
    return compare_with_baselines({"base": base}, tuned, samples=200)


def test_the_report_shows_the_tuned_value_alone(tmp_path):
    from tunelab.evaluation.report import write_report

    base, tuned = _pair()
    verdict = _verdict()
    (tmp_path / "run").mkdir()
    files = write_report(tmp_path / "run", {"base": base}, tuned, verdict)
    markdown = files.markdown.read_text()
    for name in MEASURED_AGAINST_THE_REFERENCE:
        line = next(line for line in markdown.splitlines() if line.startswith(f"| {name} "))
        assert "tuned" not in line.split("|")[3] and "[" not in line, line  # no difference, no interval
        assert "not compared" in line, line
    likelihood = next(line for line in markdown.splitlines() if line.startswith("| **likelihood_accuracy**"))
    assert "(tuned 0 [0, 0])" in likelihood
    html = files.html.read_text()
    assert "tuned 0.375" not in html and "[0.25" not in html


def test_the_cli_and_the_web_interface_show_the_tuned_value_alone():
    from tunelab.cli.common import verdict_rich_table
    from tunelab.ui.views import verdict_table

    saved = _verdict().to_dict()
    console = Console(record=True, color_system="standard", force_terminal=True, width=250)
    console.print(verdict_rich_table(saved, tuned="dpo"))
    assert "\x1b[32m" not in console.export_text(styles=True, clear=False)  # green: a baseline beaten
    plain = console.export_text()
    for name in MEASURED_AGAINST_THE_REFERENCE:
        line = next(line for line in plain.splitlines() if f" {name} " in line)
        assert "tuned" not in line and "not compared" in line, line
    _, lines = verdict_table(saved)
    cells = {line.name: line.cells[0] for line in lines}
    for name in MEASURED_AGAINST_THE_REFERENCE:
        assert cells[name]["kind"] == "not-compared" and cells[name]["value"] is None and cells[name]["not_compared"], name
    assert cells["likelihood_accuracy"]["not_compared"] is None


def test_tunelab_compare_prints_the_reference_as_not_compared(tmp_path):
    from tunelab.cli.evaluate import render_comparison

    base, tuned = _pair()
    console = Console(record=True, width=250)
    console.print(render_comparison(compare_evaluations(base, tuned, samples=200)))
    plain = console.export_text()
    for name in MEASURED_AGAINST_THE_REFERENCE:
        line = next(line for line in plain.splitlines() if f" {name} " in line)
        assert "nan" not in line and "[" not in line and "not compared" in line, line
