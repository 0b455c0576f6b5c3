"""preference: teach the model to prefer the chosen answer over the rejected one (DPO and variants).

The recipe, top to bottom: open the run, load the model it starts from (usually an SFT run: that
model is the reference policy), tokenize each pair as two answers to the same prompt, compute the
reference model's log-probabilities of every answer once, make the chosen parameters trainable
(a LoRA parent is folded into the weights first, so the new adapter trains on top of exactly the
reference), pack chosen and rejected into the same rows, train with the DPO loss, save.

No second copy of the model is kept: the reference log-probabilities are numbers stored with
each example (and in ``reference_log_probs.json``, for audit), computed before any weight moves.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ResolvedConfig, require_resolved
from tunelab.data.split import Split
from tunelab.data.tokenize import PreferenceExample, tokenize_records
from tunelab.errors import DataError
from tunelab.models.adapters import apply_method
from tunelab.paths import atomic_write_text
from tunelab.train.batching import PreferenceCollate
from tunelab.train.loop import train_loop
from tunelab.train.losses import dpo_loss_sum, sequence_log_probs
from tunelab.train.run import TrainResult, finish_run, start_run

REFERENCE_FILE = "reference_log_probs.json"


def train(config: ResolvedConfig, split: Split, *, run_dir: str | Path, progress: Any = None, resume: bool = False) -> TrainResult:
    """Preference-tune the model of ``config.model`` (the reference) on prompt/chosen/rejected pairs.

    Raises:
        DataError: when no pair keeps both answers within data.max_length.
        ConfigError, ModelError, TrainingError: see ``start_run`` and ``train_loop``.
    """
    config = require_resolved(config)
    session = start_run(config, split, run_dir=run_dir, resume=resume)
    base = session.load_model()
    tokenizer, max_length = base.tokenizer, config.data.max_length

    settings = {"max_length": max_length, "system_prompt": config.data.system_prompt}
    examples, stats = tokenize_records(split.train, "preference", tokenizer, **settings)
    examples = [e for e in examples if e.trainable]
    if not examples:
        raise DataError(
            f"no training pair keeps both answers within data.max_length={max_length}",
            "raise data.max_length or shorten the prompts",
        )
    validation, _ = tokenize_records(split.validation, "preference", tokenizer, **settings)
    validation = [e for e in validation if e.trainable]
    collate = PreferenceCollate(tokenizer.pad_token_id, max_length, config.train.packing, config.train.pack_tokens)

    # The reference is the model as loaded (an SFT run's adapter active), before anything is trained.
    examples = with_reference_log_probs(base.model, examples, collate, batch_size=config.train.batch_size, accelerator=session.accelerator)
    validation = with_reference_log_probs(base.model, validation, collate, batch_size=config.train.batch_size, accelerator=session.accelerator)
    if session.accelerator.is_main_process:
        save_reference_log_probs(session.run.root / REFERENCE_FILE, examples)

    model = apply_method(base.model, config)
    loop = train_loop(
        model=model,
        train_examples=examples,
        validation_examples=validation,
        collate=collate,
        loss_fn=functools.partial(dpo_loss_sum, beta=config.preference.beta, loss=config.preference.loss),
        config=config.train,
        max_length=max_length,
        run=session.run,
        accelerator=session.accelerator,
        progress=progress,
        resume=resume,
    )
    result = finish_run(session, model, loop)
    result.warnings += [f"{source}: an answer lies beyond data.max_length; pair not trained on" for source in stats.untrainable]
    return result


def with_reference_log_probs(
    model: torch.nn.Module, examples: Sequence[PreferenceExample], collate: PreferenceCollate, *, batch_size: int, accelerator: Any = None
) -> list[PreferenceExample]:
    """``examples`` with ``reference_chosen`` / ``reference_rejected`` set to ``model``'s log-probabilities.

    Computed with the same collate, loss code and precision as training (so the log-ratio of the
    untrained policy is zero up to rounding); every process computes all of them (no communication).
    """
    if not examples:
        return []
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    model.to(device)
    was_training = model.training
    model.eval()
    autocast = accelerator.autocast() if accelerator is not None else torch.autocast(device.type, enabled=False)
    done: list[PreferenceExample] = []
    with torch.no_grad(), autocast:
        for start in range(0, len(examples), batch_size):
            chunk = list(examples[start : start + batch_size])
            batch = {k: v.to(device) for k, v in collate(chunk).items()}
            values = sequence_log_probs(model, batch).float().cpu().tolist()
            done += [dataclasses.replace(e, reference_chosen=c, reference_rejected=r) for e, (c, r) in zip(chunk, values, strict=True)]
    model.train(was_training)
    return done


def save_reference_log_probs(path: Path, examples: Sequence[PreferenceExample]) -> None:
    rows = [{"source": e.source, "chosen": e.reference_chosen, "rejected": e.reference_rejected} for e in examples]
    atomic_write_text(path, json.dumps(rows, indent=0) + "\n")
