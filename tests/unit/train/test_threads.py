"""The training loop sizes torch's threads to the free cores at its start and at each validation point;
``train.threads`` and an explicit ``OMP_NUM_THREADS`` win. The machine's load is injected."""

from __future__ import annotations

import json

import pytest
import torch
from train_helpers import records_split, sft_records, tiny_config

from tunelab import runtime
from tunelab.runtime import CpuState
from tunelab.tasks import run_training


class _Machine:
    def __init__(self, others_busy: float) -> None:
        self.others_busy = others_busy

    def __call__(self, **kwargs) -> CpuState:
        return CpuState(cpus=2, physical_cores=2, others_busy=self.others_busy)


@pytest.fixture
def machine(monkeypatch):
    before = torch.get_num_threads()
    machine = _Machine(1.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "cpu_state", machine)
    torch.set_num_threads(2)
    yield machine
    torch.set_num_threads(before)


def _threads_by_step(run_dir) -> dict[int, int]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["threads"] for row in rows if "threads" in row}


def test_the_loop_starts_on_the_free_cores_and_follows_them_at_validation_points(machine, tiny_model_dir, tmp_path):
    # One core busy at the start: one thread, not torch's two on a shared core. The neighbour leaves after
    # step 2; the validation point at step 3 gives the run both cores back.
    def progress(update):
        if update.step == 2:
            machine.others_busy = 0.0

    config = tiny_config(tiny_model_dir, max_steps=6, eval_every=3, log_every=1)
    run_training(config, records_split(sft_records(12), sft_records(4)), run_dir=tmp_path / "run", progress=progress)
    assert _threads_by_step(tmp_path / "run") == {1: 1, 2: 1, 3: 2, 4: 2, 5: 2, 6: 2}


def test_train_threads_and_omp_num_threads_win_over_the_free_cores(machine, tiny_model_dir, tmp_path, monkeypatch):
    config = tiny_config(tiny_model_dir, max_steps=2, threads=2)
    run_training(config, records_split(sft_records(8)), run_dir=tmp_path / "configured")
    assert set(_threads_by_step(tmp_path / "configured").values()) == {2}

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    run_training(tiny_config(tiny_model_dir, max_steps=2), records_split(sft_records(8)), run_dir=tmp_path / "omp")
    assert set(_threads_by_step(tmp_path / "omp").values()) == {2}
