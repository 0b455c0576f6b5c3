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

# accelerate's own choices of how processes share the work; without one, several processes mean DDP.
_MODE_FLAGS = ("--multi_gpu", "--use_fsdp", "--use_deepspeed", "--config_file", "--use_megatron_lm", "--cpu")
LAUNCH_CONFIG = "launch-config.yaml"


class LaunchError(TunelabError):
    """The launched training processes failed (their own output says why)."""


def launch_command(launch: str, tunelab_arguments: list[str]) -> list[str]:
    """``accelerate launch`` with the user's options, running ``tunelab`` with ``tunelab_arguments``.

    Several processes (``--num_processes N`` with N > 1, or ``--num_machines M`` with M > 1) without a mode
    of accelerate's (``--multi_gpu``, ``--use_fsdp``, ``--use_deepspeed``, ``--config_file``) get
    ``--multi_gpu``: DDP, which on a machine without GPUs is gloo between CPU processes (accelerate itself
    would start a single process there).

    Raises:
        ConfigError: when the options cannot be split like a shell would.
    """
    try:
        options = shlex.split(launch)
    except ValueError as error:
        raise ConfigError(f"--launch {launch!r}: {error}", 'quote it as one argument, e.g. --launch "--num_processes 2"') from None

    def flag(option: str) -> str:
        # accelerate takes --num-processes as well as --num_processes (and so every option of its own).
        return "--" + option[2:].split("=", 1)[0].replace("-", "_") if option.startswith("--") else option

    def number(name: str) -> int:
        for index, option in enumerate(options):
            if "=" not in option and flag(option) == name and index + 1 < len(options) and options[index + 1].isdigit():
                return int(options[index + 1])
            if "=" in option and flag(option) == name and option.split("=", 1)[1].isdigit():
                return int(option.split("=", 1)[1])
        return 1

    several = number("--num_processes") > 1 or number("--num_machines") > 1
    if several and not any(flag(option) in _MODE_FLAGS for option in options):
        options = ["--multi_gpu", *options]
    if not any(flag(option) == "--dynamo_backend" for option in options):
        options += ["--dynamo_backend", "no"]  # train.compile decides compilation, not accelerate's defaults
    return [sys.executable, "-m", "accelerate.commands.launch", *options, "-m", "tunelab.cli.main", *tunelab_arguments]


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


def run_launched(command: list[str]) -> int:
    """Run a launch command, its output going where this process's goes; returns its exit code."""
    with subprocess.Popen(command, env={**os.environ, "TUNELAB_LAUNCHED": "1"}) as process, _terminated_together(process):
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
        launch_command(launch, arguments), env={**os.environ, "TUNELAB_LAUNCHED": "1", **lock_for_children(run.root)},
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
