"""Training on several processes or machines: ``--launch "ACCELERATE LAUNCH OPTIONS"`` runs ``tunelab train``
under ``accelerate launch``, which starts one process per device and sets up DDP, FSDP or DeepSpeed.

Nothing of the scale-out is tunelab's own: accelerate starts the processes, torch.distributed connects them
(NCCL on GPUs, gloo on CPUs), and the loop (``tunelab.train.loop``) gives each process its share of every
optimizer step. ``tunelab run --launch ...`` launches only its train step that way; checking, splitting,
estimating and evaluating stay in the one process that runs the pipeline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelab.config import ResolvedConfig
from tunelab.errors import ConfigError, TunelabError
from tunelab.paths import atomic_write_text, lock_for_children
from tunelab.runs import RunFolder
from tunelab.runtime import cpu_state, default_device

# accelerate's own choices of how processes share the work; without one, several processes mean DDP.
_MODE_FLAGS = ("--multi_gpu", "--use_fsdp", "--use_deepspeed", "--config_file", "--use_megatron_lm", "--cpu")
LAUNCH_CONFIG = "launch-config.yaml"
CPU_ONLY = "ACCELERATE_USE_CPU"  # what accelerate launch --cpu sets for its processes


class LaunchError(TunelabError):
    """The launched training processes failed (their own output says why)."""


def _split(launch: str) -> list[str]:
    """The ``--launch`` options as accelerate gets them.

    Raises:
        ConfigError: when the options cannot be split like a shell would.
    """
    try:
        options = shlex.split(launch)
    except ValueError as error:
        raise ConfigError(f"--launch {launch!r}: {error}", 'quote it as one argument, e.g. --launch "--num_processes 2"') from None
    if options and not options[0].startswith("-"):
        # accelerate runs its first bare word as the training script: `--launch 8` ran `python 8`.
        raise ConfigError(
            f"--launch {launch!r}: accelerate launch options start with -- ({options[0]!r} would be run as the training script)",
            'e.g. --launch "--num_processes 8"',
        )
    return options


def _flag(option: str) -> str:
    # accelerate takes --num-processes as well as --num_processes (and so every option of its own).
    return "--" + option[2:].split("=", 1)[0].replace("-", "_") if option.startswith("--") else option


def _value(options: list[str], name: str) -> str | None:
    """The value given to accelerate's option ``name`` (``--name V`` or ``--name=V``), or None."""
    for index, option in enumerate(options):
        if _flag(option) != name:
            continue
        if "=" in option:
            return option.split("=", 1)[1]
        if index + 1 < len(options):
            return options[index + 1]
    return None


def _count(options: list[str], name: str) -> int:
    value = _value(options, name)
    return int(value) if value is not None and value.isdigit() else 1


