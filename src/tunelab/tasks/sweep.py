"""``tunelab sweep``: every combination of a grid of overrides, each a full pipeline run, and a leaderboard.

The baseline is shared through the registry's baseline cache, so variants pay for it once. The same command after an
interrupted sweep (Ctrl-C, a kill) reuses the variants it finished and continues the one it stopped in (``earlier_variant``).
A variant whose provider's job (``train.backend: openai``) the provider failed or cancelled is started again as a new job,
and said so; one whose job the user cancelled (``tunelab cancel``, the UI's Cancel) is refused, as ``run --resume`` refuses it.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import ConfigError, TunelabError
from tunelab.tasks.pipeline import EventFn, RunOutcome, ended_by_provider, run_pipeline

if TYPE_CHECKING:
    from tunelab.registry.store import RunRecord


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
    variant runs. A variant with a registered run of the same config on the same data (``earlier_variant``: a sweep
    interrupted before) is not trained again: a finished run's outcome is read back, a stopped one is continued.

    Raises:
        ConfigError: for a bad grid, a combination that makes an invalid config, a grid key that changes the
            split (``check_same_rows``), or a ``metric`` the variants' task does not measure.
    """
    from tunelab.config import load_config
    from tunelab.tasks.launch import check_not_launched

    check_not_launched("tunelab sweep")
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
    fingerprints = check_same_rows(configs)
    emit = on_event or (lambda step, status, details: None)
    entries = []

    def started_again(earlier: RunRecord, config: Any) -> bool:
        """Whether the earlier run's job ended without a model at the provider (said in one line): a resume never restarts
        it, so the rerun would refuse the variant every time. A job the user cancelled stays refused, as `run --resume`
        refuses it."""
        ended = ended_by_provider(earlier.run_dir)
        if ended is not None:
            emit("variant", "warn", {"message": f"{earlier.name}: its job {ended.job_id} {ended.status} at the provider, not by you: "
                                                f"{config.name} starts it again as a new job"})
        return ended is not None

    def run_variant(overrides: list[str], config: Any, earlier: RunRecord | None) -> RunOutcome:
        details = {"overrides": overrides, "name": config.name if earlier is None else earlier.name}
        emit("variant", "start", details if earlier is None else {**details, "continues": earlier.status})
        # A variant an interrupted sweep finished returns its recorded outcome; one it stopped goes on from its checkpoint.
        return run_pipeline(None if earlier else config, resume=earlier.run_dir if earlier else None, on_event=on_event,
                            train_progress=train_progress, eval_progress=eval_progress, calibrate=calibrate)

    from tunelab.remote.finetune import CloudJobFailed

    for (overrides, config), fingerprint in zip(configs, fingerprints, strict=True):
        earlier = earlier_variant(config, fingerprint)
        if earlier is not None and started_again(earlier, config):
            earlier = None
        try:
            try:
                outcome = run_variant(overrides, config, earlier)
            except CloudJobFailed:
                # A stopped variant's job may have ended at the provider while tunelab was stopped: seen only as it is followed.
                if earlier is None or not started_again(earlier, config):
                    raise
                outcome = run_variant(overrides, config, None)
            entries.append(SweepEntry(overrides, outcome))
        except TunelabError as error:
            entries.append(SweepEntry(overrides, None, str(error)))
            emit("variant", "warn", {"message": f"{config.name} failed: {error}"})
        except Exception as error:  # noqa: BLE001 - e.g. out of GPU memory in evaluation: the other variants still run
            # Its run is marked failed in the registry by the pipeline; Ctrl-C (not an Exception) still ends the sweep.
            message = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
            entries.append(SweepEntry(overrides, None, message))
            emit("variant", "warn", {"message": f"{config.name} failed: {message}"})
    return entries


# What an earlier run of a variant may be taken up in: finished (its outcome is read back) or stopped (it goes on from
# its last checkpoint). A failed one is run anew: the same run would stop at the same error. (A cloud run whose job the
# provider failed or cancelled is found too, for run_sweep to say that it starts the variant again as a new job.)
CONTINUED_STATUSES = ("finished", "interrupted", "cancelled")


