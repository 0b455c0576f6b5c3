"""``tunelab sweep``: every combination of a grid of overrides, each a full pipeline run, and a leaderboard.

The baseline is shared through the registry's baseline cache, so variants pay for it once.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError, TunelabError
from tunelab.tasks.pipeline import EventFn, RunOutcome, run_pipeline


@dataclass
class SweepEntry:
    overrides: list[str]
    outcome: RunOutcome | None
    error: str | None = None


def parse_grid(grid: list[str]) -> list[tuple[str, list[str]]]:
    """``["train.lr=1e-4,3e-4", "lora.r=8,16"]`` -> ``[("train.lr", ["1e-4", "3e-4"]), ("lora.r", ["8", "16"])]``.

    Values stay as typed (the config validation types them), so run names read like the command.

    Raises:
        ConfigError: for an item without '=' or without values, a value given twice, or a key given twice
            (every variant would run twice, or the later item would silently replace the earlier one).
    """
    axes: list[tuple[str, list[str]]] = []
    for item in grid:
        if "=" not in item:
            raise ConfigError(f"grid item '{item}' is not of the form key=v1,v2 (e.g. train.lr=1e-4,3e-4)")
        key, raw = item.split("=", 1)
        key = key.strip()
        values = [value.strip() for value in raw.split(",") if value.strip()]
        if not key or not values:
            raise ConfigError(f"grid item '{item}' needs a key and at least one value")
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ConfigError(f"grid item '{item}' gives {', '.join(repeated)} twice: those variants would run twice")
        if any(key == earlier for earlier, _ in axes):
            raise ConfigError(
                f"grid key '{key}' is given twice (the later --grid would replace the earlier in every variant)",
                f"give its values once: --grid {key}=V1,V2,...",
            )
        axes.append((key, values))
    return axes


def sweep_overrides(grid: list[str]) -> list[list[str]]:
    """Every combination of the grid's values, as lists of ``key=value`` overrides."""
    axes = parse_grid(grid)
    return [list(combo) for combo in itertools.product(*[[f"{key}={value}" for value in values] for key, values in axes])]


def run_sweep(
    config_path: str | Path,
    base_overrides: list[str],
    grid: list[str],
    *,
    on_event: EventFn | None = None,
    train_progress: Callable[[Any], None] | None = None,
    eval_progress: Callable[[int], None] | None = None,
    calibrate: bool = False,
    metric: str | None = None,
) -> list[SweepEntry]:
    """Run every combination of ``grid`` on top of the config; the baseline is shared through the cache.

    A failing variant does not stop the others (there is no guarantee every variant works); its
    error is kept in the entry. Every config, and the leaderboard's ``metric``, is validated before any
    variant runs.

    Raises:
        ConfigError: for a bad grid, a combination that makes an invalid config, or a ``metric`` the
            variants' task does not measure.
    """
    from tunelab.config import load_config

    stamp = time.strftime("%Y%m%d-%H%M%S")
    configs = []
    for index, overrides in enumerate(sweep_overrides(grid), 1):
        config = load_config(config_path, [*base_overrides, *overrides])
        check_metric(metric, config)
        suffix = "-".join(re.sub(r"[^A-Za-z0-9.]+", "", o.split(".")[-1]) for o in overrides)
        name = f"{config.name or 'sweep'}-{stamp}-{suffix}"[:120]
        if any(name == other.name for _, other in configs):
            # Values that differ only where the suffix drops them (data/en.jsonl, data/de.jsonl): one run folder each.
            name = f"{name[:114]}-v{index}"
        config.name = name
        configs.append((overrides, config))
    emit = on_event or (lambda step, status, details: None)
    entries = []
    for overrides, config in configs:
        emit("variant", "start", {"overrides": overrides, "name": config.name})
        try:
            outcome = run_pipeline(config, on_event=on_event, train_progress=train_progress, eval_progress=eval_progress, calibrate=calibrate)
            entries.append(SweepEntry(overrides, outcome))
        except TunelabError as error:
            entries.append(SweepEntry(overrides, None, str(error)))
            emit("variant", "warn", {"message": f"{config.name} failed: {error}"})
    return entries


def check_metric(metric: str | None, config: Any) -> None:
    """Refuse a leaderboard ``metric`` that a run of ``config`` does not measure, or that has no better direction.

    Checked before a sweep starts: the leaderboard is made after the last variant, hours later.

    Raises:
        ConfigError: naming the metric and those the task has.
    """
    if metric is None:
        return
    from tunelab.evaluation.metrics import OUT_OF_SCOPE_METRICS, TASK_METRICS

    specs = list(TASK_METRICS[config.task])
    if config.task == "classify" and config.data.out_of_scope_label is not None:
        specs += OUT_OF_SCOPE_METRICS
    rankable = [spec.name for spec in specs if spec.higher_is_better is not None]
    if metric not in rankable:
        raise ConfigError(f"--metric {metric!r} cannot rank {config.task} runs", f"use one of {', '.join(rankable)}")


def leaderboard(entries: list[SweepEntry], metric: str | None = None) -> list[dict[str, Any]]:
    """Rows sorted best first by ``metric`` (default: the task's primary metric) of the tuned model.

    Raises:
        ConfigError: when ``metric`` is not one of the comparison's metrics.
    """
    return rank_rows([leaderboard_row(entry, metric) for entry in entries])


def leaderboard_row(entry: SweepEntry, metric: str | None = None) -> dict[str, Any]:
    """One variant's leaderboard row (plain values: a Ray trial sends it to the driver as it is).

    Raises:
        ConfigError: when ``metric`` is not one of the comparison's metrics.
    """
    row: dict[str, Any] = {"overrides": " ".join(entry.overrides), "error": entry.error}
    outcome = entry.outcome
    if outcome is not None and outcome.comparison is not None:
        name = metric or outcome.comparison.primary
        try:
            m = outcome.comparison.metric(name)
        except StopIteration:
            raise ConfigError(f"metric '{name}' is not among {[x.name for x in outcome.comparison.metrics]}") from None
        row.update(name=outcome.name, metric=name, before=m.before, after=m.after, difference=m.difference,
                   low=m.low, high=m.high, higher_is_better=m.higher_is_better, verdict=outcome.comparison.verdict,
                   opponent=outcome.comparison.strongest)  # before/difference are against the strongest baseline
    return row


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leaderboard rows best first by their tuned metric; variants without one (failed, stopped) last."""

    def sort_key(row: dict[str, Any]) -> tuple:
        if row.get("after") is None:
            return (1, 0.0)
        sign = -1.0 if row.get("higher_is_better", True) is not False else 1.0
        return (0, sign * row["after"])

    return sorted(rows, key=sort_key)
