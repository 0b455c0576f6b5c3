"""The run report: ``report.md`` and a self-contained ``report.html`` (images and scripts embedded) in the run folder.

It holds the verdict against every baseline, the metrics table (one column per baseline) with
paired-bootstrap intervals, the loss curves from ``metrics.jsonl``, the confusion matrices (classify),
and the examples that changed most between the strongest baseline and the tuned model, side by side.
The loss plot is a PNG under ``plots/``; the confusion matrices are HTML tables a person can sort
(``confusion_html``, the same markup and script the web interface shows), with the most frequent
confusions listed, readable with 77 labels where one image of four matrices was not.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.data.labels import OUT_OF_SCOPE_SCORES
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.compare import Verdict, compare_with_baselines
from tunelab.evaluation.metrics import likelihood_margin
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.suspects import SuspectReport
from tunelab.paths import atomic_write_text, write_figure
from tunelab.runs import RunFolder, bootstrap_settings, read_near_copies, read_state

EXAMPLES_EACH_WAY = 5
SUSPECTS_SHOWN = 5  # the report's suspect-label rows; the run folder's file holds every one
TEXT_LIMIT = 400
VALIDATION_KEYS = ("val_loss", "validation_loss", "eval_loss")


@dataclass
class ReportFiles:
    """What ``write_report`` wrote."""

    markdown: Path
    html: Path
    plots: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [self.markdown, self.html, *self.plots]


@dataclass
class TrainingLog:
    """The series of a run's ``metrics.jsonl`` (the loop writes one line per loss read and per validation)."""

    train_loss: list[tuple[float, float]] = field(default_factory=list)
    validation_loss: list[tuple[float, float]] = field(default_factory=list)
    validation_score: list[tuple[float, float]] = field(default_factory=list)  # classify: validation accuracy
    lr: list[tuple[float, float]] = field(default_factory=list)
    tokens_per_second: list[tuple[float, float]] = field(default_factory=list)
    last: dict[str, Any] = field(default_factory=dict)  # the last training line: step, elapsed, tokens, tokens_per_second
    unreadable: int = 0


def read_training_log(path: Path) -> TrainingLog:
    """Every series of a ``metrics.jsonl``; lines that cannot be read are counted, never guessed at.

    Validation lines may name their value ``val_loss``, ``validation_loss`` or ``eval_loss``.
    """
    log = TrainingLog()
    if not path.is_file():
        return log
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            step = float(entry["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            log.unreadable += 1
            continue
        if isinstance(entry.get("loss"), int | float):
            log.train_loss.append((step, float(entry["loss"])))
            log.last = entry
        for key, series in (("lr", log.lr), ("tokens_per_second", log.tokens_per_second), ("validation_score", log.validation_score)):
            if isinstance(entry.get(key), int | float):
                series.append((step, float(entry[key])))
        for key in VALIDATION_KEYS:
            if isinstance(entry.get(key), int | float):
                log.validation_loss.append((step, float(entry[key])))
                break
    return log


def read_loss_log(path: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]], int]:
    """(training (step, loss), validation (step, loss), unreadable line count) from a metrics.jsonl."""
    log = read_training_log(path)
    return log.train_loss, log.validation_loss, log.unreadable


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    return plt


