"""How often ``tunelab monitor`` cries wolf on healthy traffic, and how often it sees real drift.

Usage: ``python bench/monitor_quality.py [--run RUN_DIR] [--seeds 50] [--sizes 50 200 1000] [--name monitor-quality]
[--answers FILE]`` (through ``cpujob`` on a shared machine: the model answers on one thread).

1. A reference run: ``--run`` (a finished classify run folder of the quickstart), else the quickstart
   (``examples/support-routing/config.yaml``, ``train.threads=1``) is trained once into a temporary folder.
2. The run's own model (``inference.Classifier``) answers every text the traffic can hold, once: the
   quickstart's test requests (held out: never trained on), the same with light noise (case and
   punctuation), the run's validation rows (never trained on, and not the test rows the monitor's label
   and confidence references come from), the quickstart's out-of-scope requests (never trained on, none
   of the 8 queues) and a seeded sample of BANKING77 ``train.csv`` texts (another domain; no test split
   is read).
3. For each traffic kind and window size, ``--seeds`` windows of requests are drawn (seeded, with
   replacement) and written with the request log's own writer (``RequestLog``), as ``tunelab serve``
   logs a classify answer; a fifth of them get their true label as feedback (``add_feedback``; the
   out-of-domain ones: ``out_of_scope``, a queue the run does not have), a random sample of answers right
   or wrong. One healthy kind instead gets a label for every wrong answer and none for a right one, as a
   client told to send corrections does. Latency (20 ms) and server errors (none) are healthy on purpose:
   they are not what is measured.
4. ``run_monitor`` judges every window with the default ``MonitorConfig`` against the run folder. The
   share of windows per status is the false-alarm rate (healthy kinds) or the detection rate (shifted).

Results: ``bench/results/<name>.json`` + ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
sys.path.insert(0, str(REPO_DIR / "src"))
sys.path.insert(0, str(BENCH_DIR))

from common import SHARED_DATA, machine_info, machine_markdown, markdown_table, write_results  # noqa: E402

EXAMPLE = REPO_DIR / "examples" / "support-routing"
SIGNALS = ("length_ks", "centroid_distance", "oov_share", "label_psi", "confidence_drop", "oos_share", "live_accuracy",
           "latency_p95_ms", "error_rate")
FEEDBACK_SHARE = 0.2  # requests whose true label comes back as feedback (live_accuracy is judged on them)
CORRECTIONS_ONLY = "in-distribution, corrections only"  # feedback on every wrong answer and on no right one
OOD_LABEL = "out_of_scope"  # what a support desk corrects an out-of-domain request to: none of the run's queues
BANKING_TEXTS = 300
SHARES = (0.1, 0.25, 0.5)
MIX_FACTOR = 5  # the label-mix shift: one category this many times as common as in the test set


# --------------------------------------------------------------------------------------------- texts


def _lower(text: str) -> str:
    return text.lower()


def _no_end_punctuation(text: str) -> str:
    return text.rstrip(" .?!")


def _no_punctuation_lower(text: str) -> str:
    return re.sub(r"[^\w\s']", "", text).lower()


def _shouted_end(text: str) -> str:
    return text.rstrip(" .?!") + ("??" if text.rstrip().endswith("?") else "!!")


# Light noise a real user adds, none of which changes what is asked: case and punctuation.
NOISE = (_lower, _no_end_punctuation, _no_punctuation_lower, _shouted_end)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def banking_texts(n: int, seed: int = 0) -> list[str]:
    """A seeded sample of BANKING77 ``train.csv`` texts (its test split is never read)."""
    import csv

    with (SHARED_DATA / "banking77" / "train.csv").open(encoding="utf-8", newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return random.Random(seed).sample(texts, min(n, len(texts)))


def validation_rows(run_dir: Path) -> list[tuple[str, str]]:
    """The run's validation rows: never trained on (they chose the checkpoint), and not the test rows the monitor's
    label and confidence references were computed on, so drawing from them carries that reference's own noise."""
    from tunelab.data.split import load_split
    from tunelab.runs import Run

    run = Run.open(run_dir)
    return [(r.text, str(r.label)) for r in load_split(run.folder.split, run.config).validation]


