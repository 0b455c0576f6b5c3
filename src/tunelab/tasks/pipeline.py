"""The main job: from a config to a verdict, in the order a careful person would do it.

    check data -> split -> estimate -> baseline eval -> train -> eval -> report -> register

Each step's outcome is written to ``<run>/pipeline.json`` as it finishes, so ``tunelab run --resume
RUN`` picks up an interrupted run at the step it stopped in (training itself resumes from its last
checkpoint). The base model's evaluation is cached in the registry by model + test-set fingerprint +
evaluation settings, so variants of a run (a sweep) pay for it once.

Nothing is registered before the config and the data have passed their checks: a bad key, a wrong
type or a missing file never leaves a half-registered run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import RunConfig, dump_config, parse_config, resolve_defaults
from tunelab.errors import ConfigError, DataError, TunelabError
from tunelab.paths import RunFolder, atomic_write_text

STEPS = ("check", "split", "estimate", "baseline", "train", "evaluate", "report", "register")
STATE_FILE = "pipeline.json"

EventFn = Callable[[str, str, dict[str, Any]], None]  # (step, "start"|"done"|"skip"|"warn", details)


class BudgetExceeded(TunelabError):
    """The estimate is over the budget the user set; nothing was trained."""


@dataclass
class RunOutcome:
    """Everything ``tunelab run`` produced; the CLI renders it."""

    name: str
    run_dir: Path
    registry_id: str | None
    config: RunConfig
    split_sizes: dict[str, int]
    estimate: dict[str, Any] | None
    train: dict[str, Any] | None
    base_metrics: dict[str, Any] | None
    tuned_metrics: dict[str, Any] | None
    comparison: Any  # tunelab.evaluation.compare.Comparison
    report: dict[str, str]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str | None:
        return None if self.comparison is None else self.comparison.verdict


def run_name(config: RunConfig) -> str:
    model = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(config.model.name).name.removesuffix(".gguf")) or "model"
    return config.name or f"{config.task}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def _registry_path(config: RunConfig) -> Path:
    return Path(config.registry) if config.registry else Path(config.train.output_dir) / "registry.db"


class _State:
    """pipeline.json: the config, finished steps and what each produced."""

    def __init__(self, run: RunFolder, data: dict[str, Any]) -> None:
        self.run = run
        self.data = data

    @classmethod
    def load(cls, run: RunFolder) -> _State:
        path = run.root / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"{run.root} has no {STATE_FILE}: it was not started by `tunelab run`")
        return cls(run, json.loads(path.read_text(encoding="utf-8")))

    def done(self, step: str) -> bool:
        return step in self.data.setdefault("steps", {})

    def finish(self, step: str, value: Any, seconds: float) -> None:
        self.data.setdefault("steps", {})[step] = value
        self.data.setdefault("timings", {})[step] = round(seconds, 3)
        self.save()

    def get(self, step: str) -> Any:
        return self.data.get("steps", {}).get(step)

    def save(self) -> None:
        atomic_write_text(self.run.root / STATE_FILE, json.dumps(self.data, indent=1, default=str))


def _label_map_for(config: RunConfig, split: Any, tokenizer: Any):
    if config.task != "classify":
        return None
    from tunelab.data.labels import build_label_map

    return build_label_map(sorted({record.label for record in split.train}), tokenizer)


def _eval_settings(config: RunConfig, label_map: Any) -> dict[str, Any]:
    return {
        "task": config.task,
        "eval": config.eval.model_dump(mode="json"),
        "max_length": config.data.max_length,
        "stride": config.data.stride,
        "system_prompt": config.data.system_prompt,
        "max_test_examples": config.data.max_test_examples,
        "labels": label_map.to_dict() if label_map is not None else None,
    }


def _model_key(loaded: Any) -> str:
    """What identifies the base model for the baseline cache: its resolved location (+ file identity)."""
    source = loaded.source
    location = Path(source.location)
    if location.exists():
        stat = location.stat()
        return f"{source.kind}:{location.resolve()}:{stat.st_size}:{int(stat.st_mtime)}"
    return f"{source.kind}:{source.location}"


def run_pipeline(
    config: RunConfig | None = None,
    *,
    resume: str | Path | None = None,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    eval_progress: Callable[[int], None] | None = None,
    calibrate: bool = True,
) -> RunOutcome:
    """Run the whole lifecycle for ``config`` (or continue the run folder ``resume``).

    Raises:
        ConfigError: for an invalid config or an existing run folder.
        DataError: when the data has errors (nothing is registered then).
        BudgetExceeded: when the estimate is over ``budget.max_hours`` / ``budget.max_usd``.
        ModelError: when the model cannot be loaded.
    """
    from tunelab.data.check import check_data
    from tunelab.data.split import load_split, make_split
    from tunelab.models import load_model
    from tunelab.registry.store import Registry

    emit = on_event or (lambda step, status, details: None)

    if resume is not None:
        run = RunFolder(Path(resume))
        state = _State.load(run)
        config = parse_config(state.data["config"], source=str(run.root / STATE_FILE))
    else:
        if config is None:
            raise ConfigError("run_pipeline needs a config or a run folder to resume")
        config = resolve_defaults(config)
        if config.task == "preference":
            raise ConfigError("preference (DPO) training is not available yet", "use text, sft or classify")
        if not config.data.train:
            raise ConfigError("data.train is required: the file, folder or preset data to train on")
        run = RunFolder(Path(config.train.output_dir) / run_name(config))
        if run.root.exists() and any(run.root.iterdir()):
            raise ConfigError(
                f"run folder {run.root} already exists; a run is never overwritten",
                f"choose another name (name=...) or continue it with `tunelab run --resume {run.root}`",
            )
        state = _State(run, {"config": config.model_dump(mode="json"), "steps": {}, "timings": {}})
    warnings: list[str] = list(state.data.get("warnings", []))

    def warn(message: str) -> None:
        warnings.append(message)
        state.data["warnings"] = warnings
        emit("warn", "warn", {"message": message})

    # The base model is needed by the data check (token lengths), the estimate and the baseline.
    base = load_model(config.model.name, allow_network=config.model.allow_network, revision=config.model.revision)
    tokenizer = base.tokenizer

    # 1. check the data: stop on errors before anything is written or registered.
    if not state.done("check"):
        emit("check", "start", {"path": config.data.train})
        started = time.perf_counter()
        report = check_data(config.data.train, config.task, config.data, tokenizer=tokenizer, test_path=config.data.test)
        if report.errors and not config.data.skip_invalid:
            listed = "; ".join(f"{e.source}: {e.reason}" for e in report.errors[:10])
            more = f" (and {len(report.errors) - 10} more)" if len(report.errors) > 10 else ""
            raise DataError(
                f"{len(report.errors)} invalid record(s) in {config.data.train}: {listed}{more}",
                f"fix them, or set data.skip_invalid: true to drop them (each is listed); `tunelab data check {config.data.train} --task {config.task}` shows all",
            )
        for message in report.warnings:
            warn(f"data: {message}")
        run.root.mkdir(parents=True, exist_ok=True)
        state.finish("check", {"errors": len(report.errors), "warnings": len(report.warnings)}, time.perf_counter() - started)
        emit("check", "done", {"errors": len(report.errors), "warnings": report.warnings})

    # 2. split: deterministic, seeded, saved so before and after use exactly the same test set.
    started = time.perf_counter()
    if state.done("split") and run.split.is_file():
        split = load_split(run.split, config)
    else:
        emit("split", "start", {})
        split = make_split(config)
        split.save(run.split)
        for message in split.warnings:
            warn(f"split: {message}")
        state.finish("split", {"sizes": split.sizes(), "fingerprint": split.fingerprint}, time.perf_counter() - started)
    if not split.test:
        raise DataError("the test split is empty", "add data, raise data.test_size, or give data.test")
    emit("split", "done", {"sizes": split.sizes()})
    label_map = _label_map_for(config, split, tokenizer)

    registry = Registry(_registry_path(config))
    registry_id = state.data.get("registry_id")
    if registry_id is None:
        record = registry.create_run(
            name=run.root.name,
            task=config.task,
            model=config.model.name,
            config=dump_config(config),
            status="running",
            data_fingerprint=split.data_fingerprint,
            split_fingerprint=split.fingerprint,
            run_dir=str(run.root),
        )
        registry_id = record.id
        state.data["registry_id"] = registry_id
        state.save()
    else:
        registry.update_run(registry_id, status="running")

    try:
        outcome = _after_split(
            config, run, state, split, base, label_map, registry, registry_id, emit,
            train_progress, eval_progress, calibrate,
        )
    except KeyboardInterrupt:
        registry.update_run(registry_id, status="interrupted")
        raise
    except BaseException:
        registry.update_run(registry_id, status="failed")
        raise
    outcome.warnings = warnings
    return outcome


def _after_split(config, run, state, split, base, label_map, registry, registry_id, emit,
                 train_progress, eval_progress, calibrate) -> RunOutcome:
    """Steps 3-8 (estimate, baseline, train, evaluate, report, register), each skipped when done."""
    from tunelab.estimate import calibrate as calibrate_here
    from tunelab.estimate import estimate_run, example_token_counts, model_facts, plan_tokens
    from tunelab.evaluation.compare import compare_evaluations
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.evaluation.report import write_report
    from tunelab.evaluation.result import EvalResult
    from tunelab.models import load_run
    from tunelab.registry.store import baseline_key
    from tunelab.runtime import default_device
    from tunelab.tasks import run_training

    tokenizer = base.tokenizer

    # 3. estimate: tokens, FLOPs, time here (measured), on GPUs, memory, money; stop if over budget.
    estimate = state.get("estimate")
    if estimate is None:
        emit("estimate", "start", {})
        started = time.perf_counter()
        train_counts = example_token_counts(config, split.train, tokenizer, label_map)
        validation_counts = example_token_counts(config, split.validation, tokenizer, label_map) if split.validation else []
        test_counts = example_token_counts(config, split.test, tokenizer, label_map)
        facts = model_facts(base.model, config.lora.r, config.lora.target_modules)
        n_labels = len(label_map.labels) if label_map is not None else None
        device = "cuda" if default_device().startswith("cuda") else "cpu"
        calibration = None
        if calibrate:
            tokens = plan_tokens(config, train_counts)
            # calibrate() adds adapters to the model it is given: it loads its own copy (about 2 s).
            calibration = calibrate_here(config, tokens.seq_len, steps=3, device=device, n_labels=n_labels or 8)
        result = estimate_run(
            config, train_counts, facts, validation_token_counts=validation_counts, test_token_counts=test_counts,
            n_labels=n_labels, calibration=calibration, device=device,
        )
        estimate = result.as_dict()
        registry.update_run(registry_id, estimate=estimate)
        if result.seconds:
            for step, seconds in result.seconds.items():
                registry.record_timing(registry_id, step, estimated_s=seconds)
        state.finish("estimate", estimate, time.perf_counter() - started)
        emit("estimate", "done", {"estimate": estimate})
        if result.budget.over:
            registry.update_run(registry_id, status="failed", error="over budget: " + "; ".join(result.budget.reasons))
            raise BudgetExceeded(
                "the estimate is over budget: " + "; ".join(result.budget.reasons),
                "raise budget.max_hours / budget.max_usd, or shrink the run",
            )

    # 4. baseline: the base model on the test split (cached across variants).
    base_eval = None
    if config.eval.baseline:
        base_path = run.eval_dir / "base.json"
        if state.done("baseline") and base_path.is_file():
            base_eval = EvalResult.load(base_path)
        else:
            started = time.perf_counter()
            key = baseline_key(_model_key(base), _test_fingerprint(split), _eval_settings(config, label_map))
            cached = registry.get_cached_baseline(key)
            if cached and cached.predictions_path and Path(cached.predictions_path).is_file():
                base_eval = EvalResult.load(cached.predictions_path)
                emit("baseline", "skip", {"cached_from": cached.predictions_path})
            else:
                emit("baseline", "start", {"n": len(split.test)})
                base_eval = evaluate(
                    base, split.test, config.task, config=config.eval, data_config=config.data,
                    label_map=label_map, baseline=True, train_ids=[r.id for r in split.train], progress=eval_progress,
                )
                cache_path = Path(config.train.output_dir) / "baselines" / f"{key.settings_hash}-{key.test_fingerprint[:12]}.json"
                base_eval.save(cache_path)
                registry.put_cached_baseline(key, metrics=base_eval.metrics, predictions_path=str(cache_path), run_id=registry_id)
            base_eval.save(base_path)
            registry.update_run(registry_id, baseline_metrics=base_eval.metrics)
            registry.record_timing(registry_id, "baseline", actual_s=time.perf_counter() - started)
            state.finish("baseline", {"path": str(base_path)}, time.perf_counter() - started)
            emit("baseline", "done", {"metrics": base_eval.metrics})

    # 5. train.
    train_result = state.get("train")
    if train_result is None:
        emit("train", "start", {})
        started = time.perf_counter()
        resume_training = run.config.is_file()
        result = run_training(config, split, run_dir=run.root, progress=train_progress, resume=resume_training)
        train_result = result.as_dict()
        registry.record_timing(registry_id, "train", actual_s=result.seconds)
        state.finish("train", train_result, time.perf_counter() - started)
        emit("train", "done", {"result": train_result})

    # 6. evaluate the tuned model on the same test records, prompts and decoding.
    tuned_path = run.eval_dir / "tuned.json"
    if state.done("evaluate") and tuned_path.is_file():
        tuned_eval = EvalResult.load(tuned_path)
    else:
        emit("evaluate", "start", {"n": len(split.test)})
        started = time.perf_counter()
        tuned = load_run(run.root)
        tuned_eval = evaluate(
            tuned, split.test, config.task, config=config.eval, data_config=config.data,
            baseline=False, train_ids=[r.id for r in split.train], progress=eval_progress,
        )
        tuned_eval.save(tuned_path)
        registry.update_run(registry_id, tuned_metrics=tuned_eval.metrics)
        registry.record_timing(registry_id, "eval", actual_s=time.perf_counter() - started)
        state.finish("evaluate", {"path": str(tuned_path)}, time.perf_counter() - started)
        emit("evaluate", "done", {"metrics": tuned_eval.metrics})

    # 7. compare + report.
    comparison = None
    report_files: dict[str, str] = {}
    if base_eval is not None:
        emit("report", "start", {})
        started = time.perf_counter()
        comparison = compare_evaluations(base_eval, tuned_eval, seed=config.eval.seed, samples=config.eval.bootstrap_samples)
        comparison.save(run.eval_dir / "comparison.json")
        files = write_report(run.root, base_eval, tuned_eval, comparison)
        report_files = {"markdown": str(files.markdown), "html": str(files.html)}
        state.finish("report", report_files, time.perf_counter() - started)
        emit("report", "done", {"files": report_files})

    # 8. register the finished run.
    registry.update_run(
        registry_id,
        status="finished",
        comparison=comparison.to_dict() if comparison else None,
        artifacts={"run_dir": str(run.root), "train": train_result, **report_files},
    )
    state.finish("register", {"registry": str(registry.path), "id": registry_id}, 0.0)
    emit("register", "done", {"id": registry_id, "registry": str(registry.path)})
    return RunOutcome(
        name=run.root.name,
        run_dir=run.root,
        registry_id=registry_id,
        config=config,
        split_sizes=split.sizes(),
        estimate=estimate,
        train=train_result,
        base_metrics=base_eval.metrics if base_eval else None,
        tuned_metrics=tuned_eval.metrics,
        comparison=comparison,
        report=report_files,
        timings=dict(state.data.get("timings", {})),
    )


def _test_fingerprint(split: Any) -> str:
    from tunelab.evaluation.result import test_fingerprint

    return test_fingerprint("split", (record.id for record in split.test))


@dataclass
class SweepEntry:
    overrides: list[str]
    outcome: RunOutcome | None
    error: str | None = None


def parse_grid(grid: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.lr=1e-4,3e-4", "lora.r=8,16"]`` -> ``[("train.lr", ["1e-4", "3e-4"]), ("lora.r", ["8", "16"])]``.

    Values stay as typed (the config validation types them), so run names read like the command.

    Raises:
        ConfigError: for an item without '=' or without values.
    """
    axes = []
    for item in grid:
        if "=" not in item:
            raise ConfigError(f"grid item '{item}' is not of the form key=v1,v2 (e.g. train.lr=1e-4,3e-4)")
        key, raw = item.split("=", 1)
        values = [value.strip() for value in raw.split(",") if value.strip()]
        if not key.strip() or not values:
            raise ConfigError(f"grid item '{item}' needs a key and at least one value")
        axes.append((key.strip(), values))
    return axes


