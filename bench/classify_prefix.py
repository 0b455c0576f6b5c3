"""Classify evaluation with and without shared-prefix reuse, side by side in one run (issue 13).

BANKING77 requests (77 intents) scored by the default model over the label tokens, with the two
prompts evaluation uses: the zero-shot prompt (instruction + the whole label list + the request)
and the trained prompt (system + instruction + the request). "before" runs every full prompt
through the model (``label_logits``); "after" computes the prompts' shared prefix once into a KV
cache and runs only each request's own tokens on top (``prefix_label_logits``, what evaluation
calls). Same prompts, same batches; both are timed in the same process, alternating, and the
predictions are compared (argmax equal, largest logit difference).

    PYTHONPATH=src python bench/classify_prefix.py --zero-shot-limit 64 --trained-limit 256

Writes bench/results/classify_prefix.{json,md}. Needs ../shared/data/banking77 and the default model.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tunelab.data.labels import build_label_map  # noqa: E402
from tunelab.data.templates import classify_messages, render_prompt_ids, zero_shot_messages  # noqa: E402
from tunelab.evaluation.predict import label_logits, prefix_label_logits, shared_prefix_length  # noqa: E402
from tunelab.runs import load_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def requests(limit: int, seed: int) -> list[tuple[str, str]]:
    with (DATA / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    return random.Random(seed).sample(rows, limit)


def timed(function):
    load = os.getloadavg()[0]
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start, load


def compare(loaded, style: str, limit: int, batch_size: int, seed: int) -> dict:
    tokenizer = loaded.tokenizer
    with (DATA / "banking77" / "categories.json").open() as handle:
        categories = json.load(handle)
    label_map = build_label_map(categories, tokenizer)
    build = (lambda text: zero_shot_messages(text, label_map)) if style == "zero-shot" else classify_messages
    examples = requests(limit, seed)
    prompts = [render_prompt_ids(tokenizer, build(text)) for text, _ in examples]
    truth = np.array([label_map.index(label) for _, label in examples])
    prefix = shared_prefix_length(prompts)
    print(f"{style}: {limit} prompts, {np.mean([len(p) for p in prompts]):.0f} tokens on average, shared prefix {prefix}",
          file=sys.stderr, flush=True)
    ids = label_map.token_ids
    label_logits(loaded.model, prompts[:2], ids, batch_size=2)  # warm-up
    before, before_s, before_load = timed(lambda: label_logits(loaded.model, prompts, ids, batch_size=batch_size))
    after, after_s, after_load = timed(lambda: prefix_label_logits(loaded.model, prompts, ids, batch_size=batch_size))
    return {
        "prompt": style,
        "requests": limit,
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
        "shared_prefix_tokens": prefix,
        "batch_size": batch_size,
        "before": {"seconds": before_s, "requests_per_s": limit / before_s, "load_average_1min": before_load,
                   "accuracy": float(np.mean(before.argmax(axis=1) == truth))},
        "after": {"seconds": after_s, "requests_per_s": limit / after_s, "load_average_1min": after_load,
                  "accuracy": float(np.mean(after.argmax(axis=1) == truth))},
        "speedup": before_s / after_s,
        "same_predictions": int(np.sum(before.argmax(axis=1) == after.argmax(axis=1))),
        "max_abs_logit_difference": float(np.abs(before - after).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zero-shot-limit", type=int, default=64)
    parser.add_argument("--trained-limit", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark reads BANKING77 from the shared data folder")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model("default")
    loaded.model.eval()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    rows = []
    if args.trained_limit:
        rows.append(compare(loaded, "trained", args.trained_limit, args.batch_size, args.seed))
    if args.zero_shot_limit:
        rows.append(compare(loaded, "zero-shot", args.zero_shot_limit, args.batch_size, args.seed))
    result = {"started": started, "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "threads": torch.get_num_threads(), "rows": rows}
    lines = [
        "| prompt | requests | tokens (shared prefix) | before s (load) | after s (load) | speedup | same predictions | max logit diff |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['prompt']} | {row['requests']} | {row['mean_prompt_tokens']:.0f} ({row['shared_prefix_tokens']}) | "
            f"{row['before']['seconds']:.1f} ({row['before']['load_average_1min']:.1f}) | "
            f"{row['after']['seconds']:.1f} ({row['after']['load_average_1min']:.1f}) | {row['speedup']:.2f}x | "
            f"{row['same_predictions']}/{row['requests']} | {row['max_abs_logit_difference']:.2e} |"
        )
    table = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "classify_prefix.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "classify_prefix.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
