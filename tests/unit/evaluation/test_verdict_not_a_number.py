"""A primary metric that is not a number (a NaN NLL from a model overflowing) gives no verdict, said plainly, from the
library's verdict through the report files to the UI's colour; a baseline without a value is never the strongest opponent."""

import numpy as np

from tunelab.evaluation.compare import CANNOT_JUDGE, PAID_OFF, compare_with_baselines
from tunelab.evaluation.report import write_report
from tunelab.evaluation.result import EvalResult
from tunelab.tasks.retrain import decide
from tunelab.ui.views import verdict_kind


def _text(name, nll_per_token, n=40, broken=0):
    rows = [{"id": f"d{i}", "source": f"test.txt:{i}", "prompt": "", "reference": "", "prediction": "",
             "scores": {"nll": float("nan") if i < broken else nll_per_token * (10 + i) * (1 + 0.1 * np.sin(i)), "tokens": 10 + i, "bytes": 40 + 4 * i}}
            for i in range(n)]
    return EvalResult("text", name, n, {}, rows, test_fingerprint="f")


def test_a_tuned_model_whose_primary_metric_is_not_a_number_cannot_be_judged_in_the_verdict_and_the_report(tmp_path):
    base, tuned = _text("base", 3.0), _text("tuned", 2.0, broken=2)
    verdict = compare_with_baselines({"base": base}, tuned, samples=100)
    assert verdict.verdict == CANNOT_JUDGE and not verdict.paid_off
    assert verdict.summary.startswith(
        "fine-tuning cannot be judged: the perplexity of tuned is not a number on this test set (2 of 40 examples' scores are NaN)"), verdict.summary
    assert "nan" not in verdict.summary.lower().replace("are nan", "")
    files = write_report(tmp_path, {"base": base}, tuned, verdict)
    markdown, page = files.markdown.read_text(), files.html.read_text()
    assert f"**Verdict: {CANNOT_JUDGE}.** fine-tuning cannot be judged: the perplexity of tuned" in markdown
    assert "no significant difference" not in markdown and "no significant difference" not in page
    assert f"Verdict: {CANNOT_JUDGE}." in page
    # Grey in the UI and `tunelab runs` (no verdict), like too few test examples: neither a tie nor a loss.
    assert verdict_kind(verdict.verdict) == "too-few"


def test_a_baseline_whose_primary_metric_is_not_a_number_is_never_the_strongest():
    # A NaN perplexity must not win max() by comparison order, nor count as beaten or as a tie.
    broken, base, tuned = _text("broken", 1.0, broken=1), _text("base", 3.0), _text("tuned", 2.0)
    for order in (("broken", "base"), ("base", "broken")):
        results = {"broken": broken, "base": base}
        verdict = compare_with_baselines({name: results[name] for name in order}, tuned, samples=100)
        assert verdict.strongest == "base", order
        assert verdict.verdict == PAID_OFF, verdict.summary
        assert "broken" in verdict.summary and "not a number" in verdict.summary, verdict.summary


def test_no_baseline_with_a_value_cannot_be_judged():
    verdict = compare_with_baselines({"base": _text("base", 3.0, broken=40)}, _text("tuned", 2.0), samples=100)
    assert verdict.verdict == CANNOT_JUDGE
    assert "the perplexity of base is not a number on this test set (40 of 40 examples' scores are NaN)" in verdict.summary


def test_retrain_keeps_the_champion_and_says_why_when_the_challenger_cannot_be_judged():
    verdict = compare_with_baselines({"champion": _text("champion", 3.0)}, _text("challenger", 2.0, broken=1), samples=100)
    comparison = verdict.comparisons["champion"]
    decision, reasons = decide(comparison, comparison, 0.02)
    assert decision != "promoted"
    assert any("cannot be judged" in reason and "not a number" in reason for reason in reasons), reasons
    assert not any("nan" in reason for reason in reasons), reasons


def test_the_run_page_shows_the_verdict_grey_with_its_reason_not_a_tie(tmp_path):
    from fastapi.testclient import TestClient

    from tunelab.registry import Registry
    from tunelab.ui import UISettings, create_app

    verdict = compare_with_baselines({"base": _text("base", 3.0)}, _text("tuned", 2.0, broken=2), samples=100)
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="overflowed", task="text", model="/models/tiny", status="finished",
                                 run_dir=str(tmp_path / "runs" / "overflowed"), comparison=verdict.to_dict())
    with TestClient(create_app(UISettings(registry=registry.path)), base_url="http://127.0.0.1:7860") as client:
        page = client.get(f"/runs/{record.id}").text
    assert "verdict-too-few" in page and CANNOT_JUDGE in page and "2 of 40 examples" in page
    assert "too narrow to trust" not in page  # that note is about too few test examples, not about a NaN

