"""classify: the model answers a prompt with exactly one label token.

The recipe, top to bottom: open the run, map each label of the training split to one token (saved
as labels.json), tokenize the prompts, make the chosen parameters trainable, pack prompts into
rows, train with cross-entropy over the label tokens only (the hidden state at each prompt's last
position times the label tokens' rows of the head: no full-vocabulary logits), save.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ResolvedConfig, require_resolved
from tunelab.data.labels import LabelMap, label_name_token_ids
from tunelab.data.split import Split
from tunelab.data.tokenize import tokenize_records, training_prefix
from tunelab.errors import DataError
from tunelab.models.adapters import apply_method
from tunelab.models.heads import LabelHead
from tunelab.train.batching import ClassifyCollate
from tunelab.train.loop import train_loop
from tunelab.train.losses import classify_correct_sum, classify_loss_sum
from tunelab.train.run import TrainResult, finish_run, start_run


def train(config: ResolvedConfig, split: Split, *, run_dir: str | Path, progress: Any = None, resume: bool = False) -> TrainResult:
    """Fine-tune a classifier that answers one label token.

    Raises:
        DataError: when the training split has fewer than two labels, or validation has labels
            that training lacks.
        ConfigError, ModelError, TrainingError: see ``start_run`` and ``train_loop``.
    """
    config = require_resolved(config)
    labels = sorted({record.label for record in split.train})
    if len(labels) < 2:
        raise DataError(f"classify needs at least two labels in the training split, found {labels}")
    unseen = [r for r in split.validation if r.label not in set(labels)]
    if unseen:
        raise DataError(
            f"{unseen[0].source or 'a validation record'}: label {unseen[0].label!r} does not occur in the training split "
            f"({len(unseen)} validation records like it)",
            "give every label a few training examples, or drop the rare labels",
        )
    session = start_run(config, split, run_dir=run_dir, resume=resume)
    base = session.load_model()
    tokenizer, max_length = base.tokenizer, config.data.max_length

    label_map = LabelMap.for_records(split.train, tokenizer)
    if session.accelerator.is_main_process:
        label_map.save(session.run.labels)
    settings = {"max_length": max_length, "label_map": label_map, "system_prompt": config.data.system_prompt}
    examples, _ = tokenize_records(split.train, "classify", tokenizer, **settings)
    validation, _ = tokenize_records(split.validation, "classify", tokenizer, **settings)

    model = apply_method(base.model, config)
    # The system message and instruction every prompt starts with run once per micro-batch (same loss and gradients).
    prefix = training_prefix([e.input_ids for e in examples + validation], enabled=config.train.reuses_prefix())
    label_token_ids = torch.tensor(label_map.token_ids, dtype=torch.long)
    label_head = None
    if config.classify.label_head and config.train.method != "full":
        # full fine-tuning trains the head rows themselves; LoRA and freeze never reach them.
        names = label_name_token_ids(label_map.labels, tokenizer) if config.classify.label_init == "name" else None
        label_head = LabelHead.initialise(model, label_map.token_ids, names)
        model.add_module("label_head", label_head)  # a submodule: optimized, checkpointed and resumed with the rest
    scoring = {"label_token_ids": label_token_ids, "label_head": label_head}
    loop = train_loop(
        model=model,
        train_examples=examples,
        validation_examples=validation,
        collate=ClassifyCollate(tokenizer.pad_token_id, max_length, config.train.packing, config.train.pack_tokens, prefix),
        loss_fn=functools.partial(classify_loss_sum, **scoring),
        config=config.train,
        max_length=max_length,
        run=session.run,
        accelerator=session.accelerator,
        progress=progress,
        resume=resume,
        validation_score=functools.partial(classify_correct_sum, **scoring) if config.classify.select_by == "accuracy" else None,
    )
    return finish_run(session, model, loop)
