"""How close is `tunelab estimate`'s training time to a real training run on this machine?

Until the training loop is on main, the "real run" is a small loop here that does what training
does for classify: real prompts of the config's data (not random ids), shuffled, padded to the
longest in each batch, forward with only the last position's label columns scored, backward,
gradient clipping, AdamW step, for ``--steps`` optimizer steps, timed end to end (warm-up
included, as a real run pays it). The estimate is made first, with its own short calibration.

    python bench/estimate_accuracy.py examples/support-routing/config.yaml --steps 6

Writes bench/results/estimate_accuracy.json (appends one entry per run) and prints the figure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from tunelab.config import load_config, resolve_defaults
from tunelab.data.templates import classify_messages, render_prompt_ids
from tunelab.estimate import (
    _prepare_trainable,
    _read_rows,
    calibrate,
    count_tokens_from_files,
    estimate_error,
    estimate_run,
    model_facts,
)
from tunelab.models import load_model
from tunelab.runtime import cpu_model_name, resolve_precision


def real_loop(config, model, tokenizer, rows, labels, steps: int) -> float:
    model = _prepare_trainable(model, config)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.train.lr)
    label_tokens = torch.tensor([tokenizer.encode(label, add_special_tokens=False)[0] for label in labels])
    examples = []
    for _, row in rows:
        ids = render_prompt_ids(tokenizer, classify_messages(row["text"], config.data.system_prompt))[: config.data.max_length]
        examples.append((ids, labels.index(row["label"])))
    random.Random(config.train.seed).shuffle(examples)
    batch = config.train.batch_size
    precision = resolve_precision(config.train.precision, "cpu")
    pad = tokenizer.pad_token_id
    start = time.perf_counter()
    for step in range(steps):
        chunk = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        width = max(len(ids) for ids, _ in chunk)
        # Left padding puts every prompt's last token at the final position.
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids, _ in chunk])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids, _ in chunk])
        targets = torch.tensor([label for _, label in chunk])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(input_ids=input_ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
            loss = torch.nn.functional.cross_entropy(logits[:, label_tokens].float(), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.train.max_grad_norm or 1e9)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps of the real loop")
    parser.add_argument("--calibration-steps", type=int, default=3)
    args = parser.parse_args()

    config = resolve_defaults(load_config(args.config, [*args.overrides, f"train.max_steps={args.steps}"]))
    if config.task != "classify":
        sys.exit("this bench's real loop is the classify one; pass a classify config")
    loaded = load_model(config.model.name)
    counts = count_tokens_from_files(config, loaded.tokenizer)
    facts = model_facts(loaded.model, config.lora.r, config.lora.target_modules)
    from tunelab.estimate import plan_tokens

    seq_len = plan_tokens(config, counts.train).seq_len
    calibration = calibrate(config, seq_len, model=copy.deepcopy(loaded.model), steps=args.calibration_steps, n_labels=counts.n_labels)
    estimate = estimate_run(config, counts.train, facts, n_labels=counts.n_labels, calibration=calibration)

    rows = _read_rows(Path(config.data.train))
    labels = sorted({row["label"] for _, row in rows})
    actual = real_loop(config, copy.deepcopy(loaded.model), loaded.tokenizer, rows, labels, args.steps)
    result = estimate_error(estimate, actual)
    entry = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": args.config,
        "overrides": args.overrides,
        "steps": args.steps,
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "calibration": calibration.as_dict(),
        "estimated_train_tokens": estimate.tokens.train_tokens,
        **result,
    }
    out = Path(__file__).parent / "results" / "estimate_accuracy.json"
    history = json.loads(out.read_text()) if out.is_file() else []
    history.append(entry)
    out.write_text(json.dumps(history, indent=2) + "\n")
    print(json.dumps({k: entry[k] for k in ("estimated_s", "actual_s", "error", "within_25_percent", "load_average")}, indent=2))


if __name__ == "__main__":
    main()
