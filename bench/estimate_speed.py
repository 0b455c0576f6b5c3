"""How long the estimate step of `tunelab run` takes: before (another checkout), cold and cached.

Each measurement runs in a fresh process, as `tunelab run` would: the model and the split are made
first (they are loaded before the estimate step in the pipeline too, so they are not timed), then
``estimate_for_split`` is timed, the way the pipeline's estimate step calls it.

- ``before``: ``--before-src`` (another checkout's ``src``), its calibration measured anew (cache bypassed
  where that checkout has one);
- ``cold``: this checkout with the calibration cache bypassed (measures and stores);
- ``cached``: this checkout again: the calibration is read back, no model copy is loaded.

    python bench/estimate_speed.py examples/support-routing/config.yaml --before-src /work/main/src

Writes bench/results/estimate_speed.{json,md} (estimate_speed-TAG.* with ``--tag TAG``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH_DIR, REPO_DIR, tunelab_source

CHILD = """
import inspect, json, os, sys, time
from tunelab.config import load_config
from tunelab.data.split import make_split
from tunelab.estimate import estimate_for_split
from tunelab.runs import load_model
config = load_config(sys.argv[1], json.loads(sys.argv[2]))
loaded = load_model(config.model.name)
split = make_split(config)
# "before" measures anew too: a checkout with a calibration cache bypasses it, an older one has none.
cache_known = "calibration_cache" in inspect.signature(estimate_for_split).parameters
kwargs = {"calibration_cache": sys.argv[3] == "cached"} if cache_known else {}
load = os.getloadavg()[0]
started = time.perf_counter()
result = estimate_for_split(config, split, loaded, **kwargs)
elapsed = time.perf_counter() - started
calibration = result.calibration
print("ESTIMATE " + json.dumps({"estimate_s": elapsed, "load_average_1min": load, "train_s": result.seconds.get("train"),
      "cached": getattr(calibration, "cached", False), "seconds_per_step": calibration.seconds_per_step,
      "batch_size": calibration.batch_size, "seq_len": calibration.seq_len}))
"""


def measure(src: Path, config: Path, overrides: list[str], mode: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(src))
    output = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), json.dumps(overrides), mode], env=env, cwd=config.parent,
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    line = next(line for line in output.splitlines()[::-1] if line.startswith("ESTIMATE "))
    return json.loads(line[len("ESTIMATE "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--before-src", type=Path)
    parser.add_argument("--repeats", type=int, default=1, help="cached measurements (best kept)")
    parser.add_argument("--tag", default="", help="results go to estimate_speed-TAG.{json,md} (one file per job)")
    args = parser.parse_args()
    config = args.config.resolve()
    rows = {}
    started = time.time()
    if args.before_src:
        rows["before"] = measure(args.before_src.resolve(), config, args.overrides, "before")
    rows["cold"] = measure(tunelab_source(), config, args.overrides, "cold")
    cached = [measure(tunelab_source(), config, args.overrides, "cached") for _ in range(args.repeats)]
    rows["cached"] = min(cached, key=lambda row: row["estimate_s"])
    result = {"config": str(config.relative_to(REPO_DIR)) if config.is_relative_to(REPO_DIR) else str(config),
              "overrides": args.overrides, "started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "rows": rows}
    lines = ["| estimate step | seconds | calibration cached | s/step measured | load (1 min) |", "|---|---:|---|---:|---:|"]
    for name, row in rows.items():
        lines.append(f"| {name} | {row['estimate_s']:.1f} | {'yes' if row['cached'] else 'no'} | {row['seconds_per_step']:.2f} | {row['load_average_1min']:.1f} |")
    table = "\n".join(lines) + "\n"
    stem = BENCH_DIR / "results" / ("estimate_speed-" + args.tag if args.tag else "estimate_speed")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
