"""The `--every` loop: a check per interval, a retrain when the status reaches `retrain_on`, never the
same retrain twice without new feedback (no model needed: the retrain stops at "no new labelled data")."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import yaml

from tunelab.config import MonitorConfig, parse_config
from tunelab.data.split import make_split
from tunelab.registry.store import Registry
from tunelab.serve.request_log import RequestLog
from tunelab.tasks.schedule import monitor_loop


def _setup(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": f"my card {w} number {i}", "label": "card" if i % 2 else "refund"}) + "\n"
                             for i, w in enumerate(["lost", "stolen", "late", "refund", "money", "back"] * 8)))
    run_dir = tmp_path / "runs" / "router"
    (run_dir / "adapter").mkdir(parents=True)
    config = parse_config({"task": "classify", "data": {"train": str(train)}})
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    make_split(config).save(run_dir / "split.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    run_id = registry.create_run(name="router", task="classify", status="finished", run_dir=str(run_dir)).id
    log = RequestLog(tmp_path / "requests.db")
    for i in range(60):
        log.record({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "endpoint": "/v1/classify", "model": "router",
            "prompt": json.dumps(f"crypto wallet mortgage pension {i}"), "output": "card", "status": 200, "stream": 0,
            "latency_ms": 10.0, "response_id": f"clf-{i}", "run_id": run_id, "predicted_label": "card", "top_probability": 0.6,
        })
    log.close()
    return registry.path, tmp_path / "requests.db"


def test_the_loop_checks_every_interval_and_does_not_repeat_a_retrain(tmp_path):
    registry_path, log_path = _setup(tmp_path)
    ticks, sleeps = [], []
    config = MonitorConfig(every="6h", retrain_on="drift", min_requests=10)
    monitor_loop(log_path, config, on_tick=ticks.append, iterations=3, sleep=sleeps.append, registry_path=registry_path)
    assert [tick.report.status for tick in ticks] == ["drifted"] * 3 and ticks[0].report.exit_code == 3
    assert len(sleeps) == 2 and all(21000 < s <= 21600 for s in sleeps)
    first, second = ticks[0].retrains[0]["skipped"], ticks[1].retrains[0]["skipped"]
    assert "no new labelled records" in first and "no new labelled feedback since the last retrain" in second
    never = []
    monitor_loop(log_path, MonitorConfig(retrain_on="never", min_requests=10), on_tick=never.append, iterations=1, registry_path=registry_path)
    assert never[0].retrains == []


def test_slow_or_failing_serving_alone_does_not_retrain(tmp_path):
    """A latency spike drifted latency_p95_ms, and the --every loop retrained the model for it (training on the
    serving machine, which a new model cannot make faster); only the data and quality signals call for a retrain."""
    registry_path, _ = _setup(tmp_path)
    run_id = Registry(registry_path).get_run("router").id
    log_path = tmp_path / "slow.db"
    log = RequestLog(log_path)
    for i in range(60):
        label = "card" if i % 2 else "refund"
        log.record({
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"), "endpoint": "/v1/classify", "model": "router",
            "prompt": json.dumps(f"my card {['lost', 'stolen', 'late', 'refund', 'money', 'back'][i % 6]} number {i}"),
            "output": label, "status": 200, "stream": 0, "latency_ms": 9000.0, "response_id": f"clf-{i}", "run_id": run_id,
            "predicted_label": label, "top_probability": 0.9,
        })
    log.close()
    ticks = []
    monitor_loop(log_path, MonitorConfig(retrain_on="watch", min_requests=10), on_tick=ticks.append, iterations=1, registry_path=registry_path)
    report = ticks[0].report.models[0]
    assert report.status == "drifted" and report.signal("latency_p95_ms").status == "drifted"
    assert {s.name for s in report.signals if s.status != "ok"} == {"latency_p95_ms"}, [(s.name, s.status, s.judged) for s in report.signals]
    assert ticks[0].retrains == []


def test_a_run_the_alias_no_longer_serves_is_not_retrained(tmp_path):
    """The window still held drifted traffic of the run served before a promotion: the loop trained a challenger
    of that old run (which could then never be promoted over the run now served)."""
    registry_path, log_path = _setup(tmp_path)
    store = Registry(registry_path)
    newer = store.create_run(name="router-v2", task="classify", status="finished", run_dir=str(tmp_path / "runs" / "router")).id
    store.set_alias("router", newer)
    ticks = []
    monitor_loop(log_path, MonitorConfig(retrain_on="drift", min_requests=10), on_tick=ticks.append, iterations=1, registry_path=registry_path)
    assert ticks[0].report.status == "drifted"
    [skipped] = ticks[0].retrains
    assert "no longer serves" in skipped["skipped"] and "router-v2" in skipped["skipped"]


def test_new_feedback_retrains_even_when_as_much_old_feedback_left_the_window(tmp_path, monkeypatch):
    """The loop remembered how many labelled requests the window held: one correction leaving the window as a new
    one arrived kept the count, and the new feedback was reported as "no new labelled feedback"."""
    import tunelab.tasks.schedule as schedule

    registry_path, log_path = _setup(tmp_path)
    windows = iter([
        [{"response_id": "clf-1", "item": 0, "label": "card"}],
        [{"response_id": "clf-2", "item": 0, "label": "refund"}],  # clf-1 left the window, clf-2 is new
        [{"response_id": "clf-2", "item": 0, "label": "refund"}],  # nothing new
    ])
    monkeypatch.setattr(schedule, "labelled_requests", lambda *args, **kwargs: next(windows))
    ticks = []
    monitor_loop(log_path, MonitorConfig(retrain_on="drift", min_requests=10), on_tick=ticks.append, iterations=3,
                 sleep=lambda _: None, registry_path=registry_path)
    reasons = [tick.retrains[0]["skipped"] for tick in ticks]
    assert "no new labelled records" in reasons[0] and "no new labelled records" in reasons[1], reasons
    assert "no new labelled feedback since the last retrain" in reasons[2]


def test_monitor_every_json_prints_one_json_document_per_line(tmp_path, monkeypatch):
    """`tunelab monitor --every 6h --json` printed one indented document per check, one after another: the output was
    neither JSON nor JSON Lines, so an alerting pipe could not read it. Each check is now one compact line."""
    from functools import partial

    from typer.testing import CliRunner

    from tunelab.cli import main as cli_main
    from tunelab.tasks import schedule

    registry_path, log_path = _setup(tmp_path)
    # The loop sleeps 6h between checks: run it without waiting (the CLI imports monitor_loop when it runs).
    monkeypatch.setattr(schedule, "monitor_loop", partial(monitor_loop, sleep=lambda _: None))
    if not cli_main.app.registered_commands:
        cli_main._register_commands()
    args = ["monitor", "--log-db", str(log_path), "--registry", str(registry_path), "--every", "6h", "--iterations", "2", "--json"]
    result = CliRunner().invoke(cli_main.app, args)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    lines = result.stdout.splitlines()
    assert len(lines) == 2, result.stdout
    ticks = [json.loads(line) for line in lines]
    assert all(set(tick) == {"report", "retrains"} and tick["report"]["models"][0]["model"] == "router" for tick in ticks)
    # Without --every it stays one (indented) JSON document.
    single = CliRunner().invoke(cli_main.app, ["monitor", "--log-db", str(log_path), "--registry", str(registry_path), "--json"])
    assert json.loads(single.stdout)["models"][0]["model"] == "router"
