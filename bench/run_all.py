"""Run every benchmark and write bench/results/*.json, *.md and summary.md (``make bench``).

Order: the machine's matmul peak (the MFU ceiling), start-up, SFT LoRA training (TRL fp32, TRL
bf16, tunelab fp32, tunelab bf16, back to back), classify training (the same four), and the
evaluation-speed benchmark when ``bench/eval_speed.py`` exists. A benchmark that cannot run
(TRL not installed, shared data absent) is skipped with the reason in the summary.

Usage: python bench/run_all.py [--quick] [--only peak startup sft classify eval]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

from common import (
    BENCH_DIR,
    RESULTS_DIR,
    SHARED_DATA,
    machine_info,
    machine_markdown,
    markdown_table,
    run_child,
    tunelab_source,
    write_results,
)

# Sized for a 2-core CPU: the peer needs tens of seconds per step there. CLI-overridable.
SFT_ARGS = ["--steps", "6", "--batch-size", "8", "--max-length", "512", "--validation", "64"]
CLASSIFY_ARGS = ["--steps", "6", "--batch-size", "16", "--max-length", "128", "--validation", "200"]
QUICK_SFT_ARGS = ["--steps", "1", "--batch-size", "2", "--max-length", "128", "--validation", "4"]
QUICK_CLASSIFY_ARGS = ["--steps", "1", "--batch-size", "4", "--max-length", "96", "--validation", "8"]


def peak_markdown(result: dict) -> str:
    sizes = list(result["by_size_tflops"]["fp32"])
    rows = [[dtype, *[values[s] for s in sizes], result["peak_tflops"][dtype]] for dtype, values in result["by_size_tflops"].items()]
    return (
        "### Matmul peak (TFLOP/s)\n\n"
        + machine_markdown(result["machine"])
        + f"\n\nMethod: {result['method']}.\n\n"
        + markdown_table(["dtype", *[f"n={s}" for s in sizes], "peak"], rows)
    )


def startup_markdown(result: dict) -> str:
    labels = [
        ("train_command_first_step_s", "`tunelab train` (qa-assistant example) from process start to the first step's metrics line"),
        ("generate_one_token_s", "`tunelab generate ... --max-new-tokens 1` (whole command)"),
        ("load_model_default_s", "`load_model(\"default\")` from the cache (call only)"),
        ("import_tunelab_models_s", "`import tunelab.models`"),
    ]
    rows = [[label, result[key]["best"]] for key, label in labels if key in result]
    if result.get("first_training_step_s") is not None:
        rows.append(["command to end of first training step (sft, 1 example)", result["first_training_step_s"]])
    return "### Start-up (seconds, best of repeats, model cached)\n\n" + machine_markdown(result["machine"]) + "\n\n" + markdown_table(["what", "seconds"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: check that everything runs")
    parser.add_argument("--only", nargs="+", choices=["peak", "startup", "sft", "classify", "eval"], default=None)
    args = parser.parse_args()
    # Every benchmark process imports this checkout's tunelab, not whatever copy is installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tunelab_source()), os.environ.get("PYTHONPATH")]))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    selected = set(args.only or ["peak", "startup", "sft", "classify", "eval"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    sections: list[str] = []
    skipped: list[str] = []
    have_trl = importlib.util.find_spec("trl") is not None
    have_tasks = (tunelab_source() / "tunelab" / "tasks" / "__init__.py").is_file()

    def stamp(what: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", flush=True)

    if "peak" in selected:
        stamp("matmul peak")
        peak = run_child("matmul_peak.py", ["--seconds", "0.5" if args.quick else "2"])
        if "error" in peak:
            skipped.append(f"matmul peak: {peak['error']}")
        else:
            sections.append(peak_markdown(peak))
            write_results("matmul_peak", peak, sections[-1])

    if "startup" in selected:
        stamp("start-up")
        startup = run_child("startup.py", ["--repeats", "1" if args.quick else "3"] + ([] if have_tasks else ["--skip-train"]))
        if "error" in startup:
            skipped.append(f"start-up: {startup['error']}")
        else:
            sections.append(startup_markdown(startup))
            write_results("startup", startup, sections[-1])

    for task, data_folder, full, quick in (
        ("sft", "gsm8k", SFT_ARGS, QUICK_SFT_ARGS),
        ("classify", "banking77", CLASSIFY_ARGS, QUICK_CLASSIFY_ARGS),
    ):
        if task not in selected:
            continue
        if not have_trl:
            skipped.append(f"{task} training: TRL is not installed (pip install -e '.[bench]')")
            continue
        if not have_tasks:
            skipped.append(f"{task} training: this checkout has no tunelab.tasks (the training loop) yet")
            continue
        if task == "classify" and not (SHARED_DATA / data_folder).is_dir():
            skipped.append(f"classify training: {SHARED_DATA / data_folder} is absent")
            continue
        stamp(f"{task} training comparison")
        command = [sys.executable, str(BENCH_DIR / "compare.py"), "--task", task, *(quick if args.quick else full)]
        subprocess.run(command, check=False)
        markdown = RESULTS_DIR / f"{task}_train.md"
        if markdown.is_file():
            sections.append(markdown.read_text())
        else:
            skipped.append(f"{task} training: the comparison wrote no results")

    if "eval" in selected:
        eval_script = BENCH_DIR / "eval_speed.py"
        if eval_script.is_file():
            stamp("evaluation speed")
            subprocess.run([sys.executable, str(eval_script), *(["--quick"] if args.quick else [])], check=False)
            for markdown in sorted(RESULTS_DIR.glob("eval_speed*.md")):
                sections.append(markdown.read_text())
        else:
            skipped.append("evaluation speed: bench/eval_speed.py is not in this checkout yet")

    # Benchmarks not selected this time keep their latest tables in the summary (--only reruns one piece).
    for name, key in (("matmul_peak", "peak"), ("startup", "startup"), ("sft_train", "sft"), ("classify_train", "classify")):
        markdown = RESULTS_DIR / f"{name}.md"
        if key not in selected and markdown.is_file():
            sections.append("_(from an earlier run)_\n\n" + markdown.read_text())
    summary = "# tunelab benchmarks\n\n" + machine_markdown(machine) + "\n\n"
    summary += "Command: `python bench/run_all.py" + (" --quick" if args.quick else "") + "`\n\n"
    summary += "\n\n".join(sections)
    if skipped:
        summary += "\n\n### Skipped\n\n" + "\n".join(f"- {reason}" for reason in skipped)
    write_results("summary", {"machine": machine, "skipped": skipped, "quick": args.quick}, summary)
    print(summary)
    print(json.dumps({"results": str(RESULTS_DIR)}))


if __name__ == "__main__":
    main()