def plot_losses(train: list[tuple[float, float]], validation: list[tuple[float, float]], path: Path) -> Path:
    """Training and validation loss against the optimizer step, as a PNG."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        axes.plot(*zip(*train, strict=True), label="training loss", linewidth=1.2)
    if validation:
        axes.plot(*zip(*validation, strict=True), label="validation loss", marker="o", linewidth=1.6)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (nats per token)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    write_figure(figure, path)  # report.md links this file: never half an image under its name
    plt.close(figure)
    return path


RESOURCES = Path(__file__).resolve().parents[1] / "resources"
CONFUSION_SCRIPT = (RESOURCES / "confusion.js").read_text(encoding="utf-8")
CONFUSION_STYLE = (RESOURCES / "confusion.css").read_text(encoding="utf-8")
TOP_CONFUSIONS = 12


def confusion_view(labels: list[str], matrix: list[list[int]], *, top: int = TOP_CONFUSIONS) -> dict[str, Any]:
    """A confusion matrix as a person reads it: per class support, recall, precision, F1, and the most frequent confusions."""
    size = len(labels)
    classes = []
    for i, label in enumerate(labels):
        support = sum(matrix[i])
        predicted = sum(matrix[r][i] for r in range(size))
        correct = matrix[i][i]
        recall = correct / support if support else None
        precision = correct / predicted if predicted else None
        f1 = 2 * recall * precision / (recall + precision) if recall and precision else (0.0 if support or predicted else None)
        classes.append({"index": i, "label": label, "support": support, "correct": correct, "errors": support - correct + predicted - correct,
                        "recall": recall, "precision": precision, "f1": f1})
    pairs = sorted(((matrix[i][j], i, j) for i in range(size) for j in range(size) if i != j and matrix[i][j]), key=lambda x: (-x[0], x[1], x[2]))
    confusions = [{"true": labels[i], "predicted": labels[j], "count": n, "share": n / classes[i]["support"]} for n, i, j in pairs[:top]]
    peak = max((max(row) for row in matrix if row), default=0) or 1
    total = sum(map(sum, matrix))
    accuracy = sum(matrix[i][i] for i in range(size)) / total if total else None
    return {"labels": labels, "matrix": matrix, "classes": classes, "confusions": confusions, "peak": peak, "total": total, "accuracy": accuracy}


def confusion_html(name: str, view: dict[str, Any]) -> str:
    """One sortable confusion matrix (rows: true label, columns: predicted) and its most frequent confusions.

    Columns carry the classes' numbers (names in each header's title and in the row heads), so 77 labels
    stay readable; ``resources/confusion.js`` sorts rows and columns together and hides error-free classes.
    """
    e = html.escape
    labels, matrix, peak = view["labels"], view["matrix"], view["peak"]
    accuracy = "" if view["accuracy"] is None else f": accuracy {view['accuracy']:.3f} ({view['total']} examples)"
    out = [f"<section class='confusion-block' data-confusion data-name='{e(name)}'><h3>{e(name)}{accuracy}</h3>"]
    out.append("<div class='confusion-tools'><label>sort classes by <select data-sort>"
               "<option value='index'>label order</option><option value='label'>name</option><option value='support'>support</option>"
               "<option value='recall'>recall (worst first)</option><option value='precision'>precision (worst first)</option>"
               "<option value='f1'>F1 (worst first)</option></select></label>"
               "<label><input type='checkbox' data-errors-only> only classes with errors</label></div>")
    out.append("<div class='confusion-scroll'><table class='confusion'><thead><tr><th title='rows: true label; columns: predicted label'>true \\ predicted</th>")
    out += [f"<th data-col='{j}' title='predicted: {e(label)}'>{j + 1}</th>" for j, label in enumerate(labels)]
    out.append("<th data-sort-key='support'>support</th><th data-sort-key='recall'>recall</th><th data-sort-key='precision'>precision</th><th data-sort-key='f1'>F1</th></tr></thead><tbody>")

    def stat(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for c in view["classes"]:
        i = c["index"]
        attributes = " ".join(f"data-{key}='{'' if c[key] is None else c[key]}'" for key in ("index", "support", "recall", "precision", "f1", "errors"))
        out.append(f"<tr {attributes} data-label='{e(c['label'])}'><th><span class='code'>{i + 1}</span>{e(c['label'])}</th>")
        for j, value in enumerate(matrix[i]):
            shade = value / peak
            kind = "cell" + (" diagonal" if i == j else "") + (" strong" if shade > 0.55 else "") + (" zero" if value == 0 else "")
            title = f"true {c['label']} → predicted {labels[j]}: {value}"
            out.append(f"<td class='{kind}' data-col='{j}' style='--shade: {shade:.2f}' title='{e(title)}'>{value}</td>")
        out.append(f"<td class='stat'>{c['support']}</td><td class='stat'>{stat(c['recall'])}</td><td class='stat'>{stat(c['precision'])}</td><td class='stat'>{stat(c['f1'])}</td></tr>")
    out.append("</tbody></table></div>")
    if view["confusions"]:
        out.append("<h4>Most frequent confusions</h4><ol class='top-confusions'>")
        out += [f"<li>{e(x['true'])} → {e(x['predicted'])}: {x['count']} ({x['share']:.0%} of {e(x['true'])})</li>" for x in view["confusions"]]
        out.append("</ol>")
    else:
        out.append("<p>No confusion: every test example is on the diagonal.</p>")
    out.append("</section>")
    return "".join(out)


# What ``_change`` measures per task, said under the table of examples that changed most (a bare "+0.879" meant nothing).
CHANGE_MEANS = {
    "classify": "the probability of the right label",
    "sft": "the answer's ROUGE-L",
    # The verdict's rule (likelihood_accuracy), as before and after are compared: the reward margin is zero before.
    "preference": "the per-token log-likelihood margin of the chosen answer over the rejected one",
    "text": "the mean log-likelihood per token in nats (a drop in loss)",
}


def sft_change_metric(tuned: EvalResult) -> str:
    """The per-example score an sft example's change is measured by: the verdict's metric (``metrics["primary"]``) when
    each example has one (json_f1, tool_call_exact, ...: an answer that is data is judged on the data), else ROUGE-L
    (BLEU and chrF are corpus metrics, with no per-example value)."""
    primary = tuned.metrics.get("primary")
    return primary if primary and tuned.rows and all(primary in row["scores"] for row in tuned.rows) else "rougeL"


def change_means(task: str, opponent: str, tuned: EvalResult | None = None) -> str:
    means = CHANGE_MEANS[task]
    if task == "sft" and tuned is not None and (metric := sft_change_metric(tuned)) != "rougeL":
        means = f"the answer's {metric}"
    return f"change = {means}, tuned minus {opponent}: positive where the tuned model does better."


def _change(task: str, before: dict[str, Any], after: dict[str, Any], metric: str = "rougeL") -> float:
    """How much an example improved (positive) or worsened (negative) from before to after (sft: by ``metric``)."""
    if task == "classify":
        return _right(after) - _right(before)
    if task == "sft":
        return after["scores"][metric] - before["scores"][metric]
    if task == "preference":
        return likelihood_margin(after["scores"]) - likelihood_margin(before["scores"])

    def per_token(row: dict[str, Any]) -> float:
        return row["scores"]["nll"] / row["scores"]["tokens"] if row["scores"]["tokens"] else 0.0

    return per_token(before) - per_token(after)


def _right(row: dict[str, Any]) -> float:
    # The probability of the right label; an answer given without probabilities (a predictions file) is right or wrong.
    probability = row["scores"].get("probability_of_reference")
    return float(row["scores"]["correct"] if probability is None else probability)


def changed_examples(base: EvalResult, tuned: EvalResult, each_way: int = EXAMPLES_EACH_WAY) -> list[dict[str, Any]]:
    """The examples that improved most, then those that worsened most (paired by id), each with its group
    (``data.group_field``; None without one)."""
    by_id = {row["id"]: row for row in base.rows}
    pairs = [(by_id[row["id"]], row) for row in tuned.rows if row["id"] in by_id]
    metric = sft_change_metric(tuned) if tuned.task == "sft" else "rougeL"
    if metric != "rougeL" and not all(metric in b["scores"] for b, _ in pairs):
        metric = "rougeL"  # an opponent scored without it (an older file): the one score both have
    scored = [(_change(tuned.task, b, a, metric), b, a) for b, a in pairs]
    improved = sorted((s for s in scored if s[0] > 0), key=lambda s: -s[0])[:each_way]
    worsened = sorted((s for s in scored if s[0] < 0), key=lambda s: s[0])[:each_way]
    return [
        {"change": change, "source": after["source"], "group": after.get("group"), "prompt": after["prompt"], "reference": after["reference"],
         "before": before, "after": after}
        for change, before, after in improved + worsened
    ]


def _grouped(examples: list[dict[str, Any]]) -> bool:
    # The group column only where the test set has groups (data.group_field): a column of blanks says nothing.
    return any(example.get("group") is not None for example in examples)


def _format(value: float) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.4g}"


def _cut(text: str, limit: int = TEXT_LIMIT) -> str:
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "…"


def shown_prediction(task: str, row: dict[str, Any]) -> str:
    """How one example's prediction reads to a person (label and probabilities, the answer, perplexity)."""
    if task == "classify":
        if row["scores"].get("confidence") is None:  # an answer given without probabilities (a predictions file)
            return str(row["prediction"])
        return f"{row['prediction']} (p={row['scores']['confidence']:.2f}; p(true)={row['scores']['probability_of_reference']:.2f})"
    if task == "preference":
        # By the verdict's rule, which before and after share (the implicit reward ranks "after" only).
        likelihood = likelihood_margin(row["scores"])
        side = "chosen" if likelihood > 0 else "rejected"
        return f"prefers the {side} answer (log-likelihood margin per token {likelihood:+.3f}; reward margin {row['scores']['margin']:+.3f})"
    if task == "text":
        scores = row["scores"]
        return f"perplexity {_format(math.exp(scores['nll'] / scores['tokens'])) if scores['tokens'] else 'n/a'}"
    return row["prediction"]


