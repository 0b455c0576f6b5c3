"""classify: the model answers a prompt with exactly one label token.

The recipe, top to bottom: open the run, map each label of the training split to one token (saved
as labels.json), tokenize the prompts, make the chosen parameters trainable, pack prompts into
rows, train with cross-entropy over the label tokens only (the hidden state at each prompt's last
position times the label tokens' rows of the head: no full-vocabulary logits), save. Then the
saved model is calibrated on the validation split (``classify.calibrate``): one temperature for the
label logits, fitted on the in-scope validation queries and folded into the trained label rows
(calibration.json keeps it with the ECE before and after). With ``data.out_of_scope_label``: the
calibrated model scores the validation queries (in-scope and out of scope) and the out-of-scope rule
chosen there (a threshold on the top probability or on the similarity to the nearest training request,
``classify.out_of_scope_score``) is saved as out_of_scope.json.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from tunelab.config import ResolvedConfig, require_resolved
from tunelab.data.labels import LabelMap, OutOfScope, label_name_token_ids
from tunelab.data.split import Split, check_classify_labels
from tunelab.data.tokenize import tokenize_records, training_prefix
from tunelab.models.adapters import apply_method
from tunelab.models.heads import LabelHead
from tunelab.models.loader import on_inference_device
from tunelab.runs import Run, RunFolder
from tunelab.train.batching import ClassifyCollate
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
    outside = config.data.out_of_scope_label
    check_classify_labels(split, outside)
    # Out-of-scope queries are never a class: the loop validates on the in-scope ones only.
    in_scope_validation = [r for r in split.validation if r.label != outside]
    session = start_run(config, split, run_dir=run_dir, resume=resume)
    base = session.load_model()
    tokenizer, max_length = base.tokenizer, config.data.max_length

    label_map = LabelMap.for_records(split.train, tokenizer, outside)
    if session.accelerator.is_main_process:
        label_map.save(session.run.labels)
    settings = {"max_length": max_length, "label_map": label_map, "system_prompt": config.data.system_prompt}
    examples, _ = tokenize_records(split.train, "classify", tokenizer, **settings)
    validation, _ = tokenize_records(in_scope_validation, "classify", tokenizer, **settings)

    model = apply_method(base.model, config)
    # The system message and instruction every prompt starts with run once per micro-batch (same loss and gradients).
    prefix = training_prefix([e.input_ids for e in examples + validation], enabled=config.train.reuses_prefix())
    label_token_ids = torch.tensor(label_map.token_ids, dtype=torch.long)
    label_head = None
    if config.classify.label_head:
        # LoRA and freeze never reach the label rows of a tied head; full fine-tuning does, but at its small
        # learning rate from arbitrary code tokens, so it gets the name-initialised rows as well (folded into
        # an untied head when the model folder is saved).
        names = label_name_token_ids(label_map.labels, tokenizer) if config.classify.label_init == "name" else None
        label_head = LabelHead.initialise(model, label_map.token_ids, names)
        model.add_module("label_head", label_head)  # a submodule: optimized, checkpointed and resumed with the rest
    scoring = {"label_token_ids": label_token_ids, "label_head": label_head}
    # From the tokenized examples' label indices: exactly the rows the loss sees.
    weights = balanced_class_weights([e.label for e in examples], len(label_map.labels)) if config.classify.class_weights == "balanced" else None
    loop = session.train(
        model,
        examples,
        validation,
        collate=ClassifyCollate(tokenizer.pad_token_id, max_length, config.train.packing, config.train.pack_tokens, prefix),
        loss_fn=functools.partial(
            classify_loss_sum, **scoring, label_smoothing=config.classify.label_smoothing, class_weights=weights,
            prompt_lm_weight=config.classify.prompt_lm_weight,
        ),
        progress=progress,
        validation_score=functools.partial(classify_correct_sum, **scoring) if config.classify.select_by == "accuracy" else None,
    )
    result = finish_run(session, model, loop)
    if session.accelerator.is_main_process and (config.classify.calibrate or outside is not None):
        del model, base  # the saved run is reloaded as evaluation and serving will see it
        if config.classify.calibrate:
            calibrate_temperature(config, split, run_dir)
        if outside is not None:
            calibrate_run(config, split, run_dir)
    return result


def balanced_class_weights(labels: list[int], count: int) -> torch.Tensor:
    """One weight per label, n / (labels x examples of the label), from the training examples' label indices.

    scikit-learn's ``class_weight='balanced'``: the weights average 1 over the training examples, so the loss
    keeps its scale, and each label's examples weigh as much in total as any other label's. A label with no
    training example gets 0 (none reaches here: the split check requires each validation label in training).
    """
    counts = torch.bincount(torch.tensor(labels, dtype=torch.long), minlength=count).float()
    return torch.where(counts > 0, len(labels) / (count * counts.clamp(min=1)), torch.zeros_like(counts))


def calibrate_temperature(config: ResolvedConfig, split: Split, run_dir: str | Path) -> dict[str, Any]:
    """Fit one temperature on the in-scope validation queries, fold it into the saved label rows, save calibration.json.

    The saved run (as ``Run.load`` gives it) scores the validation queries with the one classify inference
    (``inference.Classifier``); ``metrics.fit_temperature`` picks T (lowest NLL; Platt-smoothed targets when every query is right); the adapter's label rows become
    ``LabelHead.with_temperature``'s, so evaluation, serving, plain PEFT and the merged export all give the
    calibrated probability. The answers do not change. Returns what calibration.json holds.
    """
    import json
    import shutil

    import numpy as np

    from tunelab.evaluation.metrics import expected_calibration_error, fit_temperature
    from tunelab.inference import Classifier, softmax
    from tunelab.models.adapters import write_label_rows
    from tunelab.paths import atomic_directory, atomic_write_text, disk_full_error, is_disk_full

    run = RunFolder(Path(run_dir))
    loaded = Run.open(run.root).load()
    classifier = Classifier.for_model(loaded)
    labels = classifier.label_map.labels
    rows = [r for r in split.validation if r.label != config.data.out_of_scope_label and r.label in labels]
    record: dict[str, Any] = {"method": "temperature scaling on the in-scope validation queries (lowest NLL; targets smoothed as Platt's when every query is answered right)", "queries": len(rows)}
    if not rows or loaded.label_head is None or not run.adapter.is_dir():
        record.update(temperature=1.0, applied=False,
                      reason="no validation queries" if not rows else "the run has no label rows in an adapter to fold the temperature into")
    else:
        prompts = [classifier.prompt(r.text)[0] for r in rows]
        # Loaded on the CPU: scored on the GPU where there is one, and back before the label rows are rewritten.
        with on_inference_device(loaded.model):
            logits = classifier.logits(loaded.model, prompts, batch_size=config.eval.batch_size)
        targets = np.array([labels.index(r.label) for r in rows])
        temperature = fit_temperature(logits, targets)

        def ece(scaled: np.ndarray) -> float:
            probabilities = softmax(scaled)
            return expected_calibration_error(probabilities.max(axis=1), probabilities.argmax(axis=1) == targets)

        calibrated = loaded.label_head.with_temperature(loaded.model, temperature)
        try:
            # adapter/ holds the finished run's weights: rewritten in a copy that replaces it in one rename, so a kill
            # or a full disk midway leaves the trained adapter as it was.
            with atomic_directory(run.adapter) as staged:
                shutil.copytree(run.adapter, staged, dirs_exist_ok=True)
                write_label_rows(staged, loaded.model, calibrated)
        except Exception as error:  # safetensors reports a full disk as its own kind
            if is_disk_full(error, run.root):
                raise disk_full_error(run.adapter, sum(p.stat().st_size for p in run.adapter.iterdir())) from None
            raise
        record.update(temperature=temperature, applied=True, ece_before=ece(logits), ece_after=ece(logits / temperature))
    atomic_write_text(run.calibration, json.dumps(record, indent=1))
    return record


def calibrate_run(config: ResolvedConfig, split: Split, run_dir: str | Path) -> OutOfScope:
    """Choose the run's out-of-scope rule on the validation split and save it (out_of_scope.json, .npy).

    The saved run (adapter, calibrated label rows, as ``Run.load`` gives it) scores every validation query with
    the one classify inference (``inference.Classifier``). Each candidate score of ``classify.out_of_scope_score``
    (``labels.OUT_OF_SCOPE_SCORES``) gets its threshold by the one rule (``metrics.choose_threshold``); ``auto``
    keeps the one with the higher accuracy over all validation queries (ties: the top probability). The
    ``nearest`` score compares a request's final hidden state with the in-scope training requests', which are
    saved with the rule.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from tunelab.evaluation.metrics import choose_threshold
    from tunelab.inference import Classifier, softmax, state_buffer

    label = config.data.out_of_scope_label
    run = RunFolder(Path(run_dir))
    if not split.validation:
        out_of_scope = OutOfScope(label, 0.0, validation={"queries": 0, "out_of_scope": 0})
        out_of_scope.save(run.out_of_scope)
        return out_of_scope
    loaded = Run.open(run.root).load()
    classifier = Classifier.for_model(loaded)
    labels = classifier.label_map.labels
    choices = ["probability", "nearest"] if config.classify.out_of_scope_score == "auto" else [config.classify.out_of_scope_score]

    def final_states(records: list[Any]) -> tuple[np.ndarray, np.ndarray]:
        """(label logits, final hidden states) of ``records``' prompts."""
        prompts = [classifier.prompt(r.text)[0] for r in records]
        states = state_buffer(loaded.model, len(prompts)) if "nearest" in choices else None
        return classifier.logits(loaded.model, prompts, batch_size=config.eval.batch_size, features=states), states

    # Loaded on the CPU: the validation (and training) queries are scored on the GPU where there is one.
    with on_inference_device(loaded.model):
        logits, states = final_states(list(split.validation))
        training_states = None
        if "nearest" in choices:
            _, training_states = final_states([r for r in split.train if r.label != label and r.label in labels])
    probabilities = softmax(logits)
    top = np.array(labels)[probabilities.argmax(axis=1)]
    outside = np.array([r.label == label for r in split.validation])
    correct = np.array([not out and t == r.label for t, out, r in zip(top, outside, split.validation, strict=True)])
    reference = None
    if training_states is not None:
        reference = training_states / np.maximum(np.linalg.norm(training_states, axis=1, keepdims=True), 1e-12)
    # Each candidate scored exactly as evaluation and serving will score it (OutOfScope.scores).
    scores = {name: OutOfScope(label, 0.0, score=name, reference=reference).scores(probabilities, states) for name in choices}
    measured = {}
    for name in choices:
        threshold, accuracy = choose_threshold(scores[name], correct, outside)
        auroc = float(roc_auc_score(~outside, scores[name])) if outside.any() and (~outside).any() else None
        measured[name] = {"threshold": threshold, "accuracy": accuracy, "auroc": auroc}
    chosen = max(choices, key=lambda name: measured[name]["accuracy"])  # the first of equals: probability
    details = {"queries": len(outside), "out_of_scope": int(outside.sum()), "accuracy": measured[chosen]["accuracy"],
               "accuracy_without_threshold": float(correct.mean()), "scores": measured}
    out_of_scope = OutOfScope(label, measured[chosen]["threshold"], validation=details, score=chosen,
                              reference=reference if chosen == "nearest" else None)
    out_of_scope.save(run.out_of_scope, run.out_of_scope_reference)
    if not out_of_scope.needs_features:
        # After the json that no longer names them: a kill in between never leaves a rule without its states.
        run.out_of_scope_reference.unlink(missing_ok=True)
    return out_of_scope
