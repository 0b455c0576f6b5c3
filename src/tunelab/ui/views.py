"""What each page shows, as plain values read from the registry and the run folders (the templates render them).

Nothing here computes a new number the CLI does not: the verdict and its intervals are the registry's, as
``tunelab show`` gives them (the run's ``eval/comparison.json`` while none is registered), the changed examples are the report's
``changed_examples``, the loss points are the report's ``read_loss_log``, and a comparison between
runs is ``compare_runs`` plus the same paired bootstrap as ``tunelab compare``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import DataError, ModelError
from tunelab.estimate.summary import cheapest, estimate_summary
from tunelab.paths import human_bytes
from tunelab.registry import Registry, RegistryError, RunRecord, metric_values
from tunelab.registry.cleanup import run_bytes
from tunelab.runs import RunFolder, bootstrap_settings

EXAMPLES_SHOWN = 20
HIDDEN_METRICS = {"primary", "per_class", "confusion_matrix", "unknown_label_examples"}


def get_run(registry: Registry, run: str) -> RunRecord:
    """A run by id or name, its folder made absolute.

    ``tunelab run`` records the folder as it was given (``runs/<name>`` relative to where it ran); the
    UI may be started elsewhere, so a relative folder is looked for from here, then beside the registry.

    Raises:
        RegistryError: when the run does not exist.
    """
    record = registry.get_run(run)
    if not record.run_dir or Path(record.run_dir).is_absolute():
        return record
    relative = Path(record.run_dir)
    for candidate in (Path.cwd() / relative, registry.path.parent.parent / relative, registry.path.parent / relative.name):
        if candidate.is_dir():
            return dataclasses.replace(record, run_dir=str(candidate.resolve()))
    return record


def number(value: Any, digits: int = 4) -> str:
    """A metric as a person reads it: 4 significant digits, "-" when absent or not finite."""
    if value is None or isinstance(value, bool):
        return "-"
    if isinstance(value, int | float):
        if not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}"
    return str(value)


def size(value: int | None) -> str:
    """A run folder's size (``RunRow.size``), "-" when the folder is gone."""
    return "-" if value is None else human_bytes(value)


def signed(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3g}"


def _data_name(record: RunRecord) -> str:
    data = (record.config_dict.get("data") or {}) if record.config else {}
    train = data.get("train") or data.get("preset") or "-"
    return Path(str(train)).name if train != "-" else "-"


@dataclass
class RunRow:
    """One line of the Runs table: the tuned model against the strongest baseline, as the verdict judges it."""

    id: str
    name: str
    status: str
    task: str
    model: str
    data: str
    metric: str
    tuned: float | None
    opponent: str | None  # the strongest baseline (the verdict's), else the base model
    opponent_value: float | None
    difference: float | None
    low: float | None
    high: float | None
    verdict: str
    verdict_kind: str  # paid-off, lost, no-difference, too-few, none: the colour of the verdict
    baselines: list[tuple[str, float | None]]  # every baseline's value of the metric
    cost_usd: float | None
    cost_where: str
    seconds: float | None
    estimated_seconds: float | None
    created: str
    size: int | None = None  # the run folder's bytes; None when it is gone (`tunelab delete` frees it)

    @property
    def interval(self) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"[{signed(self.low)}, {signed(self.high)}]"

    # The names the compare page and older templates read.
    @property
    def after(self) -> float | None:
        return self.tuned

    @property
    def before(self) -> float | None:
        return self.opponent_value

    @property
    def against(self) -> str | None:
        return self.opponent


def verdict_kind(verdict: str | None) -> str:
    """The colour class of a verdict: it paid off (green), a baseline wins (red), no significant difference (amber),
    too few test examples to decide or a primary metric that is not a number (grey: no verdict at all, neither a loss nor a tie)."""
    from tunelab.evaluation.compare import CANNOT_JUDGE, TOO_FEW

    if not verdict or verdict == "-":
        return "none"
    if verdict.startswith((TOO_FEW, CANNOT_JUDGE)):  # neither gives a verdict
        return "too-few"
    if "paid off" in verdict and "not" not in verdict:
        return "paid-off"
    if verdict.startswith("use ") or "worse" in verdict:
        return "lost"
    return "no-difference"


