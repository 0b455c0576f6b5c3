"""Load benchmark of ``tunelab serve``: requests/s and p50/p99 latency at 1, 8 and 32 concurrent clients.

Starts the server in-process on 127.0.0.1 (a free port) with the default model, then drives it with
the official async ``openai`` client: each client sends chat requests back to back. It runs
with batching (the engine gathers concurrent requests into one ``generate`` call) and, with
``--compare-unbatched``, without (``max_batch_size=1``), to show what batching buys. Every request must succeed.

    PYTHONPATH=src python bench/serve_load.py [--requests-per-client 4] [--max-tokens 16] [--compare-unbatched]

Writes bench/results/serve_load.json and bench/results/serve_load.md.

``--soak SECONDS`` is the endurance run instead: ``--concurrency`` clients (default 32) send requests back to
back for that long with the request log on; it reports errors, whether every request was logged exactly
once, and the process's resident memory (RSS) over time, and fails on any error, a lost or doubled log
row, or memory that keeps growing. Writes bench/results/serve_soak.json and .md.

    PYTHONPATH=src python bench/serve_load.py --soak 180 --max-tokens 16
    PYTHONPATH=/tmp/before/src python bench/serve_load.py --soak 60 --max-tokens 8 --hog --name serve_soak-before-hog

``--hog`` keeps one core busy (a bounded busy loop) from before the server starts until the soak ends;
``--name`` names the results files.
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

try:
    from tunelab.runs import load_model  # noqa: E402
except ImportError:  # a checkout from before tunelab.runs (measured with PYTHONPATH=<it>/src for a before/after)
    from tunelab.models import load_model  # noqa: E402
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


def rss_mb() -> float:
    """This process's resident memory (the server runs in it, on a thread), from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def soak(url: str, concurrency: int, seconds: float, max_tokens: int, samples: list) -> dict:
    """``concurrency`` clients send chat requests back to back until ``seconds`` have passed; RSS sampled every 5 s."""
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    deadline = time.monotonic() + seconds
    ok = errors = 0
    latencies: list[float] = []

    async def one_client(index: int) -> None:
        nonlocal ok, errors
        turn = 0
        while time.monotonic() < deadline:
            question = QUESTIONS[(index + turn) % len(QUESTIONS)]
            turn += 1
            started = time.perf_counter()
            try:
                await client.chat.completions.create(
                    model="default", messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0
                )
                ok += 1
                latencies.append(time.perf_counter() - started)
            except openai.APIError:
                errors += 1

    async def sampler() -> None:
        began = time.monotonic()
        while time.monotonic() < deadline:
            samples.append((round(time.monotonic() - began, 1), round(rss_mb(), 1)))
            await asyncio.sleep(5)

    started = time.perf_counter()
    await asyncio.gather(sampler(), *(one_client(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "clients": concurrency, "seconds": round(elapsed, 1), "requests": ok + errors, "errors": errors,
        "requests_per_s": round(ok / elapsed, 2),
        "p50_latency_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_latency_s": round(percentile(latencies, 99), 3) if latencies else None,
    }


def run_soak(args: argparse.Namespace) -> None:
    import tempfile

    from tunelab.serve import read_requests

    concurrency = args.concurrency[0] if args.concurrency != [1, 8, 32] else 32
    loaded = load_model("default")
    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        log_path = Path(folder) / "requests.db"
        app = create_app(ModelRegistry(loaded, "default"), ServeSettings(max_batch_size=args.max_batch_size, batch_window_ms=10, log_path=log_path))
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from common import busy_cores_sampler, cpu_hog

        # The hog starts before the server: a server started on a machine where another job already runs.
        with cpu_hog(args.soak + 300 if args.hog else 0), BackgroundServer(app, "127.0.0.1", 0) as url:
            asyncio.run(drive(url, 1, 1, args.max_tokens))  # warm-up (1 request, logged too)
            with busy_cores_sampler() as busy:
                row = asyncio.run(soak(url, concurrency, args.soak, args.max_tokens, samples))
            row["hog"], row["machine_busy_cores"] = args.hog, busy.mean
        logged = read_requests(log_path)  # leaving the server flushed the log
    # Memory: the first minute is the allocator settling (batches of every size seen once); growth is judged after it.
    settled = [mb for t, mb in samples if t >= min(60.0, args.soak / 3)]
    first, last = (settled[0], settled[-1]) if settled else (float("nan"), float("nan"))
    row.update({
        "logged_rows": len(logged), "logged_exactly_once": len(logged) == row["requests"] + 1,
        "rss_mb_start": samples[0][1] if samples else None, "rss_mb_settled": first, "rss_mb_end": last,
        "rss_mb_max": max(mb for _, mb in samples) if samples else None,
        "rss_growth_after_settling_mb": round(last - first, 1),
    })  # fmt: skip
    flat = row["rss_growth_after_settling_mb"] <= max(20.0, 0.05 * first)
    row["rss_flat"] = flat
    meta = {
        "model": "default (SmolLM2-135M-Instruct, fp32)", "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
        "max_tokens": args.max_tokens, "max_batch_size": args.max_batch_size, "batch_window_ms": 10,
        "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "result": row, "rss_samples": samples}, indent=2))
    lines = [
        f"Soak: {row['clients']} clients for {row['seconds']} s against {meta['model']} on {meta['device']} "
        f"({meta['torch_threads']} torch thread(s)), chat requests of {args.max_tokens} new tokens, request log on"
        f"{', one core kept busy by a hog' if row['hog'] else ''} (machine's busy cores over the soak: {row['machine_busy_cores']}).",
        "",
        "| requests | errors | req/s | p50 s | p99 s | logged exactly once | RSS start MB | RSS settled MB | RSS end MB | RSS max MB | growth after settling MB |",
        "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        f"| {row['requests']} | {row['errors']} | {row['requests_per_s']} | {row['p50_latency_s']} | {row['p99_latency_s']} | "
        f"{row['logged_exactly_once']} ({row['logged_rows']} rows) | {row['rss_mb_start']} | {row['rss_mb_settled']} | "
        f"{row['rss_mb_end']} | {row['rss_mb_max']} | {row['rss_growth_after_settling_mb']} |",
    ]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if row["errors"] or not row["logged_exactly_once"] or not flat:
        raise SystemExit("soak failed: errors, a lost or doubled log row, or memory growth")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests-per-client", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--compare-unbatched", action="store_true", help="Also run with max_batch_size=1.")
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="The endurance run instead (see above).")
    parser.add_argument("--hog", action="store_true", help="--soak: one core kept busy by a bounded busy loop")
    parser.add_argument("--name", default="serve_soak", help="--soak: the results files' name under bench/results/")
    args = parser.parse_args()
    if args.soak:
        run_soak(args)
        return

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
