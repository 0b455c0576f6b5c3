"""Remote models against a loopback `tunelab serve`: teacher requests/s with the concurrency bound, the cache on a rerun,
and (``--agreement``) a small distillation on support-routing: the student's agreement with its served teacher.

Starts `tunelab serve` in-process on 127.0.0.1 (a free port) over the default model, then asks it through
``tunelab.remote.RemoteClient`` (the official ``openai`` client): the same prompts with the bound at 1 and
at ``--concurrency``, without cache; then with a fresh request cache, twice, for the hit rate of a rerun.

    PYTHONPATH=src python bench/remote.py [--requests 24] [--max-tokens 16] [--concurrency 8] [--agreement]

Writes bench/results/remote.json and bench/results/remote.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine_info, machine_markdown, markdown_table, write_results  # noqa: E402

from tunelab.config import EndpointConfig  # noqa: E402
from tunelab.remote import RemoteClient, RequestCache  # noqa: E402
from tunelab.runs import load_model  # noqa: E402
from tunelab.serve import BackgroundServer, ServeSettings, create_app  # noqa: E402
from tunelab.serve.adapters import ModelRegistry  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOPICS = ["the sea", "a compiler", "Paris", "the moon", "bread", "a violin", "rain", "chess"]


def prompts(count: int) -> list[list[dict[str, str]]]:
    return [[{"role": "user", "content": f"In one sentence, what is {TOPICS[i % len(TOPICS)]}? ({i})"}] for i in range(count)]


def timed(client: RemoteClient, conversations, max_tokens: int) -> dict:
    started = time.perf_counter()
    answers = client.chat_many(conversations, max_tokens=max_tokens)
    seconds = time.perf_counter() - started
    usage = client.usage(answers)
    return {"requests": len(answers), "failed": usage.failed, "cached": usage.cached, "cache_hit_rate": usage.cache_hit_rate,
            "seconds": round(seconds, 2), "requests_per_s": round(len(answers) / seconds, 2),
            "median_latency_s": usage.to_dict()["latency_median_s"], "output_tokens": usage.output_tokens}


def throughput(url: str, args) -> list[dict]:
    rows = []
    conversations = prompts(args.requests)
    for bound in (1, args.concurrency):
        endpoint = EndpointConfig(base_url=url, name="default", concurrency=bound, max_retries=2, timeout_s=600)
        rows.append({"run": f"bound {bound}, no cache", "bound": bound, **timed(RemoteClient(endpoint), conversations, args.max_tokens)})
        print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as folder:
        cache = RequestCache(Path(folder) / "requests.db")
        endpoint = EndpointConfig(base_url=url, name="default", concurrency=args.concurrency, max_retries=2, timeout_s=600)
        for run in ("first run, cache on", "rerun, cache on"):
            rows.append({"run": run, "bound": args.concurrency, **timed(RemoteClient(endpoint, cache=cache), conversations, args.max_tokens)})
            print(rows[-1], flush=True)
    return rows


def agreement(url: str, args) -> dict:
    """support-routing: the served default model labels a sample of the training texts zero-shot (by name);
    the default model (untuned) is trained on the labels it gave and compared with it on the held-out test."""
    from tunelab.config import load_config
    from tunelab.tasks.distill import run_distill

    with tempfile.TemporaryDirectory() as folder:
        os.environ["TUNELAB_REMOTE_CACHE"] = str(Path(folder) / "requests.db")
        config = load_config(EXAMPLES / "support-routing" / "config.yaml", [
            f"data.limit={args.agreement_train}", f"data.max_test_examples={args.agreement_test}", "eval.baselines=[base]",
            f"train.output_dir={folder}", f"train.max_steps={args.agreement_steps}", "name=bench-distill",
            f"distill.teacher={{base_url: '{url}', name: default}}", f"distill.concurrency={args.concurrency}",
            "eval.bootstrap_samples=1000",
        ])
        started = time.perf_counter()
        outcome = run_distill(config, calibrate=False)
        report = outcome.report
        return {"seconds": round(time.perf_counter() - started, 1), "asked": outcome.asked, "accepted": outcome.accepted,
                "rejected": len(outcome.rejected), "n_test": report["n"], "agreement": report["student_vs_teacher"],
                "against_references": report["against_references"], "statement": report["statement"],
                "latency_s": report["latency_s"], "train_steps": args.agreement_steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--agreement", action="store_true", help="Also distil on support-routing and measure agreement.")
    parser.add_argument("--agreement-train", type=int, default=120, help="Training texts the teacher labels.")
    parser.add_argument("--agreement-test", type=int, default=40, help="Held-out test texts.")
    parser.add_argument("--agreement-steps", type=int, default=20, help="Student optimizer steps.")
    args = parser.parse_args()

    info = machine_info()
    loaded = load_model("default")
    app = create_app(ModelRegistry(loaded, "default"), ServeSettings(max_batch_size=max(8, args.concurrency), batch_window_ms=10, log_path=None))
    with BackgroundServer(app, "127.0.0.1", 0) as url:
        RemoteClient(EndpointConfig(base_url=f"{url}/v1", name="default")).chat_many(prompts(1), max_tokens=2)  # warm-up
        rows = throughput(f"{url}/v1", args)
        distilled = agreement(f"{url}/v1", args) if args.agreement else None
    data = {"machine": info, "settings": vars(args), "throughput": rows, "agreement": distilled}
    lines = [
        "# Remote models against a loopback `tunelab serve` (default model, CPU)", "", machine_markdown(info), "",
        f"{args.requests} chat requests of at most {args.max_tokens} new tokens, greedy, asked through `tunelab.remote.RemoteClient`.", "",
        markdown_table(["run", "bound", "requests", "failed", "from cache", "hit rate", "seconds", "requests/s", "median latency s"],
                       [[r["run"], r["bound"], r["requests"], r["failed"], r["cached"], r["cache_hit_rate"], r["seconds"],
                         r["requests_per_s"], r["median_latency_s"]] for r in rows]),
    ]
    if distilled:
        refs = distilled["against_references"]
        lines += ["", "## Student vs teacher on support-routing (classify)", "",
                  f"The served default model labelled {distilled['asked']} training texts zero-shot (categories by name): "
                  f"{distilled['accepted']} answers named a category, {distilled['rejected']} did not and were left out. The default "
                  f"model was trained on the accepted labels for {distilled['train_steps']} steps and scored on {distilled['n_test']} "
                  f"held-out texts ({distilled['seconds']} s in all).", "",
                  markdown_table(["", "teacher", "student", "untuned student"],
                                 [["accuracy vs references", refs["teacher"].get("accuracy"), refs["student"].get("accuracy"),
                                   refs.get("untuned_student", {}).get("accuracy")]]),
                  "", f"Agreement of the student with the teacher: {distilled['agreement']['agreement']:.3f} "
                  f"(95% interval {distilled['agreement']['low']:.3f} to {distilled['agreement']['high']:.3f}).", "",
                  distilled["statement"] + "."]
    json_path, md_path = write_results("remote", data, "\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
