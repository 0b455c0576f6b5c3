"""How close is `tunelab estimate`'s training time to a real training run on this machine?

The config gets ``train.max_steps=--steps``; the estimate is made first, exactly as the estimate step
of `tunelab run` makes it (``estimate_for_split``: the real tokenizer over the real split, its
planned tokens for those steps, its own short calibration measured now), then the real training
recipe (`tunelab.tasks.run_training`, what `tunelab train` and `tunelab run` call) runs those steps
into a temporary run folder, and its training seconds are set against the estimate's.

    python bench/estimate_accuracy.py examples/support-routing/config.yaml --steps 8

Appends one entry to bench/results/estimate_accuracy.json and prints the figure. Goal: within ±25%.

``--hog`` keeps one core busy with a bounded busy loop (started before the estimate, stopped after the
training): the busy machine of issue 29, where the estimate must know the threads the run will have.
Run it without ``OMP_NUM_THREADS`` in the environment (``env -u OMP_NUM_THREADS ...``) to measure what a
user who set nothing gets: an explicit thread count wins over the free cores.

    env -u OMP_NUM_THREADS -u MKL_NUM_THREADS python bench/estimate_accuracy.py examples/support-routing/config.yaml --steps 8 --hog
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch
from common import busy_cores_sampler, cpu_hog

from tunelab.config import load_config
from tunelab.data.split import make_split
from tunelab.estimate import estimate_error, estimate_for_split
from tunelab.runs import load_model
from tunelab.runtime import cpu_model_name
from tunelab.tasks import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of the real run")
    parser.add_argument("--calibration-steps", type=int, default=3)
    parser.add_argument("--cached", action="store_true", help="use a cached calibration when there is one (default: measure now)")
    parser.add_argument("--hog", action="store_true", help="one core kept busy by a bounded busy loop throughout")
    parser.add_argument("--label", default="", help="a name for this entry (e.g. the checkout measured)")
    args = parser.parse_args()
    with cpu_hog(3600 if args.hog else 0), busy_cores_sampler() as busy:
        entry = measure(args)
    entry.update(label=args.label, hog=args.hog, machine_busy_cores=busy.mean)
    out = Path(__file__).parent / "results" / "estimate_accuracy.json"
    history = json.loads(out.read_text()) if out.is_file() else []
    history.append(entry)
    out.write_text(json.dumps(history, indent=2) + "\n")
    print(json.dumps({k: entry.get(k) for k in ("label", "hog", "here", "estimated_s", "actual_s", "error", "within_25_percent",
                                                "threads", "load_average")}, indent=2))  # fmt: skip


def measure(args: argparse.Namespace) -> dict:

    config = load_config(args.config, [*args.overrides, f"train.max_steps={args.steps}"])
    split = make_split(config)
    # What `tunelab run` would have said for these steps: its own estimate step, calibration measured now
    # by default (the figure is about the method, not about a measurement taken at another load).
    estimate = estimate_for_split(config, split, load_model(config.model.name), calibration_steps=args.calibration_steps,
                                  calibration_cache=args.cached)  # fmt: skip
    calibration = estimate.calibration

    with tempfile.TemporaryDirectory() as folder:
        result = run_training(config, split, run_dir=Path(folder) / "run")
    error = estimate_error(estimate, result.seconds)
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": args.config,
        "overrides": args.overrides,
        "steps": result.steps,
        "tokens": result.tokens,
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average": os.getloadavg(),
        "here": getattr(estimate, "here", None),  # the machine as the estimate states it (absent before issue 29)
        "calibration": calibration.as_dict(),
        **error,
    }


if __name__ == "__main__":
    main()
