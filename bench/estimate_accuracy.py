"""How close is `tunelab estimate`'s training time to a real training run on this machine?

The estimate is made first (real tokenizer over the real split, plus its own short measured
calibration), then the real training recipe (`tunelab.tasks.run_training`, what `tunelab train` and
`tunelab run` call) runs for ``--steps`` optimizer steps into a temporary run folder. The estimate
for those steps is the estimated seconds per token times the tokens those steps consumed.

    python bench/estimate_accuracy.py examples/support-routing/config.yaml --steps 8

Appends one entry to bench/results/estimate_accuracy.json and prints the figure. Goal: within ±25%.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import torch

from tunelab.config import load_config
from tunelab.data.split import make_split
from tunelab.estimate import calibrate, count_tokens_from_files, estimate_error, plan_tokens
from tunelab.models import load_model
from tunelab.runtime import cpu_model_name
from tunelab.tasks import run_training


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps of the real run")
    parser.add_argument("--calibration-steps", type=int, default=3)
    parser.add_argument("--cached", action="store_true", help="use a cached calibration when there is one (default: measure now)")
    args = parser.parse_args()

    config = load_config(args.config, [*args.overrides, f"train.max_steps={args.steps}"])
    tokenizer = load_model(config.model.name).tokenizer
    counts = count_tokens_from_files(config, tokenizer)
    seq_len = plan_tokens(config, counts.train).seq_len
    # Measured now by default: the figure is about the method, not about a measurement taken at another load.
    calibration = calibrate(config, seq_len, steps=args.calibration_steps, n_labels=counts.n_labels or 8, use_cache=args.cached)

    with tempfile.TemporaryDirectory() as folder:
        result = run_training(config, make_split(config), run_dir=Path(folder) / "run")
    # Same tokens, the estimate's rate: what the estimate would have said for this much training.
    estimated_s = result.tokens / calibration.tokens_per_second
    error = estimate_error(estimated_s, result.seconds)
    entry = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": args.config,
        "overrides": args.overrides,
        "steps": result.steps,
        "tokens": result.tokens,
        "cpu": cpu_model_name(),
        "threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "calibration": calibration.as_dict(),
        **error,
    }
    out = Path(__file__).parent / "results" / "estimate_accuracy.json"
    history = json.loads(out.read_text()) if out.is_file() else []
    history.append(entry)
    out.write_text(json.dumps(history, indent=2) + "\n")
    print(json.dumps({k: entry[k] for k in ("estimated_s", "actual_s", "error", "within_25_percent", "load_average")}, indent=2))


if __name__ == "__main__":
    main()
