"""A contrastive (SetFit-style) stage before the classify recipe: does it close the gap to the embedding baseline?

SetFit (Tunstall et al. 2022) first trains the sentence encoder on pairs built from the training labels
(same label: pull together, different: push apart), then fits the label head. This script is that stage
for the default model, on the rows bench/classify_levers.py chooses defaults on (never the rows
bench/quality.py reports):

- the recipe's LoRA (``apply_method`` with the default config) on the default model;
- the feature: the final hidden state at the classify prompt's last token, what the label head reads;
- the loss: supervised contrastive (SupCon, Khosla et al. 2020, temperature ``--temperature``) over
  batches of ``--labels-per-batch`` labels x 2 examples each, so every example has a positive and every
  other example of the batch is a negative (each batch holds P x (2P - 2) labelled pairs);
- AdamW at ``--lr``, cosine schedule with 5 % warm-up, bf16 autocast where the CPU has it;
- on the training rows only (not the validation rows the recipe picks its checkpoint by).

Measured: logistic regression on the features (C by the baselines' cross-validation, ``fit_with_cv``)
(fitted on the training + validation rows, as the baselines are) before and after the stage, on the
held-out rows; with ``--save`` the stage's LoRA weights are written
for ``bench/classify_levers.py --init-lora FILE``, which runs the real recipe (tunelab's loop, label
head, defaults) starting from them. Results append to bench/results/classify_contrastive.jsonl.

    PYTHONPATH=src python bench/classify_contrastive.py --dataset banking77 --labels 20 --per-label 10 --test-per-label 15 --seed 4 \
        --save bench/results/tmp/contrastive-b77-s4.safetensors
    PYTHONPATH=src python bench/classify_levers.py --dataset banking77 --labels 20 --per-label 10 --test-per-label 15 --seed 4 \
        --init-lora bench/results/tmp/contrastive-b77-s4.safetensors --tag "contrastive stage, then the recipe"
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from classify_levers import DATASETS, dataset_records, subsample
from common import RESULTS_DIR, append_row

RESULTS = RESULTS_DIR / "classify_contrastive.jsonl"


def supcon_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean supervised contrastive loss of L2-normalised ``features`` (each anchor against the rest of the batch)."""
    z = F.normalize(features.float(), dim=-1)
    similarity = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool)
    similarity = similarity.masked_fill(self_mask, float("-inf"))
    log_probability = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    per_anchor = -(log_probability.masked_fill(~positive, 0.0).sum(1) / positive.sum(1).clamp(min=1))
    return per_anchor[positive.any(1)].mean()


def label_batches(labels: list[str], per_batch: int, rng: random.Random) -> list[list[int]]:
    """One epoch of batches: each label's rows shuffled and paired; batches of ``per_batch`` pairs of distinct labels."""
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(label, []).append(index)
    pairs = []
    for label, rows in by_label.items():
        rows = rows[:]
        rng.shuffle(rows)
        pairs += [(label, rows[i : i + 2]) for i in range(0, len(rows) - 1, 2)]
    rng.shuffle(pairs)
    batches: list[list[int]] = []
    while pairs:
        batch, seen, rest = [], set(), []
        for label, rows in pairs:
            if len(seen) < per_batch and label not in seen:
                seen.add(label)
                batch += rows
            else:
                rest.append((label, rows))
        pairs = rest
        if len(seen) >= 2:
            batches.append(batch)
    return batches


