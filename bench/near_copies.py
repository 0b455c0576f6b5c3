"""How the near-copy threshold was chosen, and what the check costs (``tunelab data check --test``, the split step).

Usage: ``python bench/near_copies.py [--per-band 10] [--name near-copies]``

For the *training* files of BANKING77 and HWU64 (from ``../shared/data``; each skipped when absent; no test split is
read): a seeded 30 % of the requests against the other 70 %, each test request's most similar training request
(``data.near_copies.find_near_copies``). Prints and saves how many requests have a neighbour at >= 0.8 / 0.85 / 0.9 /
0.95, how many of the pairs in each band share their label, and ``--per-band`` seeded pairs of each band to read.
Then the time of one check: 3,000 HWU64 requests against BANKING77's 10,003, and 3,000 BANKING77 requests with
" please" appended against all 10,003 (every one has a close neighbour), best of 3 (scipy's sparse products run on one thread).
Results: ``bench/results/NAME.{json,md}``.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from common import SHARED_DATA, best_of, machine_info, machine_markdown, markdown_table, write_results  # noqa: E402

from tunelab.data import near_copies  # noqa: E402
from tunelab.data.records import ClassifyRecord  # noqa: E402

THRESHOLDS = (0.8, 0.85, 0.9, 0.95)
BANDS = ((0.95, 2.0), (0.9, 0.95), (0.85, 0.9), (0.8, 0.85))


def banking77() -> list[ClassifyRecord]:
    path = SHARED_DATA / "banking77" / "train.csv"
    with path.open(encoding="utf-8") as f:
        return [ClassifyRecord(row["text"], row["category"], f"banking77/train.csv:{n}") for n, row in enumerate(csv.DictReader(f), 2)]


def hwu64() -> list[ClassifyRecord]:
    records = []
    for path in sorted((SHARED_DATA / "hwu64" / "trainset").glob("*.csv")):
        with path.open(encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f, delimiter=";"), 2):
                records.append(ClassifyRecord(row["answer_from_user"], f"{row['scenario']}_{row['intent']}", f"hwu64/{path.name}:{n}"))
    return records


def threshold_rows(name: str, records: list[ClassifyRecord], per_band: int) -> tuple[list[list], list[dict]]:
    """Counts per threshold and the label agreement per band, on a seeded 30 % against the other 70 %."""
    records = list({record.id: record for record in records}.values())
    order = list(range(len(records)))
    random.Random(0).shuffle(order)
    cut = int(0.3 * len(records))
    test, train = [records[i] for i in order[:cut]], [records[i] for i in order[cut:]]
    counts = [near_copies.find_near_copies(test, train, threshold=t) for t in THRESHOLDS]
    listed = near_copies.LISTED_PAIRS
    near_copies.LISTED_PAIRS = len(test)  # every pair, to read the bands
    try:
        every = near_copies.find_near_copies(test, train, threshold=min(THRESHOLDS)).pairs
    finally:
        near_copies.LISTED_PAIRS = listed
    label = {record.source: record.label for record in records}
    bands = []
    for low, high in BANDS:
        pairs = [pair for pair in every if low <= pair.similarity < high]
        shown = random.Random(1).sample(pairs, min(per_band, len(pairs)))
        bands.append({
            "dataset": name, "band": f"[{low}, {min(high, 1.0)}]" if high > 1 else f"[{low}, {high})", "pairs": len(pairs),
            "same_label": sum(label[p.test] == label[p.train] for p in pairs),
            "examples": [{"similarity": p.similarity, "same_label": label[p.test] == label[p.train], "test": p.test_text,
                          "train": p.train_text} for p in shown],
        })
    row = [name, f"{len(test)} vs {len(train)}", *(f"{r.count} ({r.share:.1%})" for r in counts)]
    return [row], bands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-band", type=int, default=10)
    parser.add_argument("--name", default="near-copies")
    args = parser.parse_args()
    datasets = {}
    if (SHARED_DATA / "banking77" / "train.csv").is_file():
        datasets["banking77"] = banking77()
    if (SHARED_DATA / "hwu64" / "trainset").is_dir():
        datasets["hwu64"] = hwu64()
    if not datasets:
        raise SystemExit(f"no shared data under {SHARED_DATA}: nothing to measure")
    rows, bands = [], []
    for name, records in datasets.items():
        more_rows, more_bands = threshold_rows(name, records, args.per_band)
        rows += more_rows
        bands += more_bands
        print(" | ".join(map(str, more_rows[0])), flush=True)
    timings = []
    if len(datasets) == 2:
        train = datasets["banking77"]
        pool = list(datasets["hwu64"])
        random.Random(0).shuffle(pool)
        shuffled = list(train)
        random.Random(0).shuffle(shuffled)
        cases = (("3,000 HWU64 requests x BANKING77's training requests", pool[:3000]),
                 ("3,000 BANKING77 requests + ' please' x all of them", [ClassifyRecord(r.text + " please", r.label, r.source) for r in shuffled[:3000]]))
        for what, test in cases:
            seconds = best_of(3, lambda test=test: near_copies.find_near_copies(test, train))
            found = near_copies.find_near_copies(test, train).count
            timings.append([what, f"{len(test)} x {len(train)}", f"{seconds:.2f}", found])
            print(f"{what}: {seconds:.2f} s, {found} near-copies", flush=True)
    info = machine_info()
    markdown = "\n\n".join([
        "# Near-copies between a test set and training data",
        "Requests with a training request at cosine similarity >= t (TF-IDF character 3-5-grams, digits as one 0), "
        "a seeded 30 % of each training file against the other 70 %:",
        markdown_table(["dataset", "requests", *(f">= {t}" for t in THRESHOLDS)], rows),
        "Pairs per band and how many share their label:",
        markdown_table(["dataset", "band", "pairs", "same label"], [[b["dataset"], b["band"], b["pairs"], b["same_label"]] for b in bands]),
        "Time of one check (best of 3):" if timings else "",
        markdown_table(["case", "requests", "seconds", "near-copies"], timings) if timings else "",
        machine_markdown(info),
    ])
    write_results(args.name, {"machine": info, "thresholds": rows, "bands": bands, "timings": timings}, markdown)


if __name__ == "__main__":
    main()
