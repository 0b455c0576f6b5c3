"""What a crash, a second process or damaged state does to a `tunelab run` (in-process, on the tiny model):
the registry row and pipeline.json stay joined, one process per run folder, a damaged checkpoint or state
file gets a fallback or one line naming it, the row says why a run stopped, and a resume works from any folder.

The SIGKILL at every named kill point, with bit-identical results, is tests/unit/faults.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.errors import ConfigError, TunelabError
from tunelab.paths import RunFolderInUse, lock_run_folder, run_folder_holder, unlock_run_folder
from tunelab.registry.store import Registry
from tunelab.tasks.pipeline import run_pipeline

WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}
NAME = "crashy"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _project(folder: Path, model_dir: Path, **train) -> Path:
    """A project folder: data, and a config with paths relative to it (as a user writes one)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i}", "label": "AB"[i % 2]} for i in range(40)]
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    settings = {"method": "lora", "lr": 1e-2, "max_steps": 6, "batch_size": 4, "eval_every": 2, "keep_last": 3,
                "precision": "fp32", "output_dir": "runs", **train}  # fmt: skip
    config = {
        "task": "classify", "model": str(model_dir), "name": NAME,
        "data": {"train": "data/train.jsonl", "test_size": 0.25, "validation_size": 0.2, "max_length": 64},
        "train": settings, "lora": {"r": 4}, "eval": {"baselines": ["base"], "bootstrap_samples": 100},
    }  # fmt: skip
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder / "config.yaml"


def _interrupted_in_training(project: Path, model_dir: Path, monkeypatch, at_step: int = 6, **train) -> Path:
    """A run stopped by Ctrl-C after its training step ``at_step`` (its checkpoints written); returns the run folder."""
    from tunelab.config import load_config

    path = _project(project, model_dir, **train)
    monkeypatch.chdir(project)
    config = load_config(path)

    def progress(event) -> None:
        if event.step == at_step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, train_progress=progress, calibrate=False)
    return project / "runs" / NAME


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tiny_model_dir):
    """One run interrupted after training step 6 (checkpoints 2, 4, 6 and best/), copied by each test."""
    monkeypatch = pytest.MonkeyPatch()
    try:
        project = tmp_path_factory.mktemp("interrupted") / "project"
        _interrupted_in_training(project, tiny_model_dir, monkeypatch, max_steps=8)
    finally:
        monkeypatch.undo()
    return project


def _copy(project: Path, tmp_path: Path, monkeypatch) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(project, copy)
    monkeypatch.chdir(copy)
    return copy / "runs" / NAME


def _row(project_run: Path):
    return Registry(project_run.parent / "registry.db").get_run(NAME)


# ------------------------------------------------------------------ the registry row and pipeline.json


def test_a_run_stopped_between_creating_its_row_and_saving_its_id_can_be_resumed(tmp_path, tiny_model_dir, monkeypatch):
    """A kill or Ctrl-C there made every later --resume fail with "a run named ... already exists"."""
    from tunelab.config import load_config
    from tunelab.tasks import pipeline

    monkeypatch.chdir(tmp_path)
    config = load_config(_project(tmp_path, tiny_model_dir))

    def stop_there(name: str) -> None:
        if name == "pipeline.registered":
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "kill_point", stop_there)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, calibrate=False)
    run = tmp_path / "runs" / NAME
    assert "registry_id" not in json.loads((run / "pipeline.json").read_text())
    monkeypatch.setattr(pipeline, "kill_point", lambda name: None)
    outcome = run_pipeline(resume=run, calibrate=False)
    rows = Registry(tmp_path / "runs" / "registry.db").list_runs()
    assert [(r.name, r.status) for r in rows] == [(NAME, "finished")]  # the same row, taken over
    assert outcome.registry_id == rows[0].id == json.loads((run / "pipeline.json").read_text())["registry_id"]
    assert rows[0].error is None


