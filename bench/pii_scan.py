"""What the personal-data scan adds to ``tunelab data check``.

Usage: ``python bench/pii_scan.py [--records 100000]``

For BANKING77's training requests and GSM8K's training problems (from ``../shared/data``; each skipped when absent),
repeated to about ``--records`` records, times the scan itself (``data.pii.scan_records`` over the records as read) and
the whole check without token lengths with ``data.pii`` on and off (best of 3 each), and prints what it found.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from common import best_of  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
CASES = {"banking77": ("classify", "banking77"), "gsm8k": ("sft", "gsm8k")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from tunelab.config import DataConfig
    from tunelab.data.check import check_data
    from tunelab.data.pii import scan_records
    from tunelab.data.read import read_records

    for name, (task, preset) in CASES.items():
        folder = SHARED / name
        if not folder.exists():
            print(f"{folder} absent: {name} skipped", file=sys.stderr)
            continue
        data = DataConfig(preset=preset)
        read = read_records(str(folder), task, data)
        copies = max(1, round(args.records / max(1, len(read.records))))
        records = read.records * copies
        scan = best_of(3, lambda records=records: scan_records(records))
        found = scan_records(read.records)
        check = {}
        for setting in ("off", "warn"):
            config = data.model_copy(update={"pii": setting})
            check[setting] = best_of(3, lambda config=config, folder=folder, task=task: check_data(str(folder), task, config, tokenizer=None))
        print(json.dumps({
            "data": name, "records_read": len(read.records), "records_scanned": len(records), "scan_seconds": round(scan, 2),
            "check_seconds_one_copy": {key: round(value, 2) for key, value in check.items()},
            "found_in_one_copy": {kind.kind: kind.matches for kind in found.kinds.values()},
        }))


if __name__ == "__main__":
    main()
