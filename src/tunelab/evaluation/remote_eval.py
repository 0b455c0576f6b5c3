"""``tunelab eval --endpoint``: a remote model as the evaluated one, against baselines (kept apart from
``remote.py`` because ``baselines.py`` uses that module for remote baselines)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import Record
from tunelab.evaluation.remote import Progress, evaluate_remote, names_label_map
from tunelab.evaluation.result import EvalResult
from tunelab.remote.client import RemoteClient


def evaluate_remote_with_baselines(
    client: RemoteClient,
    records: Sequence[Record],
    task: str,
    *,
    baselines: Sequence[str],
    train: Sequence[Record],
    config: EvalConfig,
    data_config: DataConfig,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> tuple[EvalResult, dict[str, EvalResult], Any]:
    """``tunelab eval --endpoint``: the remote model, then each baseline on the same examples, and the verdict.

    Baselines that run a local base model (base, few_shot) have no model under a remote one: they are refused.

    Raises:
        ConfigError: for base/few_shot, or a baseline that does not apply to the task.
        DataError, RemoteError: as ``evaluate_remote`` and ``evaluate_baselines``.
    """
    from tunelab.errors import ConfigError, DataError
    from tunelab.evaluation.baselines import LEARNS_FROM_TRAINING, NEEDS_BASE_MODEL, evaluate_baselines
    from tunelab.evaluation.compare import compare_with_baselines

    local = [name for name in baselines if name in NEEDS_BASE_MODEL]
    if local:
        raise ConfigError(f"the {', '.join(local)} baseline(s) run the local model under the evaluated one, and a remote model has none",
                          "use classical, retrieval or another remote model (openai:NAME) as baselines")
    missing = [name for name in baselines if name in LEARNS_FROM_TRAINING and not train]
    if missing:
        raise DataError(f"the {', '.join(missing)} baseline(s) learn from training data", "give the training file with --train FILE")
    if task == "classify" and labels is None:
        labels = sorted({r.label for r in (train or records)})
    train_ids = [r.id for r in train] or None
    result = evaluate_remote(client, records, task, config=config, data_config=data_config, labels=labels, train_ids=train_ids, progress=progress)
    label_map = names_label_map(labels) if task == "classify" else None
    opponents = evaluate_baselines(baselines, None, records, task, train=train, config=config, data_config=data_config,
                                   label_map=label_map, train_ids=train_ids)
    verdict = compare_with_baselines(opponents, result, seed=config.seed, samples=config.bootstrap_samples) if opponents else None
    return result, opponents, verdict