def run_row(record: RunRecord) -> RunRow:
    comparison = record.comparison if isinstance(record.comparison, dict) else None
    key = record.key_metric()
    metric, _, tuned = key if key else ("-", None, None)
    opponent = opponent_value = difference = low = high = None
    baselines: list[tuple[str, float | None]] = []
    if comparison and isinstance(comparison.get("comparisons"), dict) and comparison["comparisons"]:
        metric = comparison.get("primary") or metric
        opponent = comparison.get("strongest") or next(iter(comparison["comparisons"]))
        for name, entry in comparison["comparisons"].items():
            found = next((m for m in entry.get("metrics", []) if m.get("name") == metric), None)
            baselines.append((name, found.get("before") if found else None))
            if name == opponent and found:
                opponent_value, tuned = found.get("before"), found.get("after", tuned)
                difference, low, high = found.get("difference"), found.get("low"), found.get("high")
    elif key is not None:
        opponent, opponent_value = "base", key[1]
    timings = record.timings or {}
    actual = [entry["actual_s"] for entry in timings.values() if isinstance(entry.get("actual_s"), int | float)]
    estimated = [entry["estimated_s"] for entry in timings.values() if isinstance(entry.get("estimated_s"), int | float)]
    usd, where = cheapest(record.estimate)
    return RunRow(
        id=record.id, name=record.name, status=record.status, task=record.task or "-",
        model=Path(record.model).name if record.model else "-", data=_data_name(record), metric=metric,
        tuned=tuned, opponent=opponent, opponent_value=opponent_value, difference=difference, low=low, high=high,
        verdict=record.verdict or "-", verdict_kind=verdict_kind(record.verdict), baselines=baselines,
        cost_usd=usd, cost_where=where, seconds=sum(actual) if actual else None,
        estimated_seconds=sum(estimated) if estimated else None, created=record.created_at[:19].replace("T", " "),
        size=run_bytes(record),
    )


def runs_page(registry: Registry) -> dict[str, Any]:
    records = registry.list_runs()
    rows = [run_row(record) for record in records]
    return {"rows": rows, "tasks": sorted({row.task for row in rows}), "statuses": sorted({row.status for row in rows})}


# -- one run -----------------------------------------------------------------------------------


@dataclass
class MetricLine:
    name: str
    primary: bool
    direction: str
    tuned: float | None
    cells: list[dict[str, Any]] = field(default_factory=list)  # per baseline: value, difference, low, high, outcome

    @property
    def arrow(self) -> str:
        """The direction beside the metric's name, as the report writes it (a perplexity or loss falls as the model improves)."""
        return {"higher is better": "↑", "lower is better": "↓"}.get(self.direction, "")


def outcome_kind(outcome: str | None, n: Any) -> str:
    """The colour class of one metric's outcome (better, worse, no-significant-difference, changed), or "too-few"
    under ``MIN_TEST_EXAMPLES`` paired test examples: there the interval is too narrow to trust, whatever it says."""
    from tunelab.evaluation.compare import MIN_TEST_EXAMPLES

    if isinstance(n, int) and n < MIN_TEST_EXAMPLES:
        return "too-few"
    return (outcome or "").replace(" ", "-")


def verdict_table(comparison: dict[str, Any] | None) -> tuple[list[str], list[MetricLine]]:
    """The before/after/baselines table of a stored verdict: one line per metric, one cell per baseline."""
    if not comparison or not isinstance(comparison.get("comparisons"), dict) or not comparison["comparisons"]:
        return [], []
    names = list(comparison["comparisons"])
    by_name = {name: {m["name"]: m for m in comparison["comparisons"][name].get("metrics", [])} for name in names}
    # The first comparison's metrics, in its order, then any the others add (as the report's metric_table): the out-of-scope
    # ones exist only where the baseline's answers were thresholded, and are n/a in the other columns.
    shown: dict[str, dict[str, Any]] = {}
    for name in names:
        for metric_name, metric in by_name[name].items():
            shown.setdefault(metric_name, metric)
    lines = []
    for metric in shown.values():
        direction = {True: "higher is better", False: "lower is better"}.get(metric.get("higher_is_better"), "")
        line = MetricLine(metric["name"], metric["name"] == comparison.get("primary"), direction, metric.get("after"))
        for name in names:
            other = by_name[name].get(metric["name"], {})
            line.cells.append({
                "baseline": name, "value": other.get("before"), "difference": other.get("difference"),
                "low": other.get("low"), "high": other.get("high"), "outcome": other.get("outcome", ""), "not_compared": other.get("not_compared"),
                "kind": outcome_kind(other.get("outcome"), comparison["comparisons"][name].get("n", comparison.get("n"))),
                "missing": not other,
            })
        lines.append(line)
    return names, lines


