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
    assert {p.name for p in files.plots} == {"loss.png"}
    for plot in files.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = files.markdown.read_text()
    assert "**Verdict: fine-tuning paid off.**" in markdown
    assert "![loss curves](plots/loss.png)" in markdown and "## Confusion matrices" in markdown
    assert "## Examples that changed most" in markdown and "test.csv:" in markdown
    page = files.html.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 1
    assert base64.b64decode(images[0])[:4] == b"\x89PNG"
    # The confusion matrices are HTML tables (tuned first), sortable by the embedded script: no image, no link.
    assert page.count("<section class='confusion-block' data-confusion") == 2 and "tunelabConfusions" in page
    assert page.index("data-name='tuned'") < page.index("data-name='base'")
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
    assert files.plots == []  # no metrics.jsonl: no loss plot; confusion matrices are tables in report.html
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


def test_confusion_view_counts_per_class_and_lists_the_top_confusions():
    from tunelab.evaluation.report import confusion_html, confusion_view

    labels = ["card", "refund", "login"]
    matrix = [[8, 2, 0], [5, 3, 0], [0, 0, 0]]
    view = confusion_view(labels, matrix)
    card, refund, login = view["classes"]
    assert (card["support"], card["recall"], card["precision"]) == (10, 0.8, 8 / 13)
    assert refund["recall"] == 3 / 8 and login["recall"] is None and login["errors"] == 0
    assert view["confusions"] == [{"true": "refund", "predicted": "card", "count": 5, "share": 5 / 8},
                                  {"true": "card", "predicted": "refund", "count": 2, "share": 0.2}]
    page = confusion_html("tuned", view)
    assert "title='true refund → predicted card: 5'" in page and "refund → card: 5 (62% of refund)" in page
    assert page.count("<td class='cell") == 9 and "data-errors='0'" in page


def test_77_labels_stay_readable_in_the_html_report(tmp_path):
    labels = [f"intent_{i:02d}" for i in range(77)]
    rng = np.random.default_rng(0)
    rows, refs, preds = [], [], []
    for i in range(77 * 4):
        reference = labels[i % 77]
        prediction = reference if rng.random() < 0.7 else labels[(i + 1) % 77]
        rows.append({"id": f"r{i}", "source": f"t:{i}", "prompt": "x", "reference": reference, "prediction": prediction,
                     "scores": {"correct": float(reference == prediction), "confidence": 0.9, "probability_of_reference": 0.5}})
        refs.append(reference), preds.append(prediction)
    metrics = {"primary": "accuracy", **classify_metrics(refs, preds, [0.9] * len(refs), labels)}
    tuned = EvalResult("classify", "tuned", len(rows), metrics, rows, labels=labels, test_fingerprint="f")
    base = EvalResult("classify", "base", len(rows), metrics, rows, labels=labels, test_fingerprint="f")
    files = write_report(tmp_path, {"base": base}, tuned, compare_with_baselines({"base": base}, tuned, samples=50))
    page = files.html.read_text()
    # Every class is a row with its full name, every column a number whose header names the label.
    assert "<span class='code'>77</span>intent_76" in page and "title='predicted: intent_76'>77</th>" in page
    assert "Most frequent confusions" in page and "font-size: 12px" in page


def test_a_baseline_without_the_out_of_scope_metrics_is_reported_beside_those_with_them(tmp_path):
    # A remote model's file from `tunelab eval --model openai:NAME` has no out-of-scope columns (its answers are
    # never thresholded); report_run stopped with "RuntimeError: generator raised StopIteration".
    def out_of_scope(result):
        for row in result.rows:
            row["scores"].update(out_of_scope=0.0, rejected=0.0, label_correct=row["scores"]["correct"])
        return result

    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    out_of_scope(_classify("classical", 0.5, 3)).save(run / "eval" / "classical.json")
    _classify("openai:gpt-x", 0.4, 4).save(run / "eval" / "openai%3Agpt-x.json")
    out_of_scope(_classify("tuned", 0.9, 2)).save(run / "eval" / "tuned.json")
    verdict, files = report_run(run, samples=200)
    assert verdict.paid_off
    markdown = files.markdown.read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| in_scope_accuracy"))
    assert row.endswith("| n/a |")  # the remote model's column: not measured, not zero


def test_report_run_keeps_the_runs_skipped_baselines_until_one_is_scored(tmp_path):
    # A run stopped before its report step has no comparison.json: `tunelab report` dropped the skipped baselines
    # (no reason, no "not scored"), and a baseline scored afterwards into eval/ was listed both scored and skipped.
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    _classify("classical", 0.5, 3).save(run / "eval" / "classical.json")
    _classify("tuned", 0.6, 2).save(run / "eval" / "tuned.json")
    skipped = {"base": "it cannot win", "few_shot": "one round needs 78 tokens"}
    state = {"config": {"task": "classify"}, "steps": {"baseline": {"paths": {}, "cached": [], "skipped": skipped}}, "timings": {}}
    (run / "pipeline.json").write_text(json.dumps(state))
    verdict, files = report_run(run, samples=200)
    assert verdict.skipped == skipped
    assert "baseline few_shot: **skipped**, one round needs 78 tokens" in files.markdown.read_text()
    _classify("base", 0.3, 1).save(run / "eval" / "base.json")  # scored anyway (tunelab eval --out RUN/eval/base.json)
    verdict, files = report_run(run, samples=200)
    assert "base" in verdict.comparisons and verdict.skipped == {"few_shot": "one round needs 78 tokens"}


