"""What each page shows, as plain values read from the registry and the run folders (the templates render them).

Nothing here computes a new number the CLI does not: the verdict and its intervals are the run's own
``eval/comparison.json`` (or the registry's copy), the changed examples are the report's
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

from tunelab.errors import DataError
from tunelab.estimate.plan import duration
from tunelab.registry import Registry, RunRecord, metric_values
from tunelab.runs import RunFolder

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


def signed(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value:+.3g}"


def _primary_comparison(record: RunRecord) -> tuple[str | None, dict[str, Any] | None, str | None]:
    """(primary metric, its comparison against the base model if present else the strongest baseline, that baseline)."""
    comparison = record.comparison if isinstance(record.comparison, dict) else None
    if not comparison or not isinstance(comparison.get("comparisons"), dict):
        return None, None, None
    primary = comparison.get("primary")
    opponents = comparison["comparisons"]
    name = "base" if "base" in opponents else comparison.get("strongest")
    for metric in (opponents.get(name) or {}).get("metrics", []):
        if metric.get("name") == primary:
            return primary, metric, name
    return primary, None, name


def _cheapest(estimate: dict[str, Any] | None) -> tuple[float | None, str]:
    """The cheapest estimated way to pay for the run elsewhere (a GPU that fits, or a hosted fine-tuning API)."""
    options = []
    for gpu in (estimate or {}).get("gpus") or []:
        if gpu.get("fits", True) and isinstance(gpu.get("usd"), int | float):
            options.append((float(gpu["usd"]), f"on {gpu.get('name')}"))
    for cloud in (estimate or {}).get("cloud") or []:
        if isinstance(cloud.get("usd"), int | float):
            options.append((float(cloud["usd"]), f"{cloud.get('provider')} {cloud.get('model')}"))
    if not options:
        return None, ""
    return min(options)


def money(usd: float | None) -> str:
    if usd is None:
        return "-"
    return f"${usd:.2f}" if usd >= 0.01 else f"${usd:.4f}" if usd >= 0.0001 else "< $0.0001"


def _data_name(record: RunRecord) -> str:
    data = (record.config_dict.get("data") or {}) if record.config else {}
    train = data.get("train") or data.get("preset") or "-"
    return Path(str(train)).name if train != "-" else "-"


@dataclass
class RunRow:
    """One line of the Runs table."""

    id: str
    name: str
    status: str
    task: str
    model: str
    data: str
    metric: str
    before: float | None
    after: float | None
    low: float | None
    high: float | None
    against: str | None
    verdict: str
    cost_usd: float | None
    cost_where: str
    seconds: float | None
    estimated_seconds: float | None
    created: str

    @property
    def interval(self) -> str:
        if self.low is None or self.high is None:
            return ""
        return f"[{signed(self.low)}, {signed(self.high)}]"


def run_row(record: RunRecord) -> RunRow:
    key = record.key_metric()
    metric, before, after = key if key else ("-", None, None)
    primary, compared, against = _primary_comparison(record)
    low = high = None
    if compared is not None and (primary == metric or key is None):
        metric = primary or metric
        before = compared.get("before", before)
        after = compared.get("after", after)
        low, high = compared.get("low"), compared.get("high")
    timings = record.timings or {}
    actual = [entry["actual_s"] for entry in timings.values() if isinstance(entry.get("actual_s"), int | float)]
    estimated = [entry["estimated_s"] for entry in timings.values() if isinstance(entry.get("estimated_s"), int | float)]
    usd, where = _cheapest(record.estimate)
    return RunRow(
        id=record.id, name=record.name, status=record.status, task=record.task or "-",
        model=Path(record.model).name if record.model else "-", data=_data_name(record), metric=metric,
        before=before, after=after, low=low, high=high, against=against, verdict=record.verdict or "-",
        cost_usd=usd, cost_where=where, seconds=sum(actual) if actual else None,
        estimated_seconds=sum(estimated) if estimated else None, created=record.created_at[:19].replace("T", " "),
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


def verdict_table(comparison: dict[str, Any] | None) -> tuple[list[str], list[MetricLine]]:
    """The before/after/baselines table of a stored verdict: one line per metric, one cell per baseline."""
    if not comparison or not isinstance(comparison.get("comparisons"), dict) or not comparison["comparisons"]:
        return [], []
    names = list(comparison["comparisons"])
    first = comparison["comparisons"][names[0]]
    lines = []
    for metric in first.get("metrics", []):
        direction = {True: "higher is better", False: "lower is better"}.get(metric.get("higher_is_better"), "")
        line = MetricLine(metric["name"], metric["name"] == comparison.get("primary"), direction, metric.get("after"))
        for name in names:
            other = next((m for m in comparison["comparisons"][name].get("metrics", []) if m["name"] == metric["name"]), {})
            line.cells.append({
                "baseline": name, "value": other.get("before"), "difference": other.get("difference"),
                "low": other.get("low"), "high": other.get("high"), "outcome": other.get("outcome", ""),
            })
        lines.append(line)
    return names, lines


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _comparison_of(record: RunRecord) -> dict[str, Any] | None:
    if record.run_dir:
        saved = _load_json(RunFolder(Path(record.run_dir)).comparison)
        if isinstance(saved, dict):
            return saved
    return record.comparison if isinstance(record.comparison, dict) else None


def confusion_matrices(record: RunRecord) -> list[dict[str, Any]]:
    """Each model's confusion matrix (classify): the baselines' as registered, then the tuned model's."""
    found = []
    baselines = (record.artifacts or {}).get("baselines") or {}
    for name, metrics in [*baselines.items(), ("tuned", record.tuned_metrics or {})]:
        matrix = (metrics or {}).get("confusion_matrix") if isinstance(metrics, dict) else None
        if isinstance(matrix, dict) and matrix.get("labels"):
            peak = max((max(row) for row in matrix["matrix"] if row), default=0) or 1
            found.append({"name": name, "labels": matrix["labels"], "matrix": matrix["matrix"], "peak": peak, "accuracy": metrics.get("accuracy")})
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
        {"change": e["change"], "source": e["source"], "prompt": e["prompt"], "reference": e["reference"],
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
    if not record.run_dir:
        return {}
    run = RunFolder(Path(record.run_dir))
    return {
        "report_html": run.report_html.is_file(), "report_md": run.report_md.is_file(),
        "adapter": run.adapter.is_dir(), "model": run.model.is_dir(), "review": run.baseline_eval("base").is_file() and run.tuned_eval.is_file(),
        "folder": str(run.root), "exists": run.root.is_dir(),
    }


def run_page(registry: Registry, run: str) -> dict[str, Any]:
    """Everything the page of one run shows.

    Raises:
        RegistryError: when the run does not exist.
    """
    record = get_run(registry, run)
    folder = RunFolder(Path(record.run_dir)) if record.run_dir else None
    pipeline = _load_json(folder.pipeline_state) if folder else None
    data_check = _load_json(folder.data_check) if folder else None
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
        "confusions": confusion_matrices(record),
        "examples": changed(record, comparison),
        "files": run_files(record),
        "train": (record.artifacts or {}).get("train") or (((pipeline or {}).get("steps") or {}).get("train") if isinstance(pipeline, dict) else None),
    }


