"""Benchmark ``tunelab data check`` on a generated 100,000-record JSONL file.

Usage: ``python bench/data_check.py [--records 100000] [--task sft|classify] [--model default]``

Writes the file into a temporary folder, runs ``check_data`` once with the model's tokenizer
(token lengths on the default seeded sample of 10,000 records, as the report says) and prints
records/s, seconds and the peak resident memory of the process, as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

WORDS = "card refund account payment transfer balance limit fee statement travel lost pin top-up cash exchange".split()


def generate(path: Path, records: int, task: str, seed: int = 0) -> None:
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as handle:
        for i in range(records):
            words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
            if task == "sft":
                row = {"prompt": f"Question {i}: what about my {words}?", "completion": f"About your {words}: see the app."}
            else:
                row = {"text": f"Request {i}: {words}", "label": rng.choice(WORDS[:8])}
            handle.write(json.dumps(row) + "\n")
        # A few bad and duplicate lines, as real files have.
        handle.write("{broken json\n")
        handle.write(json.dumps({"prompt": "", "completion": "x", "text": "", "label": ""}) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--task", default="sft", choices=["sft", "classify"])
    parser.add_argument("--model", default="default")
    parser.add_argument("--save", help="Append the result as one JSON line to this file.")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from tunelab.config import DataConfig
    from tunelab.data.check import check_data
    from tunelab.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    # Peak RSS is process-wide: note the baseline (Python + transformers + tokenizer) before the check.
    baseline_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "data.jsonl"
        generate(path, args.records, args.task)
        start, cpu_start = time.perf_counter(), time.process_time()
        report = check_data(str(path), args.task, DataConfig(), tokenizer=tokenizer)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    result = {
        "task": args.task,
        "records": report.records,
        "invalid": len(report.invalid),
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "records_per_second": round((report.records + len(report.invalid)) / seconds),
        "peak_rss_mb": round(peak_mb),
        "rss_before_check_mb": round(baseline_mb),
        "lengths_measured_on": report.lengths.measured if report.lengths else 0,
        "model": args.model,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(json.dumps(result, indent=2))
    if args.save:
        with open(args.save, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