def test_tunelab_train_stopped_between_its_row_and_its_id_can_run_again(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.config import load_config
    from tunelab.data.split import make_split
    from tunelab.tasks import pipeline

    monkeypatch.chdir(tmp_path)
    config = load_config(_project(tmp_path, tiny_model_dir))
    split = make_split(config)
    run_dir = tmp_path / "runs" / NAME

    def stop_there(name: str) -> None:
        if name == "pipeline.registered":
            raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "kill_point", stop_there)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train_registered(config, split, run_dir=run_dir)
    registry = Registry(tmp_path / "runs" / "registry.db")
    assert [(r.name, r.status) for r in registry.list_runs()] == [(NAME, "interrupted")]  # its process let go of the folder
    monkeypatch.setattr(pipeline, "kill_point", lambda name: None)
    pipeline.train_registered(config, split, run_dir=run_dir)  # the same command again takes its row over
    assert [(r.name, r.status) for r in registry.list_runs()] == [(NAME, "finished")]


@pytest.mark.parametrize("full_at", ["calibration.json", "pipeline.json"])  # in training; after it, the weights saved
def test_tunelab_train_on_a_full_disk_is_one_line_and_its_row_says_so(tmp_path, tiny_model_dir, monkeypatch, capsys, full_at):
    """Only a checkpoint or the weights got the one line: any other write of `tunelab train` on a full disk (its
    calibration, its pipeline.json) was an OSError traceback, where `tunelab run` says "disk full while writing X"."""
    import errno

    from tunelab.cli import main as cli
    from tunelab.paths import atomic_write_bytes

    monkeypatch.chdir(tmp_path)
    path = _project(tmp_path, tiny_model_dir, max_steps=2)
    adapter = tmp_path / "runs" / NAME / "adapter"

    def full_disk(target, data):
        if Path(target).name == full_at and adapter.is_dir():
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        atomic_write_bytes(target, data)

    monkeypatch.setattr("tunelab.paths.atomic_write_bytes", full_disk)  # under every atomic_write_text
    monkeypatch.setattr(sys, "argv", ["tunelab", "train", str(path)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    output = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in output, output
    assert output.startswith("error: disk full while writing ") and full_at in output.splitlines()[0], output
    record = _row(tmp_path / "runs" / NAME)
    if full_at == "calibration.json":
        assert record.status == "failed" and record.error.startswith("disk full while writing"), record
    monkeypatch.undo()  # space freed: the same run goes on
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["tunelab", "train", "--resume", str(tmp_path / "runs" / NAME)])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0 and _row(tmp_path / "runs" / NAME).status == "finished"


def test_a_killed_runs_row_is_marked_interrupted_when_the_registry_is_next_read(tmp_path):
    run = tmp_path / "runs" / "gone"
    run.mkdir(parents=True)
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="gone", task="sft", status="running", run_dir=str(run))
    registry.create_run(name="elsewhere", task="sft", status="running", run_dir=str(tmp_path / "no-such-folder"))
    # A process that holds the run folder as a training run does, then dies by SIGKILL.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tunelab.paths import lock_run_folder; lock_run_folder(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")},
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    assert run_folder_holder(run) == holder.pid
    assert registry.get_run("gone").status == "running"  # alive: left alone
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert run_folder_holder(run) is None  # the kernel dropped the lock with the process
    record = registry.get_run("gone")
    assert record.status == "interrupted" and "--resume" in record.error
    assert registry.get_run("elsewhere").status == "running"  # no lock file to judge by: left as stored


# ------------------------------------------------------------------ one process per run folder


