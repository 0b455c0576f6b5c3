"""Commands that need no model must not import torch or transformers (their import is most of start-up).

Each command runs in a fresh interpreter (``sys.modules`` of this test process already holds torch),
through the real entry point, and reports which heavy modules it imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.registry import Registry

SRC = Path(__file__).resolve().parents[3] / "src"
HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets", "sklearn")

PROBE = """
import json, runpy, sys
sys.argv = ["tunelab", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_module("tunelab.cli.main", run_name="__main__")
except SystemExit as exit:
    code = exit.code or 0
print("PROBE " + json.dumps({"code": code, "heavy": [name for name in HEAVY if name in sys.modules]}))
""".replace("HEAVY", repr(list(HEAVY)))


def _imports(arguments: list[str], cwd: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(arguments)], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    line = next(line for line in result.stdout.splitlines()[::-1] if line.startswith("PROBE "))
    return json.loads(line[len("PROBE "):])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    folder = tmp_path_factory.mktemp("startup")
    registry = Registry(folder / "registry.db")
    for name, r in (("a", 16), ("b", 4)):
        registry.create_run(name=name, task="classify", model="default", status="finished", config={"task": "classify", "lora": {"r": r}})
    (folder / "split.yaml").write_text("task: classify\ndata:\n  train: train.jsonl\n")
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": f"request {i}", "label": "ab"[i % 2]}) + "\n" for i in range(8)))
    return folder


@pytest.mark.parametrize(
    "arguments",
    [
        ["--help"],
        ["config"],
        ["runs", "--registry", "registry.db"],
        ["show", "a", "--registry", "registry.db"],
        ["compare", "a", "b", "--registry", "registry.db"],
        ["delete", "a", "--dry-run", "--registry", "registry.db"],
        ["data", "check", "train.jsonl", "--task", "classify", "--no-tokens"],
        ["ui", "--help"],
    ],
    ids=lambda arguments: " ".join(arguments[:2]),
)
def test_commands_without_a_model_import_no_torch_or_transformers(arguments, workspace):
    probe = _imports(arguments, workspace)
    assert probe["code"] == 0
    assert probe["heavy"] == []


def test_data_split_imports_no_model_library(workspace):
    # Splitting needs no model, but it imported torch through the evaluation package (for the verdict's minimum test
    # size). It does need scikit-learn: the near-copies warning compares TF-IDF vectors, as `tunelab run`'s split step.
    probe = _imports(["data", "split", "split.yaml"], workspace)
    assert probe["code"] == 0
    assert [name for name in probe["heavy"] if name != "sklearn"] == []


def test_the_probe_sees_an_import_of_torch(workspace):
    # The check above can fail: a command that loads a tokenizer does import them.
    probe = _imports(["env", "--json"], workspace)
    assert "torch" in probe["heavy"]
