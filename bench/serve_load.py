"""Load benchmark of ``tunelab serve``: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients.

Starts the server in-process on 127.0.0.1 (a free port) with the default model, then drives it with
the official async ``openai`` client: each client sends chat requests back to back. It runs
with batching (the engine gathers concurrent requests into one ``generate`` call) and, with
``--compare-unbatched``, without (``max_batch_size=1``), to show what batching buys. Every request must succeed.

    PYTHONPATH=src python bench/serve_load.py [--requests-per-client 4] [--max-tokens 16] [--compare-unbatched]

Writes bench/results/serve_load.json and bench/results/serve_load.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import openai  # noqa: E402
import torch  # noqa: E402

from tunelab.runs import load_model  # noqa: E402
from tunelab.serve import BackgroundServer, ServeSettings, create_app  # noqa: E402
from tunelab.serve.adapters import ModelRegistry  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is two plus two?",
    "Write a haiku about the sea.",
    "Why is the sky blue?",
    "Give me a synonym for happy.",
    "What does a compiler do?",
    "Translate 'good morning' into Spanish.",
]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


async def drive(url: str, concurrency: int, per_client: int, max_tokens: int) -> dict:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    latencies: list[float] = []
    errors = 0
    tokens = 0

    async def one_client(index: int) -> None:
        nonlocal errors, tokens
        for turn in range(per_client):
            question = QUESTIONS[(index + turn) % len(QUESTIONS)]
            started = time.perf_counter()
            try:
                answer = await client.chat.completions.create(
                    model="default", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
                )
                tokens += answer.usage.completion_tokens
                latencies.append(time.perf_counter() - started)
            except openai.APIError:
                errors += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "concurrency": concurrency,
        "requests": len(latencies) + errors,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 2),
        "completion_tokens_per_s": round(tokens / elapsed, 1),
        "p50_latency_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_latency_s": round(percentile(latencies, 99), 3) if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--compare-unbatched", action="store_true", help="Also run with max_batch_size=1.")
    args = parser.parse_args()

    loaded = load_model("default")
    results = []
    modes = [("batched", args.max_batch_size)] + ([("unbatched", 1)] if args.compare_unbatched else [])
    for label, batch_size in modes:
        app = create_app(ModelRegistry(loaded, "default"), ServeSettings(max_batch_size=batch_size, batch_window_ms=10, log_path=None))
        with BackgroundServer(app, "127.0.0.1", 0) as url:
            asyncio.run(drive(url, 1, 1, args.max_tokens))  # warm-up
            for concurrency in args.concurrency:
                app.state.engine.largest_batch = 0
                row = {"mode": label, "max_batch_size": batch_size, **asyncio.run(drive(url, concurrency, args.requests_per_client, args.max_tokens))}
                row["largest_batch"] = app.state.engine.largest_batch
                print(json.dumps(row))
                results.append(row)

    meta = {
        "model": "default (SmolLM2-135M-Instruct, fp32)",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "max_tokens": args.max_tokens,
        "requests_per_client": args.requests_per_client,
        "batch_window_ms": 10,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve_load.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    lines = [
        f"Model {meta['model']} on {meta['device']} ({meta['torch_threads']} torch threads); chat requests of "
        f"{args.max_tokens} new tokens, greedy; each client sends {args.requests_per_client} requests back to back.",
        "",
        "| mode | clients | requests | errors | req/s | tokens/s | p50 s | p99 s | largest batch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results:
        lines.append(
            f"| {row['mode']} | {row['concurrency']} | {row['requests']} | {row['errors']} | {row['requests_per_s']} | "
            f"{row['completion_tokens_per_s']} | {row['p50_latency_s']} | {row['p99_latency_s']} | {row['largest_batch']} |"
        )
    (RESULTS / "serve_load.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if any(row["errors"] for row in results):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