def earlier_variant(config: Any, data_fingerprint: str | None) -> RunRecord | None:
    """The newest registered run of ``config`` (its name aside) on data of ``data_fingerprint`` that a sweep takes up
    instead of training the variant again (``CONTINUED_STATUSES``), or a cloud run whose job the provider ended without
    a model (``ended_by_provider``: the sweep starts that variant again as a new job, and says so), or None.

    An interrupted sweep (Ctrl-C, a kill) keeps the variants it finished, and the run folder of the one it stopped in:
    running the same command again reuses the first and continues the second. The config is compared as the pipeline
    registers it (data paths anchored here, with what ``train.fit: auto`` applied): a changed key, or other data behind
    the same path, trains anew.
    """
    if data_fingerprint is None:
        return None
    import yaml

    from tunelab.config import apply_overrides, dump_config, parse_config
    from tunelab.registry.store import Registry, default_registry_path
    from tunelab.runs import RunFolder, anchor_paths

    def as_registered(overrides: list[str]) -> dict[str, Any]:
        data = apply_overrides(anchor_paths(config.model_dump(mode="json"), Path.cwd()), overrides)
        data = yaml.safe_load(dump_config(parse_config(data, source="config")))
        data.pop("name", None)
        return data

    path = default_registry_path(config)
    if not path.is_file():
        return None
    wanted = as_registered([])
    for record in Registry(path).list_runs(task=config.task):  # newest first
        if record.data_fingerprint != data_fingerprint or not record.run_dir:
            continue
        if record.status not in CONTINUED_STATUSES and not (record.status == "failed" and ended_by_provider(record.run_dir)):
            continue
        if not RunFolder(Path(record.run_dir)).pipeline_state.is_file():
            continue  # its folder was deleted or moved: nothing to read back or continue
        registered = dict(record.config_dict)
        registered.pop("name", None)
        # train.fit: auto registers the config it trained (estimate_step): the variant's with the fit's changes.
        applied = ((record.estimate or {}).get("fit") or {}).get("applied") or []
        if registered == (as_registered(applied) if applied else wanted):
            return record
    return None


def check_metric(metric: str | None, config: Any) -> None:
    """Refuse a leaderboard ``metric`` that a run of ``config`` does not measure, or that has no better direction.

    Checked before a sweep starts: the leaderboard is made after the last variant, hours later.

    Raises:
        ConfigError: naming the metric and those the task has.
    """
    if metric is None:
        return
    from tunelab.evaluation.metrics import OUT_OF_SCOPE_METRICS, STRUCTURED_SPECS, TASK_METRICS

    specs = list(TASK_METRICS[config.task])
    if config.task == "classify" and config.data.out_of_scope_label is not None:
        specs += OUT_OF_SCOPE_METRICS
    if config.task == "sft":
        specs += STRUCTURED_SPECS  # measured when the test references are data (``metrics.answer_kind``)
    rankable = [spec.name for spec in specs if spec.higher_is_better is not None]
    if metric not in rankable:
        raise ConfigError(f"--metric {metric!r} cannot rank {config.task} runs", f"use one of {', '.join(rankable)}")


def check_same_rows(variants: list[tuple[list[str], Any]]) -> list[str | None]:
    """Refuse a grid whose variants would be selected (validation) or judged (test) on different rows.

    A grid key that changes the split (data.seed, data.test_size, data.limit, the data files, data.out_of_scope,
    data.max_test_examples...) gives every variant rows of its own: their numbers are not comparable, and the
    leaderboard would rank them anyway. The rows are computed as the pipeline computes them, not guessed from the
    key's name. A variant whose data cannot be read is left to fail in its own run, as before.

    Returns:
        each variant's data fingerprint (None where its data cannot be read): what the in-process sweep matches an
        earlier run of the variant by (``earlier_variant``).

    Raises:
        ConfigError: naming the grid key whose values change the rows.
    """
    from tunelab.data.split import make_split
    from tunelab.evaluation.evaluate import select_test_records

    rows_by_data: dict[str, tuple | None] = {}
    fingerprint_by_data: dict[str, str | None] = {}
    rows, fingerprints = [], []
    for _, config in variants:
        data = f"{config.task} {config.data.model_dump_json()}"  # variants that change no data key share one split
        if data not in rows_by_data:
            try:
                split = make_split(config)
            except TunelabError:
                rows_by_data[data] = fingerprint_by_data[data] = None
            else:
                test = select_test_records(split.test, config.data.max_test_examples, config.data.seed)
                rows_by_data[data] = (frozenset(r.id for r in test), frozenset(r.id for r in split.validation))
                fingerprint_by_data[data] = split.data_fingerprint
        rows.append(rows_by_data[data])
        fingerprints.append(fingerprint_by_data[data])
    if len({r for r in rows if r is not None}) <= 1:
        return fingerprints
    for axis in range(len(variants[0][0])):
        # The key whose values alone change the rows: variants equal on every other key, different rows.
        seen: dict[tuple, set] = {}
        for (overrides, _), variant_rows in zip(variants, rows, strict=True):
            if variant_rows is not None:
                seen.setdefault(tuple(o for i, o in enumerate(overrides) if i != axis), set()).add(variant_rows)
        if any(len(found) > 1 for found in seen.values()):
            key = variants[0][0][axis].split("=", 1)[0]
            raise ConfigError(
                f"--grid {key} changes the validation and test rows of the variants: the leaderboard would rank numbers "
                "measured on different rows",
                f"sweep one value of {key} at a time, or fix the rows with data.test and data.validation files",
            )
    return fingerprints


