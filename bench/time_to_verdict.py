"""Time to verdict: `tunelab run` on BANKING77 at 10 examples per intent, launch to exit.

The job of issue 29: 770 training rows (10 per intent, 77 intents) drawn with a fixed seed from
``../shared/data/banking77/train.csv``, and 3,080 test requests (40 per intent) drawn from the *rest*
of the same file (the dataset's test split is never read). Each variant is one ``python -m
tunelab.cli.main run CONFIG`` process with the project defaults (nothing here sets a hyperparameter),
its own fresh registry (so no baseline comes from a cache) and run folder; the wall clock from launch to
exit is the figure, and the pipeline's own step timings (``pipeline.json``) say where it went.

    PYTHONPATH=src python bench/time_to_verdict.py                                   # this checkout
    PYTHONPATH=src python bench/time_to_verdict.py --before-src /tmp/before/src      # and an older one, same run
    PYTHONPATH=src python bench/time_to_verdict.py --hog                             # a CPU hog on one core throughout
    PYTHONPATH=src python bench/time_to_verdict.py --job quickstart --idle-and-hog   # `make demo`'s job, idle then beside a hog

``--job quickstart`` times `make demo`'s command instead (``tunelab run examples/support-routing/config.yaml``,
its own registry and run folder); ``--idle-and-hog`` runs each variant twice in the same invocation, on
the idle machine and then with one core kept busy, and reports the busy/idle ratio.

Children inherit the environment minus ``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` unless ``--keep-omp``:
what a user who sets nothing gets. Results: ``bench/results/<--name>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    SHARED_DATA,
    busy_cores_sampler,
    cpu_hog,
    machine_info,
    machine_markdown,
    markdown_table,
    write_results,
)
from quality import _classify_rows, _subsample, _write_jsonl

WORK_DIR = RESULTS_DIR / "tmp" / "time_to_verdict"
STEPS = ("check", "split", "estimate", "baseline", "train", "evaluate", "report", "register")


def _data(per_label: int, test_rows: int, seed: int) -> tuple[str, str, int, int]:
    """``per_label`` training rows of each intent, then ``test_rows`` drawn with the same seed from the rest."""
    by_label = _classify_rows("banking77")  # duplicates of a text dropped, so none lands on both sides
    rows, _, _ = _subsample(by_label, per_label, 0, seed)
    trained = {json.dumps(row, sort_keys=True) for row in rows}
    rest = [row for label in sorted(by_label) for row in by_label[label] if json.dumps(row, sort_keys=True) not in trained]
    test = random.Random(f"time-to-verdict-{seed}").sample(rest, min(test_rows, len(rest)))
    train_path = _write_jsonl(WORK_DIR / "data" / "train.jsonl", rows)
    test_path = _write_jsonl(WORK_DIR / "data" / "test.jsonl", test)
    return train_path, test_path, len(rows), len(test)


QUICKSTART = Path(__file__).resolve().parents[1] / "examples" / "support-routing" / "config.yaml"


def run_variant(label: str, src: Path, train: str | None, test: str | None, *, keep_omp: bool, hog: bool, timeout: float) -> dict[str, Any]:
    """One ``tunelab run`` process, launch to exit; ``train`` None: the quickstart's own config (``make demo``)."""
    name = "banking77-10" if train is not None else "quickstart"
    folder = WORK_DIR / name / label.replace(", ", "-")  # each job its own folders: one job's run never overwrites another's
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    if train is not None:
        config = {
            "task": "classify", "model": "default", "name": name,
            "data": {"train": train, "test": test},
            "train": {"output_dir": str(folder / "runs")},
            "registry": str(folder / "registry.db"),
        }
        config_path = folder / "config.json"
        config_path.write_text(json.dumps(config, indent=1))
        arguments = [str(config_path)]
    else:
        arguments = [str(QUICKSTART), f"name={name}", f"train.output_dir={folder / 'runs'}", f"registry={folder / 'registry.db'}"]
    env = dict(os.environ, PYTHONPATH=str(src), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not keep_omp:
        env.pop("OMP_NUM_THREADS", None)
        env.pop("MKL_NUM_THREADS", None)
    command = [sys.executable, "-m", "tunelab.cli.main", "run", *arguments]
    log_path = folder / "stdout.log"
    load_before = os.getloadavg()
    with busy_cores_sampler() as busy, cpu_hog(timeout if hog else 0) as hog_process, log_path.open("w") as log:
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            completed = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True, timeout=timeout)
            code = completed.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the run alone: the hog is reaped later
        busy.child_cores = round((after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall, 2)
    state_path = folder / "runs" / name / "pipeline.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    steps = state.get("steps", {})
    tail = log_path.read_text(errors="replace").splitlines()[-25:]
    return {
        "label": label, "src": str(src), "exit_code": code, "wall_s": round(wall, 1),
        "timings": state.get("timings", {}), "load_before": load_before, "load_after": os.getloadavg(),
        "others_busy_cores": busy.mean_others, "run_cores": busy.child_cores, "machine_busy_cores": busy.mean, "hog": hog_process is not None,
        "estimate_total_s": (steps.get("estimate") or {}).get("total_seconds") if isinstance(steps.get("estimate"), dict) else None,
        "train": steps.get("train"), "stdout_tail": tail,
    }


def render(data: dict[str, Any]) -> str:
    job = "BANKING77" if data.get("job", "banking77") == "banking77" else "the quickstart (make demo)"
    lines = [f"# Time to verdict: {job}, {data['train_rows']} training rows, {data['test_rows']} test requests", "",
             f"`{data['command']}`", "", machine_markdown(data["machine"]), ""]
    headers = ["variant", "wall s", "wall min", *[f"{step} s" for step in STEPS], "others' busy cores", "exit"]
    rows = []
    for result in data["results"]:
        timings = result.get("timings", {})
        rows.append([result["label"], result["wall_s"], round(result["wall_s"] / 60, 1),
                     *[timings.get(step) for step in STEPS], result.get("others_busy_cores"), result["exit_code"]])
    lines.append(markdown_table(headers, rows))
    walls = {result["label"]: result["wall_s"] for result in data["results"]}
    for label, wall in walls.items():
        if label.endswith(", hog") and walls.get(label.removesuffix(", hog")):
            idle = walls[label.removesuffix(", hog")]
            lines += ["", f"{label.removesuffix(', hog')}: beside a busy core {wall / idle:.2f}x its idle wall time ({wall:.0f} s / {idle:.0f} s)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before-src", type=Path, default=None, help="another checkout's src, run first in the same invocation")
    parser.add_argument("--per-label", type=int, default=10)
    parser.add_argument("--test-rows", type=int, default=3080)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hog", action="store_true", help="a CPU hog on one core during each variant")
    parser.add_argument("--keep-omp", action="store_true", help="pass OMP_NUM_THREADS through to the runs")
    parser.add_argument("--no-now", action="store_true", help="run only --before-src")
    parser.add_argument("--timeout", type=float, default=7200)
    parser.add_argument("--name", default="time_to_verdict")
    parser.add_argument("--job", choices=["banking77", "quickstart"], default="banking77")
    parser.add_argument("--idle-and-hog", action="store_true", help="each variant on the idle machine, then beside a one-core hog")
    args = parser.parse_args()
    if args.job == "quickstart":
        train = test = None
        folder = QUICKSTART.parent
        n_train = sum(1 for _ in (folder / "train.jsonl").open())
        n_test = sum(1 for _ in (folder / "test.jsonl").open())
    elif not (SHARED_DATA / "banking77").is_dir():
        print(f"skipped: {SHARED_DATA / 'banking77'} is absent", file=sys.stderr)
        return
    else:
        train, test, n_train, n_test = _data(args.per_label, args.test_rows, args.seed)
    variants = []
    if args.before_src:
        variants.append(("before", args.before_src.resolve()))
    if not args.no_now:
        variants.append(("now", (Path(__file__).resolve().parents[1] / "src")))
    data: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv), "job": args.job, "train_rows": n_train,
                            "test_rows": n_test, "results": []}
    runs = [(label, src, args.hog) for label, src in variants]
    if args.idle_and_hog:
        runs = [(name, src, hog) for label, src in variants for name, hog in ((label, False), (f"{label}, hog", True))]
    for label, src, hog in runs:
        result = run_variant(label, src, train, test, keep_omp=args.keep_omp, hog=hog, timeout=args.timeout)
        print(json.dumps({k: result[k] for k in ("label", "wall_s", "timings", "others_busy_cores", "exit_code")}), flush=True)
        data["results"].append(result)
        write_results(args.name, data, render(data))


if __name__ == "__main__":
    main()