def estimate_summary(estimate: dict[str, Any] | None) -> list[tuple[str, str]]:
    """The few lines of an estimate a person decides on: tokens, steps, time here, memory, money, budget."""
    if not estimate:
        return []
    tokens = estimate.get("tokens") or {}
    memory = estimate.get("memory") or {}
    lines = [
        ("task / method", f"{estimate.get('task', '-')} / {estimate.get('method', '-')} ({estimate.get('precision', '-')})"),
        ("training examples", number(tokens.get("examples"))),
        ("training tokens", f"{tokens.get('train_tokens', 0):,}" if isinstance(tokens.get("train_tokens"), int) else "-"),
        ("optimizer steps", number(tokens.get("optimizer_steps"))),
    ]
    seconds = estimate.get("seconds") or {}
    if seconds:
        here = f" ({estimate['here']})" if estimate.get("here") else ""
        lines.append((f"time on this machine{here}", ", ".join(f"{step} {duration(value)}" for step, value in seconds.items()) + f"; total {duration(estimate.get('total_seconds'))}"))
    else:
        lines.append(("time on this machine", "not measured (calibration off)"))
    if memory:
        fits = "fits" if memory.get("fits") else "does NOT fit"
        lines.append(("memory", f"{number((memory.get('total') or 0) / 2**30, 3)} GiB needed on {memory.get('device')}, {fits} in {number((memory.get('available') or 0) / 2**30, 3)} GiB"))
    usd, where = _cheapest(estimate)
    if usd is not None:
        lines.append(("cheapest elsewhere", f"{money(usd)} {where}"))
    budget = estimate.get("budget") or {}
    if budget:
        lines.append(("budget", "over: " + "; ".join(budget.get("reasons") or []) if budget.get("over") else "within budget"))
    return lines


