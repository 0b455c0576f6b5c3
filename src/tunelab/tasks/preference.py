"""preference: teach the model to prefer the chosen answer over the rejected one (DPO and variants).

The recipe, top to bottom: open the run, load the model it starts from (usually an SFT run: that
model is the reference policy), tokenize each pair as two answers to the same prompt, compute the
reference model's log-probabilities of every answer once, make the chosen parameters trainable
(a LoRA parent is folded into the weights first, so the new adapter trains on top of exactly the
reference), pack chosen and rejected into the same rows, train with the DPO loss, save.

No second copy of the model is kept: the reference log-probabilities are numbers stored with
each example (and in the run folder's ``reference_log_probs.json``, for audit), computed before any weight moves.
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
from tunelab.runs import Run, RunFolder
from tunelab.train.batching import PreferenceCollate
from tunelab.train.losses import dpo_loss_sum, sequence_log_probs
from tunelab.train.run import TrainResult, finish_run, start_run


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
    # Answers that differ only beyond max_length are cut to the same tokens: no gradient, yet one more pair in every mean.
    tied = [e.source for e in examples if e.trainable and not e.differs]
    examples = [e for e in examples if e.trainable and e.differs]
    if not examples:
        raise DataError(
            f"no training pair keeps both answers, and a difference between them, within data.max_length={max_length}",
            "raise data.max_length or shorten the prompts",
        )
    validation, _ = tokenize_records(split.validation, "preference", tokenizer, **settings)
    validation = [e for e in validation if e.trainable and e.differs]
    collate = PreferenceCollate(tokenizer.pad_token_id, max_length, config.train.packing, config.train.pack_tokens)

    # The reference is the model as loaded (an SFT run's adapter active), before anything is trained.
    examples = with_reference_log_probs(base.model, examples, collate, batch_size=config.train.batch_size, accelerator=session.accelerator)
    validation = with_reference_log_probs(base.model, validation, collate, batch_size=config.train.batch_size, accelerator=session.accelerator)
    if session.accelerator.is_main_process:
        save_reference_log_probs(session.run.reference_log_probs, examples)

    model = apply_method(base.model, config)
    loop = session.train(
        model,
        examples,
        validation,
        collate=collate,
        loss_fn=functools.partial(dpo_loss_sum, beta=config.preference.beta, loss=config.preference.loss),
        progress=progress,
    )
    result = finish_run(session, model, loop)
    result.warnings += [f"{source}: an answer lies beyond data.max_length; pair not trained on" for source in stats.untrainable]
    result.warnings += [f"{source}: chosen and rejected differ only beyond data.max_length; pair not trained on" for source in tied]
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


# ------------------------------------------------------------------ the DPO model against its SFT parent

def sft_parent(config: ResolvedConfig) -> Run | None:
    """The SFT run this preference run starts from, when it has a test evaluation to answer again.

    None when ``model`` is no run folder, the run is not an sft run, or it was never evaluated.
    """
    from tunelab.runs import resolve_model

    source = resolve_model(config.model.name)
    if source.kind != "run":
        return None
    parent = Run.open(source.location)
    if not parent.folder.tuned_eval.is_file() or not parent.folder.split.is_file():
        return None
    return parent if parent.task == "sft" else None


def generation_against_parent(config: ResolvedConfig, run_dir: str | Path, parent: Run, *, progress: Any = None) -> dict[str, Any]:
    """The DPO model answers its SFT parent's test prompts as the parent was evaluated; compared and sheeted.

    The parent's saved config gives the prompts (its split's test records), the decoding and the
    metrics, so both sides are generated alike. Writes ``eval/generation.json``,
    ``eval/generation_comparison.json`` (paired bootstrap, DPO against the parent) and the run's
    blind A/B sheet ``review.csv`` + key (base = the SFT parent, tuned = the DPO model), which
    ``tunelab review score RUN/review.csv`` and the web interface's review read.

    Raises:
        DataError: when the parent's data files are gone or no longer match its split.
    """
    from tunelab.data.split import load_split
    from tunelab.evaluation.compare import compare_evaluations
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.evaluation.result import EvalResult
    from tunelab.evaluation.review import export_review

    run = RunFolder(Path(run_dir))
    parent_config = parent.config
    parent_split = load_split(parent.folder.split, parent_config)
    parent_eval = EvalResult.load(parent.folder.tuned_eval)
    tested = set(parent_eval.ids)
    records = [r for r in parent_split.test if r.id in tested]
    generated = evaluate(
        Run.open(run.root).load(), records, "sft", config=parent_config.eval, data_config=parent_config.data,
        baseline=False, train_ids=[r.id for r in parent_split.train], progress=progress,
    )
    generated.save(run.generation_eval)
    comparison = compare_evaluations(parent_eval, generated, seed=config.eval.seed, samples=config.eval.bootstrap_samples)
    comparison.save(run.generation_comparison)
    sheet, key = export_review(parent_eval, generated, run.review_sheet.resolve(), seed=config.eval.seed)
    return {
        "parent": str(parent.root), "n": generated.n, "metrics": generated.metrics, "parent_metrics": parent_eval.metrics,
        "comparison": comparison.to_dict(), "summary": comparison.summary, "sheet": str(sheet), "key": str(key),
    }
