"""``tunelab run`` under ``data.pii: refuse``: one error line before the run folder, the baselines or training exist."""

import json
import subprocess
import sys

import yaml

CARD = "4242 4242 4242 4242"


def test_run_refuses_data_with_personal_data_before_anything_runs(tmp_path, tiny_model_dir):
    rows = [{"text": f"my bill {i} is wrong", "label": "billing"} for i in range(20)]
    rows += [{"text": f"the app crashes {i}", "label": "technical"} for i in range(20)]
    rows[5]["text"] = f"charge card {CARD} again"
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "task": "classify", "model": str(tiny_model_dir), "name": "refused",
        "data": {"train": str(data), "pii": "refuse"}, "train": {"method": "full", "output_dir": str(tmp_path / "runs")},
    }))
    refused = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "run", str(config)], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2, refused.stderr
    # The one line names where the card number is (masked): the file's line 6, its text.
    assert (f"{data} holds 1 card number (e.g. {data}:6 text: **** **** **** 4242) and data.pii is refuse: nothing is trained, "
            "uploaded or sent") in " ".join(refused.stderr.split())
    assert CARD not in refused.stderr and CARD not in refused.stdout
    assert not (tmp_path / "runs" / "refused").exists()