def pools(run_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """(text, true label) pools the traffic is drawn from."""
    test = [(row["text"], str(row["label"])) for row in read_jsonl(EXAMPLE / "test.jsonl")]
    oos_path = EXAMPLE / "out_of_scope.jsonl"
    result = {
        "test": test,
        "validation": validation_rows(run_dir),
        "noisy": [(noise(text), label) for text, label in test for noise in NOISE],
        "out_of_scope": [(row["text"], OOD_LABEL) for row in read_jsonl(oos_path)] if oos_path.is_file() else [],
    }
    if (SHARED_DATA / "banking77" / "train.csv").is_file():
        result["banking77"] = [(text, OOD_LABEL) for text in banking_texts(BANKING_TEXTS)]
    return result


# --------------------------------------------------------------------------------------------- the model


def train_reference(folder: Path) -> Path:
    """Train the quickstart once (one thread) into ``folder``; its run folder."""
    env = dict(os.environ, PYTHONPATH=str(REPO_DIR / "src"), HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "tunelab.cli.main", "run", "config.yaml", "train.threads=1", f"train.output_dir={folder}",
               "name=monitor-quality-reference"]
    subprocess.run(command, env=env, cwd=EXAMPLE, check=True)
    return folder / "monitor-quality-reference"


def answers_for(run_dir: Path, texts: list[str]) -> dict[str, dict[str, Any]]:
    """The run's own answer (label, probabilities) to each text, as ``/v1/classify`` computes it."""
    from tunelab.inference import Classifier
    from tunelab.runs import Run

    loaded = Run.open(run_dir).load()
    classifier = Classifier.for_model(loaded)
    answers = classifier.classify(loaded.model, texts, batch_size=16)
    return {text: {"label": a.label, "probabilities": a.probabilities} for text, a in zip(texts, answers, strict=True)}


# --------------------------------------------------------------------------------------------- traffic


def kinds(available: dict[str, list]) -> list[tuple[str, bool]]:
    """(traffic kind, healthy?) in table order."""
    result = [("in-distribution", True), ("in-distribution + case/punctuation noise", True), ("validation rows", True), (CORRECTIONS_ONLY, True),
              (f"label mix: one category {MIX_FACTOR}x", False)]
    for source in ("out_of_scope", "banking77"):
        if available.get(source):
            result += [(f"{source} {share:.0%}", False) for share in SHARES]
    return result


def draw(kind: str, size: int, rng: random.Random, available: dict[str, list]) -> list[tuple[str, str]]:
    """``size`` requests (text, true label) of one traffic kind."""
    test = available["test"]
    if kind.startswith("in-distribution +"):
        return rng.choices(available["noisy"], k=size)
    if kind in ("in-distribution", CORRECTIONS_ONLY):
        return rng.choices(test, k=size)
    if kind == "validation rows":
        return rng.choices(available["validation"], k=size)
    if kind.startswith("label mix"):
        favoured = rng.choice(sorted({label for _, label in test}))
        weights = [MIX_FACTOR if label == favoured else 1 for _, label in test]
        return rng.choices(test, weights=weights, k=size)
    source, share = kind.rsplit(" ", 1)
    outside = round(size * float(share.rstrip("%")) / 100)
    requests = rng.choices(available[source], k=outside) + rng.choices(test, k=size - outside)
    rng.shuffle(requests)
    return requests


def write_log(path: Path, windows: list[list[tuple[str, str]]], answers: dict[str, dict], run_id: str, seed: int,
              corrections_only: bool = False) -> None:
    """One served name per window (``w00``, ``w01``, ...), logged as the server logs ``/v1/classify``, plus feedback:
    on a random ``FEEDBACK_SHARE`` of the answers, or (``corrections_only``) on every wrong answer and no right one."""
    from datetime import UTC, datetime

    from tunelab.serve.request_log import CLASSIFY, Feedback, RequestLog, add_feedback

    log = RequestLog(path)
    rng = random.Random(seed)
    feedback = []
    moment = datetime.now(UTC).isoformat(timespec="milliseconds")
    for index, requests in enumerate(windows):
        for number, (text, truth) in enumerate(requests):
            answer = answers[text]
            response_id = f"clf-{index:02d}-{number:05d}"
            log.record({
                "time": moment, "endpoint": CLASSIFY, "model": f"w{index:02d}", "prompt": json.dumps(text, ensure_ascii=False),
                "output": answer["label"], "prompt_tokens": len(text.split()), "completion_tokens": 1, "latency_ms": 20.0,
                "status": 200, "error": None, "stream": 0, "response_id": response_id, "run_id": run_id,
                "predicted_label": answer["label"], "top_probability": max(answer["probabilities"].values()),
                "probabilities": json.dumps([answer["probabilities"]]),
            })
            if (answer["label"] != truth) if corrections_only else (rng.random() < FEEDBACK_SHARE):
                feedback.append(Feedback(response_id, label=truth))
    log.close()
    if log.dropped:
        raise SystemExit(f"the request log dropped {log.dropped} rows")
    add_feedback(path, feedback, source="bench")


# --------------------------------------------------------------------------------------------- measure


def measure(run_dir: Path, answers: dict[str, dict], available: dict[str, list], sizes: list[int], seeds: int, work: Path) -> list[dict]:
    from tunelab.config import MonitorConfig
    from tunelab.monitor import DRIFTED, OK, WATCH, run_monitor

    rows = []
    for kind, healthy in kinds(available):
        for size in sizes:
            started = time.perf_counter()
            windows = [draw(kind, size, random.Random(f"{kind}|{size}|{seed}"), available) for seed in range(seeds)]
            log = work / f"log-{len(rows):03d}.db"
            write_log(log, windows, answers, run_dir.name, seed=len(rows), corrections_only=kind == CORRECTIONS_ONLY)
            report = run_monitor(log, MonitorConfig(), run_dir=run_dir)
            assert len(report.models) == seeds, (len(report.models), seeds)
            counts: dict[str, Counter] = {name: Counter() for name in (*SIGNALS, "overall")}
            judged: dict[str, list[float]] = {name: [] for name in SIGNALS}
            skipped: dict[str, str] = {}
            for model in report.models:
                counts["overall"][model.status] += 1
                for signal in model.signals:
                    counts[signal.name][signal.status] += 1
                    if signal.detail.startswith("skipped"):
                        skipped[signal.name] = signal.detail
                    elif signal.value is not None:
                        # The raw excess over the reference where there is one (what fixed thresholds judged before the
                        # noise gate), else the judged number itself.
                        raw = signal.value - signal.reference if signal.name in ("centroid_distance", "oov_share") else signal.judged
                        judged[signal.name].append(float(raw if raw is not None else signal.value))
            row = {
                "kind": kind, "healthy": healthy, "size": size, "seeds": seeds, "seconds": round(time.perf_counter() - started, 1),
                "watch_or_worse": {name: (c[WATCH] + c[DRIFTED]) / seeds for name, c in counts.items()},
                "drifted": {name: c[DRIFTED] / seeds for name, c in counts.items()},
                "ok": {name: c[OK] / seeds for name, c in counts.items()},
                "judged_mean": {name: round(sum(v) / len(v), 5) for name, v in judged.items() if v},
                "judged_p95": {name: round(sorted(v)[int(0.95 * (len(v) - 1))], 5) for name, v in judged.items() if v},
                "skipped": skipped,
            }
            rows.append(row)
            log.unlink()
            print(f"{kind:45s} n={size:5d}  overall watch+ {row['watch_or_worse']['overall']:.0%} drifted {row['drifted']['overall']:.0%}"
                  f"  ({row['seconds']} s)", flush=True)
    return rows


def markdown(result: dict[str, Any]) -> str:
    rows = result["rows"]
    shown = [s for s in SIGNALS if not all(s in row["skipped"] for row in rows)]
    headers = ["traffic", "requests", *shown, "overall"]
    table = []
    for row in rows:
        cells = [f"{row['watch_or_worse'][s]:.0%} / {row['drifted'][s]:.0%}" for s in (*shown, "overall")]
        table.append([row["kind"] + ("" if row["healthy"] else " (shift)"), row["size"], *cells])
    skipped = sorted({f"`{name}` ({detail})" for row in rows for name, detail in row["skipped"].items()})
    return (
        f"# tunelab monitor: false alarms and detection\n\n"
        f"Reference run: `{result['run']}` (test accuracy {result['test_accuracy']}). {result['seeds']} seeded windows per row, "
        f"judged by `run_monitor` with the default thresholds; a cell is the share of windows at **watch or worse / drifted**. "
        f"Healthy rows (in-distribution) measure false alarms; shifted rows detection. {result['feedback_share']:.0%} of requests "
        f"get their true label as feedback; latency and errors are healthy on purpose.\n\n"
        + markdown_table(headers, table)
        + "\n\n"
        + (f"Skipped in every window: {'; '.join(skipped)}.\n\n" if skipped else "")
        + "Traffic: *in-distribution*: the quickstart's 80 test requests (never trained on), drawn with replacement; "
        "*+ case/punctuation noise*: the same, each request lower-cased, without its end or any punctuation, or "
        "ending in ?? / !!; *validation rows*: the run's 32 validation rows (never trained on; not the test rows the "
        "label and confidence references come from, so they carry that reference's noise, and only 32 texts); "
        "*corrections only*: in-distribution requests whose every wrong answer, and no right one, gets its label; "
        f"*label mix*: test requests, one category (seeded) {MIX_FACTOR}x as likely; *out_of_scope s* / *banking77 s*: a "
        "share s of the requests from the quickstart's out-of-scope file / BANKING77 train.csv (labelled feedback: "
        f"`{OOD_LABEL}`), the rest in-distribution.\n\n"
        + f"Wall time {result['seconds']} s (answers {result['answers_seconds']} s for {result['texts']} texts).  \n"
        + machine_markdown(result["machine"])
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="A finished quickstart classify run folder (default: train one).")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    parser.add_argument("--name", default="monitor-quality")
    parser.add_argument("--answers", type=Path, default=None, help="Reuse (or write) the model's answers here (JSON).")
    args = parser.parse_args()
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="tunelab-monitor-quality-"))
    run_dir = args.run or train_reference(work / "runs")
    available = pools(run_dir)
    texts = sorted({text for pool in available.values() for text, _ in pool})
    answered = time.perf_counter()
    if args.answers is not None and args.answers.is_file():
        answers = json.loads(args.answers.read_text(encoding="utf-8"))
    else:
        answers = answers_for(run_dir, texts)
        if args.answers is not None:
            args.answers.write_text(json.dumps(answers), encoding="utf-8")
    answers_seconds = round(time.perf_counter() - answered, 1)
    info = machine_info()
    rows = measure(run_dir, answers, available, args.sizes, args.seeds, work)
    tuned = json.loads((run_dir / "eval" / "tuned.json").read_text(encoding="utf-8"))
    result = {
        "run": str(run_dir), "test_accuracy": tuned.get("metrics", {}).get("accuracy"), "seeds": args.seeds, "sizes": args.sizes,
        "feedback_share": FEEDBACK_SHARE, "texts": len(texts), "answers_seconds": answers_seconds,
        "answered_labels": {pool: dict(Counter(answers[text]["label"] for text, _ in items)) for pool, items in available.items()},
        "rows": rows, "machine": info, "seconds": round(time.perf_counter() - started, 1),
    }
    json_path, md_path = write_results(args.name, result, markdown(result))
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
