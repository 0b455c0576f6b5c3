"""Classify training steps with and without shared-prefix reuse, side by side in one run (issue 13).

The quickstart's training requests (examples/support-routing, the default model, LoRA r=16
all-linear with the label head, batch 8, packed as training packs them). "before": every prompt
runs in full (``ClassifyCollate`` without a prefix); "after": the system message and instruction
every prompt shares run once per micro-batch (``train.prefix_reuse``, the default). Each timed step
is forward + backward + AdamW on the same batch of examples, alternating before/after so both see
the same machine load; losses of the two are compared on every step (they must agree to float rounding).

    PYTHONPATH=src python bench/classify_prefix_training.py --steps 8

Reports real (prompt) tokens per second of each and the ratio. Writes bench/results/classify_prefix_training.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import REPO_DIR, RESULTS_DIR, machine_info, markdown_table  # noqa: E402

from tunelab.config import DataConfig, parse_config  # noqa: E402
from tunelab.data.labels import LabelMap  # noqa: E402
from tunelab.data.read import load_records  # noqa: E402
from tunelab.data.tokenize import tokenize_records, training_prefix  # noqa: E402
from tunelab.models.adapters import apply_method  # noqa: E402
from tunelab.models.heads import LabelHead  # noqa: E402
from tunelab.runs import load_model  # noqa: E402
from tunelab.train.batching import ClassifyCollate  # noqa: E402
from tunelab.train.losses import classify_loss_sum  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each (after one warm-up of each)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    config = parse_config({"task": "classify", "model": "default", "train": {"batch_size": args.batch_size}}, source="bench")
    loaded = load_model("default")
    records = load_records(str(REPO_DIR / "examples" / "support-routing" / "train.jsonl"), "classify", DataConfig())
    label_map = LabelMap.for_records(records, loaded.tokenizer)
    examples, _ = tokenize_records(records, "classify", loaded.tokenizer, max_length=128, label_map=label_map)
    prefix = training_prefix([e.input_ids for e in examples])
    model = apply_method(loaded.model, config)
    head = LabelHead.initialise(model, label_map.token_ids, None)
    model.add_module("label_head", head)
    model.train()
    # lr 0: the optimizer step costs what it costs in training, and the weights stay put, so both see the same model.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
    label_ids = torch.tensor(label_map.token_ids)
    collates = {
        "before": ClassifyCollate(loaded.tokenizer.pad_token_id, 128),
        "after": ClassifyCollate(loaded.tokenizer.pad_token_id, 128, prefix_ids=prefix),
    }
    rng = random.Random(0)
    seconds = {"before": [], "after": []}
    gaps, real_tokens, computed = [], 0, {"before": 0, "after": 0}
    loads = []
    for step in range(args.steps + 1):
        batch_examples = rng.sample(examples, args.batch_size)
        losses = {}
        for name, collate in collates.items():
            batch = collate(batch_examples)
            start = time.perf_counter()
            loss = classify_loss_sum(model, batch, label_ids, head)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            elapsed = time.perf_counter() - start
            losses[name] = loss.item()
            if step:  # the first step of each is warm-up
                seconds[name].append(elapsed)
                computed[name] += batch["input_ids"].numel() + (len(prefix) if "prefix_ids" in batch else 0)
        if step:
            real_tokens += sum(len(e.input_ids) for e in batch_examples)
            loads.append(os.getloadavg()[0])
        gaps.append(abs(losses["before"] - losses["after"]) / max(1e-9, abs(losses["before"])))
    rate = {name: real_tokens / sum(values) for name, values in seconds.items()}
    result = {
        "machine": machine_info(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "steps": args.steps, "batch_size": args.batch_size, "shared_prefix_tokens": len(prefix),
        "mean_prompt_tokens": real_tokens / (args.steps * args.batch_size),
        "real_tokens_per_second": {k: round(v, 1) for k, v in rate.items()},
        "computed_tokens": computed,
        "median_step_seconds": {k: round(statistics.median(v), 3) for k, v in seconds.items()},
        "speedup": round(rate["after"] / rate["before"], 2),
        "max_relative_loss_difference": max(gaps),
        "load_average": round(statistics.mean(loads), 2),
    }
    print(json.dumps(result, indent=1))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "classify_prefix_training.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    table = markdown_table(
        ["", "real tokens/s", "tokens computed", "median step s"],
        [[name, result["real_tokens_per_second"][name], computed[name], result["median_step_seconds"][name]] for name in ("before", "after")],
    )
    (RESULTS_DIR / "classify_prefix_training.md").write_text(
        f"{table}\n\nspeed-up {result['speedup']}x; shared prefix {len(prefix)} tokens of {result['mean_prompt_tokens']:.1f} per prompt; "
        f"largest relative loss difference {max(gaps):.1e}; load {result['load_average']} ({result['date']})\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
