"""tunelab doing the benchmark's training job through its real library path, in one process.

It calls ``tunelab.tasks.run_training`` (what ``tunelab train`` calls) with a config equal to the
peer's: the default model, LoRA r=16 / alpha=32 / dropout=0.05 on all linear layers, the same
records, max_length, batch, gradient accumulation, number of optimizer steps and peak learning rate.
Everything else is tunelab's default (packing, cosine schedule with warm-up, chunked LM loss).

Timing comes from the loop's own per-step progress callback: the first step (warm-up) and the last
(where tunelab validates and writes its final checkpoint) are not timed. Real tokens are the loop's
count of non-padding tokens of the examples each step consumed. The validation loss (sft) or the
label-scoring accuracy (classify) is measured on the finished run loaded back from its folder with
``tunelab.models.load_run``, by the same function that judges the peer.

Usage: python bench/tunelab_train.py --task sft --steps 8 --batch-size 8 --max-length 512 --precision fp32
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports: "command to first step" includes them

import argparse  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from common import (  # noqa: E402
    TAIL_STEPS,
    WARMUP_STEPS,
    add_training_args,
    child_result,
    classify_label_map,
    completion_loss,
    label_scores_accuracy,
    machine_info,
    task_data,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(parser)
    parser.add_argument("--no-packing", action="store_true", help="length bucketing instead of packing")
    parser.add_argument("--compile", action="store_true", help="train.compile=true")
    parser.add_argument("--peft-forward", action="store_true", help="PEFT's own LoRA forward instead of tunelab's fused one (the lever's 'before')")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides")
    parser.add_argument("--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) first (a lever)")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace, total_steps: int):
    from tunelab.config import apply_overrides, parse_config

    data = {
        "task": args.task,
        "model": "default",
        "data": {"max_length": args.max_length},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
        "train": {
            "method": "lora",
            "lr": args.lr,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "max_steps": total_steps,
            "precision": args.precision,
            "packing": not args.no_packing,
            "compile": args.compile,
            # Validate, checkpoint and read the loss back only at the end: the timed steps are pure training.
            "eval_every": total_steps,
            "save_every": total_steps,
            "log_every": total_steps,
            "seed": args.seed,
        },
    }
    if args.threads:
        data["train"]["threads"] = args.threads
    return parse_config(apply_overrides(data, args.set), source="bench")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise SystemExit("--flush-denormal: this CPU cannot flush denormals")
    from tunelab.data.split import Split
    from tunelab.data.tokenize import tokenize_classify, tokenize_sft
    from tunelab.runs import load_run
    from tunelab.tasks import run_training

    if args.peft_forward:
        import tunelab.models.lora_forward

        tunelab.models.lora_forward.fuse_lora_forward = lambda model: 0
    total_steps = WARMUP_STEPS + args.steps + TAIL_STEPS
    n_train = total_steps * args.batch_size * args.grad_accum
    train_records, validation_records, data_name = task_data(args.task, n_train, args.validation, args.seed)
    config = build_config(args, total_steps)

    steps: list[tuple[float, int]] = []  # (time at the end of the step, cumulative real tokens)

    def progress(update) -> None:
        steps.append((time.perf_counter(), update.tokens))

    run_dir = Path(tempfile.mkdtemp(prefix="tunelab-bench-")) / "run"
    # No validation records inside the run: the loss is measured below, identically for both trainers.
    split = Split(args.task, list(train_records), [], [])
    train_started = time.perf_counter()
    result = run_training(config, split, run_dir=run_dir, progress=progress)
    train_s = time.perf_counter() - train_started
    from common import peak_rss_mb

    train_peak_rss_mb = round(peak_rss_mb(), 1)  # before the run is loaded back for its validation loss
    train_peak_cuda_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1) if torch.cuda.is_available() else None

    (t0, tokens0), (t1, tokens1) = steps[WARMUP_STEPS - 1], steps[WARMUP_STEPS + args.steps - 1]
    timed_seconds = t1 - t0
    timed_tokens = tokens1 - tokens0

    loaded = load_run(run_dir)
    tokenizer = loaded.tokenizer
    if args.task == "sft":
        validation = [tokenize_sft(r, tokenizer, args.max_length) for r in validation_records]
        metric, score = "validation_loss", completion_loss(loaded.model, validation)
    else:
        label_map = classify_label_map(train_records, tokenizer)
        if loaded.label_map is not None and list(loaded.label_map.token_ids) != label_map.token_ids:
            raise SystemExit("tunelab's saved label map differs from the benchmark's: the peer would be judged differently")
        validation = [tokenize_classify(r, tokenizer, label_map, args.max_length) for r in validation_records]
        metric, score = "accuracy", label_scores_accuracy(loaded.model, validation, label_map.token_ids)

    child_result(
        {
            "runner": f"tunelab_{result.precision}" + ("_qlora" if config.train.method == "qlora" else "") + ("_nopack" if args.no_packing else "") + ("_compile" if args.compile else "")
            + ("_peft_forward" if args.peft_forward else ""),
            "task": args.task,
            "data": data_name,
            "settings": vars(args),
            "optimizer_steps": result.steps,
            "timed_steps": args.steps,
            "timed_seconds": round(timed_seconds, 2),
            "real_tokens": timed_tokens,
            "real_tokens_per_s": round(timed_tokens / timed_seconds, 1),
            "examples_per_s": round(args.steps * args.batch_size * args.grad_accum / timed_seconds, 3),
            "seconds_per_step": round(timed_seconds / args.steps, 2),
            "first_step_s": round(steps[0][0] - STARTED, 2),
            "train_s": round(train_s, 2),
            "train_peak_rss_mb": train_peak_rss_mb,
            "train_peak_cuda_mb": train_peak_cuda_mb,
            "method": config.train.method,
            "train_loss": round(result.final_loss, 4) if result.final_loss is not None else None,
            metric: round(score, 4),
            "validation_examples": len(validation),
            "trainable_parameters": result.trainable_parameters,
            "total_parameters": result.total_parameters,
            "machine": machine_info(),
        }
    )


if __name__ == "__main__":
    main()
