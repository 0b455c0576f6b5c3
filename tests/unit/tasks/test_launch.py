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
from tunelab.runtime import CpuState
from tunelab.tasks import launch as launch_module
from tunelab.tasks.launch import launch_command, launch_environment

SRC = Path(__file__).resolve().parents[3] / "src"


def _wait_for_checkpoint(launcher: subprocess.Popen, checkpoint: Path, timeout: float = 180) -> None:
    """Until the launched training has saved ``checkpoint`` whole; its stderr's end when it exits first."""
    deadline = time.time() + timeout
    while not (checkpoint / "state.json").is_file():
        assert launcher.poll() is None and time.time() < deadline, launcher.stderr.read()[-3000:] if launcher.poll() else "no checkpoint"
        time.sleep(0.1)


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


def _threads_option(command: list[str]) -> list[str]:
    """What the launch command gives accelerate's ``--num_cpu_threads_per_process`` (each value, in order)."""
    options = command[: command.index("-m", 3)]
    return [option.split("=", 1)[1] if "=" in option else options[i + 1] for i, option in enumerate(options)
            if option.split("=", 1)[0].replace("-", "_") == "__num_cpu_threads_per_process"]


@pytest.fixture
def sixteen_cores(monkeypatch):
    """A machine of 16 physical cores without GPUs, and no OMP_NUM_THREADS of the user's (a job runner may set one)."""
    monkeypatch.setattr(launch_module, "cpu_state", lambda **_: CpuState(cpus=32, physical_cores=16), raising=False)
    monkeypatch.setattr(launch_module, "default_device", lambda: "cpu", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(("launch", "threads"), [
    ("--num_processes 2 --cpu", "8"), ("--num_processes 2", "8"), ("--num-processes=4 --num_machines 2", "8"),
    ("--num_processes 1", "16"), ("--num_processes 32 --cpu", "1"),
])
def test_a_cpu_launch_gives_each_process_its_share_of_the_physical_cores(sixteen_cores, launch, threads):
    """accelerate sets OMP_NUM_THREADS to --num_cpu_threads_per_process (1 unless its own --cpu, which tunelab turns
    into DDP): 2 processes on 16 cores trained on 2 of them."""
    assert _threads_option(launch_command(launch, [])) == [threads]


@pytest.mark.parametrize("launch", ["--num_processes 2 --num_cpu_threads_per_process 3", "--num-processes 2 --num-cpu-threads-per-process=3"])
def test_the_users_own_thread_count_in_the_launch_is_kept(sixteen_cores, launch):
    assert _threads_option(launch_command(launch, [])) == ["3"]


def test_the_users_omp_num_threads_is_kept(sixteen_cores, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # accelerate passes it on to each process itself
    assert _threads_option(launch_command("--num_processes 2 --cpu", [])) == []


def test_a_gpu_launch_gets_no_cpu_thread_count(sixteen_cores, monkeypatch):
    monkeypatch.setattr(launch_module, "default_device", lambda: "cuda")
    assert _threads_option(launch_command("--num_processes 2", [])) == []
    assert _threads_option(launch_command("--num_processes 2 --cpu", [])) == ["8"]  # kept on the CPUs


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_each_launched_cpu_process_runs_its_share_of_threads(sixteen_cores, tmp_path):
    """Really launched: each process gets the computed count (8 here, whatever this machine has) as its OMP_NUM_THREADS,
    and tunelab's thread rule there (the loop's ThreadFollower) takes it. torch's own starting count is not asserted:
    it keeps to the cores this machine has."""
    script = tmp_path / "threads.py"
    script.write_text("import os\n"
                      "from tunelab.runtime import choose_threads\n"
                      "os.write(1, f\"THREADS {os.environ['RANK']} {os.environ['OMP_NUM_THREADS']} {choose_threads().threads}\\n\".encode())\n")
    options = "--num_processes 2 --cpu --mixed_precision no --main_process_port 29521"
    command = launch_command(options, [])
    command = command[: command.index("-m", 3)] + [str(script)]
    done = subprocess.run(command, env={**os.environ, "PYTHONPATH": str(SRC), **launch_environment(options)},
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(line for line in done.stdout.splitlines() if line.startswith("THREADS")) == ["THREADS 0 8 8", "THREADS 1 8 8"]


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
        _wait_for_checkpoint(launcher, run / "checkpoints" / "step-20")
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


@pytest.mark.parametrize("launch", ["--num_processes 2 --cpu", "--cpu --num-processes=2", "--num_machines 2 --cpu"])
def test_cpu_with_several_processes_is_ddp_kept_on_the_cpus(launch):
    """accelerate alone starts ONE process for `--num_processes 2 --cpu` (several CPU processes only through mpirun)."""
    from tunelab.tasks.launch import launch_environment

    command = launch_command(launch, [])
    assert "--multi_gpu" in command and "--cpu" not in command
    assert launch_environment(launch) == {"TUNELAB_LAUNCHED": "1", "ACCELERATE_USE_CPU": "true"}
    one = "--num_processes 1 --cpu"
    assert "--cpu" in launch_command(one, []) and "ACCELERATE_USE_CPU" not in launch_environment(one)


def test_the_processes_of_a_launch_are_counted_for_the_global_batch(tmp_path):
    from tunelab.tasks.launch import launch_processes

    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\nnum_processes: 8\n")
    assert [launch_processes(launch) for launch in (None, "--num_processes 4", "--num-processes=3 --cpu", "--mixed_precision bf16",
                                                    f"--config_file {tmp_path / 'fsdp.yaml'}",
                                                    f"--config-file {tmp_path / 'fsdp.yaml'} --num_processes 2")] == [1, 4, 3, 1, 8, 2]


@pytest.mark.parametrize("launch", ["8", "num_processes=2", "2 --multi_gpu"])
def test_a_launch_that_does_not_start_with_an_option_is_refused(launch):
    # accelerate ran a bare word as the training script (`python 8`): a traceback of accelerate's after the run had
    # started, and `tunelab estimate --launch 8` counted one process without a word.
    from tunelab.errors import ConfigError
    from tunelab.tasks.launch import launch_processes

    with pytest.raises(ConfigError, match="--launch.*--num_processes"):
        launch_command(launch, ["train", "c.yaml"])
    with pytest.raises(ConfigError):
        launch_processes(launch)


def _cli(arguments: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    return subprocess.run([sys.executable, "-m", "tunelab.cli.main", *arguments], cwd=cwd, env=environment,
                          capture_output=True, text=True, timeout=300)


def _sft_config(folder: Path, model: Path, **train) -> Path:
    (folder / "train.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is {i} plus {i}?", "completion": f"It is {2 * i}."}) + "\n" for i in range(24)
    ))
    config = {"task": "sft", "name": "run", "model": str(model), "data": {"train": "train.jsonl", "max_length": 64},
              "train": {"batch_size": 2, "precision": "fp32", "output_dir": str(folder / "runs"), **train},
              "eval": {"baselines": ["base"], "bootstrap_samples": 100}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder / "config.yaml"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_tunelab_run_started_by_accelerate_launch_is_refused_once(tiny_model_dir, tmp_path, rank):
    """`accelerate launch -m tunelab run` ran the whole pipeline in every process: the second stopped on the run folder
    the first held, and the first waited for it in training until torch's launcher killed it, minutes later."""
    _sft_config(tmp_path, tiny_model_dir)
    done = _cli(["run", "config.yaml"], tmp_path, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE="2")
    assert done.returncode == 2 and not (tmp_path / "runs").exists()
    # Every process of the group says the same: the first one says it, once.
    lines = done.stderr.strip().splitlines()
    if rank == "0":
        assert lines[0].startswith("error: tunelab run was started as one of 2 processes") and "--launch" in lines[1], lines
    else:
        assert lines == [], lines


def test_accelerate_launch_cpu_that_starts_one_process_is_refused(tiny_model_dir, tmp_path):
    """`accelerate launch --num_processes 2 --cpu -m tunelab train` starts one process (accelerate starts several CPU
    processes only through mpirun): it trained with half the global batch and said nothing."""
    _sft_config(tmp_path, tiny_model_dir, max_steps=2)
    environment = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "--mixed_precision", "no",
         "--dynamo_backend", "no", "-m", "tunelab.cli.main", "train", "config.yaml"],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode != 0, done.stderr[-3000:]  # accelerate's simple launcher answers 1 for the process's 2
    assert "started this training as one process" in done.stderr and '--launch "--num_processes N --cpu"' in done.stderr
    assert not (tmp_path / "runs" / "run").exists() and not (tmp_path / "runs" / "registry.db").exists()


@pytest.mark.skipif(not torch.distributed.is_gloo_available() or not Path("/proc").is_dir(), reason="needs gloo and /proc")
def test_a_rank_killed_mid_run_ends_the_launch_in_one_line_and_the_run_resumes_on_its_processes(tiny_model_dir, tmp_path):
    """SIGKILL of one rank of `tunelab train --launch`: the other is stopped by the launcher (no hang), tunelab ends on
    one line saying how to continue, and `--resume` with the same launch finishes the run, registered once."""
    config = _sft_config(tmp_path, tiny_model_dir, max_steps=60, save_every=10, eval_every=1000)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = f"--num_processes 2 --cpu --mixed_precision no --main_process_port {port}"
    environment = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen([sys.executable, "-m", "tunelab.cli.main", "train", str(config), "--launch", launch],
                                cwd=tmp_path, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    run = tmp_path / "runs" / "run"
    try:
        _wait_for_checkpoint(launcher, run / "checkpoints" / "step-10")
        ranks = [pid for pid in _pids_of(str(config)) if pid != launcher.pid and
                 b"LOCAL_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes()]
        assert len(ranks) == 1
        os.kill(ranks[0], signal.SIGKILL)
        _, stderr = launcher.communicate(timeout=90)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        for pid in _pids_of(str(config)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    assert launcher.returncode != 0 and not (run / "adapter").exists()
    last = stderr.strip().splitlines()[-2:]
    assert last[0].startswith("error: the launched training exited with code"), stderr[-2000:]
    assert f"tunelab train --resume {run} --launch" in last[1], last

    resumed = _cli(["train", "--resume", str(run), "--launch", launch.replace(str(port), str(port + 1)), "--json"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout[resumed.stdout.index("{"):])
    assert result["steps"] == 60 and (run / "adapter").is_dir()
    import sqlite3

    with sqlite3.connect(tmp_path / "runs" / "registry.db") as db:
        assert db.execute("SELECT name, status FROM runs").fetchall() == [("run", "finished")]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for kind in ("loss", "validation_loss"):  # one line a read: the main process alone writes them, none twice
        steps = [record["step"] for record in records if kind in record]
        assert steps and steps == sorted(set(steps)), records


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_the_processes_of_a_launch_without_a_run_name_share_one_run_folder(tiny_model_dir, tmp_path):
    """Without `name`, a run folder is named by the time the run starts: each launched process named its own, and one
    that started in a later second than the first wrote its checkpoint shards into a folder of its own."""
    config = _sft_config(tmp_path, tiny_model_dir, max_steps=2, save_every=1)
    settings = yaml.safe_load(config.read_text())
    del settings["name"]
    config.write_text(yaml.safe_dump(settings))
    # The second process starts its run 1.5 s after the first: it lands in another second whatever the machine's speed.
    late = tmp_path / "late"
    late.mkdir()
    (late / "sitecustomize.py").write_text("import os, time\nif os.environ.get('RANK') == '1':\n    time.sleep(1.5)\n")
    launch = ("--use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap "
              "LlamaDecoderLayer --fsdp_state_dict_type SHARDED_STATE_DICT --num_processes 2 --mixed_precision no "
              "--main_process_port 29526")
    done = _cli(["train", "config.yaml", "--launch", launch], tmp_path, PYTHONPATH=f"{late}{os.pathsep}{SRC}")
    assert done.returncode == 0, done.stderr[-3000:]
    folders = [p.name for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    assert (tmp_path / "runs" / folders[0] / "adapter").is_dir()
