"""``--launch``: the accelerate launch command built from the user's options."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.paths import run_folder_holder
from tunelab.tasks.launch import launch_command

SRC = Path(__file__).resolve().parents[3] / "src"


@pytest.mark.parametrize("launch", ["--num_processes 2", "--num-processes 2", "--num-processes=2", "--num-machines 2"])
def test_several_processes_get_ddp_however_accelerate_spells_the_option(launch):
    command = launch_command(launch, ["train", "c.yaml"])
    assert "--multi_gpu" in command


@pytest.mark.parametrize("launch", ["--num-processes 2 --use-fsdp", "--num_processes 2 --config-file fsdp.yaml", "--num-processes 2 --multi-gpu"])
def test_a_mode_of_accelerates_own_is_kept(launch):
    assert "--multi_gpu" not in launch_command(launch, [])


@pytest.mark.parametrize("launch", ["--dynamo_backend inductor", "--dynamo-backend inductor", "--dynamo-backend=inductor"])
def test_the_users_dynamo_backend_is_not_overridden(launch):
    command = launch_command(launch, [])
    assert "no" not in command[: command.index("-m", 3)]


def _pids_of(marker: str) -> list[int]:
    """The processes whose command line names ``marker`` (this test's own folder): the launched group."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.skipif(not torch.distributed.is_gloo_available() or not Path("/proc").is_dir(), reason="needs gloo and /proc")
def test_sigterm_to_tunelab_train_launch_stops_the_training_processes(tiny_model_dir, tmp_path):
    """torch's launcher starts each training process in a session of its own: `kill PID` (or `timeout`) of
    `tunelab train --launch` once ended that process alone, and the two trainers ran on, holding the run folder."""
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."}) + "\n" for i in range(16)
    ))
    config = {
        "task": "sft", "name": "long", "model": str(tiny_model_dir), "data": {"train": "train.jsonl", "max_length": 64},
        "train": {"batch_size": 2, "max_steps": 100000, "save_every": 20, "eval_every": 100000, "precision": "fp32",
                  "output_dir": str(tmp_path / "runs")},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli.main", "train", str(tmp_path / "config.yaml"),
         "--launch", f"--num_processes 2 --mixed_precision no --main_process_port {port}"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    run = tmp_path / "runs" / "long"
    try:
        deadline = time.time() + 180
        while not (run / "checkpoints" / "step-20" / "state.json").is_file():
            assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()[-3000:] if launcher.poll() else "no checkpoint"
            time.sleep(0.1)
        assert run_folder_holder(run) is not None
        launcher.send_signal(signal.SIGTERM)
        launcher.wait(timeout=60)
        deadline = time.time() + 30
        while (run_folder_holder(run) is not None or _pids_of(str(tmp_path / "config.yaml"))) and time.time() < deadline:
            time.sleep(0.2)
        assert run_folder_holder(run) is None and not _pids_of(str(tmp_path / "config.yaml"))
        assert not (run / "adapter").exists()
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in _pids_of(str(tmp_path / "config.yaml")):  # what outlived the launcher: this test's own processes
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
