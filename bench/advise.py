"""How far `tunelab advise`'s projections are from what real runs then measure.

For each shared classify dataset (SNIPS, HWU64, BANKING77) and seed, rows are drawn per label from the
dataset's train file only (never a test split): 40 training rows per label (the first 10 of them are the
10-per-label training set, so the 10 are inside the 40), ``--validation-rows`` validation rows and
``--test-rows`` held-out rows in all, spread over the labels. Then, all with the project defaults:

1. ``tunelab advise`` on the 10-per-label config (``tasks.advise.advise``, with ``--budget-minutes``):
   its learning curve projects the tuned score at 10 and at 40 per label, with a 95% band.
2. ``tunelab run`` on the 10-per-label config and on the 40-per-label config (``run_pipeline``): the
   tuned model's accuracy on the held-out rows (its verdict's test set) and on the validation rows.
3. The classical baseline refitted on the 10 and the 40 per label (training rows only, as advise fits
   it) and scored on the held-out rows: the same check for the opponent's curve.

Reported per case: projected vs measured at 10 and 40 per label, the error (measured - projected),
whether the measured score is inside the projected band, and what advise recommended.

    PYTHONPATH=src python bench/advise.py --datasets snips --seeds 1
    PYTHONPATH=src python bench/advise.py --datasets snips,hwu64,banking77 --labels 20 --seeds 1

``--labels K`` keeps a seeded K of each dataset's intents (all by default) so a case fits the machine.
Results: ``bench/results/<name>.json`` and ``.md`` (``--name``, default ``advise``).

    PYTHONPATH=src python bench/advise.py --refit --into advise-refit   # the saved cases' curves fitted again, no training
    PYTHONPATH=src python bench/advise.py --render                      # advise.md written again from advise.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, SHARED_DATA, machine_info, write_results
from quality import _classify_rows

WORK_DIR = RESULTS_DIR / "tmp" / "advise"
SIZES = (10, 40)


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def draw(dataset: str, seed: int, labels: int | None, validation_rows: int, test_rows: int) -> dict[str, Any]:
    """Seeded rows per label: train (40, the first 10 of which are the 10-per-label set), validation, held out."""
    by_label = _classify_rows(dataset)
    rng = random.Random(f"advise-{dataset}-{seed}")
    names = sorted(by_label)
    if labels is not None and labels < len(names):
        names = sorted(rng.sample(names, labels))
    per_validation = max(2, math.ceil(validation_rows / len(names)))
    per_test = max(2, math.ceil(test_rows / len(names)))
    train: dict[int, list[dict]] = {size: [] for size in SIZES}
    validation, test = [], []
    for label in names:
        rows = list(by_label[label])
        rng.shuffle(rows)
        if len(rows) < max(SIZES) + per_validation + per_test:
            continue  # a label without enough rows for every side would only add noise
        for size in SIZES:
            train[size] += rows[:size]
        validation += rows[max(SIZES) : max(SIZES) + per_validation]
        test += rows[max(SIZES) + per_validation : max(SIZES) + per_validation + per_test]
    return {"train": train, "validation": validation, "test": test, "labels": len({r["label"] for r in validation})}


def case_config(case: str, train: str, validation: str, test: str, seed: int) -> dict[str, Any]:
    folder = WORK_DIR / case
    return {
        "task": "classify", "model": "default", "name": case,
        "data": {"train": train, "validation": validation, "test": test, "seed": seed},
        "train": {"output_dir": str(folder / "runs"), "seed": seed},
        "registry": str(folder / "registry.db"),
    }


def _band(curve: Any, n: int) -> dict[str, float]:
    low, high = curve.band([n])
    return {"value": float(curve.value([n])[0]), "low": float(low[0]), "high": float(high[0])}


def run_case(dataset: str, seed: int, labels: int | None, validation_rows: int, test_rows: int, budget: float) -> dict[str, Any]:
    from tunelab.config import DataConfig, parse_config
    from tunelab.data.read import load_records
    from tunelab.evaluation.baselines import classical_baseline
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.runs import load_run
    from tunelab.tasks.advise import advise
    from tunelab.tasks.pipeline import run_pipeline

    case = f"{dataset}-seed{seed}" + (f"-labels{labels}" if labels else "")
    shutil.rmtree(WORK_DIR / case, ignore_errors=True)
    drawn = draw(dataset, seed, labels, validation_rows, test_rows)
    validation_path = _write_jsonl(WORK_DIR / case / "validation.jsonl", drawn["validation"])
    test_path = _write_jsonl(WORK_DIR / case / "test.jsonl", drawn["test"])
    configs = {}
    for size in SIZES:
        train_path = _write_jsonl(WORK_DIR / case / f"train{size}.jsonl", drawn["train"][size])
        configs[size] = parse_config(case_config(f"{case}-{size}", train_path, validation_path, test_path, seed), source=case)
    read = DataConfig()
    validation_records = load_records(validation_path, "classify", read)
    test_records = load_records(test_path, "classify", read)

    # 1. advise at 10 per label, projecting to 10 and 40 per label.
    began = time.perf_counter()
    advice = advise(configs[10], budget_minutes=budget, folder=WORK_DIR / case / "advice")
    advise_seconds = time.perf_counter() - began
    n = {size: len(drawn["train"][size]) for size in SIZES}
    curves = {curve.name: curve for curve in advice.curves}
    tuned_curve = curves.get("tuned")
    projected = {size: _band(tuned_curve, n[size]) for size in SIZES} if tuned_curve is not None else {}
    classical_projected = {size: _band(curves["classical"], n[size]) for size in SIZES} if "classical" in curves else {}
    result: dict[str, Any] = {
        "dataset": dataset, "seed": seed, "labels": drawn["labels"], "labels_asked": labels, "train_rows": n, "validation_rows": len(validation_records),
        "test_rows": len(test_records), "budget_minutes": budget,
        "advice": {
            "sizes": [p.size for p in advice.points], "scores": [p.score for p in advice.points],
            "point_seconds": [p.seconds for p in advice.points], "point_estimated_seconds": [p.estimated_seconds for p in advice.points],
            "law": tuned_curve.law.__dict__ if tuned_curve is not None and tuned_curve.law is not None else None,
            "opponents": {o.name: o.score for o in advice.opponents}, "recommendation": advice.recommendation,
            "reason": advice.reason, "flags": advice.flags, "seconds": advise_seconds,
            "crossing": None if advice.crossing is None else advice.crossing.to_dict(),
        },
        "projected": projected, "classical_projected": classical_projected,
    }
    print(json.dumps({"case": case, "advice": advice.recommendation, "projected": projected}), flush=True)

    # 2. The real runs at 10 and 40 per label; 3. the classical model refitted on each, training rows only.
    measured, classical = {}, {}
    for size in SIZES:
        config = configs[size]
        began = time.perf_counter()
        outcome = run_pipeline(config, calibrate=False)
        on_validation = evaluate(load_run(outcome.run_dir), validation_records, "classify", config=config.eval,
                                 data_config=config.data.model_copy(update={"max_test_examples": None}))
        measured[size] = {
            "test": outcome.tuned_metrics["accuracy"], "validation": on_validation.metrics["accuracy"],
            "train_seconds": (outcome.train or {}).get("seconds"), "wall_seconds": time.perf_counter() - began,
            "verdict": outcome.comparison.verdict if outcome.comparison else None,
            "baselines_on_test": {name: m.get("accuracy") for name, m in outcome.baseline_metrics.items()},
        }
        train_records = load_records(str(config.data.train), "classify", read)
        classical[size] = classical_baseline(train_records, test_records, data_config=config.data).metrics["accuracy"]
        print(json.dumps({"case": case, "size": size, "measured": measured[size], "classical": classical[size]}), flush=True)
    result["measured"] = measured
    result["classical_measured"] = classical
    result["load_after"] = round(os.getloadavg()[0], 2)
    return result


def refit(results: list[dict[str, Any]], run_noise: float | None = None) -> list[dict[str, Any]]:
    """Each case's projections fitted again from its saved advice (the curve code of this checkout, no training)."""
    from tunelab.tasks.advise import refit_advice

    for result in results:
        case = f"{result['dataset']}-seed{result['seed']}" + (f"-labels{result['labels_asked']}" if result.get("labels_asked") else "")
        _, fits = refit_advice(WORK_DIR / case / "advice", run_noise=run_noise)
        n = {int(size): count for size, count in result["train_rows"].items()}
        curves = {curve.name: curve for curve in [fits.tuned, *fits.opponents] if curve is not None and curve.learns}
        result["projected"] = {str(size): _band(curves["tuned"], n[size]) for size in SIZES} if "tuned" in curves else {}
        result["classical_projected"] = {str(size): _band(curves["classical"], n[size]) for size in SIZES} if "classical" in curves else {}
        result["advice"]["refit_flags"] = fits.flags
    return results


