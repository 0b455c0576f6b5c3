"""Task recipes: each reads top to bottom and hands the one training loop a collate and a loss."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.config import ResolvedConfig
from tunelab.errors import ConfigError

if TYPE_CHECKING:
    from tunelab.data.split import Split
    from tunelab.train.run import TrainResult


def run_training(
    config: ResolvedConfig, split: Split, *, run_dir: str | Path, progress: Any = None, resume: bool = False
) -> TrainResult:
    """Train ``config.task`` on ``split`` (its ``.train`` / ``.validation`` records) into ``run_dir``.

    ``progress`` is called with a ``tunelab.train.loop.Progress`` after every optimizer step.
    ``resume=True`` continues the run in ``run_dir`` from its newest checkpoint.

    Returns:
        ``tunelab.train.run.TrainResult``.

    Raises:
        ConfigError: for a task without a training recipe here, or see the recipes.
        RunFolderInUse: when another process works in ``run_dir``.
    """
    if config.train.backend != "local":
        raise ConfigError(
            f"train.backend: {config.train.backend} trains through the provider's API, not this local loop",
            "run it with `tunelab run CONFIG` (it estimates the price, starts the job, follows it and evaluates the result)",
        )
    if config.task == "text":
        from tunelab.tasks.text import train
    elif config.task == "sft":
        from tunelab.tasks.sft import train
    elif config.task == "classify":
        from tunelab.tasks.classify import train
    elif config.task == "preference":
        from tunelab.tasks.preference import train
    else:
        raise ConfigError(f"task '{config.task}' has no training recipe yet", "use text, sft, classify or preference")
    import os

    from tunelab.paths import lock_run_folder, remove_temporaries, unlock_run_folder
    from tunelab.runs import RunFolder

    # One run per run folder: a second `--resume` (or a UI job beside a CLI one) would train into the same
    # checkpoints. Under a multi-process launch the first process holds it for all of them.
    from tunelab.train.run import check_model

    check_model(config)  # before the lock creates the run folder
    main_process = int(os.environ.get("RANK", "0")) == 0
    if main_process:
        lock_run_folder(Path(run_dir))
    try:
        if main_process:
            for folder in (Path(run_dir), RunFolder(Path(run_dir)).adapter):
                remove_temporaries(folder)  # what a killed write left (a half-saved adapter/, config.yaml, its model card)
        return train(config, split, run_dir=run_dir, progress=progress, resume=resume)
    finally:
        if main_process:
            unlock_run_folder(Path(run_dir))
