"""The quickstart's training (examples/support-routing, the classify defaults) through ``tunelab.tasks.run_training``,
timed, with its peak memory and its held-out accuracy on the quickstart's 80 test requests.

One child process per measurement (see common.run_child): its peak RSS is its own. The first optimizer step
(warm-up) is not timed; real tokens are the loop's count of non-padding tokens. Peak RSS is read right after
training, before the run is loaded back for evaluation.

Usage: python bench/quickstart_train.py [--steps N] [--set train.method=qlora ...]
       (--steps 0: the whole default recipe, 5 epochs with the checkpoint chosen by validation accuracy)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from common import REPO_DIR, child_result, machine_info, peak_rss_mb


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=0, help="optimizer steps (0: the recipe's own, 5 epochs)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. train.method=qlora")
    args = parser.parse_args(argv)

    from tunelab.config import load_config
    from tunelab.data.split import make_split
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.models.loader import load_run
    from tunelab.tasks import run_training

    overrides = list(args.set) + ([f"train.max_steps={args.steps}"] if args.steps else [])
    config = load_config(REPO_DIR / "examples" / "support-routing" / "config.yaml", overrides)
    split = make_split(config)
    steps: list[tuple[float, int]] = []
    run_dir = Path(tempfile.mkdtemp(prefix="tunelab-bench-")) / "run"
    started = time.perf_counter()
    result = run_training(config, split, run_dir=run_dir, progress=lambda p: steps.append((time.perf_counter(), p.tokens)))
    train_s = time.perf_counter() - started
    train_peak = round(peak_rss_mb(), 1)
    (t0, tokens0), (t1, tokens1) = steps[0], steps[-1]
    held_out = evaluate(load_run(run_dir), split.test, "classify", config=config.eval, data_config=config.data)
    child_result({
        "runner": f"quickstart_{config.train.method}_{result.precision}",
        "method": config.train.method,
        "precision": result.precision,
        "overrides": overrides,
        "optimizer_steps": result.steps,
        "real_tokens_per_s": round((tokens1 - tokens0) / max(1e-9, t1 - t0), 1),
        "train_s": round(train_s, 1),
        "train_peak_rss_mb": train_peak,
        "train_loss": result.final_loss,
        "best_validation_score": result.best_validation_score,
        "test_accuracy": held_out.metrics["accuracy"],
        "test_macro_f1": held_out.metrics.get("macro_f1"),
        "test_examples": len(split.test),
        "machine": machine_info(),
    })


if __name__ == "__main__":
    main()
