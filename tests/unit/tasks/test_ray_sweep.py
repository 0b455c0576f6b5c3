"""`tunelab sweep --engine ray` against a real local Ray cluster: a head and a worker node started here (the
worker has one CPU: one trial at a time, one thread each), 4 trials of the tiny model, each a registered
tunelab run, ASHA stopping the ones whose validation loss lags, and the sweep continued after its driver is
killed. The cluster is torn down whatever happens."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray.tune", reason="the Ray engine is an optional extra (pip install 'tunelab[ray]')")
pytest.importorskip("optuna", reason="the Ray engine's Optuna search is an optional extra")

SRC = Path(__file__).resolve().parents[3] / "src"
RAY = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false", TUNELAB_CACHE=str(tmp_path / "cache"), RAY_USAGE_STATS_ENABLED="0",
        TUNE_GLOBAL_CHECKPOINT_S="1", RAY_CHDIR_TO_TRIAL_DIR="0",
        # A Ray started in-process before (another test's) leaves ~/.ray/auth_token: the head then wants a token the
        # worker's `ray start` did not send (AuthenticationError). These nodes listen on the loopback only.
        RAY_AUTH_MODE="disabled",
    )
    return env


@pytest.fixture
def ray_cluster(tmp_path):
    """A head node (no CPUs of its own: it only schedules) and a worker node with one CPU, as two `ray start`s."""
    if RAY is None:
        pytest.skip("the ray command is not installed")
    port = _free_port()
    temp = Path(f"/tmp/ray-tl-{port}")  # Ray's socket paths must stay short
    env = _env(tmp_path)
    lean = ["--disable-usage-stats", "--object-store-memory", str(100 * 1024**2), f"--temp-dir={temp}", "--node-ip-address", "127.0.0.1"]

    node = tmp_path / "node"  # the nodes' own folder, not the driver's: a trial runs where Ray started it
    node.mkdir()

    def start(*arguments: str) -> None:
        done = subprocess.run([RAY, "start", *arguments, *lean], env=env, capture_output=True, text=True, timeout=180, cwd=node)
        assert done.returncode == 0, f"ray start {' '.join(arguments)}: {done.stdout[-1500:]} {done.stderr[-1500:]}"

    try:
        start("--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false")
        start("--address", f"127.0.0.1:{port}", "--num-cpus", "1")
        yield f"127.0.0.1:{port}"
    finally:
        # Both nodes of this test (ray stop ends the Ray processes started on this machine), then their files.
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _config_file(tmp_path: Path) -> Path:
    rows = []
    for i in range(48):
        label = "AB"[i % 2]
        words = WORDS[label]
        rows.append({"text": f"{words[i % 4]} {words[(i // 2) % 4]} number {i}", "label": label})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "config.json"


def _write_config(tmp_path: Path, tiny_model_dir: Path) -> Path:
    path = _config_file(tmp_path)
    path.write_text(json.dumps({
        "task": "classify", "model": str(tiny_model_dir), "name": "ray",
        "data": {"train": str(tmp_path / "train.jsonl"), "test_size": 0.25, "validation_size": 0.15, "max_length": 64},
        "train": {"method": "full", "epochs": 6, "batch_size": 8, "eval_every": 2, "output_dir": str(tmp_path / "runs"), "precision": "fp32"},
        "eval": {"bootstrap_samples": 200, "baselines": ["base"]},
    }))
    return path


DRIVER = """
import json, sys
from tunelab.tasks.ray_sweep import RaySweepSettings, run_ray_sweep
config, address, name = sys.argv[1:4]
result = run_ray_sweep(config, [], ["train.lr=3e-3,1e-3,1e-8,1e-9"], RaySweepSettings(address=address, asha=True, name=name))
print("RESULT " + json.dumps({"rows": result.rows, "stopped": result.stopped, "restored": result.restored}))
"""


def _runs(registry: Path) -> list[tuple[str, str]]:
    if not registry.is_file():
        return []
    with sqlite3.connect(registry) as db:
        return db.execute("SELECT name, status FROM runs ORDER BY created_at").fetchall()


def test_ray_sweep_on_a_local_cluster_stops_lagging_trials_and_continues_after_the_driver_dies(ray_cluster, tmp_path, tiny_model_dir):
    config = _write_config(tmp_path, tiny_model_dir)
    driver = [sys.executable, "-c", DRIVER, str(config), ray_cluster, "s1"]
    registry = tmp_path / "runs" / "registry.db"

    # 1. The driver dies (SIGKILL) once the first trial's run is registered as finished.
    first = subprocess.Popen(driver, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 400
    while time.time() < deadline and first.poll() is None:
        if any(status == "finished" for _, status in _runs(registry)):
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.5)
    out, err = first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL, f"the sweep ended before its driver could be killed: {out[-1500:]} {err[-2500:]}"
    finished_before = [name for name, status in _runs(registry) if status == "finished"]
    assert finished_before

    # 2. The same command again continues the sweep: the finished trial is not trained again.
    again = subprocess.run(driver, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    result = json.loads(again.stdout[again.stdout.index("RESULT ") + 7:].splitlines()[0])
    assert result["restored"] is True
    rows = result["rows"]
    assert len(rows) == 4, rows
    runs = dict(_runs(registry))
    assert len(runs) == 4 and set(finished_before) <= {n for n, s in runs.items() if s == "finished"}
    # Every trial is a registered tunelab run. The two whose learning rate is too small to move the weights
    # (1e-8, 1e-9) lag at their first validations and ASHA stops them there; they are marked interrupted.
    # They run after the restore, in an order Tune chooses, and may be the first to run then: ASHA judges
    # them against the validations of the trial finished before the crash, read back with its rungs.
    stopped = {r["overrides"] for r in rows if r.get("name") in result["stopped"]}
    assert {"train.lr=1e-8", "train.lr=1e-9"} <= stopped, rows
    assert all(runs[name] == "interrupted" for name in result["stopped"]), (runs, result, again.stderr[-4000:])
    # What ASHA saw is kept for a next crash: every trial's validations, those before this one's included.
    from tunelab.tasks.ray_asha import RUNGS_FILE

    rungs = json.loads((tmp_path / "runs" / "sweeps" / "s1" / RUNGS_FILE).read_text())
    assert {trial for _, recorded in rungs["brackets"][0] for trial in recorded} == {r["name"].split("-")[1] for r in rows}
    ranked = [r for r in rows if r.get("after") is not None]
    assert ranked and rows[: len(ranked)] == ranked  # finished variants first, best first
    assert {r["ranked_by"] for r in ranked} == {"validation accuracy"}  # selected on validation, test reported
    assert [r["rank_value"] for r in ranked] == sorted((r["rank_value"] for r in ranked), reverse=True)
    assert ranked[0]["overrides"] == "train.lr=3e-3" and runs[ranked[0]["name"]] == "finished"


def test_a_ray_trial_reads_the_paths_of_the_command_and_config_from_the_drivers_folder(ray_cluster, tmp_path, tiny_model_dir):
    """A trial ran in the folder its Ray node was started in: a relative `registry:` registered every trial in another
    database than the one `tunelab runs` reads beside the config, and a relative grid path was not found. Through the
    CLI, whose `--json` is the leaderboard alone: Ray Tune's header and folders were printed before it on stdout; a
    variant that fails is a row with its error, and the sweep goes on."""
    config = _write_config(tmp_path, tiny_model_dir)
    settings = json.loads(config.read_text())
    settings["registry"] = "sweep.db"
    settings["train"].update(epochs=None, max_steps=2)
    config.write_text(json.dumps(settings))
    done = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "sweep", str(config), "--engine", "ray", "--address", ray_cluster,
         "--name", "cwd", "--grid", "data.train=train.jsonl,missing.jsonl", "--json"],
        env=_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads(done.stdout)
    assert len(rows) == 2 and rows[0]["error"] is None and "missing.jsonl" in rows[1]["error"], rows
    # Its final report's infinite loss is not logged as "NaN or Inf found in input tensor", a diverged training's words.
    assert "NaN or Inf" not in done.stderr, done.stderr[-3000:]
    assert [status for _, status in _runs(tmp_path / "sweep.db")] == ["finished"]
    assert not (tmp_path / "node" / "sweep.db").exists()


def test_optuna_draws_from_the_grids_ranges():
    from ray import tune

    from tunelab.tasks.ray_sweep import search_space

    space = search_space(["train.lr=1e-5,1e-3", "lora.r=8,16", "train.warmup_ratio=0.0,0.1"], "optuna")
    assert isinstance(space["train.lr"], tune.search.sample.Float) and space["train.lr"].lower == 1e-5
    assert space["lora.r"].categories == ["8", "16"]
    assert isinstance(space["train.warmup_ratio"], tune.search.sample.Float)
    assert search_space(["train.lr=1e-5,1e-3"], "grid")["train.lr"] == {"grid_search": ["1e-5", "1e-3"]}


def test_asha_restored_after_the_driver_died_still_compares_with_the_trials_seen_before(tmp_path):
    """Tune's restore hands back the scheduler pickled when the sweep began (its experiment state leaves the
    scheduler out). The sweep's ASHA reads its rungs back: a lagging trial that runs first after the restore is
    compared with the trials seen before the crash, and a trial stopped before it stays stopped."""
    from ray import cloudpickle
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler

    from tunelab.tasks.ray_asha import RUNGS_FILE
    from tunelab.tasks.ray_sweep import METRIC, asha_scheduler

    # Left by an earlier attempt that died before Tune saved anything to restore: a sweep started anew ignores it.
    stale = {"brackets": [[[2 ** k, {"stale": -0.1}] for k in reversed(range(30))]], "trials": {}, "stopped": [], "num_stopped": 0}
    (tmp_path / RUNGS_FILE).parent.mkdir(parents=True)
    (tmp_path / RUNGS_FILE).write_text(json.dumps(stale))

    def report(scheduler, trial, step, loss):
        return scheduler.on_trial_result(None, trial, {METRIC: loss, "step": step})

    scheduler = asha_scheduler(tmp_path)
    scheduler.set_search_properties(METRIC, "min")
    as_the_sweep_began = cloudpickle.dumps(scheduler)  # what tuner.pkl holds, and Tuner.restore loads
    good, slow, late = (Trial("run_trial", trial_id=name, stub=True) for name in ("good", "slow", "late"))
    scheduler.on_trial_add(None, good)
    scheduler.on_trial_add(None, slow)
    # A good learning rate: its first validation is the worst of all, it improves fast.
    assert [report(scheduler, good, step, loss) for step, loss in [(2, 0.81), (4, 0.68), (6, 0.54), (8, 0.26)]] == ["CONTINUE"] * 4
    assert report(scheduler, slow, 2, 0.70) == TrialScheduler.CONTINUE  # better than good's first validation
    assert report(scheduler, slow, 4, 0.70) == TrialScheduler.STOP  # worse than good's at step 4

    # The driver dies; the same sweep again restores the scheduler as it began and adds its trials.
    restored = cloudpickle.loads(as_the_sweep_began)
    restored.set_search_properties(METRIC, "min")
    for trial in (good, slow, late):
        restored.on_trial_add(None, trial)
    assert report(restored, late, 2, 0.70) == TrialScheduler.CONTINUE
    assert report(restored, late, 4, 0.70) == TrialScheduler.STOP  # the first to run after the restore, yet stopped
    assert report(restored, slow, 6, 0.70) == TrialScheduler.STOP  # its stop was not in Tune's state yet: it ran again
