"""One tunelab lever at a time: each variant is a fresh ``tunelab_train.py`` process, run back to back.

Every variant trains the same job as ``compare.py`` (same records, steps, batch, max_length, LoRA
r=16 all-linear) and changes exactly one thing against the baseline that opens its group (the
baseline runs again inside each group so that a drifting machine load hits both sides alike). The
load average is recorded before and after every run.

Usage: python bench/levers.py --group sft   (or classify, or both) --threads 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import machine_info, machine_markdown, markdown_table, run_child, write_results

SFT_JOB = ["--task", "sft", "--steps", "3", "--batch-size", "4", "--max-length", "512", "--validation", "16"]
CLASSIFY_JOB = ["--task", "classify", "--steps", "3", "--batch-size", "16", "--max-length", "128", "--validation", "100"]

# name -> extra arguments of tunelab_train.py; the first of each group is its baseline.
GROUPS = {
    "sft": (SFT_JOB, {
        "baseline (auto = fp32, dropout 0.05)": [],
        "PEFT's own LoRA forward (before the fused one)": ["--peft-forward"],
        "train.max_pass_tokens=1024": ["--set", "train.max_pass_tokens=1024"],
        "train.max_pass_tokens=512": ["--set", "train.max_pass_tokens=512"],
        "lora.dropout=0.0": ["--set", "lora.dropout=0.0"],
        "train.compile=true": ["--compile"],
        "2 threads": ["--threads-override", "2"],
    }),
    "classify": (CLASSIFY_JOB, {
        "baseline (rows of max_length=128)": [],
        "PEFT's own LoRA forward (before the fused one)": ["--peft-forward"],
        "train.pack_tokens=2048 (batch x max_length)": ["--set", "train.pack_tokens=2048"],
        "train.max_pass_tokens=512": ["--set", "train.max_pass_tokens=512"],
        "train.max_pass_tokens=256": ["--set", "train.max_pass_tokens=256"],
    }),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--group", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--only", nargs="*", default=None, help="run only variants whose name starts with one of these")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    machine = machine_info()
    results: dict[str, dict] = {}
    for group in args.group:
        job, variants = GROUPS[group]
        for name, extra in variants.items():
            if args.only is not None and not any(name.startswith(o) for o in args.only) and not name.startswith("baseline"):
                continue
            threads = str(args.threads)
            if extra[:1] == ["--threads-override"]:
                threads, extra = extra[1], extra[2:]
            load_before = os.getloadavg()[0]
            print(f"[{time.strftime('%H:%M:%S')}] {group}: {name} (load {load_before:.2f})", flush=True)
            result = run_child("tunelab_train.py", [*job, "--precision", "auto", "--threads", threads, *extra])
            result["load_before"], result["load_after"] = round(load_before, 2), round(os.getloadavg()[0], 2)
            result["group"], result["variant"] = group, name
            results[f"{group}: {name}"] = result
            print(f"    -> {({k: v for k, v in result.items() if k not in ('machine', 'settings')})}", flush=True)
    rows = []
    for key, r in results.items():
        if "error" in r:
            rows.append([key, "failed: " + r["error"], "", "", "", "", "", ""])
            continue
        metric = r.get("validation_loss", r.get("accuracy"))
        rows.append([key, r["real_tokens_per_s"], r["examples_per_s"], r["seconds_per_step"], r["first_step_s"],
                     metric, r["peak_rss_mb"], f"{r['load_before']} / {r['load_after']}"])
    headers = ["variant", "real tokens/s", "examples/s", "s/step", "s to 1st step", "val. loss / accuracy", "peak RSS MiB", "load before / after"]
    command = "python bench/levers.py " + " ".join(sys.argv[1:])
    markdown = f"### tunelab levers, one at a time\n\n{machine_markdown(machine)}\n\nCommand: `{command}`\n\n" + markdown_table(headers, rows)
    write_results("levers", {"machine": machine, "command": command, "runs": results}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
