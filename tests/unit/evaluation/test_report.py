import base64
import json
import re

import numpy as np
import pytest

from tunelab.errors import DataError
from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.metrics import classify_metrics
from tunelab.evaluation.report import read_loss_log, report_run, write_report
from tunelab.evaluation.result import EvalResult


def _classify(name, accuracy, seed):
    rng = np.random.default_rng(seed)
    rows, refs, preds, confs = [], [], [], []
    for i in range(60):
        reference = ["billing", "refund", "login"][i % 3]
        ok = rng.random() < accuracy
        prediction = reference if ok else ["billing", "refund", "login"][(i + 1) % 3]
        confidence = float(rng.uniform(0.4, 1.0))
        rows.append({"id": f"r{i}", "source": f"test.csv:{i + 2}", "prompt": f"text <{i}> & more", "reference": reference, "prediction": prediction,
                     "scores": {"correct": float(ok), "confidence": confidence, "probability_of_reference": confidence if ok else 1 - confidence}})
        refs.append(reference), preds.append(prediction), confs.append(confidence)
    metrics = {"primary": "accuracy", **classify_metrics(refs, preds, confs, ["billing", "refund", "login"])}
    return EvalResult("classify", name, 60, metrics, rows, labels=["billing", "refund", "login"], test_fingerprint="f")


def _metrics_log(path):
    lines = [{"step": s, "loss": 3.0 / s} for s in range(1, 21)]
    lines += [{"step": 10, "val_loss": 0.5}, {"step": 20, "validation_loss": 0.4}, {"step": "x"}]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")


def test_loss_log_reads_both_validation_key_names(tmp_path):
    _metrics_log(tmp_path / "metrics.jsonl")
    train, validation, bad = read_loss_log(tmp_path / "metrics.jsonl")
    assert len(train) == 20 and validation == [(10.0, 0.5), (20.0, 0.4)] and bad == 2


def test_report_renders_with_plots_and_embedded_images(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _metrics_log(run / "metrics.jsonl")
    base, tuned = _classify("base", 0.4, 1), _classify("tuned", 0.9, 2)
    verdict = compare_with_baselines({"base": base}, tuned, samples=200)
    files = write_report(run, {"base": base}, tuned, verdict)
    assert {p.name for p in files.plots} == {"loss.png", "confusion.png"}
    for plot in files.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = files.markdown.read_text()
    assert "**Verdict: fine-tuning paid off.**" in markdown
    assert "![loss curves](plots/loss.png)" in markdown and "![confusion matrices](plots/confusion.png)" in markdown
    assert "## Examples that changed most" in markdown and "test.csv:" in markdown
    page = files.html.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 2
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"
    assert "text &lt;" in page  # example text is escaped, not injected
    assert "<img" in page and "plots/" not in page  # self-contained: no links to files


def test_report_run_reads_the_run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    with pytest.raises(DataError, match="base.json not found, nor any other baseline"):
        report_run(run)
    _classify("base", 0.4, 1).save(run / "eval" / "base.json")
    _classify("tuned", 0.4, 1).save(run / "eval" / "tuned.json")
    (run / "config.yaml").write_text("task: classify\neval:\n  seed: 7\n  bootstrap_samples: 150\n")
    comparison, files = report_run(run)
    assert comparison.verdict == "no significant difference" and comparison.seed == 7 and comparison.samples == 150
    assert json.loads((run / "eval" / "comparison.json").read_text())["verdict"] == comparison.verdict
    assert files.plots == [run / "plots" / "confusion.png"]  # no metrics.jsonl: no loss plot
    assert files.html.is_file()


def test_report_has_one_column_per_baseline_and_names_the_strongest(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    _classify("base", 0.3, 1).save(run / "eval" / "base.json")
    _classify("classical", 0.95, 3).save(run / "eval" / "classical.json")
    _classify("few-shot", 0.5, 4).save(run / "eval" / "few_shot.json")
    _classify("tuned", 0.6, 2).save(run / "eval" / "tuned.json")
    verdict, files = report_run(run, samples=200)
    assert list(verdict.comparisons) == ["base", "classical", "few_shot"]
    assert verdict.strongest == "classical" and verdict.verdict == "use classical instead"
    markdown = files.markdown.read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| metric |"))
    assert header == "| metric | tuned | base | classical | few_shot |"
    assert "classical (strongest)" in markdown and "use classical instead" in markdown
    assert "Examples that changed most (tuned against classical)" in markdown
    saved = json.loads((run / "eval" / "comparison.json").read_text())
    assert saved["strongest"] == "classical" and saved["paid_off"] is False and set(saved["comparisons"]) == {"base", "classical", "few_shot"}
