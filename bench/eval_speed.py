"""Evaluation speed: one-pass label scoring vs generating the label, and batched vs one-at-a-time generation.

1. Classify BANKING77 requests (77 intents) with the default model, by (a) one forward pass per
   batch scored over the 77 label tokens only, and (b) greedy generation of the answer, whose first
   token is then looked up among the label codes; with the short trained prompt (what a tuned model
   is asked) and the long zero-shot prompt (the baseline's, which lists every label and its code).
   Both rates (examples/s) and both accuracies are reported, with how often the predictions agree.
   The base model has never seen the label codes, so its accuracies are near chance: this measures
   speed, not quality.
2. Answer self-instruct prompts with greedy generation, batched (left padding, KV cache) vs one
   prompt at a time. Reports examples/s and new tokens/s for both, and whether the answers match.

Usage::

    PYTHONPATH=src python bench/eval_speed.py --limit 16 --zero-shot-limit 8 --sft-limit 6

Writes bench/results/eval_speed.json and bench/results/eval_speed.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
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
from tunelab.evaluation.predict import label_logits  # noqa: E402
from tunelab.models.generate import generate_batch  # noqa: E402
from tunelab.runs import load_model  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).resolve().parent / "results"


def banking77(limit: int, seed: int) -> list[tuple[str, str]]:
    with (DATA / "banking77" / "train.csv").open(newline="", encoding="utf-8") as handle:
        rows = [(r["text"], r["category"]) for r in csv.DictReader(handle)]
    return random.Random(seed).sample(rows, limit)


def self_instruct(limit: int, seed: int) -> list[str]:
    prompts = []
    with (DATA / "self_instruct" / "seed_tasks.jsonl").open(encoding="utf-8") as handle:
        for line in handle:
            task = json.loads(line)
            instance = task["instances"][0]
            prompts.append(task["instruction"] + (f"\n\n{instance['input']}" if instance["input"] else ""))
    return random.Random(seed).sample(prompts, limit)


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def fastest(function, repeats: int):
    """(value, the fastest of ``repeats`` timings): the machine is shared, so the minimum is the least disturbed run."""
    runs = [timed(function) for _ in range(repeats)]
    return runs[0][0], min(seconds for _, seconds in runs)


def bench_classify(loaded, limit: int, batch_size: int, seed: int, style: str, repeats: int) -> dict:
    tokenizer = loaded.tokenizer
    examples = banking77(limit, seed)
    with (DATA / "banking77" / "categories.json").open() as handle:
        categories = json.load(handle)
    label_map = build_label_map(categories, tokenizer)
    build = (lambda text: zero_shot_messages(text, label_map)) if style == "zero-shot" else classify_messages
    prompts = [render_prompt_ids(tokenizer, build(text)) for text, _ in examples]
    truth = [label_map.index(label) for _, label in examples]
    print(f"classify ({style}): {limit} prompts of {np.mean([len(p) for p in prompts]):.0f} tokens on average", file=sys.stderr, flush=True)
    label_logits(loaded.model, prompts[:2], label_map.token_ids, batch_size=2)  # warm-up
    logits, scoring_seconds = fastest(lambda: label_logits(loaded.model, prompts, label_map.token_ids, batch_size=batch_size), repeats)
    scored = logits.argmax(axis=1)
    first_token = {token: index for index, token in enumerate(label_map.token_ids)}
    answers, generation_seconds = fastest(
        lambda: generate_batch(loaded.model, tokenizer, prompts, max_new_tokens=3, batch_size=batch_size), repeats
    )
    generated = []
    for answer in answers:
        ids = tokenizer.encode(answer, add_special_tokens=False)
        generated.append(first_token.get(ids[0], -1) if ids else -1)
    return {
        "prompt": style,
        "examples": limit,
        "labels": len(categories),
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
        "batch_size": batch_size,
        "repeats": repeats,
        "scoring": {"seconds": scoring_seconds, "examples_per_s": limit / scoring_seconds, "accuracy": float(np.mean(scored == truth))},
        "generation": {
            "seconds": generation_seconds,
            "examples_per_s": limit / generation_seconds,
            "accuracy": float(np.mean(np.array(generated) == truth)),
            "answers_not_a_label": int(sum(g < 0 for g in generated)),
            "max_new_tokens": 3,
        },
        "predictions_agree": float(np.mean(np.array(generated) == scored)),
    }


def bench_generation(loaded, limit: int, batch_size: int, max_new_tokens: int, seed: int) -> dict:
    tokenizer = loaded.tokenizer
    prompts = [render_prompt_ids(tokenizer, [{"role": "user", "content": p}]) for p in self_instruct(limit, seed)]
    generate_batch(loaded.model, tokenizer, prompts[:1], max_new_tokens=4)  # warm-up
    batched, batched_seconds = timed(lambda: generate_batch(loaded.model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size))
    print(f"generation: batched took {batched_seconds:.1f} s; now one at a time", file=sys.stderr, flush=True)
    single, single_seconds = timed(lambda: [generate_batch(loaded.model, tokenizer, [p], max_new_tokens=max_new_tokens)[0] for p in prompts])
    tokens = sum(len(tokenizer.encode(a, add_special_tokens=False)) for a in single)
    return {
        "examples": limit,
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "mean_prompt_tokens": float(np.mean([len(p) for p in prompts])),
        "new_tokens": tokens,
        "batched": {"seconds": batched_seconds, "examples_per_s": limit / batched_seconds, "new_tokens_per_s": tokens / batched_seconds},
        "one_at_a_time": {"seconds": single_seconds, "examples_per_s": limit / single_seconds, "new_tokens_per_s": tokens / single_seconds},
        "answers_identical": sum(a == b for a, b in zip(batched, single, strict=True)),
    }


def markdown(result: dict) -> str:
    g = result["generation"]
    lines = [
        "## Evaluation speed (`bench/eval_speed.py`)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}, torch threads {result['threads']}, model {result['model']}, fp32, "
        f"load average {result['load_average']} at the start (the machine is shared; each time is the fastest of the repeats).",
        "",
        "Classify BANKING77 requests (77 labels): one forward pass scored over the label tokens vs greedy generation "
        "(at most 3 tokens) whose first token is looked up among the label tokens.",
        "",
        "| prompt | tokens | method | examples/s | accuracy |",
        "|---|---|---|---|---|",
    ]
    for c in result["classify"]:
        for method, key in (("one-pass label scoring", "scoring"), ("greedy generation", "generation")):
            lines.append(f"| {c['prompt']} ({c['examples']} examples) | {c['mean_prompt_tokens']:.0f} | {method} | {c[key]['examples_per_s']:.2f} | {c[key]['accuracy']:.3f} |")
    lines.append("")
    for c in result["classify"]:
        lines.append(
            f"- {c['prompt']}: scoring is {c['scoring']['examples_per_s'] / c['generation']['examples_per_s']:.2f}x as fast as generation; "
            f"the predictions agree on {c['predictions_agree']:.0%}; {c['generation']['answers_not_a_label']} generated answers were no label at all."
        )
    lines += [
        "",
        f"Generate answers to {g['examples']} self-instruct prompts (greedy, ≤{g['max_new_tokens']} new tokens, {g['new_tokens']} generated in all):",
        "",
        "| method | examples/s | new tokens/s |",
        "|---|---|---|",
        f"| batched (batch {g['batch_size']}, left padding, KV cache) | {g['batched']['examples_per_s']:.3f} | {g['batched']['new_tokens_per_s']:.1f} |",
        f"| one at a time | {g['one_at_a_time']['examples_per_s']:.3f} | {g['one_at_a_time']['new_tokens_per_s']:.1f} |",
        "",
        f"Batched is {g['batched']['examples_per_s'] / g['one_at_a_time']['examples_per_s']:.2f}x as fast; "
        f"{g['answers_identical']} of {g['examples']} answers are identical between the two.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=16, help="BANKING77 examples to classify with the short (trained) prompt.")
    parser.add_argument("--zero-shot-limit", type=int, default=8, help="BANKING77 examples with the long zero-shot prompt (0: skip).")
    parser.add_argument("--repeats", type=int, default=2, help="Time each classify method this often, keep the fastest.")
    parser.add_argument("--sft-limit", type=int, default=6, help="self-instruct prompts to answer.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="default")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not DATA.is_dir():
        sys.exit(f"{DATA} is absent: this benchmark reads BANKING77 and self-instruct from the shared data folder")
    loaded = load_model(args.model)
    result = {
        "command": "PYTHONPATH=src python bench/eval_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores)",
        "threads": torch.get_num_threads(),
        "model": loaded.source.display_name,
        "torch": torch.__version__,
        "load_average": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "classify": [bench_classify(loaded, args.limit, args.batch_size, args.seed, "trained", args.repeats)]
        + ([bench_classify(loaded, args.zero_shot_limit, args.batch_size, args.seed, "zero-shot", args.repeats)] if args.zero_shot_limit else []),
        "generation": bench_generation(loaded, args.sft_limit, args.batch_size, args.max_new_tokens, args.seed),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "eval_speed.json").write_text(json.dumps(result, indent=2))
    (RESULTS / "eval_speed.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