def _inside(band: dict[str, float] | None, value: float | None) -> bool | None:
    if not band or value is None:
        return None
    return band["low"] <= value <= band["high"]


def render(results: list[dict[str, Any]]) -> str:
    header = ["case", "labels", "train rows (10 / 40)", "advise: sizes → accuracy", "projected at 10 [95%]", "measured at 10 (held out / validation)",
              "error at 10 (held out)", "projected at 40 [95%]", "measured at 40 (held out / validation)", "error at 40 (held out)", "inside band at 40",
              "classical at 40: projected [95%] / measured", "advice"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    inside_count = total = 0
    inside_validation = total_validation = 0  # the same on the rows the curve itself is scored on
    errors: dict[str, list[float]] = {"10": [], "40": []}
    for r in results:
        proj, meas = r["projected"], r["measured"]
        cells = [f"{r['dataset']} seed {r['seed']}", str(r["labels"]), f"{r['train_rows']['10']} / {r['train_rows']['40']}"]
        advice = r["advice"]
        cells.append(", ".join(f"{s}: {v:.3f}" for s, v in zip(advice["sizes"], advice["scores"], strict=True)) or "no curve")
        for size in ("10", "40"):
            band = proj.get(size)
            cells.append(f"{band['value']:.3f} [{band['low']:.3f}, {band['high']:.3f}]" if band else "-")
            cells.append(f"{meas[size]['test']:.3f} / {meas[size]['validation']:.3f}")
            error = meas[size]["test"] - band["value"] if band else None
            cells.append(f"{error:+.3f}" if error is not None else "-")
            if error is not None:
                errors[size].append(error)
        band40 = proj.get("40")
        inside = _inside(band40, meas["40"]["test"])
        cells.append({True: "yes", False: "no", None: "-"}[inside])
        if inside is not None:
            total += 1
            inside_count += inside
        on_validation = _inside(band40, meas["40"]["validation"])
        if on_validation is not None:
            total_validation += 1
            inside_validation += on_validation
        cband = r["classical_projected"].get("40")
        cells.append((f"{cband['value']:.3f} [{cband['low']:.3f}, {cband['high']:.3f}]" if cband else "-") + f" / {r['classical_measured']['40']:.3f}")
        cells.append(advice["recommendation"])
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Measured 40-per-label accuracy (held-out rows) inside the projected 95% band: {inside_count} of {total} cases.")
    lines.append(f"The same on the validation rows (those the curve is scored on): {inside_validation} of {total_validation} cases.")
    for size, values in errors.items():
        if values:
            lines.append(f"Error at {size} per label (measured on the held-out rows - projected): mean {sum(values) / len(values):+.3f}, "
                         f"mean absolute {sum(abs(v) for v in values) / len(values):.3f}, over {len(values)} cases.")
    return "\n".join(lines)


def _stringify(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(result, default=str))  # int keys (10, 40) become "10", "40" as in the saved file


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="snips,hwu64,banking77")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument("--labels", type=int, default=None, help="keep a seeded K of each dataset's intents (default: all)")
    parser.add_argument("--validation-rows", type=int, default=100, help="validation rows in all, spread over the labels")
    parser.add_argument("--test-rows", type=int, default=200, help="held-out rows in all, spread over the labels")
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="advise's budget (the curve gets what fits)")
    parser.add_argument("--name", default="advise")
    parser.add_argument("--refit", action="store_true",
                        help="train nothing: fit every saved case's curves again with this checkout's code and write them as --into")
    parser.add_argument("--into", default=None, help="--refit: the results name to write (default: --name, rewritten)")
    parser.add_argument("--run-noise", type=float, default=None, help="--refit: the run-to-run noise of the tuned curve (default: the library's)")
    parser.add_argument("--render", action="store_true", help="train and fit nothing: write <name>.md again from <name>.json")
    args = parser.parse_args(argv)
    if args.render:
        results = json.loads((RESULTS_DIR / f"{args.name}.json").read_text())["results"]
        (RESULTS_DIR / f"{args.name}.md").write_text(render(results).rstrip() + "\n")
        print(render(results))
        return
    if args.refit:
        path = RESULTS_DIR / f"{args.name}.json"
        data = json.loads(path.read_text())
        data["results"] = refit(data["results"], args.run_noise)
        data["refit_command"] = " ".join(sys.argv)
        write_results(args.into or args.name, data, render(data["results"]))
        print(render(data["results"]))
        return
    if not SHARED_DATA.is_dir():
        print(f"skipped: {SHARED_DATA} is absent (the shared datasets)", file=sys.stderr)
        return
    previous = RESULTS_DIR / f"{args.name}.json"
    results = json.loads(previous.read_text())["results"] if previous.is_file() else []
    done = {(r["dataset"], r["seed"], r["labels"]) for r in results}
    for dataset in [d for d in args.datasets.split(",") if d]:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            result = _stringify(run_case(dataset, seed, args.labels, args.validation_rows, args.test_rows, args.budget_minutes))
            key = (result["dataset"], result["seed"], result["labels"])
            results = [r for r in results if (r["dataset"], r["seed"], r["labels"]) != key] if key in done else results
            results.append(result)
            write_results(args.name, {"machine": machine_info(), "command": " ".join(sys.argv), "results": results}, render(results))
    print(render(results))


if __name__ == "__main__":
    main()
