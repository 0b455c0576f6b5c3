"""Benchmark ``tunelab monitor`` over a synthetic request log of 1,000,000 classify requests.

Usage: ``python bench/monitor.py [--rows 1000000] [--keep DIR]``

Builds, in a temporary folder (or ``--keep DIR``): a reference classify run (a training file,
``config.yaml``, ``split.json``; no model, monitoring needs none), a registry that knows it, and a
request log with ``--rows`` rows spread over the last 6 days (0.5 % server errors, 1 % feedback,
half of the traffic from words the run never saw). Then times ``run_monitor`` in-process and the
``tunelab monitor --json`` command (a fresh interpreter, imports included), checks that the counts
are exact, and writes ``bench/results/monitor.json`` + ``.md``. Text signals sample
``monitor.sample`` requests (20,000) and the report says so; counts, label shares, confidence,
latency and error rate read every row.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR / "src"))

LABELS = ["card_arrival", "refund", "transfer", "pin", "top_up", "exchange", "cash", "fee"]
WORDS = "card refund account payment transfer balance limit fee statement travel lost pin top-up cash exchange".split()
NEW_WORDS = "crypto mortgage insurance pension stock loan dividend broker".split()


def build(folder: Path, rows: int, seed: int = 0) -> dict:
    import yaml

    from tunelab.config import parse_config
    from tunelab.data.split import make_split
    from tunelab.registry.store import Registry
    from tunelab.serve.request_log import connect

    rng = random.Random(seed)
    run_dir = folder / "runs" / "router-v1"
    run_dir.mkdir(parents=True)
    train = folder / "train.jsonl"
    with train.open("w") as handle:
        for i in range(4000):
            label = LABELS[i % len(LABELS)]
            handle.write(json.dumps({"text": f"{label.replace('_', ' ')} " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 20))), "label": label}) + "\n")
    config = parse_config({"task": "classify", "data": {"train": str(train)}, "train": {"output_dir": str(folder / "runs")}})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    (run_dir / "adapter").mkdir()
    make_split(config).save(run_dir / "split.json")
    registry = Registry(folder / "runs" / "registry.db")
    run_id = registry.create_run(name="router-v1", task="classify", status="finished", run_dir=str(run_dir)).id

    import numpy as np

    log = folder / "requests.db"
    db = connect(log)
    now = datetime.now(UTC)
    start = now - timedelta(days=6)
    step = (now - start).total_seconds() / rows
    # Texts from two pools (the run's words; words it never saw), so the text signals have drift to find.
    pools = [[json.dumps(" ".join(rng.choice(words) for _ in range(rng.randint(4, 20)))) for _ in range(5000)] for words in (WORDS, NEW_WORDS)]
    numbers = np.random.default_rng(seed)
    failed = numbers.random(rows) < 0.005
    label_index = numbers.integers(0, len(LABELS), rows)
    tops = numbers.uniform(0.3, 1.0, rows)
    latencies = numbers.uniform(5, 80, rows)
    labelled = (numbers.random(rows) < 0.01) & ~failed
    insert = (
        "INSERT INTO requests (time, endpoint, model, prompt, output, prompt_tokens, completion_tokens, latency_ms, status, error, "
        "stream, response_id, run_id, predicted_label, top_probability, probabilities) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )

    def requests():
        for i in range(rows):
            moment = (start + timedelta(seconds=i * step)).isoformat(timespec="milliseconds")
            prompt = pools[i % 2][i % 5000]
            if failed[i]:
                yield (moment, "/v1/classify", "router", prompt, None, 12, 0, float(latencies[i]), 500, "boom", 0, f"clf-{i:08x}", run_id, None, None, None)
            else:
                label = LABELS[label_index[i]]
                yield (moment, "/v1/classify", "router", prompt, label, 12, 1, float(latencies[i]), 200, None, 0, f"clf-{i:08x}", run_id,
                       label, float(tops[i]), f'[{{"{label}": {tops[i]:.4f}}}]')

    db.execute("BEGIN")
    db.executemany(insert, requests())
    db.executemany(
        "INSERT INTO feedback (time, response_id, item, label, completion, rating, source) VALUES (?, ?, 0, ?, NULL, NULL, 'bench')",
        ((now.isoformat(timespec="milliseconds"), f"clf-{i:08x}", LABELS[(label_index[i] + i) % len(LABELS)]) for i in np.flatnonzero(labelled)),
    )
    db.execute("COMMIT")
    db.close()
    errors, feedback = int(failed.sum()), int(labelled.sum())
    return {"log": log, "registry": folder / "runs" / "registry.db", "errors": errors, "feedback": feedback, "run_id": run_id}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", type=Path, default=None, help="Build in this folder and keep it.")
    args = parser.parse_args()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="tunelab-monitor-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    built = build(folder, args.rows)
    build_seconds = time.perf_counter() - started

    from tunelab.config import MonitorConfig
    from tunelab.monitor import run_monitor

    started = time.perf_counter()
    report = run_monitor(built["log"], MonitorConfig(), registry_path=built["registry"])
    in_process = time.perf_counter() - started
    model = report.models[0]
    assert model.requests == args.rows, (model.requests, args.rows)
    assert model.signal("live_accuracy").n == built["feedback"]
    assert round(model.signal("error_rate").value * args.rows) == built["errors"]

    env = dict(os.environ, PYTHONPATH=str(REPO_DIR / "src"), HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    command = [sys.executable, "-m", "tunelab.cli.main", "monitor", "--log-db", str(built["log"]), "--registry", str(built["registry"]), "--json"]
    finished = subprocess.run(command, env=env, capture_output=True, text=True, cwd=folder)
    cli_seconds = time.perf_counter() - started
    cli_report = json.loads(finished.stdout)
    result = {
        "rows": args.rows,
        "build_s": round(build_seconds, 1),
        "run_monitor_s": round(in_process, 2),
        "cli_s": round(cli_seconds, 2),
        "cli_exit_code": finished.returncode,
        "status": cli_report["status"],
        "requests_counted": cli_report["models"][0]["requests"],
        "text_signals_sampled_requests": next(s["n"] for s in cli_report["models"][0]["signals"] if s["name"] == "oov_share"),
        "feedback_rows": built["feedback"],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "cpu": os.cpu_count(),
        "signals": {s["name"]: s["status"] for s in cli_report["models"][0]["signals"]},
    }
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    (results / "monitor.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / "monitor.md").write_text(
        "| rows | run_monitor (s) | `tunelab monitor --json` (s) | exit code | counted | text signals on |\n|---|---|---|---|---|---|\n"
        f"| {args.rows:,} | {result['run_monitor_s']} | {result['cli_s']} | {result['cli_exit_code']} | {result['requests_counted']:,} | "
        f"{result['text_signals_sampled_requests']:,} sampled requests |\n"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