def group_rows(comparison: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The verdict by group (``Verdict.groups``, ``data.group_field``) of a stored verdict, one row per group as
    ``tunelab show`` tables it: the tuned model against the opponent the verdict names; none without groups."""
    from tunelab.evaluation.compare import GroupComparison

    saved = comparison.get("groups") if isinstance(comparison, dict) else None
    rows = []
    for group in map(GroupComparison.from_dict, saved if isinstance(saved, list) else ()):
        # No interval under MIN_TEST_EXAMPLES (NaN as saved): "-", as the CLI and the report write it.
        interval = f"[{signed(group.low)}, {signed(group.high)}]" if math.isfinite(group.low) else "-"
        rows.append({"group": group.group, "n": group.n, "metric": group.metric, "opponent": group.opponent, "tuned": group.tuned,
                     "opponent_value": group.opponent_value, "difference": group.difference, "interval": interval,
                     "outcome": group.outcome, "kind": outcome_kind(group.outcome, group.n)})
    return rows


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError: a damaged file is shown as absent
        return None


def _pipeline_state(folder: RunFolder) -> dict[str, Any] | None:
    """pipeline.json as ``runs.read_state`` reads it; a damaged one (truncated, wrong types) is shown as absent."""
    from tunelab.errors import ConfigError
    from tunelab.runs import read_state

    try:
        return read_state(folder)
    except ConfigError:
        return None


def _comparison_of(record: RunRecord) -> dict[str, Any] | None:
    """The registered verdict, as the page's header, the runs list and ``tunelab show`` give it (``tunelab report`` rewrites
    eval/comparison.json and not the registry); the file only for a run not registered as finished yet."""
    if isinstance(record.comparison, dict):
        return record.comparison
    if record.run_dir:
        saved = _load_json(RunFolder(Path(record.run_dir)).comparison)
        if isinstance(saved, dict):
            return saved
    return None


def verdict_warnings(record: RunRecord, comparison: dict[str, Any] | None) -> list[str]:
    """The warnings the report gives beside the verdict (``report.verdict_warnings``): the comparison's, then those of
    each evaluation it compares (read from the run's files; the comparison's alone when they cannot be read)."""
    from tunelab.evaluation.report import verdict_warnings as report_warnings
    from tunelab.evaluation.result import EvalResult

    if not comparison:
        return []
    warnings = [str(w) for w in comparison.get("warnings") or []]
    if not record.run_dir or not isinstance(comparison.get("comparisons"), dict):
        return warnings
    run = RunFolder(Path(record.run_dir))
    found = run.baseline_evaluations()
    try:
        baselines = {name: EvalResult.load(found[name]) for name in comparison["comparisons"] if name in found}
        tuned = EvalResult.load(run.tuned_eval)
    except DataError:
        return warnings
    return report_warnings(warnings, baselines, tuned)


def out_of_scope(record: RunRecord) -> list[str]:
    """classify with an out-of-scope label: the report's line of each model's threshold (``report.out_of_scope_lines``),
    read from the run's evaluations; none when they cannot be read."""
    from tunelab.evaluation.report import out_of_scope_lines
    from tunelab.evaluation.result import EvalResult

    if not record.run_dir or record.task != "classify":
        return []
    run = RunFolder(Path(record.run_dir))
    try:
        tuned = EvalResult.load(run.tuned_eval)
        baselines = {name: EvalResult.load(path) for name, path in run.baseline_evaluations().items()}
    except DataError:
        return []
    return out_of_scope_lines(baselines, tuned)


def confusion_matrices(record: RunRecord) -> list[dict[str, Any]]:
    """Each model's confusion matrix (classify): the tuned model's, then the baselines' as registered."""
    from tunelab.evaluation.report import confusion_view

    found = []
    baselines = (record.artifacts or {}).get("baselines") or {}
    for name, metrics in [("tuned", record.tuned_metrics or {}), *baselines.items()]:
        matrix = (metrics or {}).get("confusion_matrix") if isinstance(metrics, dict) else None
        if isinstance(matrix, dict) and matrix.get("labels"):
            found.append({"name": name, "view": confusion_view(matrix["labels"], matrix["matrix"])})
    return found