def test_a_second_process_on_the_same_run_folder_gets_one_line_naming_the_first(interrupted, tmp_path, monkeypatch):
    run = _copy(interrupted, tmp_path, monkeypatch)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tunelab.paths import lock_run_folder; lock_run_folder(sys.argv[1]); "
         "print('locked', flush=True); time.sleep(600)", str(run)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderInUse, match=f"in use by process {holder.pid}"):
            run_pipeline(resume=run, calibrate=False)
        from tunelab.config import load_config
        from tunelab.tasks import run_training

        with pytest.raises(RunFolderInUse, match=str(holder.pid)):  # `tunelab train --resume` too
            run_training(load_config(run / "config.yaml"), None, run_dir=run, resume=True)  # type: ignore[arg-type]
        cli = subprocess.run(
            [sys.executable, "-m", "tunelab.cli.main", "run", "--resume", str(run), "--no-calibrate"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")},
        )  # fmt: skip
        assert cli.returncode == 2 and f"process {holder.pid}" in cli.stderr and "Traceback" not in cli.stderr
    finally:
        holder.kill()
        holder.wait(30)
    # Within one process the lock is re-entrant (the pipeline and the training it starts both hold it).
    lock_run_folder(run)
    lock_run_folder(run)
    unlock_run_folder(run)
    assert run_folder_holder(run) == os.getpid()
    unlock_run_folder(run)
    assert run_folder_holder(run) is None


def test_processes_a_run_starts_to_train_it_work_under_its_lock(tmp_path):
    """`tunelab run --launch`: the pipeline holds the folder and accelerate's processes train in it."""
    from tunelab.paths import lock_for_children

    run = tmp_path / "runs" / "launched"
    take = "import sys; from tunelab.paths import lock_run_folder, unlock_run_folder; lock_run_folder(sys.argv[1]); unlock_run_folder(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")}
    assert lock_for_children(run) == {}  # not held: nothing to hand down
    lock_run_folder(run)
    try:
        child = subprocess.run([sys.executable, "-c", take, str(run)], env={**env, **lock_for_children(run)}, capture_output=True, text=True, timeout=120)
        assert child.returncode == 0, child.stderr
        stranger = subprocess.run([sys.executable, "-c", take, str(run)], env=env, capture_output=True, text=True, timeout=120)
        assert stranger.returncode != 0 and f"in use by process {os.getpid()}" in stranger.stderr
        other = subprocess.run([sys.executable, "-c", take, str(tmp_path / "other")], env={**env, **lock_for_children(run)},
                               capture_output=True, text=True, timeout=120)  # fmt: skip
        assert other.returncode == 0  # another folder is locked as usual
        assert run_folder_holder(run) == os.getpid()  # the child's release did not release the parent's lock
    finally:
        unlock_run_folder(run)


# ------------------------------------------------------------------ damaged checkpoints and state


