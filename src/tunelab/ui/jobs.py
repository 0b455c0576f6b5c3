"""Runs started from the browser: each one is a real ``tunelab run`` process, watched through its run folder.

A subprocess rather than a thread: training holds the GIL and the CPU for minutes, a crash in it must
not take the web app down, and cancelling is what Ctrl-C does in a terminal (SIGINT: the pipeline
marks the run cancelled in the registry, and ``tunelab run --resume`` continues it later). A cloud run
(``train.backend: openai``) is billed by its provider until its job there ends: its Cancel also cancels that job, as
``tunelab cancel RUN`` does, once the process has let go of the run folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.config import ResolvedConfig, load_config
from tunelab.errors import ConfigError

LOG_TAIL_CHARS = 4000
# How long Cancel waits for an interrupted cloud run's process to let go of its run folder before it cancels the
# provider's job anyway (the process then records the cancel when it next looks at the job).
CLOUD_CANCEL_WAIT_S = 30.0


@dataclass
class Job:
    """One started run: its process, where it writes, and whether someone asked it to stop."""

    id: str
    config_path: str
    command: list[str]
    run_dir: Path
    registry: Path
    process: subprocess.Popen
    log_path: Path
    started_at: float = field(default_factory=time.time)
    cancelled: bool = False
    kind: str = "run"  # run: `tunelab run` (run_dir is the run folder); advise: `tunelab advise` (run_dir is the advice folder)
    cloud: bool = False  # train.backend: openai: a provider's job trains it (and bills) until it is cancelled there
    cloud_cancel: str | None = None  # what cancelling the provider's job did (one line), once Cancel was asked
    cloud_cancelled: bool = False  # the provider's job is cancelled, or there was none to cancel: not asked again

    @property
    def name(self) -> str:
        return self.run_dir.name

    def status(self) -> str:
        """running, finished, failed or cancelled."""
        code = self.process.poll()
        if code is None:
            return "running"
        if self.cancelled:
            return "cancelled"
        return "finished" if code == 0 else "failed"

    def can_cancel(self) -> bool:
        """Running; or a cloud run stopped without a model whose provider's job was not cancelled yet (a lost connection
        stops the process, not the job)."""
        status = self.status()
        return status == "running" or (self.cloud and status != "finished" and not self.cloud_cancelled)

    def log_tail(self) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-LOG_TAIL_CHARS:]


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_process(command: list[str], log: Any, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` with its output in ``log``, cancellable by SIGINT as Ctrl-C would.

    A UI started in the background (``tunelab ui &``, a non-interactive shell, CI) inherits SIGINT
    ignored, and a Python child that starts with SIGINT ignored never raises KeyboardInterrupt: cancel
    would do nothing. The child gets the default action back before it starts.
    """
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        preexec_fn=_default_sigint if os.name == "posix" else None,
    )  # fmt: skip


