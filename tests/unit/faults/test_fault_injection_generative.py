"""Fault injection for the generative tasks: an sft and a text run SIGKILLed while training, while writing a
checkpoint, while evaluating the tuned model and while writing the report, a preference run while its reference
log-probs are saved, then ``--resume``d, end where an uninterrupted run ends: the same adapter, the same metrics, the
same verdict, and no temporary left behind.

The kills are real SIGKILLs of real ``tunelab run`` processes (``TUNELAB_KILL_AT``, see ``tunelab.faults``), as in
``test_fault_injection.py`` (the classify run).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.unit.faults.test_fault_injection import _tunelab

from tunelab.faults import KILL_ENV
from tunelab.registry.store import Registry
from tunelab.train.run import TrainResult

NAME = "victim"

# (task, kill point, which time it is reached): the two that left temporaries behind, and one moment of each task's
# own that the classify kill tests (test_fault_injection.py) cannot reach; each case is a real run killed and resumed, so
# the list stays short. Steps: check, split, estimate, baseline, train, evaluate, report, register.
CASES = [
    ("sft", "checkpoint.files-written", 1),  # a checkpoint's files written, not yet renamed into place
    ("sft", "generate.batch-answered", 5),  # the tuned model's answers half generated (after the base model's 3 batches)
    ("sft", "atomic-write.before-rename:base-*.json", 1),  # the base model's evaluation saved in runs/baselines/
    ("sft", "atomic-write.before-rename:README.md", 2),  # the register step writing the adapter's model card (1: the train step)
    ("text", "checkpoint.renamed", 1),
    ("preference", "atomic-write.before-rename:reference_log_probs.json", 1),  # the reference log-probs being saved
]
TASKS = ("sft", "text", "preference")


def _write_project(folder: Path, model_dir: Path, task: str) -> Path:
    if task == "sft":
        rows = [{"prompt": f"Say {i} twice.", "completion": f"{i} {i}"} for i in range(24)]
    elif task == "preference":
        rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i + 3}."} for i in range(24)]
    else:
        rows = [{"text": f"The number {i} comes after {i - 1} and before {i + 1}. " * 3} for i in range(24)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "task": task,
        "model": str(model_dir),
        "name": NAME,
        "data": {"train": "train.jsonl", "test_size": 0.25, "validation_size": 0.2, "max_length": 48},
        "train": {
            "method": "lora", "lr": 2e-2, "max_steps": 6, "batch_size": 4, "eval_every": 2, "save_every": 2,
            "keep_last": 1, "precision": "fp32", "output_dir": "runs",
        },
        "lora": {"r": 4, "dropout": 0.1},
        # Sampled answers: a resumed evaluation must draw them as the uninterrupted one did.
        "eval": {"baselines": ["base"], "bootstrap_samples": 100, "max_new_tokens": 4, "temperature": 0.7, "batch_size": 2},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _outcome(project: Path) -> dict:
    run = project / "runs" / NAME
    state = json.loads((run / "pipeline.json").read_text())
    train = {k: v for k, v in state["steps"]["train"].items() if k not in (*TrainResult.CLOCK_FIELDS, "run_dir")}
    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in ("elapsed", "tokens_per_second")}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    tuned = json.loads((run / "eval" / "tuned.json").read_text())
    comparison = json.loads((run / "eval" / "comparison.json").read_text())
    return {
        "adapter": load_file(str(run / "adapter" / "adapter_model.safetensors")),
        "tuned": tuned["metrics"],
        "answers": [row.get("prediction") for row in tuned["rows"]] if "rows" in tuned else None,
        "comparison": {k: v for k, v in comparison.items() if k not in ("created", "seconds")},
        "train": train,
        "metrics": metrics,
        "report": (run / "report.md").is_file(),
        "status": Registry(project / "runs" / "registry.db").get_run(NAME).status,
    }


def _assert_identical(a: dict, b: dict) -> None:
    assert a["adapter"].keys() == b["adapter"].keys()
    for key in a["adapter"]:
        assert torch.equal(a["adapter"][key], b["adapter"][key]), f"adapter {key} differs"
    for part in ("tuned", "answers", "comparison", "train", "metrics", "report"):
        assert a[part] == b[part], part
    assert a["status"] == b["status"] == "finished"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> dict:
    outcomes = {}
    for task in TASKS:
        project = tmp_path_factory.mktemp(f"uninterrupted-{task}")
        config = _write_project(project, tiny_model_dir, task)
        done = _tunelab(["run", str(config), "--no-calibrate"], project, TUNELAB_CACHE=str(project / "cache"))
        assert done.returncode == 0, done.stderr[-3000:]
        outcomes[task] = _outcome(project)
    return outcomes


@pytest.mark.parametrize(("task", "point", "nth"), CASES, ids=[f"{t}-{p}@{n}" for t, p, n in CASES])
def test_a_generative_run_killed_resumes_to_the_same_result(task, point, nth, uninterrupted, tmp_path, tiny_model_dir):
    project = tmp_path / "project"
    _write_project(project, tiny_model_dir, task)
    cache = str(tmp_path / "cache")
    killed = _tunelab(["run", "config.yaml", "--no-calibrate"], project, TUNELAB_CACHE=cache, **{KILL_ENV: f"{point}@{nth}"})
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}@{nth}: {killed.stderr[-2000:]}"
    run = project / "runs" / NAME
    resumed = _tunelab(["run", "--resume", str(run), "--no-calibrate"], project, TUNELAB_CACHE=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(uninterrupted[task], _outcome(project))
    leftovers = [str(p.relative_to(project)) for p in (project / "runs").rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert not leftovers
