"""Quality benchmark: does fine-tuning the default model pay off against what a user would do instead?

For each shared classify dataset (BANKING77, HWU64, SNIPS) and each size (examples per label), and for
each of ``--seeds`` seeded subsamples: the training rows are drawn per label from the dataset's file,
the test rows are other labelled rows of the same file (never trained on), capped per label so a run
fits this machine. The quickstart (examples/support-routing, its own train/test files) and a SciTLDR
sft subset join them. Each case is one real ``tunelab run`` (tasks.pipeline.run_pipeline) with the
project defaults: nothing here sets a hyperparameter. The run evaluates the base model and every
baseline of ``eval.baselines`` on the same test rows, and its verdict compares the tuned model with
each one by paired bootstrap.

Results: ``bench/results/quality.json`` (every case, every seed) and ``quality.md`` (mean and spread
over seeds per dataset and size, plus each seed's interval against the strongest baseline).

    PYTHONPATH=src python bench/quality.py --quick                    # a few minutes: the quickstart, 1 seed
    PYTHONPATH=src python bench/quality.py --datasets quickstart --seeds 3  # the quickstart, 3 validation draws / training seeds
    PYTHONPATH=src python bench/quality.py                            # all datasets, sizes 10,40, 3 seeds
    PYTHONPATH=src python bench/quality.py --datasets banking77 --sizes 10 --seeds 3 --test-per-label 10

Requests that fit no category: ``--out-of-scope 0.25`` holds out a seeded 25% of each dataset's
intents as out of scope (label ``out_of_scope``): the model trains on the other intents only; the
held-out intents' rows go to validation (where each opponent's confidence threshold is chosen) and
to test, through ``data.out_of_scope`` as a user would. Per held-out intent: ``--test-per-label`` test
rows and as many validation rows as an in-scope intent has (``data.validation_size`` of its training
rows, at least 1); the split shares them as it shares the in-scope rows. The quickstart then adds
examples/support-routing/out_of_scope.jsonl. Reported besides: accuracy over all test
queries (the primary metric), in-scope accuracy and out-of-scope F1 of the tuned model and of each baseline.

    PYTHONPATH=src python bench/quality.py --datasets banking77,hwu64 --sizes 10 --out-of-scope 0.25

The defaults were chosen on other rows (bench/classify_levers.py: different seeds, a subset of the
labels, the validation rows), never on the rows reported here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from common import REPO_DIR, RESULTS_DIR, SHARED_DATA, machine_info, write_results

CLASSIFY = {"banking77": "banking77", "hwu64": "hwu64/trainset", "snips": "snips"}
OUT_OF_SCOPE = "out_of_scope"
OUT_OF_SCOPE_METRICS = ("accuracy", "in_scope_accuracy", "out_of_scope_precision", "out_of_scope_recall", "out_of_scope_f1")
VALIDATION_SIZE = 0.1  # the project default of data.validation_size (the bench never sets it)
WORK_DIR = RESULTS_DIR / "tmp" / "quality"  # one folder per --name (main sets it), so runs side by side never share a registry


def _classify_rows(dataset: str) -> dict[str, list[dict]]:
    from tunelab.config import DataConfig
    from tunelab.data.read import load_records

    records = load_records(str(SHARED_DATA / CLASSIFY[dataset]), "classify", DataConfig(preset=dataset))
    by_label: dict[str, list[dict]] = defaultdict(list)
    seen: set[str] = set()
    for record in records:
        key = " ".join(record.text.lower().split())
        if key in seen:  # a duplicate text could land on both sides
            continue
        seen.add(key)
        by_label[record.label].append({"text": record.text, "label": record.label})
    return by_label


def out_of_scope_intents(labels: list[str], share: float, seed: int) -> set[str]:
    """A seeded ``share`` of the intents (at least one when share > 0), held out as out of scope."""
    if share <= 0:
        return set()
    count = max(1, round(len(labels) * share))
    return set(random.Random(f"quality-out-of-scope-{seed}").sample(sorted(labels), count))


def _subsample(
    by_label: dict[str, list[dict]], per_label: int, test_per_label: int, seed: int, out_of_scope_share: float = 0.0
) -> tuple[list, list, list]:
    rng = random.Random(f"quality-{seed}")
    outside = out_of_scope_intents(list(by_label), out_of_scope_share, seed)
    validation_per_label = max(1, round(per_label * VALIDATION_SIZE))
    train, test, held_out = [], [], []
    for label in sorted(by_label):
        rows = list(by_label[label])
        rng.shuffle(rows)
        if label in outside:
            held_out += [{"text": row["text"], "label": OUT_OF_SCOPE} for row in rows[: test_per_label + validation_per_label]]
            continue
        if len(rows) <= per_label:
            continue  # a label without held-out rows would only add noise
        train += rows[:per_label]
        test += rows[per_label : per_label + test_per_label]
    return train, test, held_out


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _case_config(case: str, task: str, train: str, test: str, extra: dict[str, Any]) -> dict[str, Any]:
    folder = WORK_DIR / case
    return {
        "task": task,
        "model": "default",
        "name": case,
        "data": {"train": train, "test": test, **extra},
        "train": {"output_dir": str(folder / "runs")},
        "registry": str(WORK_DIR / "registry.db"),
    }


def _run(raw: dict[str, Any]) -> dict[str, Any]:
    import shutil

    from tunelab.config import parse_config
    from tunelab.tasks.pipeline import run_pipeline

    shutil.rmtree(Path(raw["train"]["output_dir"]) / raw["name"], ignore_errors=True)
    started = time.perf_counter()
    outcome = run_pipeline(parse_config(raw, source=raw["name"]), calibrate=False)
    verdict = outcome.comparison
    primary = verdict.primary
    against = {}
    for name in verdict.comparisons:
        metric = verdict.against(name)
        against[name] = {"baseline": metric.before, "tuned": metric.after, "difference": metric.difference,
                         "low": metric.low, "high": metric.high, "outcome": metric.outcome}
    out_of_scope = {}
    if "out_of_scope_f1" in outcome.tuned_metrics:
        opponents = {"tuned": outcome.tuned_metrics, **outcome.baseline_metrics}
        out_of_scope = {name: {key: metrics.get(key) for key in (*OUT_OF_SCOPE_METRICS, "out_of_scope_threshold")}
                        for name, metrics in opponents.items()}
    calibration_file = Path(outcome.run_dir) / "calibration.json"
    calibration = json.loads(calibration_file.read_text()) if calibration_file.is_file() else None
    return {
        "primary": primary,
        "out_of_scope": out_of_scope,
        "ece": {name: metrics.get("ece") for name, metrics in {"tuned": outcome.tuned_metrics, **outcome.baseline_metrics}.items()},
        "calibration": calibration,
        "skipped": outcome.baseline_skipped,
        "tuned": outcome.tuned_metrics.get(primary),
        "baselines": {name: metrics.get(primary) for name, metrics in outcome.baseline_metrics.items()},
        "against": against,
        "strongest": verdict.strongest,
        "verdict": verdict.verdict,
        "summary": verdict.summary,
        "train_seconds": (outcome.train or {}).get("seconds"),
        "steps": (outcome.train or {}).get("steps"),
        "timings": outcome.timings,
        "split": outcome.split_sizes,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "load_after": round(os.getloadavg()[0], 2),
    }


def classify_case(dataset: str, per_label: int, seed: int, test_per_label: int, out_of_scope: float = 0.0) -> dict[str, Any]:
    case = f"{dataset}-{per_label}-seed{seed}" + (f"-oos{out_of_scope:g}" if out_of_scope > 0 else "")
    if dataset == "quickstart":
        folder = REPO_DIR / "examples" / "support-routing"
        train, test = str(folder / "train.jsonl"), str(folder / "test.jsonl")
        extra = {}
        if out_of_scope > 0:  # the project's own out-of-scope requests, split as the example config does
            extra = {"out_of_scope": str(folder / "out_of_scope.jsonl"), "out_of_scope_label": OUT_OF_SCOPE}
        raw = _case_config(case, "classify", train, test, extra)
        # The files are fixed, so a quickstart seed varies what the pipeline draws: which 32 rows go to
        # validation (data.seed) and the initialisation and data order (train.seed). Seed 1 is make demo's run (0, 0).
        raw["data"]["seed"] = raw["train"]["seed"] = seed - 1
    else:
        rows, held, outside = _subsample(_classify_rows(dataset), per_label, test_per_label, seed, out_of_scope)
        train = _write_jsonl(WORK_DIR / case / "train.jsonl", rows)
        test = _write_jsonl(WORK_DIR / case / "test.jsonl", held)
        extra = {}
        if outside:
            extra = {"out_of_scope": _write_jsonl(WORK_DIR / case / "out_of_scope.jsonl", outside), "out_of_scope_label": OUT_OF_SCOPE}
        raw = _case_config(case, "classify", train, test, extra)
    return {"dataset": dataset, "per_label": per_label, "seed": seed, "out_of_scope_share": out_of_scope, **_run(raw)}


def scitldr_case(size: int, seed: int, test_size: int) -> dict[str, Any]:
    from tunelab.config import DataConfig
    from tunelab.data.read import load_records

    records = load_records(str(SHARED_DATA / "scitldr"), "sft", DataConfig(preset="scitldr"))
    rng = random.Random(f"quality-scitldr-{seed}")
    order = list(range(len(records)))
    rng.shuffle(order)
    rows = [{"messages": list(records[i].messages), "references": list(records[i].references)} for i in order]
    case = f"scitldr-{size}-seed{seed}"
    train = _write_jsonl(WORK_DIR / case / "train.jsonl", rows[:size])
    test = _write_jsonl(WORK_DIR / case / "test.jsonl", rows[size : size + test_size])
    raw = _case_config(case, "sft", train, test, {"max_length": 512})
    raw["eval"] = {"max_new_tokens": 64}
    return {"dataset": "scitldr", "per_label": size, "seed": seed, **_run(raw)}


def _spread(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def render(results: list[dict[str, Any]]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for result in results:
        groups[(result["dataset"], result["per_label"])].append(result)
    names = sorted({name for r in results for name in r["baselines"]})
    header = ["dataset", "per label", "seeds", "metric", "tuned", *names, "strongest", "tuned − strongest (95% CI per seed)",
              "paid off", "train min"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, size), runs in groups.items():
        intervals = "; ".join(
            f"{r['against'][r['strongest']]['difference']:+.3f} [{r['against'][r['strongest']]['low']:+.3f}, "
            f"{r['against'][r['strongest']]['high']:+.3f}]" for r in runs
        )
        strongest = ", ".join(sorted({r["strongest"] for r in runs}))
        paid = sum(r["verdict"] == "fine-tuning paid off" or r["verdict"].startswith("paid") for r in runs)
        minutes = _spread([(r["train_seconds"] or 0) / 60 for r in runs])
        cells = [dataset, str(size), str(len(runs)), runs[0]["primary"], _spread([r["tuned"] for r in runs]),
                 *[_spread([r["baselines"].get(n) for r in runs]) for n in names], strongest, intervals,
                 f"{paid}/{len(runs)}", minutes]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _render_calibration(groups)
    lines += _render_skipped(results)
    lines += _render_out_of_scope(groups)
    return "\n".join(lines)


def _render_calibration(groups: dict[tuple, list[dict]]) -> list[str]:
    """Expected calibration error (15 bins) on the test rows: the tuned model (temperature fitted on validation) and each baseline."""
    shown = {key: runs for key, runs in groups.items() if runs[0].get("ece") and runs[0]["ece"].get("tuned") is not None}
    if not shown:
        return []
    names = sorted({name for runs in shown.values() for r in runs for name in r["ece"]} - {"tuned"})
    header = ["dataset", "per label", "seeds", "tuned ECE", *[f"{n} ECE" for n in names], "temperature", "validation ECE before → after"]
    lines = ["", "Calibration (test rows; the temperature is fitted on the validation rows):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, size), runs in shown.items():
        calibrations = [r.get("calibration") or {} for r in runs]
        before_after = "; ".join(f"{c['ece_before']:.3f} → {c['ece_after']:.3f}" for c in calibrations if c.get("applied"))
        cells = [dataset, str(size), str(len(runs)), _spread([r["ece"].get("tuned") for r in runs]),
                 *[_spread([r["ece"].get(n) for r in runs]) for n in names],
                 _spread([c.get("temperature") for c in calibrations]), before_after or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _render_skipped(results: list[dict[str, Any]]) -> list[str]:
    lines = [f"- {r['dataset']} {r['per_label']} seed {r['seed']}: {name} skipped: {reason}"
             for r in results for name, reason in (r.get("skipped") or {}).items()]
    return ["", "Baselines skipped (decided on validation rows or before running):", "", *lines] if lines else []


def _render_out_of_scope(groups: dict[tuple, list[dict]]) -> list[str]:
    """Out-of-scope cases: accuracy over all queries, in-scope accuracy and out-of-scope F1 per opponent."""
    shown = {key: runs for key, runs in groups.items() if runs[0].get("out_of_scope")}
    if not shown:
        return []
    names = list(next(iter(shown.values()))[0]["out_of_scope"])
    header = ["dataset", "per label", "seeds", "metric", *names]
    lines = ["", "Out of scope (each opponent with its own threshold, chosen on validation):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (dataset, size), runs in shown.items():
        for metric in ("accuracy", "in_scope_accuracy", "out_of_scope_f1", "out_of_scope_threshold"):
            values = [_spread([r["out_of_scope"].get(name, {}).get(metric) for r in runs]) for name in names]
            lines.append("| " + " | ".join([dataset, str(size), str(len(runs)), metric, *values]) + " |")
    return lines


def merge(names: list[str], into: str, datasets: set[str]) -> None:
    """One results file from several runs' cases of ``datasets``; a case (dataset, size, seed, out-of-scope
    share) found twice is an error."""
    results, commands, seen = [], [], {}
    for name in names:
        path = RESULTS_DIR / f"{name}.json"
        if not path.is_file():
            raise SystemExit(f"--merge: {path} does not exist (give the --name of an earlier run)")
        data = json.loads(path.read_text(encoding="utf-8"))
        for result in data["results"]:
            if result["dataset"] not in datasets:
                continue
            case = (result["dataset"], result["per_label"], result["seed"], result.get("out_of_scope_share", 0.0))
            if case in seen:
                raise SystemExit(f"--merge: {case} is in both {seen[case]} and {name}; merge each seed once")
            seen[case] = name
            results.append(result)
        commands.append(data["command"])
    write_results(into, {"machine": machine_info(), "merged": names, "commands": commands, "results": results}, render(results))
    print(render(results))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="quickstart,banking77,hwu64,snips,scitldr")
    parser.add_argument("--sizes", default="10,40", help="training examples per label (classify)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--test-per-label", type=int, default=10, help="held-out test rows per label (classify)")
    parser.add_argument("--scitldr-size", type=int, default=300)
    parser.add_argument("--scitldr-test", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="the quickstart only, one seed")
    parser.add_argument("--out-of-scope", type=float, default=0.0,
                        help="hold out this seeded share of each classify dataset's intents as out of scope (e.g. 0.25)")
    parser.add_argument("--name", default="quality")
    parser.add_argument("--merge", nargs="+", metavar="NAME", default=None,
                        help="run nothing: join the results of earlier runs (bench/results/NAME.json, e.g. seeds run "
                        "side by side) for --datasets into --name, one table with the mean and spread over their seeds")
    args = parser.parse_args(argv)
    if args.merge:
        merge(args.merge, args.name, set(args.datasets.split(",")))
        return
    if args.quick:
        args.datasets, args.seeds = "quickstart", 1
    datasets = [d for d in args.datasets.split(",") if d]
    global WORK_DIR
    WORK_DIR = WORK_DIR / args.name
    # The cases' registry is scratch: a case run again (same name) replaces its folder, so its old record goes too.
    (WORK_DIR / "registry.db").unlink(missing_ok=True)
    sizes = [int(s) for s in args.sizes.split(",")]
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if any(d != "quickstart" for d in datasets) and not SHARED_DATA.is_dir():
        print(f"skipped: {SHARED_DATA} is absent (the shared datasets)", file=sys.stderr)
        datasets = [d for d in datasets if d == "quickstart"]
    results = []
    for dataset in datasets:
        for seed in seeds:
            if dataset == "quickstart":
                cases = [lambda s=seed: classify_case("quickstart", 40, s, 0, args.out_of_scope)]
            elif dataset == "scitldr":
                cases = [lambda s=seed: scitldr_case(args.scitldr_size, s, args.scitldr_test)]
            else:
                cases = [lambda s=seed, n=n, d=dataset: classify_case(d, n, s, args.test_per_label, args.out_of_scope) for n in sizes]
            for case in cases:
                result = case()
                print(json.dumps({k: result[k] for k in ("dataset", "per_label", "seed", "tuned", "baselines", "verdict")}), flush=True)
                results.append(result)
                write_results(args.name, {"machine": machine_info(), "command": " ".join(sys.argv), "results": results},
                              render(results))


if __name__ == "__main__":
    main()