def _cell(metric) -> str:
    # One baseline's value and what the tuned model gains over it, with the 95% interval; n/a when not compared.
    if metric is None:
        return "n/a"
    if metric.not_compared:  # the baseline has no value of it (a preference run's reference): the tuned value stands alone
        return f"{metric.outcome}: {metric.not_compared}"
    return f"{_format(metric.before)} (tuned {_format(metric.difference)} [{_format(metric.low)}, {_format(metric.high)}])"


def metric_table(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per metric, the tuned model's value, then one column per baseline.

    A metric only some comparisons have (the out-of-scope ones, when a baseline's answers were never thresholded)
    is n/a in the others' columns.
    """
    names = list(verdict.comparisons)
    header = ["metric", "tuned", *names]
    by_name = {b: {m.name: m for m in verdict.comparisons[b].metrics} for b in names}
    shown: dict[str, Any] = {}
    for b in names:  # the first comparison's metrics, in its order, then any the others add
        for m in verdict.comparisons[b].metrics:
            shown.setdefault(m.name, m)
    rows = []
    for m in shown.values():
        direction = {True: "↑", False: "↓", None: ""}[m.higher_is_better]
        name = f"**{m.name}**" if m.name == verdict.primary else m.name
        rows.append([f"{name} {direction}".strip(), _format(m.after), *(_cell(by_name[b].get(m.name)) for b in names)])
    return header, rows


def opponent_table(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the primary metric against each baseline, and the outcome for the tuned model."""
    header = ["baseline", "model", verdict.primary, "tuned", "tuned − baseline", "95% CI", "outcome for the tuned model"]
    rows = []
    for name, comparison in verdict.comparisons.items():
        m = comparison.metric(verdict.primary)
        label = f"{name} (strongest)" if name == verdict.strongest else name
        # comparison.verdict: the primary metric's outcome, or TOO_FEW under MIN_TEST_EXAMPLES (no baseline is beaten there)
        rows.append([label, comparison.name_a, _format(m.before), _format(m.after), _format(m.difference), f"[{_format(m.low)}, {_format(m.high)}]", comparison.verdict])
    return header, rows


def group_table(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the primary metric per group of the test set (``data.group_field``) for the tuned model and the
    opponent the verdict names, the difference and its 95% interval ("-" under ``MIN_TEST_EXAMPLES``); no rows without groups."""
    opponent = verdict.groups[0].opponent if verdict.groups else verdict.strongest
    header = ["group", "n", f"tuned {verdict.primary}", f"{opponent} {verdict.primary}", "tuned − opponent", "95% CI", "outcome for the tuned model"]
    rows = [[g.group, str(g.n), _format(g.tuned), _format(g.opponent_value), _format(g.difference),
             "-" if not math.isfinite(g.low) else f"[{_format(g.low)}, {_format(g.high)}]", g.outcome] for g in verdict.groups]
    return header, rows


def out_of_scope_lines(baselines: dict[str, EvalResult], tuned: EvalResult) -> list[str]:
    """classify with an out-of-scope label: each opponent's threshold, chosen on the validation queries."""
    rule = tuned.settings.get("out_of_scope")
    if not rule:
        return []
    def described(name: str, saved: dict) -> str:
        if (saved.get("validation") or {}).get("no_threshold"):  # a remote baseline: offered the label, never thresholded
            return f"{name} answers '{saved['label']}' itself (no threshold)"
        score = saved.get("score", "probability")
        return f"{name} {saved['threshold']:.3g}" + ("" if score == "probability" else f" on the {score} score")

    thresholds = [described("tuned", rule)] + [
        described(name, result.settings["out_of_scope"]) for name, result in baselines.items() if result.settings.get("out_of_scope")
    ]
    scores = {saved.get("score", "probability") for saved in [rule, *(r.settings.get("out_of_scope") or {} for r in baselines.values())] if saved}
    meaning = "; ".join(f"{score}: {OUT_OF_SCOPE_SCORES[score]}" for score in sorted(scores))
    return [
        f"out of scope: '{rule['label']}' when the model's score is below its own threshold "
        f"({', '.join(thresholds)}), each chosen on the validation queries ({meaning}): {rule.get('rule', '')}; "
        "accuracy counts every test query, in_scope_accuracy the in-scope ones (a rejected one is wrong)"
    ]


def calibration_line(run_dir: str | Path) -> str | None:
    """classify.calibrate: the temperature fitted on the validation queries and the validation ECE before and after, as
    calibration.json keeps them (the run page shows the same); None for a run without one, or one that cannot be read."""
    try:
        saved = json.loads(RunFolder(Path(run_dir)).calibration.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(saved, dict):
        return None
    if not saved.get("applied"):
        return f"calibration: none applied ({saved.get('reason', 'no reason recorded')})"
    return (f"calibration: temperature {_format(saved.get('temperature'))} fitted on {saved.get('queries')} validation queries: "
            f"ECE {_format(saved.get('ece_before'))} before, {_format(saved.get('ece_after'))} after")


def read_suspects(run: RunFolder) -> SuspectReport | None:
    """The suspect labels the baselines step wrote (``RunFolder.suspect_labels``); None without that file or when it
    cannot be read."""
    try:
        saved = json.loads(run.suspect_labels.read_text(encoding="utf-8"))
        return SuspectReport.from_dict(saved) if isinstance(saved, dict) else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        return None


def suspect_summary(run: RunFolder, report: SuspectReport) -> str:
    """The report's line above the suspect rows: how many of how many training rows, and where every one is."""
    if report.skipped:
        return f"Not checked: {report.skipped}."
    if not report.suspects:
        return f"None among the {report.records} training rows the embedding baseline learned from."
    weak = f" {report.weak[:1].upper()}{report.weak[1:]}." if report.weak else ""
    # The table shows only the first few: said, so they do not read as all of them.
    shown = (f"Below, the {SUSPECTS_SHOWN} most doubtful of the {len(report.suspects)}; every one"
             if len(report.suspects) > SUSPECTS_SHOWN else "Every one")
    return (f"{len(report.suspects)} of {report.records} training rows ({report.share:.1%}) have a label the embedding baseline's "
            f"cross-validation doubts (confident learning): candidates to look at, not errors. {shown} in {run.suspect_labels.name}.{weak}")


def _suspect_rows(report: SuspectReport) -> tuple[list[str], list[list[str]]]:
    rows = [[s.source, _cut(s.text, 120), s.given, s.suggested, f"{s.p_given:.2f}", f"{s.p_suggested:.2f}"] for s in report.top(SUSPECTS_SHOWN)]
    return ["source", "text", "given", "suggested", "p(given)", "p(suggested)"], rows


def _markdown(run: RunFolder, baselines: dict[str, EvalResult], tuned: EvalResult, verdict: Verdict, plots: dict[str, Path], examples, notes, caveat: str | None = None) -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        escape = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]

    lines = [f"# Report: {run.root.name}", "", f"**Verdict: {verdict.verdict}.** {verdict.summary}", ""]
    lines += [f"**{line}.**" for line in verdict.group_lines] + ([""] if verdict.group_lines else [])
    lines += [f"**{caveat}.**", ""] if caveat else []
    lines += [f"- task: {tuned.task}; test examples: {verdict.n}; tuned: {tuned.model}"]
    lines += [f"- baseline {name}: {result.model}" for name, result in baselines.items()]
    lines += [f"- baseline {name}: **skipped**, {reason}" for name, reason in verdict.skipped.items()]
    lines += [f"- intervals: paired bootstrap, {verdict.samples} resamples, seed {verdict.seed}; ↑ higher is better, ↓ lower is better; "
              "a baseline column shows its value, then the tuned model's difference from it [95% CI]"]
    lines += [f"- {line}" for line in out_of_scope_lines(baselines, tuned)]
    lines += [f"- {line}" for line in [calibration_line(run.root)] if line]
    lines += [f"- warning: {w}" for w in notes]
    lines += ["", "## Against each baseline", ""] + table(*opponent_table(verdict))
    if verdict.groups:
        lines += ["", "## By group", ""] + table(*group_table(verdict))
    lines += ["", "## Metrics", ""] + table(*metric_table(verdict))
    if "loss" in plots:
        lines += ["", "## Loss curves", "", f"![loss curves]({plots['loss'].relative_to(run.root).as_posix()})"]
    matrices = confusion_results(baselines, tuned)
    if matrices:
        lines += ["", "## Confusion matrices", "", "Sortable tables in report.html; the most frequent confusions of the tuned model:", ""]
        view = confusion_view(tuned.metrics["confusion_matrix"]["labels"], tuned.metrics["confusion_matrix"]["matrix"])
        lines += [f"- {x['true']} → {x['predicted']}: {x['count']} ({x['share']:.0%} of {x['true']})" for x in view["confusions"]] or ["- none"]
        per_class = tuned.metrics.get("per_class", {})
        lines += ["", "Per class (tuned):", ""] + table(
            ["label", "precision", "recall", "f1", "support"],
            [[label, _format(v["precision"]), _format(v["recall"]), _format(v["f1"]), str(v["support"])] for label, v in per_class.items()],
        )
    if examples:
        opponent = verdict.strongest
        lines += ["", f"## Examples that changed most (tuned against {opponent})", "", change_means(tuned.task, opponent, tuned), ""]
        grouped = _grouped(examples)
        lines += table(
            ["change", "source", *(["group"] if grouped else []), "prompt", "reference", f"{opponent}", "tuned"],
            [[f"{e['change']:+.3f}", e["source"], *([str(e["group"])] if grouped else []), _cut(e["prompt"], 200), _cut(e["reference"], 200),
              _cut(shown_prediction(tuned.task, e["before"]), 200), _cut(shown_prediction(tuned.task, e["after"]), 200)] for e in examples],
        )
    suspects = read_suspects(run)
    if suspects is not None:
        lines += ["", "## Suspect labels", "", suspect_summary(run, suspects)]
        if suspects.suspects:
            lines += [""] + table(*_suspect_rows(suspects))
    return "\n".join(lines) + "\n"


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3}.verdict{font-size:1.2em;padding:.6em;border-radius:6px;background:#eef}.better{background:#e6f6e6}
.worse{background:#fbe7e7}.warn{color:#8a5300}td.text{white-space:pre-wrap;max-width:320px;font-size:13px}img{max-width:100%}"""


def _html(run: RunFolder, baselines: dict[str, EvalResult], tuned: EvalResult, verdict: Verdict, plots: dict[str, Path], examples, notes, caveat: str | None = None) -> str:
    e = html.escape
    verdict_class = "better" if verdict.paid_off else ("worse" if verdict.verdict.startswith("use ") else "")

    def table(header: list[str], rows: list[list[str]]) -> str:
        out = ["<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
        out += ["<tr>" + "".join(f"<td>{e(str(c).replace('**', ''))}</td>" for c in row) + "</tr>" for row in rows]
        return "".join(out) + "</table>"

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Report: {e(run.root.name)}</title><style>{CSS}\n{CONFUSION_STYLE}</style></head><body>"]
    parts.append(f"<h1>Report: {e(run.root.name)}</h1>")
    parts.append(f"<p class='verdict {verdict_class}'><b>Verdict: {e(verdict.verdict)}.</b> {e(verdict.summary)}</p>")
    parts += [f"<p class='verdict worse'>{e(line)}</p>" for line in verdict.group_lines]
    parts += [f"<p class='warn'><b>{e(caveat)}.</b></p>"] if caveat else []
    described = "".join(f"<br>baseline {e(name)}: {e(result.model)}" for name, result in baselines.items())
    described += "".join(f"<br>baseline {e(name)}: <b>skipped</b>, {e(reason)}" for name, reason in verdict.skipped.items())
    parts.append(f"<p>task: {e(tuned.task)}; test examples: {verdict.n}; tuned: {e(tuned.model)}{described}<br>"
                 f"Intervals: paired bootstrap, {verdict.samples} resamples, seed {verdict.seed}; ↑ higher is better, ↓ lower is better; "
                 "a baseline column shows its value, then the tuned model's difference from it [95% CI].</p>")
    parts += [f"<p>{e(line)}</p>" for line in out_of_scope_lines(baselines, tuned)]
    parts += [f"<p>{e(line)}</p>" for line in [calibration_line(run.root)] if line]
    parts += [f"<p class='warn'>warning: {e(w)}</p>" for w in notes]
    parts.append("<h2>Against each baseline</h2>" + table(*opponent_table(verdict)))
    if verdict.groups:
        parts.append("<h2>By group</h2>" + table(*group_table(verdict)))
    parts.append("<h2>Metrics</h2>" + table(*metric_table(verdict)))
    if "loss" in plots:
        data = base64.b64encode(plots["loss"].read_bytes()).decode("ascii")
        parts.append(f"<h2>Loss curves</h2><img alt='Loss curves' src='data:image/png;base64,{data}'>")
    matrices = confusion_results(baselines, tuned)
    if matrices:
        parts.append("<h2>Confusion matrices</h2><p>Rows: the true label, columns: the predicted one (numbered as the rows; "
                     "hover a cell for both names). Sort the classes, or keep only those with errors.</p>")
        parts += [confusion_html(name, confusion_view(result.metrics["confusion_matrix"]["labels"], result.metrics["confusion_matrix"]["matrix"]))
                  for name, result in [matrices[-1], *matrices[:-1]]]
        parts.append(f"<script>{CONFUSION_SCRIPT}</script>")
    if examples:
        opponent = e(verdict.strongest)
        grouped = _grouped(examples)
        parts.append(f"<h2>Examples that changed most (tuned against {opponent})</h2><p>{e(change_means(tuned.task, verdict.strongest, tuned))}</p>"
                     f"<table><tr><th>change</th><th>source</th>{'<th>group</th>' if grouped else ''}<th>prompt</th><th>reference</th><th>{opponent}</th><th>tuned</th></tr>")
        for x in examples:
            cells = [f"{x['change']:+.3f}", x["source"], *([str(x["group"])] if grouped else []), _cut(x["prompt"]), _cut(x["reference"]),
                     _cut(shown_prediction(tuned.task, x["before"])), _cut(shown_prediction(tuned.task, x["after"]))]
            parts.append("<tr>" + "".join(f"<td class='text'>{e(str(c))}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
    suspects = read_suspects(run)
    if suspects is not None:
        parts.append(f"<h2>Suspect labels</h2><p>{e(suspect_summary(run, suspects))}</p>")
        if suspects.suspects:
            parts.append(table(*_suspect_rows(suspects)))
    parts.append("</body></html>")
    return "\n".join(parts)


def confusion_results(baselines: dict[str, EvalResult], tuned: EvalResult) -> list[tuple[str, EvalResult]]:
    """The evaluations with a confusion matrix (classify): the baselines', then the tuned model's."""
    if tuned.task != "classify" or "confusion_matrix" not in tuned.metrics:
        return []
    shown = [(name, result) for name, result in baselines.items() if "confusion_matrix" in result.metrics]
    return [*shown, ("tuned", tuned)]


def verdict_warnings(warnings: list[str], baselines: dict[str, EvalResult], tuned: EvalResult) -> list[str]:
    """The warnings a verdict is read with (the report, the UI's run page): the comparison's own (``Verdict.warnings``),
    then each evaluation's, named by its model."""
    return list(warnings) + [f"{name}: {w}" for name, result in baselines.items() for w in result.warnings] + [f"tuned: {w}" for w in tuned.warnings]


def write_report(run_dir: str | Path, baselines: dict[str, EvalResult], tuned: EvalResult, verdict: Verdict) -> ReportFiles:
    """Write report.md, report.html and plots/loss.png into ``run_dir``: the tuned model against every baseline.

    Raises:
        DataError: when an evaluation is of another task than the tuned one, or there is no baseline.
    """
    if not baselines:
        raise DataError("a report needs at least one baseline evaluation")
    for name, result in baselines.items():
        if result.task != tuned.task:
            raise DataError(f"cannot report a {result.task} evaluation ({name}) against a {tuned.task} evaluation")
    run = RunFolder(Path(run_dir))
    plots: dict[str, Path] = {}
    notes = verdict_warnings(verdict.warnings, baselines, tuned)
    train, validation, bad = read_loss_log(run.metrics)
    if bad:
        notes.append(f"{bad} lines of {run.metrics.name} could not be read and are not plotted")
    if train or validation:
        plots["loss"] = plot_losses(train, validation, run.plots / "loss.png")
    examples = changed_examples(baselines[verdict.strongest], tuned)
    # Under the verdict, not among the notes: test requests a word away from training ones make every score, the
    # retrieval baselines' most of all, optimistic. Read from split.json, so `tunelab report RUN` says it again.
    near_copies = read_near_copies(run)
    caveat = near_copies.caveat() if near_copies is not None else None
    atomic_write_text(run.report_md, _markdown(run, baselines, tuned, verdict, plots, examples, notes, caveat))
    atomic_write_text(run.report_html, _html(run, baselines, tuned, verdict, plots, examples, notes, caveat))
    return ReportFiles(run.report_md, run.report_html, list(plots.values()))


def report_run(run_dir: str | Path, *, seed: int | None = None, samples: int | None = None) -> tuple[Verdict, ReportFiles]:
    """Compare ``eval/tuned.json`` with every baseline of a run (``eval/base.json``, ``eval/classical.json``, ...),
    save ``eval/comparison.json`` (the verdict) and write the report.

    Seed and resample count default to the run config's ``eval`` section (else 0 and 1000).

    Raises:
        ConfigError: when ``run_dir`` is no folder.
        DataError: when the run has no tuned evaluation or no baseline evaluation.
    """
    run = RunFolder(Path(run_dir))
    run.require_folder()  # else a mistyped run was told to evaluate itself first
    tuned_path = run.tuned_eval
    found = run.baseline_evaluations()
    base_path = run.baseline_eval("base")
    skipped = _skipped_before(run, found)
    if not found and skipped:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise DataError(f"no baseline evaluation in {run.root / 'eval'}: every baseline of the run was skipped ({reasons})",
                        f"score one anyway: tunelab eval ... --out {base_path}")
    if not found:
        raise DataError(f"{base_path} not found, nor any other baseline evaluation", f"evaluate the run first (tunelab eval ... --out {base_path})")
    if not tuned_path.is_file():
        raise DataError(f"{tuned_path} not found", f"evaluate the run first (tunelab eval ... --out {tuned_path})")
    own_seed, own_samples = bootstrap_settings(run.root)  # a folder of evaluation files alone: the eval defaults
    seed = seed if seed is not None else own_seed
    samples = samples if samples is not None else own_samples
    baselines = {name: EvalResult.load(path) for name, path in found.items()}
    tuned = EvalResult.load(tuned_path)
    verdict = compare_with_baselines(baselines, tuned, seed=seed, samples=samples, skipped=skipped)
    verdict.save(run.comparison)
    return verdict, write_report(run.root, baselines, tuned, verdict)


def _skipped_before(run: RunFolder, found: dict[str, Path]) -> dict[str, str]:
    """The baselines the run skipped, with the reason, less those scored since (a file in ``found``): kept when the
    report is written again from the files.

    The baseline step's record in pipeline.json comes first (a run stopped before its report step has no verdict
    yet), then the saved verdict's list.
    """
    skipped: dict[str, str] = {}
    try:
        step = ((read_state(run) or {}).get("steps") or {}).get("baseline")
    except ConfigError:  # a damaged pipeline.json: the saved verdict may still say
        step = None
    sources: list[Any] = [step.get("skipped") if isinstance(step, dict) else None]
    try:
        data = json.loads(run.comparison.read_text(encoding="utf-8")) if run.comparison.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = {}
    sources.append(data.get("skipped") if isinstance(data, dict) else None)
    for source in sources:
        if isinstance(source, dict):
            skipped.update({str(k): str(v) for k, v in source.items() if str(k) not in skipped})
    return {name: reason for name, reason in skipped.items() if name not in found}
