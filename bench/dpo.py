"""DPO on HH-RLHF helpful pairs with the default model: held-out preference accuracy before/after, and speed vs TRL.

1. Quality: ``tunelab run`` (the library's ``run_pipeline``) with ``task: preference`` on ``--train``
   pairs, judged on ``--test`` held-out pairs sharing no prompt with them, once from each of
   ``--parents``: ``base`` (the default model) and ``sft`` (an SFT run on the training pairs' chosen
   answers, which is then the reference policy): preference accuracy before (the reference's own
   per-token likelihood) and after (the implicit reward), reward margin, log-ratios, with paired
   bootstrap 95% intervals.
2. Speed: one DPO job (LoRA r=16 alpha=32 dropout=0.05 all linear layers, batch ``--batch-size``,
   fp32, the same pairs in the same order) in tunelab and in TRL's DPOTrainer with its defaults,
   each in its own process: real (non-padding) tokens per second of the timed optimizer steps (one
   untimed step first), peak RSS. tunelab computes the reference log-probabilities once before
   training (timed separately, ``reference_s``); TRL's default recomputes them inside every step
   (the adapter disabled), which is part of its step time.

Pairs are HH-RLHF helpful-base test dialogues from ../shared/data/hh_rlhf_helpful whose chosen and
rejected sequences both fit ``--max-length`` tokens untruncated (so both tools see the same tokens),
drawn with a fixed seed. Skips cleanly (exit 0, nothing written) when the data is absent.

Usage: python bench/dpo.py [--train 120 --test 80 --max-length 256 --speed-steps 3 --batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from common import (
    SHARED_DATA,
    child_result,
    machine_info,
    machine_markdown,
    markdown_table,
    run_child,
    write_results,
)

DATA = SHARED_DATA / "hh_rlhf_helpful"


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM). ru_maxrss would not do: Linux keeps it across fork + exec,
    so a child started by a parent that already ran the quality part reports the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=120, help="training pairs (quality)")
    parser.add_argument("--test", type=int, default=80, help="held-out pairs (quality)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--speed-steps", type=int, default=3, help="timed DPO steps per runner (plus one untimed first)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parents", default="base,sft", help="where DPO starts: base (the default model), sft (an SFT run on the chosen answers)")
    parser.add_argument("--sft-epochs", type=float, default=1.0, help="epochs of the SFT parent")
    parser.add_argument("--sft-test", type=int, default=24, help="held-out prompts the SFT parent (and then the DPO model) answer")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="longest generated answer of those")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip", choices=["quality", "speed", "trl"], action="append", default=[])
    parser.add_argument("--tunelab-pass-tokens", default="default", help="speed: tunelab runs, one per comma-separated value of "
                        "train.max_pass_tokens: 'default' (tunelab's own), 'none' (the whole batch in one pass) or a number")
    parser.add_argument("--lora-dropout", type=float, default=0.05, help="speed: LoRA dropout of both runners (the same math)")
    parser.add_argument("--pass-tokens", default="default", help=argparse.SUPPRESS)
    parser.add_argument("--results", default="dpo", help="name of the files written under bench/results/ (several runs can keep theirs)")
    parser.add_argument("--child", choices=["tunelab", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--pairs", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def fitting_pairs(max_length: int, seed: int) -> list:
    """HH-RLHF pairs (tunelab's reader) whose two sequences fit max_length untruncated, seeded order."""
    from tunelab.config import DataConfig
    from tunelab.data.read import load_result
    from tunelab.data.tokenize import tokenize_preference
    from tunelab.models.loader import load_tokenizer

    tokenizer = load_tokenizer("default")
    # The file has a few malformed pairs (empty answers, identical sides): tunelab lists and drops them.
    result = load_result(str(DATA / "test.jsonl.gz"), "preference", DataConfig(preset="hh_rlhf", skip_invalid=True))
    records = result.records
    kept = [r for r in records if not tokenize_preference(r, tokenizer, max_length).truncated]
    random.Random(seed).shuffle(kept)
    return kept, len(records) + len(result.errors)


def write_pairs(records, path: Path) -> Path:
    rows = [{"prompt": list(r.prompt), "chosen": r.chosen, "rejected": r.rejected} for r in records]
    path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- quality


def held_out_by_prompt(records: list, train: int, test: int) -> tuple[list, list]:
    """``train`` and ``test`` pairs with no prompt in both (pairs of one prompt stay together, in seeded order)."""
    groups: dict[str, list] = {}
    for record in records:
        groups.setdefault(json.dumps(list(record.prompt), sort_keys=True), []).append(record)
    train_pairs: list = []
    test_pairs: list = []
    for group in groups.values():
        if len(test_pairs) < test:
            test_pairs += group
        elif len(train_pairs) < train:
            train_pairs += group
    return train_pairs[:train], test_pairs[:test]


def train_sft_parent(args: argparse.Namespace, train_pairs: list, test_pairs: list, folder: Path) -> tuple[Path, dict]:
    """``tunelab run`` of an SFT run on the training pairs' chosen answers (the usual start of DPO), judged on
    ``--sft-test`` held-out pairs' prompts (chosen answers as references): its folder and summary.

    Its test evaluation is what the DPO run's generation step answers again (DPO vs parent, blind A/B sheet).
    """
    from tunelab.config import parse_config
    from tunelab.tasks.pipeline import run_pipeline

    def conversations(pairs: list, path: Path) -> Path:
        rows = [{"messages": [*r.prompt, {"role": "assistant", "content": r.chosen}]} for r in pairs]
        path.write_text("\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + "\n", encoding="utf-8")
        return path

    config = parse_config({
        "task": "sft", "model": "default", "name": "sft-parent", "registry": str(folder / "registry.db"),
        "data": {"train": str(conversations(train_pairs, folder / "sft_train.jsonl")),
                 "test": str(conversations(test_pairs[: args.sft_test], folder / "sft_test.jsonl")),
                 "validation_size": 0.0, "max_length": args.max_length},
        "train": {"epochs": args.sft_epochs, "batch_size": args.batch_size, "output_dir": str(folder / "runs"),
                  "threads": args.threads, "seed": args.seed},
        "eval": {"baselines": ["base"], "max_new_tokens": args.max_new_tokens, "batch_size": 8, "bootstrap_samples": 1000},
    })
    started = time.perf_counter()
    outcome = run_pipeline(config, calibrate=False)
    return outcome.run_dir, {"examples": len(train_pairs), "epochs": args.sft_epochs, "steps": outcome.train["steps"],
                             "final_loss": outcome.train["final_loss"], "seconds": round(time.perf_counter() - started, 1),
                             "tokens_per_second": round(outcome.train["tokens_per_second"], 1),
                             "test_prompts": outcome.split_sizes["test"], "verdict": outcome.comparison.summary if outcome.comparison else None}


def quality(args: argparse.Namespace, records: list, folder: Path, parent: str) -> dict:
    """DPO from ``parent`` ("base": the default model; "sft": an SFT run on the chosen answers) on the same pairs."""
    from tunelab.config import parse_config
    from tunelab.tasks.pipeline import run_pipeline

    folder.mkdir(parents=True, exist_ok=True)
    train_pairs, test_pairs = held_out_by_prompt(records, args.train, args.test)
    train_file, test_file = write_pairs(train_pairs, folder / "train_pairs.jsonl"), write_pairs(test_pairs, folder / "test_pairs.jsonl")
    model, sft = "default", None
    if parent == "sft":
        run_dir, sft = train_sft_parent(args, train_pairs, test_pairs, folder)
        model = str(run_dir)
    config = parse_config({
        "task": "preference",
        "model": model,
        "name": f"dpo-bench-from-{parent}",
        "registry": str(folder / "registry.db"),  # scratch: a benchmark run again must not clash with its old records
        "data": {"train": str(train_file), "test": str(test_file), "validation_size": 0.0, "max_length": args.max_length},
        "train": {"lr": args.lr, "epochs": args.epochs, "batch_size": args.batch_size, "output_dir": str(folder / "runs"),
                  "threads": args.threads, "seed": args.seed},
        "preference": {"beta": args.beta},
        "eval": {"bootstrap_samples": 1000, "batch_size": 8},
    })
    started = time.perf_counter()
    outcome = run_pipeline(config, calibrate=False)
    comparison = outcome.comparison.to_dict()
    return {
        "parent": parent,
        "sft_parent": sft,
        "generation": outcome.generation and {k: outcome.generation[k] for k in ("n", "summary", "sheet", "metrics", "parent_metrics")},
        "pairs": outcome.split_sizes,
        "seconds": round(time.perf_counter() - started, 1),
        "timings": outcome.timings,
        "train": {k: outcome.train[k] for k in ("steps", "final_loss", "tokens", "tokens_per_second", "seconds", "precision")},
        "before": outcome.base_metrics,
        "after": outcome.tuned_metrics,
        "comparison": comparison,
        "settings": {"lr": args.lr, "beta": args.beta, "epochs": args.epochs, "batch_size": args.batch_size, "max_length": args.max_length},
    }


# ------------------------------------------------------------------------------------------------ speed


def tunelab_child(args: argparse.Namespace, records: list) -> None:
    started = time.perf_counter()
    from tunelab.config import parse_config
    from tunelab.data.split import Split
    from tunelab.tasks import run_training

    steps = 1 + args.speed_steps
    config = parse_config({
        "task": "preference", "model": "default", "data": {"max_length": args.max_length},
        "lora": {"r": 16, "alpha": 32, "dropout": args.lora_dropout},
        "train": {"lr": args.lr, "max_steps": steps, "batch_size": args.batch_size, "log_every": 1, "threads": args.threads,
                  "seed": args.seed, "eval_every": 10**6, "save_every": 10**6,
                  # Smaller passes split the batch, the optimizer step still sees batch_size pairs.
                  **({} if args.pass_tokens == "default" else {"max_pass_tokens": None if args.pass_tokens == "none" else int(args.pass_tokens)})},
        "preference": {"beta": args.beta},
    })
    progress: list = []
    run_dir = Path(tempfile.mkdtemp(prefix="dpo-bench-")) / "run"
    result = run_training(config, Split("preference", records, [], []), run_dir=run_dir, progress=progress.append)
    first, last = progress[0], progress[-1]
    timed_seconds, timed_tokens = last.elapsed - first.elapsed, last.tokens - first.tokens
    total = time.perf_counter() - started
    child_result({
        "runner": "tunelab" + ("" if args.pass_tokens == "default" else f" (max_pass_tokens={args.pass_tokens})"), "max_pass_tokens": config.train.max_pass_tokens,
        "timed_steps": args.speed_steps, "timed_seconds": round(timed_seconds, 2), "real_tokens": timed_tokens,
        "real_tokens_per_s": round(timed_tokens / timed_seconds, 1), "seconds_per_step": round(timed_seconds / args.speed_steps, 2),
        "train_seconds": round(result.seconds, 2), "wall_seconds": round(total, 2), "precision": result.precision,
        # Everything before the first step: model load, tokenizing, the reference log-probabilities (once).
        "setup_and_reference_s": round(total - result.seconds, 2), "peak_rss_mb": round(peak_rss_mb(), 1),
    })


def trl_child(args: argparse.Namespace, records: list) -> None:
    started = time.perf_counter()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from tunelab.runs import load_model

    loaded = load_model("default")
    steps = 1 + args.speed_steps
    rows = [{"prompt": list(r.prompt), "chosen": [{"role": "assistant", "content": r.chosen}],
             "rejected": [{"role": "assistant", "content": r.rejected}]} for r in records[: steps * args.batch_size]]
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-dpo-"), report_to="none", max_steps=steps, per_device_train_batch_size=args.batch_size,
        max_length=args.max_length, learning_rate=args.lr, beta=args.beta, bf16=False, use_cpu=True, save_strategy="no",
        logging_steps=steps, seed=args.seed, disable_tqdm=True,
    )
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=args.lora_dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    step_ends: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_end(self, _args, _state, _control, **_kwargs):
            step_ends.append(time.perf_counter())

    trainer = DPOTrainer(model=loaded.model, args=config, train_dataset=Dataset.from_list(rows), processing_class=loaded.tokenizer, peft_config=peft_config)
    tokens: list[int] = []
    collator = trainer.data_collator

    def counting(examples):
        batch = collator(examples)
        tokens.append(int(batch["attention_mask"].sum()))
        return batch

    trainer.data_collator = counting
    trainer.add_callback(StepTimer())
    trainer.train()
    timed_seconds = step_ends[-1] - step_ends[0]
    timed_tokens = sum(tokens[1:steps])
    child_result({
        "runner": "trl_dpo_defaults", "timed_steps": args.speed_steps, "timed_seconds": round(timed_seconds, 2), "real_tokens": timed_tokens,
        "real_tokens_per_s": round(timed_tokens / timed_seconds, 1), "seconds_per_step": round(timed_seconds / args.speed_steps, 2),
        "wall_seconds": round(time.perf_counter() - started, 2), "gradient_checkpointing": config.gradient_checkpointing,
        "precompute_ref_log_probs": config.precompute_ref_log_probs, "peak_rss_mb": round(peak_rss_mb(), 1),
    })


# ------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not (DATA / "test.jsonl.gz").is_file():
        print(f"skipped: {DATA} is absent", file=sys.stderr)
        return
    if args.child:
        from tunelab.config import DataConfig
        from tunelab.data.read import load_records

        records = load_records(args.pairs, "preference", DataConfig())
        (tunelab_child if args.child == "tunelab" else trl_child)(args, records)
        return
    info = machine_info()
    records, total = fitting_pairs(args.max_length, args.seed)
    folder = Path(tempfile.mkdtemp(prefix="dpo-bench-"))
    result: dict = {"machine": info, "command": "python bench/dpo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "data": {"file": str(DATA / "test.jsonl.gz"), "pairs_in_file": total, "fitting_max_length": len(records)}}
    if "quality" not in args.skip:
        result["quality"] = [quality(args, records, folder / parent, parent) for parent in args.parents.split(",")]
    if "speed" not in args.skip:
        # The speed pairs come after the quality pairs: the same ones for both runners, in the same order.
        speed_pairs = records[-(1 + args.speed_steps) * args.batch_size :][: (1 + args.speed_steps) * args.batch_size]
        pairs_file = write_pairs(speed_pairs, folder / "speed_pairs.jsonl")
        child_args = [f"--max-length={args.max_length}", f"--batch-size={args.batch_size}", f"--lr={args.lr}", f"--beta={args.beta}",
                      f"--speed-steps={args.speed_steps}", f"--seed={args.seed}", f"--pairs={pairs_file}", f"--lora-dropout={args.lora_dropout}"]
        if args.threads:
            child_args.append(f"--threads={args.threads}")
        runners = [["--child", "tunelab", f"--pass-tokens={value}"] for value in args.tunelab_pass_tokens.split(",")]
        if "trl" not in args.skip:
            runners.append(["--child", "trl"])
        result["speed"] = [run_child("dpo.py", [*runner, *child_args]) for runner in runners]
    write_results(args.results, result, render(result))


def render(result: dict) -> str:
    lines = ["### DPO on HH-RLHF helpful pairs (default model)", "", machine_markdown(result["machine"]), "",
             f"Command: `{result['command']}`. Data: {result['data']['fitting_max_length']} of {result['data']['pairs_in_file']} pairs fit max_length untruncated.", ""]
    for quality in result.get("quality") or []:
        c = quality["comparison"]
        # A run's verdict holds one comparison per baseline; a preference run's one baseline is its reference.
        c = c["comparisons"][c.get("strongest") or "base"] if "comparisons" in c else c
        sft = quality.get("sft_parent")
        start = (f"an SFT run on the {sft['examples']} training pairs' chosen answers ({sft['steps']} steps, {sft['seconds']} s)"
                 if sft else "the base default model")
        lines += [f"Quality from {start}: {quality['pairs']['train']} training pairs, {quality['pairs']['test']} held-out pairs (no shared prompt), "
                  f"{quality['train']['steps']} DPO steps ({quality['settings']}), {quality['seconds']} s for the whole `tunelab run`.", ""]
        rows = [[m["name"], m["before"], m["after"], m["difference"], f"[{m['low']:+.3g}, {m['high']:+.3g}]", m["outcome"]] for m in c["metrics"]]
        lines += [markdown_table(["metric", "before (reference)", "after (DPO)", "difference", "95% CI (paired bootstrap)", "outcome"], rows), ""]
        if sft:
            lines += [f"SFT parent against the base model on {sft['test_prompts']} held-out prompts: {sft['verdict']}", ""]
        if quality.get("generation"):
            lines += [f"DPO model against its SFT parent on those prompts: {quality['generation']['summary']}; "
                      f"blind A/B sheet for people: `{quality['generation']['sheet']}`", ""]
    speed = result.get("speed")
    if speed:
        rows = []
        for r in speed:
            if "error" in r:
                rows.append([r.get("runner", "?"), "error: " + str(r["error"])[:80], "", "", "", ""])
                continue
            rows.append([r["runner"], r["real_tokens_per_s"], r["seconds_per_step"], r["peak_rss_mb"], r.get("setup_and_reference_s", ""), r["timed_steps"]])
        lines += ["Speed of one DPO step (LoRA r=16, fp32, same pairs):", "",
                  markdown_table(["runner", "real tokens/s", "s/step", "peak RSS MiB", "setup + reference s", "timed steps"], rows)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
