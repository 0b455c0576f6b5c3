"""``tunelab monitor --every 6h --retrain-on drift``: check, and retrain a challenger when the check says so.

A long-running loop for a container or a systemd service (cron can instead run ``tunelab monitor``
alone and act on its exit code 3). Each tick runs :func:`tunelab.monitor.run_monitor`; when a
served model's status reaches ``monitor.retrain_on`` on a data or quality signal (latency and server errors
alone never retrain: ``ModelReport.retrain_status``) it runs :func:`tunelab.tasks.retrain.retrain`
on the champion behind it with the window's labelled feedback (and ``--data`` files), which promotes
the challenger only if it wins. A retrain is not repeated for the same champion until new labelled
feedback arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import MonitorConfig
from tunelab.errors import TunelabError
from tunelab.monitor import DRIFTED, WATCH, MonitorReport, labelled_requests, run_monitor

_REACHES = {"drift": (DRIFTED,), "watch": (WATCH, DRIFTED), "never": ()}


@dataclass
class Tick:
    """One check of the loop and what it did about it."""

    report: MonitorReport
    retrains: list[dict[str, Any]] = field(default_factory=list)  # RetrainOutcome.as_dict() or {"skipped": reason}


def _serving(registry_path: Path | None, alias: str) -> Any:
    """The run ``alias`` points at now (None: no registry, or no such alias)."""
    from tunelab.registry.store import Registry, RegistryError, default_registry_path

    path = Path(registry_path or default_registry_path())
    if not path.is_file():
        return None
    try:
        return Registry(path).resolve_alias(alias)
    except RegistryError:
        return None


def monitor_tick(
    log_path: Path,
    config: MonitorConfig,
    *,
    registry_path: Path | None = None,
    model: str | None = None,
    alias: str | None = None,
    data: list[Path] | None = None,
    attempted: dict[tuple[str, str | None], set[tuple[str, int, str]]] | None = None,
    plots_dir: Path | None = None,
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None,
) -> Tick:
    """One check, and a retrain for each served model whose status reaches ``config.retrain_on``."""
    from tunelab.tasks.retrain import retrain

    attempted = attempted if attempted is not None else {}
    report = run_monitor(log_path, config, registry_path=registry_path, model=model, plots_dir=plots_dir)
    tick = Tick(report)
    for model_report in report.models:
        if model_report.retrain_status not in _REACHES[config.retrain_on] or model_report.run_id is None:
            continue
        serving = _serving(registry_path, alias or model_report.model)
        if serving is not None and serving.id != model_report.run_id:
            # Traffic of the run served before a promotion: its challenger could only be judged against it.
            tick.retrains.append({"model": model_report.model, "skipped": (
                f"run {model_report.run_id} no longer serves alias {alias or model_report.model} (now {serving.name}, {serving.id})")})
            continue
        key = (model_report.model, model_report.run_id)
        # Which labelled inputs, not how many: as many old ones may leave the window as new ones arrive.
        labelled = {(item["response_id"], item["item"], item["label"]) for item in labelled_requests(log_path, model=model_report.model, since=report.since)}
        if key in attempted and labelled <= attempted[key]:
            tick.retrains.append({"model": model_report.model, "skipped": f"no new labelled feedback since the last retrain of run {model_report.run_id}"})
            continue
        attempted[key] = labelled
        try:
            outcome = retrain(
                model_report.run_id, data, registry_path=registry_path, log_path=log_path, served_model=model_report.model,
                since=report.since, alias=alias or model_report.model, on_event=on_event,
            )
            tick.retrains.append({"model": model_report.model, **outcome.as_dict()})
        except TunelabError as error:
            tick.retrains.append({"model": model_report.model, "skipped": error.message})
    return tick


def monitor_loop(
    log_path: Path,
    config: MonitorConfig,
    *,
    on_tick: Callable[[Tick], None],
    iterations: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **tick_options: Any,
) -> None:
    """Check every ``config.every`` (forever, or ``iterations`` times), handing each :class:`Tick` to ``on_tick``."""
    attempted: dict[tuple[str, str | None], set[tuple[str, int, str]]] = {}
    count = 0
    while iterations is None or count < iterations:
        started = time.monotonic()
        on_tick(monitor_tick(log_path, config, attempted=attempted, **tick_options))
        count += 1
        if iterations is not None and count >= iterations:
            return
        sleep(max(0.0, config.every_seconds - (time.monotonic() - started)))
