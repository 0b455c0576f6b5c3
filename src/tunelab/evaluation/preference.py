"""Evaluation of preference pairs: does the model rank the chosen answer above the rejected one?

- before (``baseline=True``, the reference model, e.g. the SFT parent): the model's own
  length-normalised log-likelihood (mean log-probability per answer token) ranks the pair; its
  reward margin and log-ratios are zero by definition (the reference against itself).
- after (a preference run): the implicit DPO reward ``beta * (log pi/ref (chosen) - log pi/ref
  (rejected))`` ranks the pair (per answer token for the ipo and length_normalized losses, as in
  training); the mean reward margin, and how far the policy moved (mean log-ratio to the
  reference of the chosen and of the rejected answers, per answer token). ``likelihood_accuracy``
  applies the "before" rule (per-token likelihood) to every model, so it compares like with like:
  right after training starts the implicit reward is near zero and ranks pairs almost at random.
  It is the verdict's primary metric (``metrics.PRIMARY_METRIC``): on ``preference_accuracy`` a policy
  that moved a hair in the trained direction "beat" its reference, whose own reward is zero.

The reference of a LoRA run is the same weights with the adapter disabled (its parent was folded
in beneath it); a full or freeze run's reference is its parent model, loaded for the evaluation.
Per-example scores are kept, so ``compare`` bootstraps before vs after on the same pairs; the metrics measured against
the reference (``MetricSpec.against_reference``) it does not compare with the reference scored as itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from tunelab.data.records import PreferenceRecord
from tunelab.data.tokenize import PreferenceExample, tokenize_records
from tunelab.errors import ConfigError
from tunelab.evaluation.predict import window_nll
from tunelab.models.generate import context_length
from tunelab.models.loader import on_inference_device

Progress = Callable[[int], None]
DEFAULT_BETA, DEFAULT_LOSS = 0.1, "sigmoid"


def answer_log_probs(model: Any, examples: Sequence[PreferenceExample], *, batch_size: int, progress: Progress | None = None) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probabilities of the answer tokens of each pair."""
    sequences = []
    for e in examples:
        sequences += [(e.chosen_ids, e.chosen_labels), (e.rejected_ids, e.rejected_labels)]
    values = window_nll(model, sequences, batch_size=batch_size)
    if progress:
        progress(len(examples))
    return [(-values[2 * i][0], -values[2 * i + 1][0]) for i in range(len(examples))]


def _reference_context(loaded: Any) -> tuple[Any, Any]:
    """(reference model, context manager under which it computes) for a preference run."""
    model = loaded.model
    if hasattr(model, "disable_adapter"):
        return model, model.disable_adapter()
    if loaded.run is None:
        raise ConfigError("a preference run's evaluation needs its run (the reference is the model it was trained from)")
    return loaded.run.base.load().model, contextlib.nullcontext()


def evaluate_preference(loaded: Any, records: Sequence[PreferenceRecord], config: Any, data_config: Any, baseline: bool, settings: dict, progress: Progress | None):
    """(rows, metrics, warnings) of ``loaded`` on preference ``records`` (see the module docstring)."""
    from tunelab.evaluation.metrics import likelihood_margin, metric_values

    tokenizer = loaded.tokenizer
    # A pair reads at most the model's context (the one context_length), as text windows do: a GPT-2-style model
    # fails with an IndexError past its positions.
    context = context_length(loaded.model)
    warnings = []
    if data_config.max_length > context:
        warnings.append(f"pairs are read within the model's context of {context} tokens, not data.max_length={data_config.max_length}")
        data_config = data_config.model_copy(update={"max_length": context})
    examples, _ = tokenize_records(records, "preference", tokenizer, max_length=data_config.max_length, system_prompt=data_config.system_prompt)
    kept = [(r, e) for r, e in zip(records, examples, strict=True) if e.trainable]
    if len(kept) < len(records):
        warnings.append(f"{len(records) - len(kept)} pairs have an answer beyond max_length and were not scored")
    # Answers cut to the same tokens rank neither above the other for any model (counted wrong for every one); training
    # leaves such a pair out too (``tasks.preference``).
    tied = [(r, e) for r, e in kept if not e.differs]
    if tied:
        warnings.append(f"{len(tied)} pairs have answers that differ only beyond max_length and were not scored")
        kept = [(r, e) for r, e in kept if e.differs]
    examples = [e for _, e in kept]
    policy = answer_log_probs(loaded.model, examples, batch_size=config.batch_size, progress=progress)
    run_settings = loaded.run.config.preference if loaded.run is not None else None
    beta, loss = (run_settings.beta, run_settings.loss) if run_settings is not None else (DEFAULT_BETA, DEFAULT_LOSS)
    if baseline:
        reference = policy
    else:
        model, context = _reference_context(loaded)
        # A full or freeze run's parent is loaded here, on the CPU: scored on the GPU where it fits, as the run was.
        with context, on_inference_device(model):
            reference = answer_log_probs(model, examples, batch_size=config.batch_size)
    rows = []
    for (record, example), (chosen, rejected), (ref_chosen, ref_rejected) in zip(kept, policy, reference, strict=True):
        n_chosen, n_rejected = example.chosen_tokens, example.rejected_tokens
        ratio_chosen, ratio_rejected = chosen - ref_chosen, rejected - ref_rejected
        likelihood = likelihood_margin({"chosen_log_prob": chosen, "chosen_tokens": n_chosen, "rejected_log_prob": rejected, "rejected_tokens": n_rejected})
        if baseline:
            prefers_chosen = likelihood > 0
            margin = 0.0
        else:
            # As ``train.losses.preference_logits``: per answer token for ipo and length_normalized.
            if loss in ("ipo", "length_normalized"):
                difference = ratio_chosen / n_chosen - ratio_rejected / n_rejected
            else:
                difference = ratio_chosen - ratio_rejected
            margin = beta * difference
            prefers_chosen = difference > 0
        prompt = "\n".join(f"{m['role']}: {m['content']}" for m in record.prompt) if len(record.prompt) > 1 else record.prompt[0]["content"]
        rows.append({
            "id": record.id, "source": record.source, "prompt": prompt, "reference": record.chosen,
            "prediction": record.chosen if prefers_chosen else record.rejected,
            "scores": {
                "correct": float(prefers_chosen), "margin": margin,
                # The "before" rule applied to this model too, so before and after also compare like with like.
                "likelihood_correct": float(likelihood > 0),
                "log_ratio_chosen": ratio_chosen / n_chosen, "log_ratio_rejected": ratio_rejected / n_rejected,
                "chosen_log_prob": chosen, "rejected_log_prob": rejected, "chosen_tokens": n_chosen, "rejected_tokens": n_rejected,
            },
        })
    settings.update(system_prompt=data_config.system_prompt, beta=beta, loss=loss, ranked_by="log-likelihood per token" if baseline else "implicit reward")
    return rows, metric_values("preference", rows), warnings