def progress(run_dir: str | Path | None, record: RunRecord | None = None) -> dict[str, Any]:
    """What a page polls while a run trains: finished steps, the loss points so far, the status."""
    from tunelab.evaluation.report import read_loss_log

    if run_dir is None:
        return {"steps": [], "train": [], "validation": [], "status": record.status if record else None}
    folder = RunFolder(Path(run_dir))
    pipeline = _load_json(folder.pipeline_state)
    train, validation, _ = read_loss_log(folder.metrics)
    steps = list(((pipeline or {}).get("steps") or {}).keys()) if isinstance(pipeline, dict) else []
    return {
        "steps": steps,
        "timings": (pipeline or {}).get("timings") if isinstance(pipeline, dict) else {},
        "train": train,
        "validation": validation,
        "status": record.status if record else None,
    }


# -- comparing runs ----------------------------------------------------------------------------


def compare_page(registry: Registry, runs: list[str]) -> dict[str, Any]:
    """Runs side by side: metrics, the tuned models' paired differences from the first run, the same test examples.

    Raises:
        RegistryError: for an unknown run or fewer than two.
    """
    from tunelab.evaluation.compare import compare_evaluations
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
            comparison = compare_evaluations(first, other, seed=0, samples=1000)
        except DataError as error:
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
    baseline_metrics = {name: values for name, values in side_by_side.baseline_metrics.items() if name not in HIDDEN_METRICS}
    return {
        "records": records, "rows": rows, "tuned_metrics": tuned_metrics, "baseline_metrics": baseline_metrics,
        "config_differences": side_by_side.config_differences, "differences": differences, "notes": notes,
        "examples": examples[:EXAMPLES_SHOWN], "shared_examples": len(examples),
    }


def metric_value_table(metrics: dict | None) -> dict[str, float]:
    return {name: value for name, value in metric_values(metrics).items() if name not in HIDDEN_METRICS}


# -- review ------------------------------------------------------------------------------------


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
        score_registry_reviews,
    )

    record = get_run(registry, run)
    if not record.run_dir:
        raise DataError(f"run {record.name} has no run folder recorded")
    sheet = open_run_review(record.run_dir)
    judgments = registry_judgments(registry, record.id, sheet)
    reviewer = (reviewer or "").strip() or None
    # Skipped rows count as seen by this reviewer (they come back only after every other row).
    seen = {j.example_id for j in judgments if j.reviewer == reviewer}
    skipped = {j.example_id for j in judgments if j.reviewer == reviewer and j.choice is None}
    upcoming = [row for row in sheet.rows if row["id"] not in seen] or [row for row in sheet.rows if row["id"] in skipped]
    counts: dict[str, int] = {}
    for judgment in judgments:
        if judgment.choice is not None:
            counts[judgment.reviewer] = counts.get(judgment.reviewer, 0) + 1
    try:
        score = score_registry_reviews(registry, record.id, sheet).to_dict()
    except DataError:
        score = None
    return {
        "record": {"id": record.id, "name": record.name, "task": record.task},
        "reviewer": reviewer,
        "total": len(sheet.rows),
        "done": len({j.example_id for j in judgments if j.reviewer == reviewer and j.choice is not None}),
        "next": upcoming[0] if reviewer and upcoming else None,
        "score": score,
        "reviewers": counts,
        "agreement": [a.to_dict() for a in agreement(judgments)],
        "sheet": str(sheet.path),
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
    """The learning curves of an advice as SVG shapes (a log scale of training examples across, the metric up).

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
            "points": [{"x": x(n), "y": y(s), "title": f"{curve['name']}: {s:.3f} at {n:,} examples"}
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
