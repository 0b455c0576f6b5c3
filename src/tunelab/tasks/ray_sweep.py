"""``tunelab sweep --engine ray``: the variants of a sweep as Ray Tune trials, on one machine or a Ray cluster.

Each trial is a whole ``tunelab run`` (check, split, estimate, baselines, train, evaluate, report, register),
registered like any other run; the loop reports every validation loss to Tune, so ASHA can stop a trial
whose validation loss lags the others at the same step, and Optuna can choose the next variant from the
grid's ranges. The search and the leaderboard's order only ever see validation numbers (``sweep.rank_rows``):
the test set is reported, never selected on. Ray is an optional extra (``pip install 'tunelab[ray]'``);
without it the in-process engine (``tunelab.tasks.sweep``) runs the grid as before.

A sweep is a Tune experiment under ``<train.output_dir>/sweeps/<name>``: running the same command again
after the driver crashed restores it (finished trials are kept, unfinished ones continue their run
folder from its last checkpoint). Each trial's threads are its CPUs (``--cpus-per-trial``).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, TunelabError
from tunelab.tasks.sweep import parse_grid, rank_rows

SWEEPS_SUBDIR = "sweeps"
METRIC = "validation_loss"  # what ASHA and Optuna compare: never a test-set number


@dataclass
class RaySweepSettings:
    """How the trials are searched, scheduled and placed."""

    address: str | None = None  # "auto", "ray://host:10001", "host:6379"; None: a local Ray started for the sweep
    search: str = "grid"  # grid: every combination; optuna: ``trials`` draws over the grid's ranges
    trials: int | None = None
    asha: bool = False
    cpus_per_trial: int = 1
    gpus_per_trial: float = 0.0
    max_hours: float | None = None
    max_usd: float | None = None
    usd_per_hour: float | None = None  # the price of the resources the trials run on (max_usd needs it)
    name: str | None = None
    metric: str | None = None  # the leaderboard's metric (default: the task's primary)


@dataclass
class RaySweepResult:
    name: str
    path: Path
    rows: list[dict[str, Any]]  # the leaderboard, best first
    stopped: list[str] = field(default_factory=list)  # run names ASHA stopped
    restored: bool = False


def require_ray() -> Any:
    """The ``ray.tune`` module.

    Raises:
        ConfigError: when Ray Tune is not installed.
    """
    try:
        from ray import tune
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray Tune, which is not installed",
            "pip install 'tunelab[ray]' (or leave --engine out: the in-process engine runs the same grid)",
        ) from None
    return tune


def _number(text: str) -> float | int | None:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def search_space(grid: list[str], search: str) -> dict[str, Any]:
    """The Tune search space of ``--grid`` items: every combination (``grid``), or the ranges Optuna draws from.

    For Optuna an axis of floats is a range between its smallest and largest value (log-uniform when they
    are positive and a factor of 10 or more apart, as learning rates are); integers and words stay the
    choices given (a LoRA rank of 12 is not what 8,16 meant).

    Raises:
        ConfigError: for a bad grid item.
    """
    tune = require_ray()
    space: dict[str, Any] = {}
    for key, values in parse_grid(grid):
        numbers = [_number(v) for v in values]
        if search == "grid":
            space[key] = tune.grid_search(values)
        elif len(values) > 1 and all(isinstance(n, float) for n in numbers):
            low, high = min(numbers), max(numbers)
            space[key] = tune.loguniform(low, high) if low > 0 and high / low >= 10 else tune.uniform(low, high)
        else:
            space[key] = tune.choice(values)
    return space


def _time_budget(settings: RaySweepSettings) -> float | None:
    """Seconds the sweep may start trials for: ``max_hours``, and ``max_usd`` at ``usd_per_hour`` (whichever is less)."""
    limits = []
    if settings.max_hours is not None:
        limits.append(settings.max_hours * 3600)
    if settings.max_usd is not None:
        if not settings.usd_per_hour:
            raise ConfigError("--max-usd needs the price of what the trials run on", "set budget.gpu (a GPU of the price table) or --usd-per-hour")
        limits.append(settings.max_usd / settings.usd_per_hour * 3600)
    return min(limits) if limits else None


def check_trial_fits(settings: RaySweepSettings, resources: dict[str, float]) -> None:
    """Refuse a trial that asks for more CPUs or GPUs than the Ray started here for the sweep has (``resources``):
    no trial would ever start, and Tune waits for ever (a cluster given by ``--address`` may be autoscaling: not refused).

    Raises:
        ConfigError: naming what a trial asks for and what this machine has.
    """
    asked = {"CPU": ("--cpus-per-trial", settings.cpus_per_trial), "GPU": ("--gpus-per-trial", settings.gpus_per_trial)}
    for resource, (option, wanted) in asked.items():
        have = resources.get(resource, 0.0)
        if wanted > have:
            raise ConfigError(
                f"{option} {wanted:g}: each trial asks for {wanted:g} {resource}s and this machine has {have:g}; "
                "no trial could start",
                f"ask for at most {have:g} ({option}), or give a Ray cluster that has them with --address",
            )


def run_trial(params: dict[str, Any], context: dict[str, Any]) -> None:
    """One trial in a Ray worker: the whole pipeline of one variant, reporting each validation loss to Tune.

    The run folder is named after the sweep and the trial, so a trial started again after a crash (of the
    driver or of its worker) continues its own run (``tunelab run --resume``) instead of starting anew.
    """
    from ray import tune

    from tunelab.config import load_config
    from tunelab.runs import RunFolder
    from tunelab.tasks.pipeline import run_pipeline
    from tunelab.tasks.sweep import SweepEntry, leaderboard_row

    os.environ["OMP_NUM_THREADS"] = str(context["threads"])
    # A Ray worker runs where its node was started; the command's and the config's relative paths (a grid's
    # data.train, registry:, a model folder) are the driver's, as in the in-process engine (the folders are shared).
    if Path(context["cwd"]).is_dir():
        os.chdir(context["cwd"])
    overrides = [f"{key}={value}" for key, value in params.items()]
    trial_id = tune.get_context().get_trial_id()
    suffix = "-".join(re.sub(r"[^A-Za-z0-9.]+", "", o.split(".")[-1]) for o in overrides)
    name = f"{context['sweep']}-{trial_id}-{suffix}"[:120]
    config = load_config(context["config_path"], [*context["overrides"], *overrides, f"train.threads={context['threads']}", f"name={name}"])
    run_dir = Path(config.train.output_dir) / name
    resume = run_dir if RunFolder(run_dir).pipeline_state.is_file() else None
    common = {"run": name, "run_dir": str(run_dir), "overrides": " ".join(overrides)}

    def report_validation(progress: Any) -> None:
        if progress.validation_loss is not None:
            tune.report({METRIC: progress.validation_loss, "step": progress.step, **common})

    try:
        outcome = run_pipeline(None if resume else config, resume=resume, train_progress=report_validation, calibrate=False)
        row = leaderboard_row(SweepEntry(overrides, outcome), context["metric"])
        best, last = (outcome.train or {}).get("best_validation_loss"), (outcome.train or {}).get("steps", 0)
    except TunelabError as error:  # one failing variant does not stop the others, as in the in-process engine
        row, best, last = {"overrides": " ".join(overrides), "error": str(error)}, None, 0
    # At the run's last step: ASHA's rungs for earlier steps hold only validations made at those steps.
    final = best if best is not None else float("inf")
    tune.report({METRIC: final, "step": last, "row": json.dumps(row), "finished": True, **common})


def asha_scheduler(experiment: Path) -> Any:
    """The ASHA of a sweep started anew, its rungs kept in the experiment's folder ``experiment``.

    Trials are compared at the same optimizer step (every variant validates at the same steps). Not Tune's
    count of reports: a trial restarted after a crash counts from 1 again, and its first report then sat in
    the first rung beside other trials' first validations. max_t: ASHA never stops a run for its length.
    The rungs are saved beside the experiment (``ray_asha``): Tune's restore hands back the scheduler as the
    sweep began, which forgot every validation made before the driver died.
    """
    require_ray()
    from tunelab.tasks.ray_asha import RUNGS_FILE, DurableASHAScheduler

    rungs = Path(experiment) / RUNGS_FILE
    rungs.unlink(missing_ok=True)  # left by an attempt that died before Tune saved a state to restore: not this sweep's
    return DurableASHAScheduler(rungs, time_attr="step", grace_period=1, reduction_factor=2, max_t=10**9)


SPEC_FILE = "tunelab-sweep.json"


def same_sweep(experiment: Path, config_path: Path, base_overrides: list[str], grid: list[str], settings: RaySweepSettings, *,
               restored: bool) -> None:
    """Keep what a sweep was started with beside its experiment; refuse to continue it with something else.

    Tune's restore keeps the trials of the grid it began with and ignores a new ``--grid``, while its unfinished
    trials read the config file and the overrides as they are now: finished and continued trials would then be
    ranked together though they ran different configs.

    Raises:
        ConfigError: when the sweep ``experiment`` was started with another config file, overrides, grid, search or metric.
    """
    import hashlib

    from tunelab.paths import atomic_write_text

    spec = {
        "config": hashlib.sha256(Path(config_path).read_bytes()).hexdigest(), "overrides": list(base_overrides),
        "grid": list(grid), "search": settings.search, "trials": settings.trials, "asha": settings.asha, "metric": settings.metric,
    }
    path = Path(experiment) / SPEC_FILE
    if not restored:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(spec, indent=1))
        return
    try:
        started = json.loads(path.read_text())
    except (OSError, ValueError):
        return  # started before tunelab kept its spec: nothing to compare with
    changed = [key for key in spec if started.get(key) != spec[key]]
    if changed:
        what = ", ".join("the config file's content" if key == "config" else key for key in changed)
        raise ConfigError(
            f"sweep {Path(experiment).name} was started with another {what}; continuing it would rank trials of both together",
            "run the command it was started with to continue it, or give this one another --name",
        )


def trial_row(metrics: dict[str, Any], error: BaseException | None, sweep: str) -> tuple[dict[str, Any], bool]:
    """A trial's leaderboard row from its last report, and whether the sweep's scheduler stopped it.

    A trial without its final report either was stopped by ASHA (or the budget) between two validations, or
    its worker failed (an exception outside tunelab's errors, a process killed, a node lost): that one is not
    the scheduler's doing, and running the sweep's command again continues it.
    """
    if metrics.get("row"):
        return json.loads(metrics["row"]), False
    run_name = metrics.get("run")
    lagged = f"{METRIC} {metrics[METRIC]:.4f} at step {metrics.get('step')}" if METRIC in metrics else "before its first validation"
    if error is not None:
        inner = getattr(error, "cause", None)  # a RayTaskError's first line names Ray's wrapper; its cause says what failed
        error = inner if isinstance(inner, BaseException) else error
        cause = (str(error).strip().splitlines() or [type(error).__name__])[0]
        reason = f"its worker failed ({lagged}): {cause}; run the same command with --name {sweep} to continue it"
        return {"overrides": metrics.get("overrides", ""), "error": reason, "name": run_name}, False
    reason = f"stopped early by the sweep's scheduler ({lagged})"
    return {"overrides": metrics.get("overrides", ""), "error": reason, "name": run_name}, True


def run_ray_sweep(config_path: str | Path, base_overrides: list[str], grid: list[str], settings: RaySweepSettings) -> RaySweepResult:
    """Run a sweep as a Ray Tune experiment; returns its leaderboard (best first).

    Raises:
        ConfigError: without Ray, for a bad grid, for a combination that makes an invalid config, a grid key that
            changes the split, a ``settings.metric`` the task does not measure, ASHA or Optuna over validation losses that
            do not compare (``sweep.check_one_loss``), or a budget in dollars without a price.
    """
    tune = require_ray()
    import ray

    from tunelab.config import load_config
    from tunelab.registry.store import Registry, default_registry_path
    from tunelab.tasks.launch import check_not_launched
    from tunelab.tasks.sweep import check_metric, check_one_loss, check_same_rows, sweep_overrides

    check_not_launched("tunelab sweep")
    config_path = Path(config_path).resolve()
    base = load_config(config_path, base_overrides)
    variants = [(overrides, load_config(config_path, [*base_overrides, *overrides])) for overrides in sweep_overrides(grid)]
    for _, variant in variants:  # every combination must make a valid config before any trial runs
        check_metric(settings.metric, variant)
    check_same_rows(variants)
    for option, used in (("--asha", settings.asha), ("--search optuna", settings.search == "optuna")):
        if used:
            check_one_loss(variants, option)
    output_dir = Path(base.train.output_dir).resolve()
    name = settings.name or f"{base.name or 'sweep'}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = output_dir / SWEEPS_SUBDIR
    experiment = storage / name
    if settings.max_usd is not None and settings.usd_per_hour is None and base.budget.gpu:
        from tunelab.estimate.prices import load_price_table

        settings.usd_per_hour = load_price_table().gpu(base.budget.gpu).usd_per_hour
    context = {
        "config_path": str(config_path), "overrides": [*base_overrides, f"train.output_dir={output_dir}"], "sweep": name,
        "threads": settings.cpus_per_trial, "metric": settings.metric, "cwd": os.getcwd(),
    }
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, context=context), {"cpu": settings.cpus_per_trial, "gpu": settings.gpus_per_trial}
    )
    if not ray.is_initialized():
        # The trials' processes import tunelab from wherever this one does (a source checkout included).
        ray.init(address=settings.address, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", ""), "RAY_CHDIR_TO_TRIAL_DIR": "0"}})
        if settings.address is None:
            try:
                check_trial_fits(settings, ray.cluster_resources())
            except ConfigError:
                ray.shutdown()  # the Ray started for this sweep only
                raise
    restored = tune.Tuner.can_restore(str(experiment))
    same_sweep(experiment, config_path, base_overrides, grid, settings, restored=restored)
    if restored:
        tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = asha_scheduler(experiment) if settings.asha else None
        search_alg = None
        if settings.search == "optuna":
            try:
                from ray.tune.search.optuna import OptunaSearch
            except ImportError:
                raise ConfigError("--search optuna needs optuna", "pip install 'tunelab[ray]'") from None
            search_alg = OptunaSearch(seed=base.train.seed)
        elif settings.search != "grid":
            raise ConfigError(f"--search {settings.search!r} is not a search", "use grid or optuna")
        if settings.search == "optuna" and not settings.trials:
            raise ConfigError("--search optuna needs --trials N (how many variants Optuna draws)")
        tuner = tune.Tuner(
            trainable,
            param_space=search_space(grid, settings.search),
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="min", scheduler=scheduler, search_alg=search_alg,
                num_samples=settings.trials if settings.search == "optuna" else 1, time_budget_s=_time_budget(settings),
                reuse_actors=False,
            ),
            run_config=tune.RunConfig(name=name, storage_path=str(storage), verbose=0),
        )
    grid_result = tuner.fit()

    rows, stopped = [], []
    registry = Registry(default_registry_path(load_config(config_path, context["overrides"])))
    for result in grid_result:
        row, by_scheduler = trial_row(result.metrics or {}, result.error, name)
        rows.append(row)
        if by_scheduler and row.get("name"):
            stopped.append(row["name"])
            try:
                registry.update_run(row["name"], status="interrupted", error=row["error"])
            except TunelabError:
                pass  # stopped before its data check registered it: there is no row to mark
    return RaySweepResult(name=name, path=experiment, rows=rank_rows(rows), stopped=stopped, restored=restored)