def launch_processes(launch: str | None) -> int:
    """How many training processes ``--launch`` starts in all (accelerate's ``--num_processes`` counts every machine's,
    or its ``--config_file``'s ``num_processes``); 1 without a launch. The global batch is ``batch_size`` times this.

    Raises:
        ConfigError: when the options cannot be split like a shell would.
    """
    if not launch:
        return 1
    options = _split(launch)
    if _value(options, "--num_processes") is None and _value(options, "--config_file"):
        import yaml

        try:
            settings = yaml.safe_load(Path(_value(options, "--config_file") or "").read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return 1  # accelerate itself says what is wrong with the file when it starts
        processes = settings.get("num_processes") if isinstance(settings, dict) else None
        return processes if isinstance(processes, int) and processes > 0 else 1
    return _count(options, "--num_processes")


def _on_cpus(options: list[str]) -> bool:
    """``--cpu`` with several processes: accelerate alone starts ONE process for it (several only through mpirun), which
    trained with one process's share of the global batch without a word. tunelab starts them as DDP over gloo."""
    several = _count(options, "--num_processes") > 1 or _count(options, "--num_machines") > 1
    return several and any(_flag(option) == "--cpu" for option in options)


def _cpu_threads(options: list[str]) -> list[str]:
    """``--num_cpu_threads_per_process`` for a launch that trains on the CPUs, sharing this machine's cores between
    its processes; nothing for a GPU launch, an ``accelerate config`` file's, or a thread count the user chose.

    accelerate sets every process's OMP_NUM_THREADS to that option, 1 unless given (its own share of the cores
    only for its ``--cpu``, which :func:`launch_command` turns into DDP), and an explicit OMP_NUM_THREADS wins
    over tunelab's free-core rule: 2 processes on 16 cores trained on 2. An OMP_NUM_THREADS of the user's reaches
    the processes as it is (accelerate passes it on), and ``train.threads`` wins in each process over both.
    """
    chosen = any(_flag(option) in ("--num_cpu_threads_per_process", "--config_file") for option in options)
    if chosen or (os.environ.get("OMP_NUM_THREADS") or "").strip():
        return []
    if not any(_flag(option) == "--cpu" for option in options) and default_device() != "cpu":
        return []
    # accelerate's own count of one machine's processes; the cores are this process's (affinity, quota).
    local = max(1, _count(options, "--num_processes") // _count(options, "--num_machines"))
    return ["--num_cpu_threads_per_process", str(max(1, cpu_state(sample_seconds=None).cores // local))]


def launch_command(launch: str, tunelab_arguments: list[str]) -> list[str]:
    """``accelerate launch`` with the user's options, running ``tunelab`` with ``tunelab_arguments``.

    Several processes (``--num_processes N`` with N > 1, or ``--num_machines M`` with M > 1) without a mode
    of accelerate's (``--multi_gpu``, ``--use_fsdp``, ``--use_deepspeed``, ``--config_file``) get
    ``--multi_gpu``: DDP, which on a machine without GPUs is gloo between CPU processes (accelerate itself
    would start a single process there). ``--cpu`` with several processes is the same DDP, kept on the CPUs
    (``launch_environment``): accelerate's own ``--cpu`` starts one process unless mpirun starts them. A launch
    on the CPUs gives each process its share of the physical cores as threads (``_cpu_threads``).

    Raises:
        ConfigError: when the options cannot be split like a shell would.
    """
    options = _split(launch)
    options += _cpu_threads(options)  # before --cpu goes: it says the launch is on the CPUs
    if _on_cpus(options):
        options = [option for option in options if _flag(option) != "--cpu"]
    several = _count(options, "--num_processes") > 1 or _count(options, "--num_machines") > 1
    if several and not any(_flag(option) in _MODE_FLAGS for option in options):
        options = ["--multi_gpu", *options]
    if not any(_flag(option) == "--dynamo_backend" for option in options):
        options += ["--dynamo_backend", "no"]  # train.compile decides compilation, not accelerate's defaults
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "tunelab.cli.main", *tunelab_arguments]


def launch_environment(launch: str) -> dict[str, str]:
    """The environment variables the launched processes get besides this process's own.

    Raises:
        ConfigError: when the options cannot be split like a shell would.
    """
    environment = {"TUNELAB_LAUNCHED": "1"}
    if _on_cpus(_split(launch)):
        environment[CPU_ONLY] = "true"  # accelerate's own flag: its processes stay on the CPU, GPUs or not
    return environment


def check_not_launched(command: str) -> None:
    """Refuse to run ``command`` (the whole pipeline, a sweep) as one of several processes started by
    ``accelerate launch`` or torchrun: every process ran every step (the data check, the baselines, the evaluation,
    the registry row) and the second one stopped on the run folder the first held, while the first waited for it in
    training until the launcher killed it.

    Raises:
        ConfigError: naming ``--launch``, which runs only the train step on several processes.
    """
    size = next((int(value) for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
                 if (value := os.environ.get(name, "")).isdigit()), 1)
    if size > 1:
        hint = "run it as one process, without accelerate launch"
        if command == "tunelab run":
            hint = (f'run it as one process with --launch "ACCELERATE LAUNCH OPTIONS" (e.g. tunelab run CONFIG --launch '
                    f'"--num_processes {size}"), or launch `tunelab train CONFIG` itself')
        raise ConfigError(f"{command} was started as one of {size} processes (accelerate launch or torchrun): it runs in one process", hint)


def is_main_process() -> bool:
    """Whether this is the first process of a launched group (or the only process): the one that prints."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def _terminated_together(process: subprocess.Popen) -> Iterator[None]:
    """While the block waits on ``process`` (accelerate's launcher), a SIGTERM to this process is passed on to it,
    and once it has ended, this process ends as the SIGTERM would have ended it.

    torch's launcher starts each training process in a session of its own, so a SIGTERM sent to this process
    (``kill PID``, ``timeout``) reached no trainer: it ended this process alone and the training ran on, holding the
    run folder. The launcher, told, stops its processes (SIGTERM, SIGKILL after its timeout). Ctrl-C needs no help:
    the terminal signals the launcher, which shares this process's group.
    """
    previous = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return
    received: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        # Only the signal is passed on here: the block's own wait returns once the launcher has stopped its processes.
        received.append(signum)
        process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, pass_on)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if received:
            os.kill(os.getpid(), signal.SIGTERM)


def run_launched(launch: str, tunelab_arguments: list[str]) -> int:
    """Run ``tunelab_arguments`` under ``accelerate launch`` with the ``launch`` options, its output going where this
    process's goes; returns its exit code.

    Raises:
        ConfigError: when the options cannot be split like a shell would.
    """
    command = launch_command(launch, tunelab_arguments)
    with subprocess.Popen(command, env={**os.environ, **launch_environment(launch)}) as process, _terminated_together(process):
        return process.wait()


def train_launched(config: ResolvedConfig, run_dir: str | Path, launch: str, *, resume: bool) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` under ``accelerate launch`` (the pipeline's train step with ``--launch``);
    returns the ``TrainResult`` as a dict.

    The launched processes read the config from ``run_dir/launch-config.yaml`` (data paths made absolute,
    so the file reads the same from anywhere) and continue from the newest checkpoint when ``resume``.

    Raises:
        LaunchError: when the launched training fails.
    """
    from tunelab.config import dump_config

    run = RunFolder(Path(run_dir))
    if resume:
        arguments = ["train", "--resume", str(run.root), "--json"]
    else:
        settings = json.loads(json.dumps(config.model_dump(mode="json")))
        for key in ("train", "validation", "test", "out_of_scope"):
            value = settings["data"].get(key)
            if isinstance(value, str) and Path(value).exists():
                settings["data"][key] = str(Path(value).resolve())
        path = run.root / LAUNCH_CONFIG
        atomic_write_text(path, dump_config(type(config).model_validate(settings)))
        arguments = ["train", str(path), "--run-dir", str(run.root), "--json"]
    with subprocess.Popen(
        launch_command(launch, arguments), env={**os.environ, **launch_environment(launch), **lock_for_children(run.root)},
        stdout=subprocess.PIPE, text=True,
    ) as process, _terminated_together(process):
        stdout, _ = process.communicate()
    if process.returncode != 0:
        raise LaunchError(
            f"the launched training exited with code {process.returncode} (its processes' output is above)",
            f"fix what they name, then continue with `tunelab run --resume {run.root} --launch {shlex.quote(launch)}`",
        )
    try:
        return json.JSONDecoder().raw_decode(stdout[stdout.index("{"):])[0]
    except ValueError:
        raise LaunchError(f"the launched training printed no result: {stdout[-500:]!r}") from None
