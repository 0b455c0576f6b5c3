"""How many deliberately flipped labels ``tunelab data check --suspect-labels`` finds.

Usage: ``python bench/suspect_labels.py [--share 0.05] [--seed 0]``

Flips a share of the labels (seeded, each to another label of the file) of the quickstart's training requests and, when
``../shared/data/banking77`` is there, of 10 training rows per BANKING77 intent (770 rows); runs the command as a user
does (``--json``, every suspect listed) and prints, per file, how many flipped rows are listed (in all, in the top 20
and in the top as many as were flipped), how many rows are listed, and the command's wall time (model load included).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def flip(rows: list[dict], share: float, seed: int) -> set[int]:
    """Flip ``share`` of the rows' labels in place; the JSONL line numbers flipped."""
    rng = random.Random(seed)
    labels = sorted({row["label"] for row in rows})
    chosen = rng.sample(range(len(rows)), round(share * len(rows)))
    for index in chosen:
        rows[index]["label"] = rng.choice([label for label in labels if label != rows[index]["label"]])
    return {index + 1 for index in chosen}


def measure(name: str, rows: list[dict], share: float, seed: int, folder: Path) -> dict:
    flipped = flip(rows, share, seed)
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "tunelab", "data", "check", str(path), "--task", "classify", "--no-tokens",
               "--suspect-labels", "--max-suspects", "100000", "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
    seconds = time.perf_counter() - start
    found = json.loads(done.stdout)["suspect_labels"]
    lines = [int(suspect["source"].rsplit(":", 1)[1]) for suspect in found["suspects"]]
    return {
        "data": name, "rows": len(rows), "flipped": len(flipped), "listed": found["count"], "listed_share": round(found["share"], 3),
        "flipped_listed": len(set(lines) & flipped), "flipped_in_top_20": len(set(lines[:20]) & flipped),
        "flipped_in_top_flipped": len(set(lines[: len(flipped)]) & flipped), "seconds": round(seconds, 1),
        "settings": found["settings"], "weak": found.get("weak"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases = {"quickstart": [json.loads(line) for line in (ROOT / "examples/support-routing/train.jsonl").read_text().splitlines() if line]}
    banking = SHARED / "banking77" / "train.csv"
    if banking.is_file():
        by_intent: dict[str, list[dict]] = defaultdict(list)
        with banking.open(encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                by_intent[row["category"]].append({"text": row["text"], "label": row["category"]})
        cases["banking77-10-per-intent"] = [row for intent in sorted(by_intent) for row in by_intent[intent][:10]]
    else:
        print(f"{banking} absent: BANKING77 skipped", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        for name, rows in cases.items():
            print(json.dumps(measure(name, rows, args.share, args.seed, Path(folder))))


if __name__ == "__main__":
    main()