def check_one_loss(variants: list[tuple[list[str], Any]], option: str) -> None:
    """Refuse ``option`` (Ray's ASHA or Optuna, which compare the trials' validation losses) for variants whose losses
    are not comparable: of different models (per token of different tokenizers) or different preference losses.

    The leaderboard itself ranks such variants on test and says so (``rank_rows``); ASHA would stop, and Optuna choose,
    trials by those numbers all the same.

    Raises:
        ConfigError: naming the grid keys whose values change what the validation loss is.
    """
    kinds = [(config.model.name, loss_definition(config)) for _, config in variants]
    if len(set(kinds)) <= 1:
        return
    keys = []
    for axis in range(len(variants[0][0])):
        # A key whose values alone change the loss: variants equal on every other key, different losses.
        seen: dict[tuple, set] = {}
        for (overrides, _), kind in zip(variants, kinds, strict=True):
            seen.setdefault(tuple(o for i, o in enumerate(overrides) if i != axis), set()).add(kind)
        if any(len(found) > 1 for found in seen.values()):
            keys.append(variants[0][0][axis].split("=", 1)[0])
    raise ConfigError(
        f"{option} compares the trials' validation losses, and --grid {', '.join(keys)} makes them losses that do not "
        "compare (per token of different tokenizers, or of different preference losses)",
        f"leave {option} out (the leaderboard then ranks the variants on test and says so), or sweep one value of "
        f"{', '.join(keys)} at a time",
    )


def leaderboard(entries: list[SweepEntry], metric: str | None = None) -> list[dict[str, Any]]:
    """Rows of the variants, best first by validation; ``metric`` (default: the task's primary) is reported on test.

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
        train = outcome.train or {}
        row.update(validation_loss=train.get("best_validation_loss"), validation_score=train.get("best_validation_score"),
                   model=outcome.config.model.name, validation_loss_of=loss_definition(outcome.config))
    return row


def loss_definition(config: Any) -> str:
    """What a run's validation loss is a value of, beyond its model: a preference run's is its DPO loss, of its own
    ``preference.loss`` and ``preference.beta`` (the same margins give another number under another beta)."""
    if config.task == "preference":
        return f"preference.loss={config.preference.loss} preference.beta={config.preference.beta:g}"
    return ""


# What the variants are ranked by: the kept checkpoint's validation accuracy (classify), else its validation loss.
# Never the test metric while there is a validation number: choosing the best variant by test is selection on test.
RANKINGS = (("validation_score", "validation accuracy", True), ("validation_loss", "validation loss", False))


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Leaderboard rows best first, each with ``ranked_by`` (what decided the order) and ``rank_value``.

    Ranked by validation when every finished variant has the same validation number; the test metric is reported,
    not selected on. Without one (no validation rows) by the test metric, and ``ranked_by`` says so. Variants
    without a result (failed, stopped) last.
    """
    finished = [row for row in rows if row.get("after") is not None]
    # A loss per token of one tokenizer is not comparable with another's: a grid over models has no common loss; nor
    # are losses of different functions (a grid over preference.beta or preference.loss).
    one_model = len({row.get("model") for row in finished}) <= 1
    one_loss = len({row.get("validation_loss_of", "") for row in finished}) <= 1
    chosen = next(((name, label, higher) for name, label, higher in RANKINGS
                   if finished and all(row.get(name) is not None for row in finished)
                   and (name != "validation_loss" or (one_model and one_loss))), None)
    if not one_model:
        why = "the models' validation losses are per token of different tokenizers"
    elif not one_loss:
        why = "the variants' validation losses are of different losses (preference.loss, preference.beta)"
    else:
        why = "no validation rows"
    for row in finished:
        if chosen is None:
            row.update(ranked_by=f"the test metric ({why}: this selects on test)", rank_value=row["after"])
        else:
            row.update(ranked_by=chosen[1], rank_value=row[chosen[0]])

    def sort_key(row: dict[str, Any]) -> tuple:
        if row.get("after") is None:
            return (1, 0.0)
        higher = chosen[2] if chosen is not None else row.get("higher_is_better", True) is not False
        return (0, (-1.0 if higher else 1.0) * row["rank_value"])

    return sorted(rows, key=sort_key)
