"""Fault injection: ``tunelab run`` SIGKILLed at every named kill point, then ``--resume``d, ends bit for bit
where an uninterrupted run ends: the same adapter, the same label head, the same metrics.

Each kill is a real SIGKILL of a real ``tunelab run`` process (``TUNELAB_KILL_AT``, see
``tunelab.faults``): nothing of the killed process's cleanup runs, exactly as after ``kill -9`` or a
power cut. A classify run with LoRA, its label head, dropout (so the RNG state must be restored) and
a validation at every checkpoint (so the best checkpoint moves) on the tiny in-process model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tunelab.faults import KILL_ENV, KILL_POINTS
from tunelab.registry.store import Registry
from tunelab.train.run import TrainResult

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}
SRC = Path(__file__).resolve().parents[3] / "src"
NAME = "victim"

# (kill point, which time it is reached): every point of tunelab.faults.KILL_POINTS at least once.
# "best": at the checkpoint of the step the uninterrupted run keeps as its best (not its last step), where
# a checkpoint that is written but not yet known as the best one once ended the resumed run on other weights.
CASES = [
    ("pipeline.registered", 1),
    ("pipeline.step-started", 4),  # the baseline step (check, split, estimate, baseline, train, evaluate, ...)
    ("pipeline.step-started", 6),  # the evaluation step
    ("pipeline.step-finished", 4),  # after the baseline step
    ("pipeline.step-finished", 5),  # after the training step
    ("checkpoint.files-written", "best"),
    ("checkpoint.renamed", "best"),
    ("checkpoint.renamed", 4),  # the last checkpoint
    ("checkpoint.best-written", "best"),
    ("checkpoint.pruned", 3),
    ("train.weights-saved", 1),
    ("registry.before-commit", 1),  # the run's row is never created
    ("registry.before-commit", 6),  # a later update of the row
]


def test_every_kill_point_is_exercised():
    # Killed elsewhere: an sft run (test_fault_injection_generative.py; a classify run generates no answers), an export
    # (test_export_killed.py), `tunelab predict` (test_predict_file.py), `tunelab delete` (test_run_deletion.py).
    elsewhere = {"generate.batch-answered", "atomic-write.before-rename", "export.modelfile-written", "predict.batch-written",
                 "delete.folder-moved", "delete.row-removed"}
    assert {point for point, _ in CASES} == set(KILL_POINTS) - elsewhere


def _write_project(folder: Path, model_dir: Path) -> Path:
    rows = []
    for i in range(48):
        label = "AB"[i % 2]
        words = WORDS[label]
        rows.append({"text": f"{words[i % 4]} {words[(i // 2) % 4]} number {i}", "label": label})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = {
        "task": "classify",
        "model": str(model_dir),
        "name": NAME,
        "data": {"train": "train.jsonl", "test_size": 0.25, "validation_size": 0.2, "max_length": 64},
        "train": {
            "method": "lora", "lr": 2e-2, "max_steps": 8, "batch_size": 4, "eval_every": 2, "save_every": 2,
            "keep_last": 1, "precision": "fp32", "output_dir": "runs",
        },
        "lora": {"r": 4, "dropout": 0.1},
        "classify": {"select_by": "loss"},
        "eval": {"baselines": ["base", "classical"], "bootstrap_samples": 100},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env.pop(KILL_ENV, None)
    env.update(extra)
    return env


def _tunelab(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600
    )


def _outcome(project: Path) -> dict:
    """What must be bit-identical: the adapter and label head tensors, every metric, the training counters."""
    run = project / "runs" / NAME
    state = json.loads((run / "pipeline.json").read_text())
    train = {k: v for k, v in state["steps"]["train"].items() if k not in (*TrainResult.CLOCK_FIELDS, "run_dir")}
    metrics = [
        {k: v for k, v in json.loads(line).items() if k not in ("elapsed", "tokens_per_second")}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]
    adapter = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    # The classify label head travels in the adapter, in PEFT's trainable-tokens form.
    label_head = {name: tensor for name, tensor in adapter.items() if "trainable_tokens" in name}
    assert label_head, sorted(adapter)
    return {
        "adapter": adapter,
        "label_head": label_head,
        "tuned": json.loads((run / "eval" / "tuned.json").read_text())["metrics"],
        "train": train,
        "metrics": metrics,
        "status": Registry(project / "runs" / "registry.db").get_run(NAME).status,
    }


def _assert_identical(a: dict, b: dict) -> None:
    for part in ("adapter", "label_head"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part} {key} differs"
    assert a["tuned"] == b["tuned"]
    assert a["train"] == b["train"]
    assert a["metrics"] == b["metrics"]
    assert a["status"] == b["status"] == "finished"
    assert a["train"]["best_validation_loss"] is not None


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model_dir) -> dict:
    project = tmp_path_factory.mktemp("uninterrupted")
    config = _write_project(project, tiny_model_dir)
    done = _tunelab(["run", str(config), "--no-calibrate"], project, TUNELAB_CACHE=str(project / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = _outcome(project)
    validations = [m for m in outcome["metrics"] if "validation_loss" in m]
    best = min(validations, key=lambda m: m["validation_loss"])
    # The case this suite is built around: the kept checkpoint is not the last one.
    assert best["step"] != 8 and outcome["train"]["best_validation_loss"] == best["validation_loss"]
    improvements, lowest = 0, float("inf")
    for m in validations:
        if m["validation_loss"] < lowest:
            lowest, improvements = m["validation_loss"], improvements + 1
        if m is best:
            break
    outcome["nth"] = {"checkpoint.best-written": improvements, "checkpoint.files-written": best["step"] // 2, "checkpoint.renamed": best["step"] // 2}
    return outcome


@pytest.mark.parametrize(("point", "nth"), CASES, ids=[f"{p}@{n}" for p, n in CASES])
def test_killed_at_a_point_resumes_bit_identical(point, nth, uninterrupted, tmp_path, tiny_model_dir):
    nth = uninterrupted["nth"][point] if nth == "best" else nth
    project = tmp_path / "project"
    _write_project(project, tiny_model_dir)
    cache = str(tmp_path / "cache")
    killed = _tunelab(["run", "config.yaml", "--no-calibrate"], project, TUNELAB_CACHE=cache, **{KILL_ENV: f"{point}@{nth}"})
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}@{nth}: {killed.stderr[-2000:]}"
    run = project / "runs" / NAME
    registry = project / "runs" / "registry.db"
    statuses = [r.status for r in Registry(registry).list_runs() if r.name == NAME] if registry.is_file() else []
    resumed = _tunelab(["run", "--resume", str(run), "--no-calibrate"], project, TUNELAB_CACHE=cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(uninterrupted, _outcome(project))
    # A killed run's row is not left "running": whoever opened the registry next saw it interrupted.
    assert statuses in ([], ["interrupted"])
    leftovers = [str(p.relative_to(run)) for p in run.rglob("*") if p.name.startswith(".") and p.name != ".lock"]
    assert not leftovers  # the temporaries of a killed write are removed when the run goes on