def test_report_run_of_a_run_whose_every_baseline_was_skipped_names_why(tmp_path):
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    _classify("tuned", 0.6, 2).save(run / "eval" / "tuned.json")
    state = {"config": {"task": "classify"}, "steps": {"baseline": {"skipped": {"embedding": "folder not found: /x"}}}, "timings": {}}
    (run / "pipeline.json").write_text(json.dumps(state))
    with pytest.raises(DataError, match=r"every baseline of the run was skipped \(embedding: folder not found: /x\)"):
        report_run(run)


def test_a_report_plot_killed_midway_leaves_the_previous_png_whole(tmp_path, killed_while_saving_a_chart):
    # report.md links plots/loss.png: a kill while a report was being written again left a truncated PNG under it.
    run = tmp_path / "run"
    run.mkdir()
    _metrics_log(run / "metrics.jsonl")
    base, tuned = _classify("base", 0.4, 1), _classify("tuned", 0.9, 2)
    (plot,) = write_report(run, {"base": base}, tuned, compare_with_baselines({"base": base}, tuned, samples=200)).plots
    before = plot.read_bytes()
    script = "import sys\nfrom pathlib import Path\nfrom tunelab.evaluation.report import plot_losses\n" \
             "plot_losses([(1, 3.0), (2, 1.0)], [(2, 1.5)], Path(sys.argv[1]))\n"
    assert killed_while_saving_a_chart(script, str(plot)).returncode == -9
    assert plot.read_bytes() == before and before.endswith(b"IEND\xaeB`\x82")  # the complete previous image
    assert [p.name for p in plot.parent.iterdir()] == ["loss.png"]


def test_the_examples_that_changed_most_say_what_change_measures(tmp_path):
    # A text run's report listed "+0.879" under "change" with nothing saying it was nats per token.
    run = tmp_path / "run"
    run.mkdir()
    base, tuned = _classify("base", 0.4, 1), _classify("tuned", 0.9, 2)
    write_report(run, {"base": base}, tuned, compare_with_baselines({"base": base}, tuned, samples=200))
    said = "change = the probability of the right label, tuned minus base: positive where the tuned model does better."
    assert said in (run / "report.md").read_text()
    assert said in (run / "report.html").read_text()


def test_a_preference_reports_changed_examples_by_the_verdicts_rule():
    """A DPO report listed pairs under "Examples that changed most" as going from "prefers the rejected answer" to
    "prefers the chosen answer" while, by the rule its verdict is on (per-token likelihood), the DPO model still
    preferred the rejected answer: before was said by that rule, after by the implicit reward."""
    from tunelab.evaluation.report import changed_examples, shown_prediction

    def row(i, chosen, rejected, reward_correct, margin):
        scores = {"correct": reward_correct, "margin": margin, "likelihood_correct": float(chosen / 4 > rejected / 5),
                  "chosen_log_prob": chosen, "rejected_log_prob": rejected, "chosen_tokens": 4, "rejected_tokens": 5,
                  "log_ratio_chosen": 0.0, "log_ratio_rejected": 0.0}  # fmt: skip
        return {"id": str(i), "source": f"pairs.jsonl:{i}", "prompt": "p", "reference": "c", "prediction": "c", "scores": scores}

    # Pair 1: the policy moved toward the chosen answer (reward +1.0) yet its likelihood still prefers the rejected one.
    # Pair 2: its likelihood now prefers the chosen answer (a real flip), with a smaller reward.
    base = EvalResult("preference", "sft", 2, {}, [row(1, -8.0, -5.0, 0.0, 0.0), row(2, -8.0, -9.0, 0.0, 0.0)], test_fingerprint="f")
    tuned = EvalResult("preference", "dpo", 2, {}, [row(1, -7.0, -5.5, 1.0, 1.0), row(2, -4.0, -9.5, 1.0, 0.3)], test_fingerprint="f")
    (first, second) = changed_examples(base, tuned)
    assert first["source"] == "pairs.jsonl:2"  # ranked by the change in the verdict's own margin
    assert shown_prediction("preference", second["after"]).startswith("prefers the rejected answer")
    assert shown_prediction("preference", first["before"]).startswith("prefers the rejected answer")
    assert shown_prediction("preference", first["after"]).startswith("prefers the chosen answer")


def test_the_report_says_what_the_calibration_did_to_the_validation_ece(tmp_path):
    # classify.calibrate fits a temperature and keeps the ECE before and after in calibration.json; the run page showed
    # them, report.md and report.html said nothing of it.
    run = tmp_path / "run"
    run.mkdir()
    (run / "calibration.json").write_text(json.dumps({"method": "temperature scaling", "queries": 40, "temperature": 1.8312,
                                                      "applied": True, "ece_before": 0.1234, "ece_after": 0.0456}))
    base, tuned = _classify("base", 0.4, 1), _classify("tuned", 0.9, 2)
    files = write_report(run, {"base": base}, tuned, compare_with_baselines({"base": base}, tuned, samples=200))
    for text in (files.markdown.read_text(), files.html.read_text()):
        assert "temperature 1.831 fitted on 40 validation queries: ECE 0.1234 before, 0.0456 after" in text
    (run / "calibration.json").write_text(json.dumps({"queries": 0, "temperature": 1.0, "applied": False, "reason": "no validation queries"}))
    files = write_report(run, {"base": base}, tuned, compare_with_baselines({"base": base}, tuned, samples=200))
    assert "calibration: none applied (no validation queries)" in files.markdown.read_text()
