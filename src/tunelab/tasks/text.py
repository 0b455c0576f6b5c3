"""text: continued (self-supervised) training on raw documents.

The recipe, top to bottom: open the run, cut documents into windows of data.max_length tokens
(every token predicted once), make the chosen parameters trainable, pack short windows into full
rows, train with the chunked next-token loss, save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config import ResolvedConfig, require_resolved
from tunelab.data.split import Split
from tunelab.data.tokenize import tokenize_records
from tunelab.errors import DataError
from tunelab.models.adapters import apply_method
from tunelab.train.batching import LMCollate
from tunelab.train.losses import lm_loss_sum
from tunelab.train.run import TrainResult, finish_run, start_run


def train(config: ResolvedConfig, split: Split, *, run_dir: str | Path, progress: Any = None, resume: bool = False) -> TrainResult:
    """Continue pre-training on documents.

    Raises:
        DataError: when the training split is empty.
        ConfigError, ModelError, TrainingError: see ``start_run`` and ``train_loop``.
    """
    config = require_resolved(config)
    if not split.train:
        raise DataError("the training split is empty", "check data.train")
    session = start_run(config, split, run_dir=run_dir, resume=resume)
    base = session.load_model()
    tokenizer, max_length = base.tokenizer, config.data.max_length

    settings = {"max_length": max_length, "stride": config.data.stride}
    examples, _ = tokenize_records(split.train, "text", tokenizer, **settings)
    validation, _ = tokenize_records(split.validation, "text", tokenizer, **settings)

    model = apply_method(base.model, config)
    loop = session.train(
        model,
        examples,
        validation,
        collate=LMCollate(tokenizer.pad_token_id, max_length, config.train.packing, config.train.pack_tokens),
        loss_fn=lm_loss_sum,
        progress=progress,
    )
    return finish_run(session, model, loop)
