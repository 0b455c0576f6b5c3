"""Start-up: how long a user waits before tunelab does anything useful, with the default model cached.

1. ``tunelab generate "..." --max-new-tokens 1``: wall time of the whole command (interpreter,
   imports, model load, one token), in a fresh process, best of ``--repeats``.
2. ``load_model("default")`` from the converted cache: time of the call alone, and of the imports
   before it, in a fresh process each.
3. Command to first training step: a tiny sft run through ``tunelab.tasks.run_training`` (see
   ``tunelab_train.py``): process start to the end of optimizer step 1.

4. Commands that need no model (``--help``, ``config``, ``runs``, ``show``, ``compare``,
   ``data check --no-tokens``): wall time of each whole command in a fresh process, best of
   ``--repeats`` (``--only-commands``; ``--before-src OTHER/src`` times another checkout's commands in
   the same run, alternating, so before and after see the same load).

Usage: python bench/startup.py [--repeats 3]
       python bench/startup.py --only-commands --repeats 5 [--before-src /path/to/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH_DIR, child_result, machine_info, run_child, tunelab_source

LOAD_SNIPPET = """
import json, time
t0 = time.perf_counter()
from tunelab.runs import load_model
t1 = time.perf_counter()
loaded = load_model("default")
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1}))
"""


def _env(src: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src or tunelab_source()), str(BENCH_DIR), env.get("PYTHONPATH")]))
    return env


def time_generate(repeats: int) -> list[float]:
    command = [sys.executable, "-m", "tunelab.cli.main", "generate", "What is the capital of France?", "--max-new-tokens", "1"]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, env=_env(), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def time_load(repeats: int) -> list[dict[str, float]]:
    import json

    runs = []
    for _ in range(repeats):
        output = subprocess.run(
            [sys.executable, "-c", LOAD_SNIPPET], env=_env(), check=True, capture_output=True, text=True
        ).stdout
        runs.append(json.loads(output.strip().splitlines()[-1]))
    return runs


def time_train_command(repeats: int) -> list[float]:
    """``tunelab train`` on the qa-assistant example, from process start to the first step's metrics line.

    ``train.log_every=1`` makes the loop write step 1 to ``metrics.jsonl`` right after the step;
    the file is polled, and the command is stopped there (the rest of the run is not start-up).
    """
    import shutil
    import tempfile

    example = BENCH_DIR.parent / "examples" / "qa-assistant" / "config.yaml"
    times = []
    for _ in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="tunelab-startup-"))
        command = [sys.executable, "-m", "tunelab.cli.main", "train", str(example), "name=startup", f"train.output_dir={out}",
                   "train.max_steps=2", "train.log_every=1", "train.batch_size=4"]
        metrics = out / "startup" / "metrics.jsonl"
        started = time.perf_counter()
        process = subprocess.Popen(command, env=_env(), cwd=example.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not (metrics.is_file() and metrics.stat().st_size > 0):
            if process.poll() is not None:
                raise SystemExit(f"tunelab train exited with {process.returncode} before its first step: {' '.join(command)}")
            time.sleep(0.05)
        times.append(time.perf_counter() - started)
        process.terminate()
        process.wait()
        shutil.rmtree(out, ignore_errors=True)
    return times


NO_MODEL_COMMANDS = {
    "--help": ["--help"],
    "config": ["config"],
    "runs": ["runs", "--registry", "registry.db"],
    "show": ["show", "a", "--registry", "registry.db"],
    "compare": ["compare", "a", "b", "--registry", "registry.db"],
    "data check --no-tokens": ["data", "check", "train.jsonl", "--task", "classify", "--no-tokens"],
}


def _command_workspace(src: Path) -> Path:
    """A folder with a two-run registry and a small classify file, written by ``src``'s registry code."""
    import json
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="tunelab-commands-"))
    script = (
        "from tunelab.registry import Registry\n"
        "r = Registry('registry.db')\n"
        "for name, rank in (('a', 16), ('b', 4)):\n"
        "    r.create_run(name=name, task='classify', model='default', status='finished', config={'task': 'classify', 'lora': {'r': rank}})\n"
    )
    subprocess.run([sys.executable, "-c", script], env=_env(src), cwd=folder, check=True)
    rows = [json.dumps({"text": f"where is my card number {i}", "label": ["card_arrival", "top_up"][i % 2]}) for i in range(200)]
    (folder / "train.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def time_commands(sources: dict[str, Path], repeats: int) -> dict[str, dict[str, dict]]:
    """Best-of-``repeats`` wall time of each no-model command per source tree, alternating the trees."""
    workspace = _command_workspace(next(iter(sources.values())))
    times: dict[str, dict[str, list[float]]] = {label: {name: [] for name in NO_MODEL_COMMANDS} for label in sources}
    loads: dict[str, list[float]] = {label: [] for label in sources}
    for _ in range(repeats):
        for label, src in sources.items():
            loads[label].append(os.getloadavg()[0])
            for name, arguments in NO_MODEL_COMMANDS.items():
                started = time.perf_counter()
                subprocess.run([sys.executable, "-m", "tunelab.cli.main", *arguments], env=_env(src), cwd=workspace, check=False,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                times[label][name].append(time.perf_counter() - started)
    return {
        label: {
            name: {"best": round(min(values), 3), "all": [round(v, 3) for v in values]} for name, values in per_command.items()
        } | {"load_average_1min": [round(v, 2) for v in loads[label]]}
        for label, per_command in times.items()
    }


def write_commands_markdown(result: dict) -> str:
    labels = [label for label in result if label != "machine"]
    lines = ["| command | " + " | ".join(f"{label} best s" for label in labels) + " |", "|---|" + "---:|" * len(labels)]
    for name in NO_MODEL_COMMANDS:
        lines.append(f"| `tunelab {name}` | " + " | ".join(f"{result[label][name]['best']:.2f}" for label in labels) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--only-train-command", action="store_true", help="measure only `tunelab train` -> first step")
    parser.add_argument("--only-commands", action="store_true", help="measure only the commands that need no model")
    parser.add_argument("--before-src", type=Path, help="with --only-commands: also time this tunelab src tree, alternating")
    args = parser.parse_args()
    if args.only_commands:
        sources = {"after": tunelab_source()}
        if args.before_src:
            sources = {"before": args.before_src.resolve(), **sources}
        result = time_commands(sources, args.repeats)
        table = write_commands_markdown(result)
        result["machine"] = machine_info()
        (BENCH_DIR / "results" / "startup_commands.json").write_text(json.dumps(result, indent=2) + "\n")
        (BENCH_DIR / "results" / "startup_commands.md").write_text(table)
        print(table)
        child_result(result)
        return
    if args.only_train_command:
        times = time_train_command(args.repeats)
        child_result({"train_command_first_step_s": {"best": round(min(times), 2), "all": [round(t, 2) for t in times]},
                      "machine": machine_info()})
        return
    # Make sure the default model is converted and cached first: start-up is measured with a warm cache.
    subprocess.run([sys.executable, "-c", "from tunelab.runs import load_model; load_model('default')"], env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    generate = time_generate(args.repeats)
    loads = time_load(args.repeats)
    train_command = time_train_command(args.repeats)
    result = {
        "generate_one_token_s": {"best": round(min(generate), 2), "all": [round(t, 2) for t in generate]},
        "load_model_default_s": {"best": round(min(r["load_s"] for r in loads), 2), "all": [round(r["load_s"], 2) for r in loads]},
        "import_tunelab_models_s": {"best": round(min(r["import_s"] for r in loads), 2)},
        "train_command_first_step_s": {"best": round(min(train_command), 2), "all": [round(t, 2) for t in train_command]},
    }
    if not args.skip_train:
        train = run_child(
            "tunelab_train.py", ["--task", "sft", "--steps", "1", "--batch-size", "1", "--max-length", "128", "--validation", "1"]
        )
        result["first_training_step_s"] = train.get("first_step_s")
        result["first_training_step_note"] = (
            "process start -> end of optimizer step 1 of a 1-example sft step (imports, data read, model load, LoRA, step)"
        )
    result["machine"] = machine_info()
    child_result(result)


if __name__ == "__main__":
    main()
