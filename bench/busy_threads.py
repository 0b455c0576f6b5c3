"""Training speed when another process keeps one core busy: torch's threads against the free cores.

The quickstart's training (``examples/support-routing``, the classify defaults) for ``--steps`` optimizer
steps, each variant a fresh ``python -m tunelab.cli.main train CONFIG train.max_steps=N --json`` process;
the figure is the loop's real (non-padding) tokens per second. A CPU hog (a bounded busy loop in its own
process, started and stopped by this script, never outliving it by more than ``--steps``' time) keeps one
core busy during the "hog" variants. Children get the environment without ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS``: what a user who set nothing gets.

    PYTHONPATH=src python bench/busy_threads.py --before-src /tmp/before/src --steps 8

Variants, in one invocation: before (``--before-src``) with the hog; this checkout with the hog; this
checkout with the hog and ``train.threads=1`` (one thread on the one free core: the speed to reach);
and, with ``--idle``, this checkout and the before checkout on the idle machine. Results:
``bench/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    REPO_DIR,
    busy_cores_sampler,
    cpu_hog,
    machine_info,
    machine_markdown,
    markdown_table,
    write_results,
)

CONFIG = REPO_DIR / "examples" / "support-routing" / "config.yaml"


def run_variant(label: str, src: Path, overrides: list[str], *, hog: bool, steps: int, timeout: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MKL_NUM_THREADS", None)
    with tempfile.TemporaryDirectory() as folder:
        command = [
            sys.executable, "-m", "tunelab.cli.main", "train", str(CONFIG), f"train.max_steps={steps}",
            # One validation, at the end: the figure is the training steps' speed.
            f"train.eval_every={steps}", f"train.output_dir={folder}", f"name=busy-{label.replace(' ', '-')}", *overrides, "--json",
        ]
        load_before = os.getloadavg()
        with busy_cores_sampler() as busy, cpu_hog(timeout if hog else 0):
            started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
            try:
                completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                return {"label": label, "error": f"timed out after {timeout} s"}
            wall = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            busy.child_cores = round((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall, 2)
        metrics = []
        for path in Path(folder).glob("*/metrics.jsonl"):
            metrics = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    try:
        result = json.loads(completed.stdout[completed.stdout.index("{"):])
    except ValueError:
        return {"label": label, "error": f"exit {completed.returncode}", "stderr": completed.stderr[-3000:]}
    threads = sorted({m["threads"] for m in metrics if "threads" in m})
    return {
        "label": label, "src": str(src), "overrides": overrides, "hog": hog, "steps": result["steps"],
        "tokens": result["tokens"], "tokens_per_second": round(result["tokens_per_second"], 1),
        "train_seconds": round(result["seconds"], 1), "wall_s": round(wall, 1), "precision": result["precision"],
        "threads_logged": threads or None, "load_before": load_before, "others_busy_cores": busy.mean_others,
        "run_cores": busy.child_cores,
    }


def render(data: dict[str, Any]) -> str:
    lines = ["# Training beside a busy core: the quickstart's steps, real tokens/s", "", f"`{data['command']}`", "",
             machine_markdown(data["machine"]), ""]
    reference = next((r for r in data["results"] if "train.threads=1" in r.get("overrides", []) and r.get("hog")), None)
    rows = []
    for r in data["results"]:
        if "error" in r:
            rows.append([r["label"], "error", "", "", "", "", "", ""])
            continue
        ratio = round(r["tokens_per_second"] / reference["tokens_per_second"], 2) if reference and "error" not in reference else None
        rows.append([r["label"], r["tokens_per_second"], ratio, r["threads_logged"], r["train_seconds"], r["wall_s"],
                     r["others_busy_cores"], r["run_cores"]])
    lines.append(markdown_table(
        ["variant", "real tokens/s", "vs one thread on the free core", "torch threads (metrics.jsonl)", "train s", "wall s",
         "others' busy cores", "the run's cores"], rows))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--idle", action="store_true", help="also run this checkout (and --before-src) without the hog")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--name", default="busy_threads")
    args = parser.parse_args()
    now = REPO_DIR / "src"
    variants: list[tuple[str, Path, list[str], bool]] = []
    if args.before_src:
        variants.append(("before, hog", args.before_src.resolve(), [], True))
    variants += [("now, hog", now, [], True), ("now, hog, train.threads=1", now, ["train.threads=1"], True)]
    if args.idle:
        variants.append(("now, idle", now, [], False))
        if args.before_src:
            variants.append(("before, idle", args.before_src.resolve(), [], False))
    data: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "results": []}
    for label, src, overrides, hog in variants:
        result = run_variant(label, src, overrides, hog=hog, steps=args.steps, timeout=args.timeout)
        print(json.dumps(result), flush=True)
        data["results"].append(result)
        write_results(args.name, data, render(data))


if __name__ == "__main__":
    main()
