"""How many test examples the paired percentile bootstrap needs before its 95% interval means what it says.

tunelab's verdict calls a difference real when the paired-bootstrap 95% interval of (tuned - opponent)
excludes zero. With few examples the percentile bootstrap's interval is too narrow (it ignores that the
example set itself is a small sample), so it excludes zero more often than 5% of the time when the two
models are in truth equal. This script measures that false-verdict rate by simulation, for paired
per-example scores of the kinds tunelab compares:

- accuracy: each example right/wrong for both models; equal true accuracies, a share of examples on
  which the two disagree (discordance) of 10 %, 30 % and 60 %;
- a continuous per-example score with true mean difference 0: bounded like ROUGE-L (the difference of two
  Beta(2, 5) scores), and heavy-tailed like per-document log-likelihoods (Student t with 5 and with 3
  degrees of freedom; t(3) has no finite fourth moment, the hardest case here).

For each n it draws ``--trials`` test sets, runs the same percentile bootstrap as ``compare.py``
(``--samples`` resamples of the examples) and counts how often the interval excludes 0. The minimum is
the smallest n from which the rate stays at or below ``--tolerance`` (default 0.075, 1.5 times the
nominal 0.05) in every scenario, rounded up to a multiple of 10 (each rate is itself a Monte Carlo
estimate, standard error about 0.004 at 4,000 trials). Results: ``bench/results/bootstrap_minimum.json`` and ``.md``.

    PYTHONPATH=src python bench/bootstrap_minimum.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


def excludes_zero(differences: np.ndarray, rng: np.random.Generator, samples: int) -> bool:
    n = differences.size
    means = differences[rng.integers(0, n, size=(samples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return bool(low > 0 or high < 0)


def accuracy_differences(n: int, discordance: float, rng: np.random.Generator) -> np.ndarray:
    # On a discordant example one model is right and the other wrong, each way with probability 1/2.
    discordant = rng.random(n) < discordance
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    return np.where(discordant, sign, 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="5,10,15,20,25,30,35,40,50,80")
    parser.add_argument("--trials", type=int, default=4000)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--tolerance", type=float, default=0.075)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    scenarios = {
        "accuracy, 10% discordant": lambda n: accuracy_differences(n, 0.10, rng),
        "accuracy, 30% discordant": lambda n: accuracy_differences(n, 0.30, rng),
        "accuracy, 60% discordant": lambda n: accuracy_differences(n, 0.60, rng),
        "continuous, bounded (ROUGE-like)": lambda n: rng.beta(2, 5, size=n) - rng.beta(2, 5, size=n),
        "continuous, t(5)": lambda n: rng.standard_t(5, size=n),
        "continuous, t(3)": lambda n: rng.standard_t(3, size=n),
    }
    table: dict[str, dict[int, float]] = {}
    for name, draw in scenarios.items():
        table[name] = {}
        for n in [int(x) for x in args.sizes.split(",")]:
            hits = 0
            for _ in range(args.trials):
                differences = draw(n)
                if not differences.any():
                    continue  # every example equal: the interval is [0, 0], never "different"
                hits += excludes_zero(differences, rng, args.samples)
            table[name][n] = hits / args.trials
            print(f"{name:28s} n={n:3d} false verdicts {table[name][n]:.3f}", flush=True)
    sizes = sorted(next(iter(table.values())))
    first = next((n for i, n in enumerate(sizes) if all(table[s][m] <= args.tolerance for s in table for m in sizes[i:])), None)
    minimum = None if first is None else -(-first // 10) * 10
    RESULTS.mkdir(exist_ok=True)
    out = {"trials": args.trials, "samples": args.samples, "tolerance": args.tolerance, "false_verdict_rate": table,
           "first_n_within_tolerance": first, "minimum": minimum}
    (RESULTS / "bootstrap_minimum.json").write_text(json.dumps(out, indent=1))
    lines = ["| scenario | " + " | ".join(f"n={n}" for n in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[n]:.3f}" for n in sizes) + " |")
    lines.append(f"\nsmallest n with every rate <= {args.tolerance} from there on: {first}; the minimum (rounded up to 10): {minimum}")
    (RESULTS / "bootstrap_minimum.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
