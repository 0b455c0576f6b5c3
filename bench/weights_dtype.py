"""Frozen weights in the compute dtype, and QLoRA: peak memory and real tokens/s before and after.

Side by side in the same conditions, one child process per measurement (its peak RSS is its own):
- the quickstart's training (bench/quickstart_train.py: examples/support-routing, the classify defaults);
- the sft benchmark (bench/tunelab_train.py --task sft: GSM8K, LoRA r=16 all-linear, batch 8 x 512 tokens),
each with ``train.precision=auto`` (bf16 on a CPU with AMX), for
- ``before``: an older checkout (``--before-src``: frozen weights loaded in fp32, bf16 only through autocast),
- ``after``: this checkout (frozen weights held in bf16, trained ones fp32),
- ``qlora``: this checkout with ``train.method=qlora`` (a 4-bit NF4 base, bitsandbytes).

    PYTHONPATH=src python bench/weights_dtype.py --before-src /path/to/older/src
    PYTHONPATH=src python bench/weights_dtype.py --before-src OLD --quickstart-steps 0   # the whole recipe, with held-out accuracy

Results: bench/results/weights_dtype.json and .md.
"""

from __future__ import annotations

import argparse
import os
import time

from common import machine_info, machine_markdown, markdown_table, run_child, write_results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", required=True, help="the src/ folder of the checkout to compare with")
    parser.add_argument("--quickstart-steps", type=int, default=24, help="0: the whole recipe (5 epochs)")
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--variants", default="before,after,qlora")
    parser.add_argument("--cases", default="quickstart,sft")
    parser.add_argument("--name", default="weights_dtype")
    parser.add_argument("--load", default="", help="what else ran on the machine (written into the table)")
    args = parser.parse_args()

    rows = []
    for case in args.cases.split(","):
        for variant in args.variants.split(","):
            extra = ["train.method=qlora"] if variant == "qlora" else []
            if variant == "before":
                os.environ["BENCH_TUNELAB_SRC"] = args.before_src
            else:
                os.environ.pop("BENCH_TUNELAB_SRC", None)
            if case == "quickstart":
                child = ["--steps", str(args.quickstart_steps), "--set", "train.precision=auto", *extra]
                result = run_child("quickstart_train.py", child)
            else:
                child = ["--task", "sft", "--steps", str(args.sft_steps), "--batch-size", "8", "--max-length", "512",
                         "--precision", "auto", "--validation", "32", *(["--set", *extra] if extra else [])]
                result = run_child("tunelab_train.py", child)
            result.update(case=case, variant=variant)
            rows.append(result)
            print(case, variant, {k: result.get(k) for k in ("real_tokens_per_s", "train_peak_rss_mb", "test_accuracy", "validation_loss", "error")}, flush=True)

    info = machine_info()
    table = markdown_table(
        ["case", "variant", "precision", "method", "real tokens/s", "peak RSS during training (MiB)", "held-out", "train loss"],
        [[r["case"], r["variant"], r.get("precision") or (r["runner"].split("_")[1] if r.get("runner") else None), r.get("method"),
          r.get("real_tokens_per_s"), r.get("train_peak_rss_mb"),
          r.get("test_accuracy") if r["case"] == "quickstart" else r.get("validation_loss"), r.get("train_loss")] for r in rows],
    )
    markdown = (
        f"# Frozen weights in the compute dtype, and QLoRA ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n"
        f"{machine_markdown(info)}  \nLoad: {args.load or 'not stated'}.\n\n{table}\n\n"
        "held-out: quickstart test accuracy (80 requests), or sft validation loss per answer token (GSM8K, lower is better).\n"
    )
    write_results(args.name, {"machine": info, "load": args.load, "args": vars(args), "rows": rows}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
