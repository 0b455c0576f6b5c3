"""sft: teach the model to answer prompts (loss on the assistant turns only, end-of-turn included).

The recipe, top to bottom: open the run, tokenize (chat template, masks), make the chosen
parameters trainable, pack examples into rows, train with the chunked next-token loss, save.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.config import ResolvedConfig, require_resolved
from tunelab.data.split import Split
from tunelab.data.tokenize import tokenize_records, tokenize_sft
from tunelab.errors import DataError
from tunelab.models.adapters import apply_method
from tunelab.train.batching import LMCollate
from tunelab.train.losses import lm_loss_sum
from tunelab.train.run import TrainResult, finish_run, start_run


def train(config: ResolvedConfig, split: Split, *, run_dir: str | Path, progress: Any = None, resume: bool = False) -> TrainResult:
    """Fine-tune on prompt -> completion conversations.

    Raises:
        DataError: when no training example keeps a trained token within data.max_length.
        ConfigError, ModelError, TrainingError: see ``start_run`` and ``train_loop``.
    """
    config = require_resolved(config)
    session = start_run(config, split, run_dir=run_dir, resume=resume)
    base = session.load_model()
    tokenizer, max_length = base.tokenizer, config.data.max_length

    settings = {"max_length": max_length, "system_prompt": config.data.system_prompt}
    tokenized, _ = tokenize_records(split.train, "sft", tokenizer, **settings)
    # An example whose answer was cut off entirely teaches nothing, nor one whose every assistant turn has weight 0
    # (at any length: tokenized again without the limit); each is reported, not trained on.
    untrained = [
        (e.source, "every assistant turn has weight 0"
         if tokenize_sft(record, tokenizer, 10**9, config.data.system_prompt).trained_tokens == 0
         else "the answer lies beyond data.max_length")
        for record, e in zip(split.train, tokenized, strict=True) if e.trained_tokens == 0
    ]
    examples = [e for e in tokenized if e.trained_tokens > 0]
    if not examples and {reason for _, reason in untrained} == {"every assistant turn has weight 0"}:
        raise DataError(
            "every training conversation has weight 0 on all its assistant turns: nothing to train on",
            "set weight: 1 (or leave weight out) on the assistant turns to learn",
        )
    if not examples:
        raise DataError(
            f"no training example keeps any answer token within data.max_length={max_length}",
            "raise data.max_length or shorten the prompts",
        )
    validation, _ = tokenize_records(split.validation, "sft", tokenizer, **settings)
    validation = [e for e in validation if e.trained_tokens > 0]

    model = apply_method(base.model, config)
    loop = session.train(
        model,
        examples,
        validation,
        collate=LMCollate(tokenizer.pad_token_id, max_length, config.train.packing, config.train.pack_tokens),
        loss_fn=lm_loss_sum,
        progress=progress,
    )
    result = finish_run(session, model, loop)
    result.warnings += [f"{source}: {reason}; not trained on" for source, reason in untrained]
    return result