def last_token_states(model, ids: list[list[int]], pad_id: int) -> torch.Tensor:
    """The final hidden state at each prompt's last token (right padding; a causal model never sees it)."""
    from tunelab.models.heads import causal_lm_of

    width = max(len(row) for row in ids)
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    hidden = causal_lm_of(model).get_decoder()(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    last = torch.tensor([len(row) - 1 for row in ids])
    return hidden[torch.arange(len(ids)), last]


def features(model, ids: list[list[int]], pad_id: int, autocast) -> np.ndarray:
    out = []
    with torch.inference_mode(), autocast():
        for start in range(0, len(ids), 32):
            out.append(last_token_states(model, ids[start : start + 32], pad_id).float().numpy())
    return np.concatenate(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="banking77", choices=[*sorted(DATASETS), "quickstart-train"])
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--labels", type=int, default=20)
    parser.add_argument("--test-per-label", type=int, default=15)
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.1)
    parser.add_argument("--labels-per-batch", type=int, default=8)
    parser.add_argument("--save", type=Path, default=None, help="write the stage's LoRA weights here (safetensors)")
    args = parser.parse_args()

    from safetensors.torch import save_file
    from sklearn.preprocessing import normalize

    from tunelab.config import parse_config
    from tunelab.data.labels import LabelMap
    from tunelab.data.tokenize import tokenize_classify
    from tunelab.evaluation.baselines import embedding_classifier, fit_with_cv
    from tunelab.models import load_model
    from tunelab.models.adapters import apply_method
    from tunelab.runtime import cpu_bf16_native

    train, validation, test = subsample(dataset_records(args.dataset), args.per_label, args.test_per_label, args.seed, args.labels)
    # The stage learns from the training rows only: the recipe that starts from its weights picks its
    # checkpoint by validation accuracy, which rows the stage had pulled together would inflate. The
    # logistic regression on the features is fitted on training + validation rows, as the baselines are.
    labelled = train + validation
    config = parse_config({"task": "classify", "model": "default", "data": {"max_length": 128}})
    torch.manual_seed(config.train.seed)
    loaded = load_model("default")
    tokenizer = loaded.tokenizer
    label_map = LabelMap.for_records(train, tokenizer)
    system = config.data.system_prompt
    train_ids = [tokenize_classify(r, tokenizer, label_map, 128, system).input_ids for r in train]
    labelled_ids = [tokenize_classify(r, tokenizer, label_map, 128, system).input_ids for r in labelled]
    test_ids = [tokenize_classify(r, tokenizer, label_map, 128, system).input_ids for r in test]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    bf16 = cpu_bf16_native()

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    y_labelled, y_test = np.array([r.label for r in labelled]), np.array([r.label for r in test])

    def accuracy(x_train, x_test):
        classifier, fitted = fit_with_cv(lambda c: embedding_classifier(c, 0), normalize(x_train), y_labelled, seed=0)
        return float(np.mean(classifier.predict(normalize(x_test)) == y_test)), fitted["C"]

    started = time.perf_counter()
    model = apply_method(loaded.model, config)
    model.eval()
    before, before_c = accuracy(features(model, labelled_ids, pad, autocast), features(model, test_ids, pad, autocast))
    print(json.dumps({"before": before, "C": before_c}), flush=True)

    rng = random.Random(args.seed)
    labels = [r.label for r in train]
    plan = [label_batches(labels, args.labels_per_batch, rng) for _ in range(args.epochs)]
    total = sum(len(epoch) for epoch in plan)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=0.0)
    warmup = max(1, round(0.05 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    )
    model.train()
    losses, step = [], 0
    for epoch in plan:
        for batch in epoch:
            with autocast():
                states = last_token_states(model, [train_ids[i] for i in batch], pad)
            loss = supcon_loss(states, torch.tensor([label_map.labels.index(labels[i]) for i in batch]), args.temperature)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if step % 10 == 0 or step == total:
                print(json.dumps({"step": step, "of": total, "loss": round(float(np.mean(losses[-10:])), 4)}), flush=True)
    stage_seconds = time.perf_counter() - started
    model.eval()
    after, after_c = accuracy(features(model, labelled_ids, pad, autocast), features(model, test_ids, pad, autocast))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        save_file({name: p.detach().float().contiguous() for name, p in model.named_parameters() if p.requires_grad}, str(args.save))
    row = {
        "dataset": args.dataset, "labels": len(set(labels)), "per_label": args.per_label, "seed": args.seed, "train": len(train), "validation": len(validation),
        "test": len(test), "epochs": args.epochs, "lr": args.lr, "temperature": args.temperature, "labels_per_batch": args.labels_per_batch,
        "steps": total, "first_loss": round(float(np.mean(losses[:10])), 4), "final_loss": round(float(np.mean(losses[-10:])), 4),
        "last_token_lr_before": before, "last_token_lr_after": after, "C_before": before_c, "C_after": after_c,
        "bf16": bf16, "threads": torch.get_num_threads(), "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": round(stage_seconds, 1), "saved": str(args.save) if args.save else None,
        "load": round(os.getloadavg()[0], 2), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(row))
    append_row(RESULTS, row)


if __name__ == "__main__":
    main()