def prepare_run(config_path: str | Path, overrides: list[str], registry: Path) -> tuple[ResolvedConfig, list[str]]:
    """Load the config as ``tunelab run`` will, and the overrides that pin its run name and registry.

    The run name is fixed here (the config's ``name``, else the name ``tunelab run`` would give it) so
    the browser knows the run folder to watch before the process writes anything; the registry is the
    one this UI shows, so the started run appears among the runs.

    Raises:
        ConfigError: for a missing or invalid config, or a run folder that already exists.
    """
    from tunelab.tasks.pipeline import run_name

    path = Path(config_path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", "give the path of a run config (YAML), relative to where `tunelab ui` was started")
    config = load_config(path, overrides)
    pinned = list(overrides)
    if not config.name:
        pinned.append(f"name={run_name(config)}")
    pinned.append(f"registry={registry}")
    config = load_config(path, pinned)
    run_dir = Path(config.train.output_dir) / str(config.name)
    if run_dir.exists() and any(run_dir.iterdir()):
        raise ConfigError(f"run folder {run_dir} already exists; a run is never overwritten", "set another name (an override name=...)")
    # A name the registry holds for another folder: the process would fail registering it after the data check, and the
    # job's page would meanwhile show that earlier run as its own.
    from tunelab.registry import Registry, RegistryError

    try:
        taken = Registry(registry).get_run(str(config.name))
    except RegistryError:
        taken = None
    if taken is not None and taken.name == config.name:
        raise ConfigError(f"a run named {config.name} is already in the registry {registry} (folder {taken.run_dir})",
                          "set another name (an override name=...)")
    return config, pinned


class UnknownJob(ConfigError):
    """No job of this id in this UI session: a 404, as an unknown run is (the ids of an earlier session are gone)."""


class JobManager:
    """The runs this UI process started (kept in memory: the registry keeps everything that lasts)."""

    def __init__(self, registry: Path, jobs_dir: Path) -> None:
        self.registry = Path(registry)
        self.jobs_dir = Path(jobs_dir)
        self.jobs: dict[str, Job] = {}

    def start(self, config_path: str | Path, overrides: list[str] | None = None, *, calibrate: bool = True) -> Job:
        """Start ``tunelab run CONFIG [overrides]`` as a child process (its output, as in a terminal, goes to a log file).

        Raises:
            ConfigError: for an invalid config or an existing run folder (nothing is started).
        """
        config, pinned = prepare_run(config_path, overrides or [], self.registry)
        self._refuse_running(Path(config.train.output_dir) / str(config.name))
        command = [sys.executable, "-m", "tunelab.cli.main", "run", str(config_path), *pinned]
        if not calibrate:
            command.append("--no-calibrate")
        return self._spawn(command, str(config_path), Path(config.train.output_dir) / str(config.name), cloud=config.train.backend == "openai")

    def resume(self, run_dir: Path) -> Job:
        """Continue an interrupted, cancelled (or failed) run folder as ``tunelab run --resume RUN`` does, as a child process.

        Raises:
            ConfigError: for a folder without the pipeline state a resume needs, or one a job of this UI is still making.
            CloudJobFailed: for a cloud run whose provider's job ended without a model (``tasks.pipeline.resume_refusal``).
        """
        from tunelab.runs import RunFolder, read_state

        state = read_state(RunFolder(Path(run_dir)))
        if state is None:
            raise ConfigError(f"{run_dir} has no pipeline state to resume from", "start the run again under a new name")
        from tunelab.tasks.pipeline import resume_refusal

        refusal = resume_refusal(run_dir)
        if refusal is not None:
            raise refusal
        self._refuse_running(Path(run_dir))
        backend = ((state.get("config") or {}).get("train") or {}).get("backend")
        command = [sys.executable, "-m", "tunelab.cli.main", "run", "--resume", str(run_dir)]
        return self._spawn(command, "", Path(run_dir), cloud=backend == "openai")

    def _spawn(self, command: list[str], config_path: str, run_dir: Path, *, kind: str = "run", cloud: bool = False) -> Job:
        """Start ``command`` with its output (as in a terminal) in a log file of its own, and keep it as a job."""
        job_id = uuid.uuid4().hex[:10]
        folder = self.jobs_dir / job_id
        folder.mkdir(parents=True, exist_ok=True)
        log_path = folder / "log.txt"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "120"}
        with log_path.open("wb") as log:
            process = start_process(command, log, env)
        job = Job(job_id, config_path, command, run_dir, self.registry, process, log_path, kind=kind, cloud=cloud)
        self.jobs[job_id] = job
        return job

    def start_advise(
        self, config_path: str | Path, overrides: list[str] | None = None, *, budget_minutes: float | None = None,
        label_usd: float | None = None, retrain_every: str = "30d",
    ) -> Job:
        """Start ``tunelab advise CONFIG`` as a child process, its advice folder beside this UI's registry.

        Raises:
            ConfigError: for an invalid config, cadence or budget, or an advice folder that already exists.
        """
        from tunelab.config import parse_duration
        from tunelab.tasks.pipeline import run_name

        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}", "give the path of a run config (YAML), relative to where `tunelab ui` was started")
        config = load_config(path, overrides or [])
        parse_duration(retrain_every, "re-tune every")
        if budget_minutes is not None and budget_minutes <= 0:
            raise ConfigError(f"the budget must be above 0 minutes, got {budget_minutes:g}")
        # The advice lands beside the registry, where the Advise page lists it, under a name known before it starts.
        pinned = [*(overrides or []), f"train.output_dir={self.registry.parent}"]
        if not config.name:
            pinned.append(f"name={run_name(config)}")
        config = load_config(path, pinned)
        folder = self.registry.parent / f"advise-{config.name}"
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder} already exists; an advice is never overwritten", "set another name (an override name=...)")
        self._refuse_running(folder)
        command = [sys.executable, "-m", "tunelab.cli.main", "advise", str(config_path), *pinned, "--retrain-every", retrain_every]
        if budget_minutes is not None:
            command += ["--budget-minutes", f"{budget_minutes:g}"]
        if label_usd is not None:
            command += ["--label-usd", f"{label_usd:g}"]
        return self._spawn(command, str(config_path), folder, kind="advise")

    def _refuse_running(self, folder: Path) -> None:
        """Refuse a second job on ``folder`` while the first is going: in the seconds before its process creates the
        folder, the folder check alone lets a second Start (another tab, a page restored by Back) through.

        Raises:
            ConfigError: naming the job already started.
        """
        for job in self.jobs.values():
            if job.process.poll() is None and job.run_dir.resolve() == folder.resolve():
                raise ConfigError(f"{folder} is already being made by a job started from this UI (/jobs/{job.id})",
                                  "wait for it, cancel it, or set another name (an override name=...)")

    def get(self, job_id: str) -> Job:
        """Raises: UnknownJob (a ConfigError) when no job has this id."""
        if job_id not in self.jobs:
            raise UnknownJob(f"no started run '{job_id}' in this UI session", "runs started earlier are on the Runs page")
        return self.jobs[job_id]

    def cancel(self, job_id: str) -> Job:
        """Interrupt the run as Ctrl-C would (a second cancel terminates it); a cloud run's job at the provider is cancelled too."""
        job = self.get(job_id)
        if job.process.poll() is None:
            job.process.send_signal(signal.SIGTERM if job.cancelled else signal.SIGINT)
            job.cancelled = True
        if job.cloud and not job.cloud_cancelled:
            self._cancel_cloud_job(job)
        return job

    @staticmethod
    def _cancel_cloud_job(job: Job) -> None:
        """Cancel the provider's job of ``job``'s run, after its process has stopped (it then records the cancel in the
        run folder and the registry); refused or out of reach, the next Cancel asks again."""
        from tunelab.errors import TunelabError
        from tunelab.remote.finetune import CREATING, NO_JOB
        from tunelab.runs import RunFolder
        from tunelab.tasks.pipeline import cancel_cloud_run

        try:
            job.process.wait(CLOUD_CANCEL_WAIT_S)
        except subprocess.TimeoutExpired:
            pass  # still going: the provider's job is cancelled anyway (money), and the process sees it at its next look
        if not RunFolder(job.run_dir).pipeline_state.is_file():
            job.cloud_cancel, job.cloud_cancelled = "stopped before its data check passed: no provider's job to cancel", True
            return
        try:
            result = cancel_cloud_run(job.run_dir)
        except TunelabError as error:
            job.cloud_cancel = f"the provider's job is NOT cancelled: {error}"
            return
        # A job asked for without an answer and not listed yet may still appear: the next Cancel looks again.
        job.cloud_cancel = " ".join([result.summary, *result.warnings])
        job.cloud_cancelled = not (result.outcome == NO_JOB and result.status == CREATING)

    def stop_all(self, timeout: float = 20.0) -> None:
        """Interrupt every run still going and wait for them (the UI is shutting down)."""
        running = [job for job in self.jobs.values() if job.process.poll() is None]
        for job in running:
            job.cancelled = True
            job.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for job in running:
            try:
                job.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