def sweep_overrides(grid: list[str]) -> list[list[str]]:
    """Every combination of the grid's values, as lists of ``key=value`` overrides."""
    import itertools

    axes = parse_grid(grid)
    return [list(combo) for combo in itertools.product(*[[f"{key}={value}" for value in values] for key, values in axes])]


def run_sweep(
    config_path: str | Path,
    base_overrides: list[str],
    grid: list[str],
    *,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    calibrate: bool = False,
) -> list[SweepEntry]:
    """Run every combination of ``grid`` on top of the config; the baseline is shared through the cache.

    A failing variant does not stop the others (there is no guarantee every variant works); its
    error is kept in the entry. Every config is validated before any variant runs.

    Raises:
        ConfigError: for a bad grid or a combination that makes an invalid config.
    """
    from tunelab.config import load_config

    stamp = time.strftime("%Y%m%d-%H%M%S")
    combos = sweep_overrides(grid)
    configs = []
    for overrides in combos:
        config = load_config(config_path, [*base_overrides, *overrides])
        suffix = "-".join(re.sub(r"[^A-Za-z0-9.]+", "", o.split(".")[-1]) for o in overrides)
        config.name = f"{config.name or 'sweep'}-{stamp}-{suffix}"[:120]
        configs.append((overrides, config))
    entries = []
    for overrides, config in configs:
        emit = on_event or (lambda step, status, details: None)
        emit("variant", "start", {"overrides": overrides, "name": config.name})
        try:
            outcome = run_pipeline(config, on_event=on_event, train_progress=train_progress, calibrate=calibrate)
            entries.append(SweepEntry(overrides, outcome))
        except TunelabError as error:
            entries.append(SweepEntry(overrides, None, str(error)))
            emit("variant", "warn", {"message": f"{config.name} failed: {error}"})
    return entries


def leaderboard(entries: list[SweepEntry], metric: str | None = None) -> list[dict[str, Any]]:
    """Rows sorted best first by ``metric`` (default: the task's primary metric) of the tuned model."""
    rows = []
    for entry in entries:
        row: dict[str, Any] = {"overrides": " ".join(entry.overrides), "error": entry.error}
        outcome = entry.outcome
        if outcome is not None and outcome.comparison is not None:
            name = metric or outcome.comparison.primary
            try:
                m = outcome.comparison.metric(name)
            except StopIteration:
                raise ConfigError(f"metric '{name}' is not among {[x.name for x in outcome.comparison.metrics]}") from None
            row.update(name=outcome.name, metric=name, before=m.before, after=m.after, difference=m.difference,
                       low=m.low, high=m.high, higher_is_better=m.higher_is_better, verdict=outcome.comparison.verdict)
        rows.append(row)

    def sort_key(row: dict[str, Any]) -> tuple:
        if row.get("after") is None:
            return (1, 0.0)
        sign = -1.0 if row.get("higher_is_better", True) is not False else 1.0
        return (0, sign * row["after"])

    return sorted(rows, key=sort_key)