def changed(record: RunRecord, comparison: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The examples that changed most between the strongest baseline and the tuned model (as in the report)."""
    from tunelab.evaluation.report import changed_examples, shown_prediction
    from tunelab.evaluation.result import EvalResult

    if not record.run_dir or not comparison:
        return []
    run = RunFolder(Path(record.run_dir))
    strongest = comparison.get("strongest") or "base"
    paths = (run.baseline_eval(strongest), run.tuned_eval)
    if not all(path.is_file() for path in paths):
        return []
    try:
        before, after = (EvalResult.load(path) for path in paths)
        examples = changed_examples(before, after)
    except (DataError, KeyError):
        return []
    return [
        {"change": e["change"], "source": e["source"], "group": e["group"], "prompt": e["prompt"], "reference": e["reference"],
         "before": shown_prediction(after.task, e["before"]), "after": shown_prediction(after.task, e["after"]), "against": strongest}
        for e in examples
    ]


def timing_rows(record: RunRecord, pipeline: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Estimate against actual time per step: the registry's timings, and every step's wall time from pipeline.json."""
    rows = []
    timings = record.timings or {}
    walls = (pipeline or {}).get("timings") or {}
    aliases = {"data_check": "check", "eval": "evaluate"}
    seen = set()
    for step, entry in timings.items():
        estimated, actual = entry.get("estimated_s"), entry.get("actual_s")
        ratio = actual / estimated if estimated and actual is not None else None
        rows.append({"step": step, "estimated": estimated, "actual": actual, "ratio": ratio})
        seen.add(aliases.get(step, step))
    for step, seconds in walls.items():
        if step not in seen:
            rows.append({"step": step, "estimated": None, "actual": seconds, "ratio": None})
    return rows


def run_files(record: RunRecord) -> dict[str, Any]:
    """Which of the run's files exist: report, adapter or full model, data check."""
    from tunelab.evaluation.review import review_opponent

    if not record.run_dir:
        return {}
    run = RunFolder(Path(record.run_dir))
    review = review_opponent(run.root).is_file() and run.tuned_eval.is_file()
    if review and record.task == "text":
        # A text run is reviewed on its continuation samples (eval.text_samples): none written, nothing to review.
        review = bool((_load_json(run.tuned_eval) or {}).get("samples"))
    return {
        "report_html": run.report_html.is_file(), "report_md": run.report_md.is_file(),
        "adapter": run.adapter.is_dir(), "model": run.model.is_dir(), "review": review,
        "folder": str(run.root), "exists": run.root.is_dir(),
    }


def run_page(registry: Registry, run: str) -> dict[str, Any]:
    """Everything the page of one run shows.

    Raises:
        RegistryError: when the run does not exist.
    """
    record = get_run(registry, run)
    folder = RunFolder(Path(record.run_dir)) if record.run_dir else None
    pipeline = _pipeline_state(folder) if folder else None
    data_check = _load_json(folder.data_check) if folder else None
    calibration = _load_json(folder.calibration) if folder else None
    comparison = _comparison_of(record)
    names, lines = verdict_table(comparison)
    estimate = record.estimate or {}
    return {
        "record": record,
        "row": run_row(record),
        "config_text": record.config or "",
        "data_check": data_check if isinstance(data_check, dict) else None,
        "estimate": estimate,
        "estimate_summary": estimate_summary(estimate),
        "timings": timing_rows(record, pipeline if isinstance(pipeline, dict) else None),
        "steps": list(((pipeline or {}).get("steps") or {}).keys()) if isinstance(pipeline, dict) else [],
        "comparison": comparison,
        "baseline_names": names,
        "metric_lines": lines,
        "group_rows": group_rows(comparison),
        "verdict_warnings": verdict_warnings(record, comparison),
        # As `tunelab show` lists them (the verdict's and the artifacts', kept when no baseline was scored), with those of a
        # comparison not registered yet.
        "skipped": {**record.baselines_skipped, **(comparison["skipped"] if isinstance((comparison or {}).get("skipped"), dict) else {})},
        "out_of_scope": out_of_scope(record),
        # classify.calibrate: the temperature and the validation ECE before and after, as calibration.json keeps them.
        "calibration": calibration if isinstance(calibration, dict) else None,
        "confusions": confusion_matrices(record),
        "examples": changed(record, comparison),
        "files": run_files(record),
        "baselines_done": finished_baselines(folder.root, pipeline) if folder and not comparison else [],
        # Without a verdict (every baseline skipped, or none asked for) the tuned model's own metrics, as `tunelab show` lists them.
        "tuned_metrics": metric_value_table(record.tuned_metrics) if not lines else {},
        "score_name": VALIDATION_SCORE_NAMES.get(record.task or "", "validation score"),
        "train": (record.artifacts or {}).get("train") or (((pipeline or {}).get("steps") or {}).get("train") if isinstance(pipeline, dict) else None),
        **serving(registry, record),
    }


def serving(registry: Registry, record: RunRecord) -> dict[str, Any]:
    """The aliases that point at ``record`` (servers following ``alias:NAME`` answer with it), each with its last change
    and the run a rollback would go back to (None: none before it), and every alias name (to promote it under one)."""
    by_run = registry.aliases_by_run()
    aliases = []
    for name in by_run.get(record.id, []):
        change = registry.alias_history(name)[-1]
        try:
            target = registry.get_run(registry.rollback_target(name))
        except RegistryError:
            target = None  # no earlier run, or it was deleted from the registry: no rollback offered
        aliases.append({"name": name, "change": change, "rollback_to": target})
    return {"aliases": aliases, "alias_names": sorted(name for names in by_run.values() for name in names)}


# What the validation score of each task is (the loop's ``validation_score``): the metric a checkpoint is kept by.
VALIDATION_SCORE_NAMES = {"classify": "validation accuracy"}


def _total_steps(estimate: dict[str, Any] | None, config: dict[str, Any]) -> int | None:
    steps = ((estimate or {}).get("tokens") or {}).get("optimizer_steps")
    if isinstance(steps, int | float) and steps > 0:
        return int(steps)
    max_steps = (config.get("train") or {}).get("max_steps") if isinstance(config.get("train"), dict) else None
    return int(max_steps) if isinstance(max_steps, int) and max_steps > 0 else None


def finished_baselines(run_dir: Path, pipeline: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The baselines a (running) run has already dealt with: name and primary metric from their saved evaluations,
    and those skipped (``eval.skip_hopeless``, a prompt that holds no example) with the reason pipeline.json keeps.

    A skipped baseline is listed as skipped, never left out: the page must not read as if it was forgotten.
    Ordered as the run's ``eval.baselines`` when pipeline.json has its config.
    """
    found = []
    for name, path in RunFolder(Path(run_dir)).baseline_evaluations().items():
        saved = _load_json(path)
        metrics = saved.get("metrics") if isinstance(saved, dict) else None
        metrics = metrics if isinstance(metrics, dict) else {}
        primary = metrics.get("primary")
        found.append({"name": name, "metric": primary, "value": metrics.get(primary) if primary else None, "skipped": None})
    pipeline = pipeline if isinstance(pipeline, dict) else {}
    baseline_step = (pipeline.get("steps") or {}).get("baseline")
    skipped = baseline_step.get("skipped") if isinstance(baseline_step, dict) else None
    scored = {entry["name"] for entry in found}
    for name, reason in (skipped if isinstance(skipped, dict) else {}).items():
        if name not in scored:
            found.append({"name": name, "metric": None, "value": None, "skipped": str(reason)})
    config_eval = (pipeline.get("config") or {}).get("eval") if isinstance(pipeline.get("config"), dict) else None
    order = (config_eval or {}).get("baselines") if isinstance(config_eval, dict) else None
    if isinstance(order, list):
        position = {name: index for index, name in enumerate(order)}
        found.sort(key=lambda entry: position.get(entry["name"], len(position)))
    return found


def progress(run_dir: str | Path | None, record: RunRecord | None = None) -> dict[str, Any]:
    """What a page polls while a run trains, and draws afterwards.

    The training log's series (training loss, validation loss, validation score, learning rate), the
    live state of training (step of total, ETA, real tokens/s), the steps done, and the baselines
    already evaluated (a running run shows them before its comparison exists).
    """
    from tunelab.evaluation.report import read_training_log

    status = record.status if record else None
    if run_dir is None:
        return {"steps": [], "train": [], "validation": [], "series": {}, "live": None, "baselines": [], "status": status}
    folder = RunFolder(Path(run_dir))
    pipeline = _pipeline_state(folder) or {}
    log = read_training_log(folder.metrics)
    steps = list((pipeline.get("steps") or {}).keys())
    config = record.config_dict if record and record.config else (pipeline.get("config") or {})
    task = (record.task if record else None) or config.get("task")
    estimate = (record.estimate if record else None) or (pipeline.get("steps") or {}).get("estimate")
    live = None
    if log.last:
        step, elapsed = int(log.last.get("step", 0)), log.last.get("elapsed")
        total = _total_steps(estimate, config)
        eta = None
        if total and step and isinstance(elapsed, int | float) and "train" not in steps:
            eta = max(0.0, elapsed / step * (total - step))
        live = {"step": step, "total_steps": total, "eta_seconds": eta, "elapsed": elapsed,
                "tokens_per_second": log.last.get("tokens_per_second"), "training": "train" not in steps}
    series = {
        "train_loss": log.train_loss, "validation_loss": log.validation_loss,
        "validation_score": log.validation_score, "lr": log.lr,
    }
    # A diverged validation loss or a baseline's undefined metric is logged as NaN: sent as null, a gap in the chart.
    from tunelab.evaluation.result import json_safe

    return json_safe({
        "steps": steps,
        "timings": pipeline.get("timings") or {},
        "train": log.train_loss,
        "validation": log.validation_loss,
        "series": series,
        "score_name": VALIDATION_SCORE_NAMES.get(task or "", "validation score"),
        "live": live,
        "baselines": finished_baselines(folder.root, pipeline) if folder.eval_dir.is_dir() or pipeline else [],
        "status": status,
    })


# -- comparing runs ----------------------------------------------------------------------------


def compare_page(registry: Registry, runs: list[str]) -> dict[str, Any]:
    """Runs side by side: metrics, the tuned models' paired differences from the first run, the same test examples.

    Raises:
        RegistryError: for an unknown run or fewer than two.
    """
    from tunelab.evaluation.compare import NOT_COMPARED, compare_evaluations
    from tunelab.evaluation.report import shown_prediction
    from tunelab.evaluation.result import EvalResult

    side_by_side = registry.compare_runs(runs)
    records = [get_run(registry, run) for run in runs]
    rows = [run_row(record) for record in records]
    tuned: list[EvalResult | None] = []
    for record in records:
        path = RunFolder(Path(record.run_dir)).tuned_eval if record.run_dir else None
        try:
            tuned.append(EvalResult.load(path) if path and path.is_file() else None)
        except DataError:
            tuned.append(None)
    differences: list[dict[str, Any]] = []
    notes: list[str] = []
    first = tuned[0]
    for record, other in zip(records[1:], tuned[1:], strict=True):
        if first is None or other is None:
            notes.append(f"{record.name}: no tuned evaluation to compare")
            continue
        try:
            # The judged run's own bootstrap, as `tunelab promote` and its report use: the same interval everywhere.
            seed, samples = bootstrap_settings(record.run_dir)
            comparison = compare_evaluations(first, other, seed=seed, samples=samples)
        except (DataError, ModelError) as error:
            notes.append(f"{record.name}: {error.message}")
            continue
        notes.extend(f"{record.name}: {w}" for w in comparison.warnings)
        differences.append({"name": record.name, "n": comparison.n, "primary": comparison.primary, "metrics": comparison.metrics, "verdict": comparison.verdict})
    examples: list[dict[str, Any]] = []
    available = [result for result in tuned if result is not None]
    if len(available) == len(tuned) and available:
        by_run = [{row["id"]: row for row in result.rows} for result in available]
        shared = [row_id for row_id in by_run[0] if all(row_id in rows_of for rows_of in by_run[1:])]
        for row_id in shared:
            cells = [rows_of[row_id] for rows_of in by_run]
            predictions = [cell.get("prediction") for cell in cells]
            examples.append({
                "id": row_id, "prompt": cells[0].get("prompt"), "reference": cells[0].get("reference"),
                "shown": [shown_prediction(available[i].task, cell) for i, cell in enumerate(cells)],
                "differ": len({json.dumps(p, default=str) for p in predictions}) > 1,
            })
        examples.sort(key=lambda example: not example["differ"])  # where the runs disagree first
    tuned_metrics = {name: values for name, values in side_by_side.tuned_metrics.items() if name not in HIDDEN_METRICS}
    # A preference run's base model is the reference its reward is measured against, scored as itself: its stored
    # value of such a metric (a reward margin of 0) is shown as the verdict has it, not compared, with why.
    baseline_metrics = {
        name: [{"value": value, "outcome": NOT_COMPARED, "not_compared": reason} if reason else {"value": value, "not_compared": None}
               for value, reason in zip(values, side_by_side.baseline_not_compared.get(name, [None] * len(values)), strict=True)]
        for name, values in side_by_side.baseline_metrics.items() if name not in HIDDEN_METRICS
    }
    tasks = sorted({row.task for row in rows})
    if len(tasks) > 1:
        # Their metrics differ (accuracy, ROUGE-L, perplexity): side by side they say nothing about each other.
        notes.insert(0, f"these runs are of different tasks ({', '.join(tasks)}): each is shown with its own metric; "
                        "their numbers and curves are not comparable")
    return {
        "records": records, "rows": rows, "tuned_metrics": tuned_metrics, "baseline_metrics": baseline_metrics,
        "config_differences": side_by_side.config_differences, "differences": differences, "notes": notes,
        "examples": examples[:EXAMPLES_SHOWN], "shared_examples": len(examples), "tasks": tasks,
        "chart_runs": [{"id": row.id, "name": row.name} for row in rows],
        "score_name": VALIDATION_SCORE_NAMES.get(tasks[0], "validation score") if len(tasks) == 1 else "validation score",
    }


def metric_value_table(metrics: dict | None) -> dict[str, float]:
    return {name: value for name, value in metric_values(metrics).items() if name not in HIDDEN_METRICS}


# -- review ------------------------------------------------------------------------------------


def _reference_of(run_dir: Path, example_id: str) -> str | None:
    """The test example's reference answer (from the tuned evaluation; a text run's: the author's continuation of the
    sample's opening, ``EvalResult.samples``): shown beside the two answers, it names no side."""
    tuned = _load_json(RunFolder(run_dir).tuned_eval) or {}
    for row in [*(tuned.get("samples") or []), *(tuned.get("rows") or [])]:
        if row.get("id") == example_id:
            return row.get("reference")
    return None


def review_state(registry: Registry, run: str, reviewer: str | None) -> dict[str, Any]:
    """A run's blind review as one reviewer sees it: the next row (sides unnamed), progress, the live score, agreement.

    Raises:
        RegistryError: when the run does not exist.
        DataError: when the run has no base and tuned evaluation to review.
    """
    from tunelab.evaluation.review import (
        agreement,
        open_run_review,
        registry_judgments,
        review_opponent,
        score_registry_reviews,
    )

    record = get_run(registry, run)
    if not record.run_dir:
        raise DataError(f"run {record.name} has no run folder recorded")
    sheet = open_run_review(record.run_dir)
    judgments = registry_judgments(registry, record.id, sheet)
    reviewer = (reviewer or "").strip() or None
    # Examples both models answered alike carry no preference: not asked, by the sheet's one rule (``not_asked``).
    identical = sheet.identical
    askable = [row for row in sheet.rows if row["id"] not in identical]
    # Skipped rows count as seen by this reviewer (they come back only after every other row).
    seen = {j.example_id for j in judgments if j.reviewer == reviewer}
    skipped = {j.example_id for j in judgments if j.reviewer == reviewer and j.choice is None}
    upcoming = [row for row in askable if row["id"] not in seen] or [row for row in askable if row["id"] in skipped]
    counts: dict[str, int] = {}
    for judgment in judgments:
        if judgment.choice is not None:
            counts[judgment.reviewer] = counts.get(judgment.reviewer, 0) + 1
    try:
        score = score_registry_reviews(registry, record.id, sheet).to_dict()
    except DataError:
        score = None
    next_row = dict(upcoming[0]) if reviewer and upcoming else None
    if next_row is not None:
        next_row["reference"] = _reference_of(Path(record.run_dir), next_row["id"])
    return {
        "record": {"id": record.id, "name": record.name, "task": record.task},
        # Which baseline the tuned model is reviewed against (the base model, else the verdict's strongest when the base
        # was skipped): named, as the score is; which side is which stays unnamed.
        "opponent": review_opponent(record.run_dir).stem,
        "reviewer": reviewer,
        "total": len(askable),
        "identical": len(identical),
        "done": len({j.example_id for j in judgments if j.reviewer == reviewer and j.choice is not None and j.example_id not in identical}),
        "next": next_row,
        "score": score,
        "reviewers": counts,
        "agreement": [a.to_dict() for a in agreement(judgments)],
        "sheet": str(sheet.path),
        # What the reviewer is asked when it is not "which answer is better" (a text run: which continuation is closer
        # to the author's voice).
        "question": sheet.question,
    }


# -- advice (tunelab advise) -------------------------------------------------------------------

ADVICE_PREFIX = "advise-"
CHART_WIDTH, CHART_HEIGHT = 640, 300
CHART_MARGIN = {"left": 52, "right": 16, "top": 14, "bottom": 36}


def advice_root(registry: Registry) -> Path:
    """Where ``tunelab advise`` writes beside this registry's runs (``<train.output_dir>/advise-<name>``)."""
    return registry.path.parent


def advice_list(registry: Registry) -> list[dict[str, Any]]:
    """Every advice written beside the registry's runs, newest first: its name, task, recommendation."""
    from tunelab.tasks.advise import ADVICE_FILE

    rows = []
    for path in advice_root(registry).glob(f"{ADVICE_PREFIX}*/{ADVICE_FILE}"):
        data = _load_json(path)
        if not isinstance(data, dict) or "recommendation" not in data:
            continue
        rows.append({
            "name": path.parent.name, "task": data.get("task"), "metric": data.get("metric"), "train_size": data.get("train_size"),
            "recommendation": data.get("recommendation"), "seconds": data.get("seconds"), "modified": path.stat().st_mtime,
        })
    return sorted(rows, key=lambda row: -row["modified"])


def advice_folder(registry: Registry, name: str) -> Path:
    """The advice folder ``name`` beside the registry: one path component named ``advise-...``.

    Raises:
        DataError: for any other name.
    """
    if not name.startswith(ADVICE_PREFIX) or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
        raise DataError(f"'{name}' is not an advice folder name", "advice folders are named advise-<run name>")
    return advice_root(registry) / name


def advice_page(registry: Registry, name: str) -> dict[str, Any]:
    """One advice: its table, recommendation, notes and the chart of its curves (None while it is still being made).

    Raises:
        DataError: for a bad name, or a folder without a readable advice.
    """
    from tunelab.tasks.advise import ADVICE_FILE, load_advice

    folder = advice_folder(registry, name)
    if not (folder / ADVICE_FILE).is_file():
        return {"advice_name": name, "advice": None, "chart": None}
    data = load_advice(folder)
    return {"advice_name": name, "advice": data, "chart": curve_chart(data)}


def curve_chart(data: dict[str, Any]) -> dict[str, Any] | None:
    """The learning curves of an advice as SVG shapes (a log scale of training examples, or windows of text, across; the metric up).

    Each learning curve: its 95% band (a polygon), the fitted law (a line), the measured points; each
    opponent that does not learn: a dashed line at its score; markers at the user's data and the crossing.
    """
    curves = [c for c in data.get("curves", []) if c.get("grid")]
    flats = [o for o in data.get("opponents", []) if not any(c["name"] == o["name"] for c in curves)]
    if not curves:
        return None
    sizes = [g["n"] for c in curves for g in c["grid"]]
    values = [v for c in curves for g in c["grid"] for v in (g["low"], g["high"], g["value"])]
    values += [s for c in curves for s in c["scores"]] + [o["score"] for o in flats]
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    low, high = min(finite), max(finite)
    if data.get("metric") in ("accuracy", "rougeL", "macro_f1"):
        low, high = max(0.0, low), min(1.0, high)
    pad = (high - low) * 0.05 or 0.05
    low, high = low - pad, high + pad
    left, right, top, bottom = (CHART_MARGIN[k] for k in ("left", "right", "top", "bottom"))
    n_low, n_high = math.log(min(sizes)), math.log(max(sizes))

    def x(n: float) -> float:
        return round(left + (math.log(n) - n_low) / (n_high - n_low) * (CHART_WIDTH - left - right), 1)

    def y(v: float) -> float:
        v = min(max(v, low), high)
        return round(top + (high - v) / (high - low) * (CHART_HEIGHT - top - bottom), 1)

    shapes = []
    for index, curve in enumerate(curves):
        grid = curve["grid"]
        band = [f"{x(g['n'])},{y(g['high'])}" for g in grid] + [f"{x(g['n'])},{y(g['low'])}" for g in reversed(grid)]
        shapes.append({
            "name": curve["name"], "series": index, "band": " ".join(band),
            "line": " ".join(f"{x(g['n'])},{y(g['value'])}" for g in grid),
            "points": [{"x": x(n), "y": y(s), "title": f"{curve['name']}: {s:.3f} at {n:,} {data.get('size_noun', 'examples')}"}
                       for n, s in zip(curve["sizes"], curve["scores"], strict=True)],
        })
    ticks_x = [n for n in (1, 3, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000) if min(sizes) <= n <= max(sizes)]
    step = (high - low) / 4
    markers = [{"x": x(data["train_size"]), "label": f"your data ({data['train_size']:,})"}]
    crossing = data.get("crossing") or {}
    if crossing.get("size") and not crossing.get("ahead_at_start") and min(sizes) <= crossing["size"] <= max(sizes):
        markers.append({"x": x(crossing["size"]), "label": f"crossing ({crossing['size']:,.0f})"})
    return {
        "width": CHART_WIDTH, "height": CHART_HEIGHT, "left": left, "right": CHART_WIDTH - right, "top": top,
        "bottom": CHART_HEIGHT - bottom, "curves": shapes,
        "flats": [{"name": o["name"], "y": y(o["score"]), "score": o["score"]} for o in flats],
        "markers": markers, "ticks_x": [{"x": x(n), "label": f"{n:,}"} for n in ticks_x],
        "ticks_y": [{"y": y(low + step * i), "label": f"{low + step * i:.3g}"} for i in range(5)],
        "metric": data.get("metric"),
    }


# -- start a run -------------------------------------------------------------------------------

TASKS = ("classify", "sft", "text", "preference")
# The form fields that become dotted overrides (a blank field keeps the config's value, or the task's default).
FIELD_KEYS = {
    "model": "model", "task": "task", "name": "name", "train": "data.train", "test": "data.test", "method": "train.method",
    "epochs": "train.epochs", "lr": "train.lr", "batch_size": "train.batch_size", "max_length": "data.max_length", "lora_r": "lora.r",
}


def start_options(registry: Registry, root: Path | None = None) -> dict[str, Any]:
    """What the start form offers: example configs, models here (with finished runs to build on), data files, tasks."""
    from tunelab.models.catalog import list_models

    root = Path(root or Path.cwd())
    configs = sorted(str(path.relative_to(root)) for path in root.glob("examples/*/config*.yaml"))
    configs += sorted(str(path.relative_to(root)) for path in root.glob("*.yaml"))[:20]
    data = sorted(str(path.relative_to(root)) for pattern in ("examples/*/*.jsonl", "*.jsonl", "*.csv", "data/*.jsonl", "data/*.csv")
                  for path in root.glob(pattern))[:60]
    models = [{"name": entry.name, "note": entry.note or entry.kind} for entry in list_models() if entry.kind != "converted cache"]
    runs = [{"name": record.run_dir, "note": f"run {record.name} ({record.task})"} for record in registry.list_runs(status="finished", limit=30)
            if record.run_dir]
    return {"configs": configs, "data_files": data, "models": models + runs, "tasks": TASKS}


def start_overrides(fields: dict[str, Any]) -> list[str]:
    """The form's filled fields as ``key=value`` overrides, in a stable order."""
    overrides = []
    for field_name, key in FIELD_KEYS.items():
        value = str(fields.get(field_name) or "").strip()
        if value:
            overrides.append(f"{key}={value}")
    return overrides


# -- the playground ----------------------------------------------------------------------------


def playground_page(registry: Registry, chosen: list[str]) -> dict[str, Any]:
    """The runs a person can try (finished, with weights), and the one or two picked.

    Raises:
        RegistryError: for a picked run that does not exist.
    """
    runs = []
    for record in registry.list_runs(status="finished", limit=200):
        files = run_files(get_run(registry, record.id))
        if files.get("adapter") or files.get("model"):
            runs.append({"id": record.id, "name": record.name, "task": record.task})
    picked = [get_run(registry, run) for run in chosen]
    picked_rows = [{"id": record.id, "name": record.name, "task": record.task} for record in picked]
    tasks = {row["task"] for row in picked_rows}
    note = "the two runs are of different tasks: each answers in its own way" if len(tasks) > 1 else None
    return {"runs": runs, "picked": picked_rows, "note": note}