@pytest.mark.parametrize(
    "damage",
    ["truncated-weights", "truncated-optimizer", "garbled-state", "wrong-step-state"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(interrupted, tmp_path, monkeypatch, damage):
    run = _copy(interrupted, tmp_path, monkeypatch)
    newest = run / "checkpoints" / "step-6"
    assert newest.is_dir() and (run / "checkpoints" / "step-4").is_dir()
    if damage == "truncated-weights":
        weights = newest / "trainable.safetensors"
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "truncated-optimizer":
        optimizer = newest / "optimizer.pt"
        optimizer.write_bytes(optimizer.read_bytes()[:200])
    elif damage == "garbled-state":
        (newest / "state.json").write_text('{"step": 6, "tokens": ')
    else:
        (newest / "state.json").write_text(json.dumps({"step": "six", "tokens": 1}))
    best = json.loads((run / "checkpoints" / "best" / "state.json").read_text())["step"]
    outcome = run_pipeline(resume=run, calibrate=False)
    warnings = " | ".join(outcome.warnings)
    assert f"{newest}" in warnings and "damaged" in warnings, warnings
    resumed_from = 6 if best == 6 else 4  # best/ is a whole checkpoint too: at step 6 it is the newest intact one
    assert f"(step {resumed_from})" in warnings, warnings
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 8
    assert _row(run).status == "finished"


def test_every_checkpoint_damaged_gives_one_line_and_the_row_says_why(interrupted, tmp_path, monkeypatch):
    run = _copy(interrupted, tmp_path, monkeypatch)
    for state in (run / "checkpoints").glob("*/state.json"):
        state.write_text("garbage")
    with pytest.raises(TunelabError) as raised:
        run_pipeline(resume=run, calibrate=False)
    message = str(raised.value)
    assert "state.json is damaged" in message and "no other checkpoint of this run is intact" in message
    assert f"delete {run / 'checkpoints'}" in message and "\n" not in message
    record = _row(run)
    assert record.status == "failed" and "state.json is damaged" in record.error  # it used to be empty


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"config": {"task": "classify"', "not JSON"),
        ("[]", "not a JSON object"),
        ('{"config": 3, "steps": {}}', "no 'config' object"),
        ('{"config": {"task": "classify"}, "steps": []}', "'steps' is not an object"),
        (b"\xff\xfe garbage", "not JSON"),
    ],
)
def test_a_damaged_pipeline_json_gets_one_line_naming_it(interrupted, tmp_path, monkeypatch, content, problem):
    run = _copy(interrupted, tmp_path, monkeypatch)
    path = run / "pipeline.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigError) as raised:
        run_pipeline(resume=run, calibrate=False)
    assert str(path) in raised.value.message and problem in raised.value.message and "\n" not in str(raised.value)


def test_a_garbled_run_config_is_rewritten_from_pipeline_json(interrupted, tmp_path, monkeypatch):
    run = _copy(interrupted, tmp_path, monkeypatch)
    (run / "config.yaml").write_text("task: [classify\n  name: {{{\n")
    outcome = run_pipeline(resume=run, calibrate=False)
    assert any("config.yaml was damaged" in w and "pipeline.json" in w for w in outcome.warnings)
    assert yaml.safe_load((run / "config.yaml").read_text())["task"] == "classify"
    assert _row(run).status == "finished"


def test_a_killed_checkpoint_write_leaves_nothing_behind_once_the_run_goes_on(interrupted, tmp_path, monkeypatch):
    run = _copy(interrupted, tmp_path, monkeypatch)
    leftover = run / "checkpoints" / f".step-8.{os.getpid() + 1}.abc123.tmp"
    leftover.mkdir()
    (leftover / "trainable.safetensors").write_bytes(b"x" * 1000)
    stale_config = run / f".config.yaml.{os.getpid() + 1}.x1.tmp"
    stale_config.write_text("half")
    run_pipeline(resume=run, calibrate=False)
    assert not leftover.exists() and not stale_config.exists()


# ------------------------------------------------------------------ paths


def test_a_run_resumes_from_another_folder_with_relative_paths(interrupted, tmp_path, monkeypatch):
    """Relative data paths were not anchored to the config's folder: a resume from elsewhere failed."""
    run = _copy(interrupted, tmp_path, monkeypatch)
    # As a run saved them before paths were anchored: relative to the folder it was started in.
    state = json.loads((run / "pipeline.json").read_text())
    state["config"]["data"]["train"] = "data/train.jsonl"
    (run / "pipeline.json").write_text(json.dumps(state))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["data"]["train"] = "data/train.jsonl"
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    shutil.rmtree(run.parent.parent / "data")
    shutil.copytree(interrupted / "data", run.parent.parent / "data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    outcome = run_pipeline(resume=Path(os.path.relpath(run, elsewhere)), calibrate=False)
    assert outcome.tuned_metrics is not None
    assert _row(run).status == "finished"  # the project's own registry, not a new one here
    assert not (elsewhere / "runs").exists()


def test_a_run_name_that_is_not_one_folder_is_refused(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _project(tmp_path, tiny_model_dir)
    for name in ("../../../escaped", "a/b", "..", ".", "x\\y"):
        cli = subprocess.run(
            [sys.executable, "-m", "tunelab.cli.main", "run", str(config), f"name={name}", "--no-calibrate"],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3] / "src")},
        )  # fmt: skip
        assert cli.returncode == 2 and "one folder name" in cli.stderr and "Traceback" not in cli.stderr, (name, cli.stderr)
    assert not (tmp_path / "runs" / "../../../escaped").resolve().exists() and not (tmp_path / "runs").exists()



def test_a_new_run_in_a_deleted_run_folder_does_not_take_over_the_old_runs_row(tmp_path, tiny_model_dir, monkeypatch):
    """The row of a killed run is taken over by its resume (above); the row of a finished run that was promoted is
    not taken over by a new run of the same name after its folder was deleted: the alias would then serve a
    model nobody judged (and, while it trains, one that is not there)."""
    from tunelab.config import load_config
    from tunelab.registry.store import RegistryError

    monkeypatch.chdir(tmp_path)
    config = load_config(_project(tmp_path, tiny_model_dir, max_steps=2))
    first = run_pipeline(config, calibrate=False)
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.set_alias("router", first.registry_id)
    judged = registry.get_run(first.registry_id)
    shutil.rmtree(first.run_dir)
    with pytest.raises(RegistryError, match="already exists"):
        run_pipeline(config, calibrate=False)
    row = registry.get_run(first.registry_id)
    assert (row.status, row.comparison, row.tuned_metrics, row.created_at) == (
        "finished", judged.comparison, judged.tuned_metrics, judged.created_at)
    assert registry.alias("router") == first.registry_id and [r.id for r in registry.list_runs()] == [first.registry_id]
