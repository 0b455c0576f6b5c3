"""The UI's pages and guards over a hand-made run (no model): what the registry and run folder hold is what is shown."""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tunelab.errors import ConfigError
from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import load_sheet, review_sheet_path, score_registry_reviews
from tunelab.registry import Registry
from tunelab.ui import UISettings, create_app
from tunelab.ui.jobs import prepare_run

HEADERS = {"X-Tunelab-UI": "1"}


def _eval(name, predictions, references):
    rows = []
    for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
        p = 0.9 if prediction == reference else 0.2
        rows.append({"id": f"e{i}", "source": f"data.jsonl:{i + 1}", "prompt": f"request {i}", "reference": reference, "prediction": prediction,
                     "scores": {"correct": float(prediction == reference), "confidence": 0.9, "probability_of_reference": p, "known_label": True}})
    from tunelab.evaluation.metrics import classify_metrics

    metrics = classify_metrics([r["reference"] for r in rows], [r["prediction"] for r in rows], [0.9] * len(rows), ["x", "y"])
    return EvalResult("classify", name, len(rows), {"primary": "accuracy", **metrics}, rows, labels=["x", "y"])


@pytest.fixture
def made_run(tmp_path):
    references = ["x", "y"] * 10
    base = _eval("base-model", ["x"] * 20, references)
    tuned = _eval("tuned-run", references[:18] + ["y", "x"], references)
    run_dir = tmp_path / "runs" / "made"
    base.save(run_dir / "eval" / "base.json")
    tuned.save(run_dir / "eval" / "tuned.json")
    verdict = compare_with_baselines({"base": base}, tuned, samples=200, skipped={"few_shot": "20 tokens hold 1 example, not one for each of the 2 labels"})
    verdict.save(run_dir / "eval" / "comparison.json")
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 2, "validation_loss": 1.7}, "not json"]) + "\n")
    (run_dir / "report.html").write_text("<html>the report</html>")
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(
        name="made", task="classify", model="/models/tiny", status="finished", run_dir=str(run_dir),
        config={"task": "classify", "data": {"train": "/data/support.jsonl"}, "train": {"epochs": 2}},
        baseline_metrics=base.metrics, tuned_metrics=tuned.metrics, comparison=verdict.to_dict(),
        artifacts={"baselines": {"base": base.metrics}}, estimate={"gpus": [{"name": "L4", "usd": 0.25, "fits": True}]},
    )
    registry.record_timing(record.id, "train", estimated_s=10.0, actual_s=12.5)
    return registry, record, verdict


def _client(registry, **settings):
    app = create_app(UISettings(registry=registry.path, **settings))
    return TestClient(app, base_url="http://127.0.0.1:7860")


def test_runs_and_run_pages_show_the_registry_values(made_run):
    registry, record, verdict = made_run
    with _client(registry) as client:
        runs = client.get("/")
        assert runs.status_code == 200
        accuracy = verdict.comparisons["base"].metric("accuracy")
        assert "made" in runs.text and "support.jsonl" in runs.text and "$0.25" in runs.text
        assert f"[{accuracy.low:+.3g}, {accuracy.high:+.3g}]" in runs.text and verdict.verdict in runs.text
        page = client.get(f"/runs/{record.id}")
        assert page.status_code == 200
        assert "Confusion matrices" in page.text and "request 18" in page.text  # a changed example
        assert "baselines skipped" in page.text and "not one for each of the 2 labels" in page.text  # never silently absent
        assert "12.5 s" in page.text and "1.25" in page.text  # actual time and actual / estimated
        assert "not saved for this run" in page.text  # no data_check.json in this hand-made folder
        progress = client.get(f"/api/runs/{record.id}/progress").json()
        assert progress["train"] == [[1.0, 2.0], [2.0, 1.5]] and progress["validation"] == [[2.0, 1.7]]
        assert client.get(f"/runs/{record.id}/files/report.html").text == "<html>the report</html>"
        missing = client.get("/runs/nope")
        assert missing.status_code == 404 and "no run" in missing.text


def test_files_outside_the_run_folder_are_refused(made_run, tmp_path):
    registry, record, _ = made_run
    (tmp_path / "secret.txt").write_text("secret")
    with _client(registry) as client:
        response = client.get(f"/runs/{record.id}/files/..%2F..%2Fsecret.txt")
        assert response.status_code in (403, 404) and "secret" not in response.text


def test_guards_host_post_header_and_api_key(made_run):
    registry, record, _ = made_run
    with _client(registry) as client:
        assert client.get("/", headers={"host": "attacker.example"}).status_code == 421
        no_header = client.post(f"/api/runs/{record.id}/review", json={"reviewer": "ann", "example_id": "e0", "preference": "A"})
        assert no_header.status_code == 403 and registry.list_reviews(record.id) == []
    with _client(registry, api_key="sesame") as client:
        assert client.get("/").status_code == 401
        assert client.get("/?key=wrong").status_code == 401
        opened = client.get("/?key=sesame", follow_redirects=False)
        assert opened.status_code == 303 and "key=" not in opened.headers["location"]
        assert client.get("/").status_code == 200  # the cookie now carries the key
    with _client(registry, api_key="sesame") as client:
        assert client.get("/", headers={"Authorization": "Bearer sesame"}).status_code == 200


def test_review_api_stores_judgments_and_scores_them_like_the_cli(made_run):
    registry, record, _ = made_run
    with _client(registry) as client:
        state = client.get(f"/api/runs/{record.id}/review", params={"reviewer": "ann"}).json()
        # 10 of the 20 rows have the same answer on both sides: they are not asked.
        assert state["total"] == 10 and state["identical"] == 10 and state["done"] == 0 and state["score"] is None
        assert "tuned" not in json.dumps(state["next"]) and "A" not in state["next"]  # the sides are never sent
        for key in ("1", "2", "t", "s"):
            state = client.post(f"/api/runs/{record.id}/review", json={"reviewer": "ann", "example_id": state["next"]["id"], "preference": key}, headers=HEADERS).json()
        assert state["done"] == 3 and state["score"]["judged"] == 3
        sheet = load_sheet(review_sheet_path(record.run_dir))
        assert state["score"]["win_rate"] == score_registry_reviews(registry, record.id, sheet).win_rate
        bad = client.post(f"/api/runs/{record.id}/review", json={"reviewer": "ann", "example_id": "e0", "preference": "maybe"}, headers=HEADERS)
        assert bad.status_code == 400
        unknown = client.post(f"/api/runs/{record.id}/review", json={"reviewer": "ann", "example_id": "zz", "preference": "A"}, headers=HEADERS)
        assert unknown.status_code == 400
        # bob judges the same first row as ann did: agreement over one shared row.
        first = registry.list_reviews(record.id)[0]
        state = client.post(f"/api/runs/{record.id}/review", json={"reviewer": "bob", "example_id": first.example_id, "preference": first.preference}, headers=HEADERS).json()
        assert state["agreement"][0]["rows"] == 1 and state["agreement"][0]["agreed"] == 1
        page = client.get(f"/runs/{record.id}/review", params={"reviewer": "bob"})
        assert "ann · bob" in page.text


def test_compare_needs_two_runs_and_start_refuses_bad_configs(made_run, tmp_path):
    registry, record, _ = made_run
    with _client(registry) as client:
        assert client.get(f"/compare?runs={record.id}").status_code == 400
        response = client.post("/api/jobs", json={"config": str(tmp_path / "runs" / "missing.yaml")}, headers=HEADERS)
        assert response.status_code == 400 and "not found" in response.json()["error"]


def test_config_paths_outside_the_project_and_registry_folders_are_refused(made_run, tmp_path):
    """The estimate endpoint echoed the first line of any readable file given as a config (/etc/shadow)."""
    registry, _, _ = made_run
    secret = tmp_path / "elsewhere" / "secret.yaml"
    secret.parent.mkdir()
    secret.write_text("root: the-first-line-of-a-secret\n")
    inside = tmp_path / "runs" / "link.yaml"
    inside.symlink_to(secret)  # a link inside that points outside is outside
    with _client(registry, project=tmp_path / "project") as client:
        for config in (str(secret), str(inside), "/etc/passwd", "../elsewhere/secret.yaml"):
            for endpoint in ("/api/estimate", "/api/jobs", "/api/advise"):
                response = client.post(endpoint, json={"config": config}, headers=HEADERS)
                assert response.status_code == 400, (endpoint, config, response.text)
                assert "outside the folders this UI serves" in response.json()["error"]
                assert "the-first-line" not in response.text and "root:" not in response.text


@pytest.mark.parametrize("body", ["[]", "\"text\"", "3", "null", "{not json"])
def test_json_bodies_that_are_no_object_get_400_not_500(made_run, body):
    registry, record, _ = made_run
    with _client(registry) as client:
        for endpoint in ("/api/estimate", "/api/jobs", "/api/advise", f"/api/runs/{record.id}/review", "/api/playground"):
            response = client.post(endpoint, content=body, headers={**HEADERS, "content-type": "application/json"})
            assert response.status_code == 400, (endpoint, body, response.text)
            assert "JSON" in response.json()["error"]


def test_a_run_name_that_is_not_one_folder_is_refused_for_a_ui_job(made_run, tmp_path):
    registry, _, _ = made_run
    config = tmp_path / "runs" / "run.yaml"
    config.write_text(f"task: classify\ndata:\n  train: train.jsonl\ntrain:\n  output_dir: {tmp_path / 'runs' / 'out'}\n")
    (tmp_path / "runs" / "train.jsonl").write_text('{"text": "a", "label": "x"}\n')
    with _client(registry) as client:
        for name in ("../../../escaped", "a/b", "..", "."):
            response = client.post("/api/jobs", json={"config": str(config), "overrides": f"name={name}"}, headers=HEADERS)
            assert response.status_code == 400 and "one folder name" in response.json()["error"], (name, response.text)
    assert not (tmp_path / "runs" / "out" / "../../../escaped").resolve().exists() and not list(tmp_path.rglob("escaped"))


def test_prepare_run_pins_the_run_name_and_this_registry(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "a", "label": "x"}\n')
    config = tmp_path / "run.yaml"
    config.write_text(f"task: classify\ndata:\n  train: {data}\ntrain:\n  output_dir: {tmp_path / 'runs'}\n")
    resolved, overrides = prepare_run(config, ["train.epochs=1"], tmp_path / "ui.db")
    assert overrides[0] == "train.epochs=1" and overrides[1].startswith("name=classify-") and overrides[2] == f"registry={tmp_path / 'ui.db'}"
    assert resolved.registry == str(tmp_path / "ui.db") and resolved.train.epochs == 1
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "config.yaml").write_text("x")
    with pytest.raises(ConfigError, match="already exists"):
        prepare_run(config, ["name=taken"], tmp_path / "ui.db")


def test_a_started_run_can_be_cancelled_even_when_the_ui_ignores_sigint(tmp_path):
    """`tunelab ui &` (or CI) inherits SIGINT ignored; the run it starts must still stop on cancel (SIGINT)."""
    import signal
    import sys

    from tunelab.ui.jobs import start_process

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        log = tmp_path / "log.txt"
        with log.open("wb") as handle:
            child = start_process([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT))"], handle, {})
        assert child.wait(60) == 0
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "default_int_handler" in log.read_text()


def test_runs_list_shows_the_strongest_baseline_coloured_verdicts_and_real_costs(made_run):
    from tunelab.ui.views import run_row, verdict_kind

    registry, record, verdict = made_run
    row = run_row(registry.get_run(record.id))
    accuracy = verdict.comparisons[verdict.strongest].metric("accuracy")
    assert (row.opponent, row.opponent_value, row.tuned, row.difference) == (verdict.strongest, accuracy.before, accuracy.after, accuracy.difference)
    assert verdict_kind("fine-tuning paid off") == "paid-off" and verdict_kind("use classical instead") == "lost"
    assert verdict_kind("no significant difference") == "no-difference" and verdict_kind(None) == "none"
    # Under 30 paired test examples there is no verdict: its own neutral kind, neither a loss nor a tie.
    assert verdict.verdict == "too few test examples to decide" and verdict_kind(verdict.verdict) == "too-few"
    from tunelab.estimate.summary import money

    assert money(0.000031) == "$0.000031" and money(6.1e-09) == "$0.0000000061"
    assert money(0.25) == "$0.25" and money(1234.5) == "$1,234.50"
    with _client(registry) as client:
        page = client.get("/").text
        assert f"verdict-{verdict_kind(verdict.verdict)}" in page and "strongest baseline" in page
        # The run page: the same kind, and no cell coloured as significant on 20 test examples.
        run_page = client.get(f"/runs/{record.id}").text
        assert 'class="verdict verdict-too-few" id="verdict"' in run_page and "outcome-too-few" in run_page
        assert "outcome-better" not in run_page and "outcome-worse" not in run_page


def test_a_running_run_shows_its_live_step_and_the_baselines_already_evaluated(made_run):
    registry, record, _ = made_run
    from pathlib import Path

    run_dir = Path(record.run_dir)
    (run_dir / "eval" / "tuned.json").unlink()
    (run_dir / "eval" / "comparison.json").unlink()
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in [
        {"step": 10, "loss": 2.0, "lr": 1e-3, "elapsed": 5.0, "tokens_per_second": 300.0},
        {"step": 10, "validation_loss": 1.9, "validation_score": 0.6},
        {"step": 20, "loss": 1.5, "lr": 5e-4, "elapsed": 10.0, "tokens_per_second": 320.0}]) + "\n")
    reason = "2 of 5 validation requests right: it cannot win, so it is not scored on the test rows"
    (run_dir / "pipeline.json").write_text(json.dumps({
        "config": {"eval": {"baselines": ["few_shot", "base"]}},
        "steps": {"check": 1, "split": 1, "estimate": 1, "baseline": {"paths": {}, "skipped": {"few_shot": reason}}}}))
    registry.update_run(record.id, status="running", comparison=None, tuned_metrics=None,
                        estimate={"tokens": {"optimizer_steps": 80}, "gpus": [{"name": "L4", "usd": 0.25, "fits": True}]})
    with _client(registry) as client:
        state = client.get(f"/api/runs/{record.id}/progress").json()
        assert state["live"] == {"step": 20, "total_steps": 80, "eta_seconds": 30.0, "elapsed": 10.0, "tokens_per_second": 320.0, "training": True}
        assert state["series"]["lr"] == [[10.0, 0.001], [20.0, 0.0005]] and state["series"]["validation_score"] == [[10.0, 0.6]]
        assert state["score_name"] == "validation accuracy"
        # A skipped baseline is listed with its reason, in the run's eval.baselines order, never left out.
        assert state["baselines"] == [{"name": "few_shot", "metric": None, "value": None, "skipped": reason},
                                      {"name": "base", "metric": "accuracy", "value": 0.5, "skipped": None}]
        page = client.get(f"/runs/{record.id}").text
        assert "the baselines evaluated or skipped so far" in page and "No comparison yet" in page
        assert f"skipped ({reason})" in page


def test_compare_warns_when_runs_are_of_different_tasks(made_run, tmp_path):
    registry, record, _ = made_run
    other = registry.create_run(name="qa", task="sft", model="/models/tiny", status="finished", run_dir=str(tmp_path / "nowhere"),
                                tuned_metrics={"rougeL": 0.3})
    with _client(registry) as client:
        page = client.get(f"/compare?runs={record.id}&runs={other.id}").text
        assert "different tasks (classify, sft)" in page and "rougeL 0.3" in page and "accuracy 0.9" in page


def test_review_shows_the_reference_and_leaves_identical_answers_out(made_run):
    from pathlib import Path

    registry, record, _ = made_run
    run_dir = Path(record.run_dir)
    base = json.loads((run_dir / "eval" / "base.json").read_text())
    tuned = json.loads((run_dir / "eval" / "tuned.json").read_text())
    same = sum(b["prediction"] == t["prediction"] for b, t in zip(base["rows"], tuned["rows"], strict=True))
    with _client(registry) as client:
        empty = client.get(f"/runs/{record.id}/review").text
        assert "no reviews yet" in empty
        state = client.get(f"/api/runs/{record.id}/review", params={"reviewer": "ann"}).json()
        assert state["identical"] == same and state["total"] == 20 - same
        assert state["next"]["output_a"] != state["next"]["output_b"]
        reference = next(r["reference"] for r in tuned["rows"] if r["id"] == state["next"]["id"])
        assert state["next"]["reference"] == reference


def test_review_against_the_strongest_baseline_that_answers_alike_says_there_is_nothing_to_review(tmp_path):
    # The base model skipped (eval.skip_hopeless): the review is against the verdict's strongest baseline, here one that
    # answers every test example as the tuned model does. The page says so, instead of "every row is judged".
    references = ["x", "y"] * 10
    tuned = _eval("tuned-run", references, references)
    classical = _eval("classical (TF-IDF)", references, references)
    run_dir = tmp_path / "runs" / "alike"
    classical.save(run_dir / "eval" / "classical.json")
    tuned.save(run_dir / "eval" / "tuned.json")
    compare_with_baselines({"classical": classical}, tuned, samples=200, skipped={"base": "it cannot win"}).save(run_dir / "eval" / "comparison.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="alike", task="classify", model="/models/tiny", status="finished", run_dir=str(run_dir))
    with _client(registry) as client:
        state = client.get(f"/api/runs/{record.id}/review", params={"reviewer": "ann"}).json()
        assert (state["opponent"], state["total"], state["identical"], state["next"]) == ("classical", 0, 20, None)
        page = client.get(f"/runs/{record.id}/review", params={"reviewer": "ann"}).text
        assert "Nothing to review: the tuned model and classical gave the same answer" in page and "against classical" in page
        assert '<p id="all-done" class="hidden">' in page


def test_start_form_fields_become_overrides_and_a_config_of_their_own(made_run, tmp_path, monkeypatch):
    from tunelab.ui.views import start_options, start_overrides

    registry, _, _ = made_run
    assert start_overrides({"model": "default", "epochs": "3", "lr": "", "lora_r": 8, "train": "data.jsonl"}) == [
        "model=default", "data.train=data.jsonl", "train.epochs=3", "lora.r=8"]
    (tmp_path / "examples" / "demo").mkdir(parents=True)
    (tmp_path / "examples" / "demo" / "config.yaml").write_text("task: classify\n")
    (tmp_path / "examples" / "demo" / "train.jsonl").write_text("{}\n")
    options = start_options(registry, tmp_path)
    assert options["configs"] == ["examples/demo/config.yaml"] and options["data_files"] == ["examples/demo/train.jsonl"]
    assert options["models"][0]["name"] == "default" and "classify" in options["tasks"]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"t {i}", "label": "xy"[i % 2]}) for i in range(10)) + "\n")
    monkeypatch.chdir(tmp_path)
    with _client(registry) as client:
        assert 'list="models"' in client.get("/start").text
        missing = client.post("/api/estimate", json={"config": "", "fields": {}}, headers=HEADERS)
        assert missing.status_code == 400 and "training data" in missing.json()["error"]
        # No config file: the fields are the config (the estimate itself needs a model, so only the start is checked here).
        # (a model that is not there: the started process stops at once, nothing heavy is loaded).
        fields = {"task": "classify", "train": str(data), "name": "from-fields", "epochs": "1", "model": "./no-such-model"}
        started = client.post("/api/jobs", json={"config": "", "fields": fields}, headers=HEADERS)
        assert started.status_code == 200, started.text
        job = client.app.state.jobs.get(started.json()["id"])
        assert "data.train=" + str(data) in job.command and "train.epochs=1" in job.command and "name=from-fields" in job.command
        assert job.process.wait(120) != 0 and "no-such-model" in job.log_tail()


def test_playground_page_lists_runs_with_weights(made_run, tmp_path):
    registry, record, _ = made_run
    with _client(registry) as client:
        page = client.get("/playground").text
        assert "No finished run with weights" in page  # the hand-made run has evaluations but no adapter/ or model/
        refused = client.post("/api/playground", json={"runs": []}, headers=HEADERS)
        assert refused.status_code == 400 and "pick one run" in refused.json()["error"]
        bad = client.post("/api/playground", json={"runs": [record.id], "prompt": "hi", "max_tokens": "many"}, headers=HEADERS)
        assert bad.status_code == 400 and "max_tokens" in bad.json()["error"], bad.text


def test_a_nan_in_the_training_log_or_a_baseline_is_drawn_as_a_gap_not_a_500(made_run):
    """A validation loss that overflowed (NaN/inf in metrics.jsonl) made /api/runs/.../progress a 500: the run page's charts
    never drew, and a started run's page (which polls the same state) stopped showing its log and status."""
    from pathlib import Path

    registry, record, _ = made_run
    run_dir = Path(record.run_dir)
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "validation_loss": NaN}\n{"step": 3, "loss": Infinity}\n')
    base = json.loads((run_dir / "eval" / "base.json").read_text())
    base["metrics"]["accuracy"] = float("nan")
    (run_dir / "eval" / "base.json").write_text(json.dumps(base))
    with _client(registry) as client:
        response = client.get(f"/api/runs/{record.id}/progress")
        assert response.status_code == 200, response.text
        state = response.json()
        assert state["train"] == [[1.0, 2.0], [3.0, None]] and state["validation"] == [[2.0, None]]
        assert state["series"]["train_loss"] == state["train"]
        assert state["baselines"][0]["name"] == "base" and state["baselines"][0]["value"] is None


def test_a_run_name_already_in_the_registry_is_refused_before_a_job_starts(made_run, tmp_path):
    """The registry's run 'made' has its folder elsewhere: a job named 'made' started (the folder check passed), its page showed
    the earlier run's verdict and linked to it while the process ran, and the process then failed registering the name."""
    registry, record, _ = made_run
    data = tmp_path / "runs" / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"t {i}", "label": "xy"[i % 2]}) for i in range(10)) + "\n")
    config = tmp_path / "runs" / "again.yaml"
    config.write_text(f"task: classify\nmodel: ./no-such-model\ndata:\n  train: {data}\ntrain:\n  output_dir: {tmp_path / 'runs' / 'elsewhere'}\n")
    with pytest.raises(ConfigError, match="already"):
        prepare_run(config, ["name=made"], registry.path)
    with _client(registry) as client:
        response = client.post("/api/jobs", json={"config": str(config), "overrides": "name=made"}, headers=HEADERS)
        assert response.status_code == 400 and "already" in response.json()["error"], response.text
        assert client.app.state.jobs.jobs == {}


def test_a_job_page_shows_only_the_registry_row_of_its_own_run_folder(made_run, tmp_path):
    import subprocess
    import sys

    from tunelab.ui.jobs import Job

    registry, record, _ = made_run
    with _client(registry) as client:
        process = subprocess.Popen([sys.executable, "-c", "pass"])
        process.wait(60)
        job = Job("j1", "c.yaml", [sys.executable, "-m", "tunelab.cli.main", "run", "c.yaml"], tmp_path / "other" / "made", registry.path,
                  process, tmp_path / "log.txt")
        client.app.state.jobs.jobs[job.id] = job
        state = client.get(f"/api/jobs/{job.id}").json()
        assert state["run_id"] is None and state["verdict"] is None and state["verdict_kind"] == "none"
        assert record.verdict not in client.get(f"/jobs/{job.id}").text


def test_the_run_page_shows_the_registered_verdict_as_tunelab_show_does(made_run):
    """`tunelab report RUN --samples N` rewrites eval/comparison.json, not the registry: the page's table then showed other
    intervals (and another "why") than its own header, the runs list and `tunelab show RUN`, which read the registry."""
    from pathlib import Path

    registry, record, verdict = made_run
    run_dir = Path(record.run_dir)
    base, tuned = EvalResult.load(run_dir / "eval" / "base.json"), EvalResult.load(run_dir / "eval" / "tuned.json")
    redone = compare_with_baselines({"base": base}, tuned, samples=150, seed=11)
    redone.save(run_dir / "eval" / "comparison.json")
    shown = verdict.comparisons["base"].metric("macro_f1")
    other = redone.comparisons["base"].metric("macro_f1")
    assert (shown.low, shown.high) != (other.low, other.high)
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}").text
        assert f"[{shown.low:+.3g}, {shown.high:+.3g}]" in page and f"[{other.low:+.3g}, {other.high:+.3g}]" not in page
        assert f"{verdict.samples} resamples" in page


def test_a_run_with_damaged_files_still_shows_its_page_and_curves(made_run):
    """A pipeline.json of the wrong shape, a baseline evaluation whose metrics are no object, a data check that is not UTF-8:
    the run page and its progress were 500s; the page shows what can be read (runs.read_state judges pipeline.json)."""
    from pathlib import Path

    registry, record, _ = made_run
    run_dir = Path(record.run_dir)
    registry.update_run(record.id, status="interrupted", comparison=None)
    (run_dir / "eval" / "comparison.json").unlink()
    (run_dir / "pipeline.json").write_text(json.dumps({"config": {}, "steps": ["check", "split"], "timings": [1.5]}))
    (run_dir / "eval" / "few_shot.json").write_text(json.dumps({"metrics": ["accuracy"]}))
    (run_dir / "data_check.json").write_bytes(b"\xff\xfe{\x00")
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}")
        assert page.status_code == 200, page.text
        assert "not saved for this run" in page.text and "12.5 s" in page.text
        progress = client.get(f"/api/runs/{record.id}/progress")
        assert progress.status_code == 200, progress.text
        assert progress.json()["train"] == [[1.0, 2.0], [2.0, 1.5]]
        assert {b["name"] for b in progress.json()["baselines"]} == {"base", "few_shot"}


def test_starting_the_same_run_twice_before_its_folder_exists_starts_one_process(made_run, tmp_path):
    """A second Start (another tab, the page restored by Back) in the seconds before `tunelab run` creates its folder passed
    the folder check and started a second process on the same run folder."""
    registry, _, _ = made_run
    data = tmp_path / "runs" / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"t {i}", "label": "xy"[i % 2]}) for i in range(10)) + "\n")
    config = tmp_path / "runs" / "twice.yaml"
    config.write_text(f"task: classify\nmodel: ./no-such-model\ndata:\n  train: {data}\ntrain:\n  output_dir: {tmp_path / 'runs' / 'out'}\n")
    with _client(registry) as client:
        first = client.post("/api/jobs", json={"config": str(config), "overrides": "name=twice"}, headers=HEADERS)
        second = client.post("/api/jobs", json={"config": str(config), "overrides": "name=twice"}, headers=HEADERS)
        jobs = list(client.app.state.jobs.jobs.values())
        for job in jobs:
            job.process.wait(120)
        assert first.status_code == 200, first.text
        assert second.status_code == 400 and "already" in second.json()["error"], second.text
        assert len(jobs) == 1


def test_a_finished_run_without_a_verdict_shows_its_tuned_metrics(made_run):
    """Every baseline skipped (eval.skip_hopeless) or none asked for (eval.baselines: []): the run finishes with no verdict.
    The page said "no baseline and no tuned model evaluated" and showed none of the tuned metrics `tunelab show` lists."""
    from pathlib import Path

    registry, record, _ = made_run
    run_dir = Path(record.run_dir)
    for name in ("comparison.json", "base.json"):
        (run_dir / "eval" / name).unlink()
    reason = "2 of 5 validation requests right: it cannot win, so it is not scored on the test rows"
    (run_dir / "pipeline.json").write_text(json.dumps({
        "config": {"eval": {"baselines": ["base"]}}, "steps": {"baseline": {"paths": {}, "skipped": {"base": reason}}, "eval": {}}}))
    registry.update_run(record.id, comparison=None, baseline_metrics=None, artifacts={"baselines": {}, "baselines_skipped": {"base": reason}})
    accuracy = registry.get_run(record.id).tuned_metrics["accuracy"]
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}").text
        assert "no tuned model evaluated" not in page and "the tuned model is not evaluated" not in page
        assert "tuned-metrics" in page and f"{accuracy:.4g}" in page and f"skipped ({reason})" in page


def test_cancel_of_a_cloud_run_also_cancels_the_providers_job(tmp_path, monkeypatch, tiny_model_dir):
    """Cancel stopped `tunelab run` (SIGINT, as Ctrl-C) and left the provider's job training, and billing."""
    import os
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "remote"))
    monkeypatch.setenv("TUNELAB_CLOUD_POLL_S", "0.01")
    monkeypatch.setenv("TUNELAB_REMOTE_CACHE", str(tmp_path / "requests.db"))
    from fake_provider import FakeProvider
    from test_remote_finetune import interrupted_cloud_run

    from tunelab.remote.finetune import CloudJob
    from tunelab.ui.jobs import Job, start_process

    def sleeper(log):
        # Started as the UI starts its runs (SIGINT back to its default: a suite run from a background shell inherits
        # it ignored, and the sleeper would outlive its Cancel).
        with log.open("wb") as out:
            return start_process([sys.executable, "-c", "import time; time.sleep(120)"], out, dict(os.environ))

    provider = FakeProvider()
    provider.url = provider.start()
    try:
        run_dir = interrupted_cloud_run(provider, tmp_path, tiny_model_dir)
        assert provider.jobs["ftjob-1"]["job"]["status"] == "running"
        registry = Registry(tmp_path / "runs" / "registry.db")
        with _client(registry) as client:
            # Stands for the `tunelab run` process following the job: SIGINT ends it as it ends the real one.
            process = sleeper(tmp_path / "sleeper.txt")
            job = Job("c1", "c.yaml", [sys.executable, "-m", "tunelab.cli.main", "run", "c.yaml"], run_dir, registry.path, process,
                      tmp_path / "log.txt", cloud=True)
            client.app.state.jobs.jobs[job.id] = job
            assert "also cancels that job at the provider" in client.get("/jobs/c1").text
            state = client.post("/api/jobs/c1/cancel", headers=HEADERS).json()
            assert process.poll() is not None and state["job_status"] == "cancelled"
            assert provider.jobs["ftjob-1"]["job"]["status"] == "cancelled" and CloudJob.load(run_dir).status == "cancelled"
            assert "ftjob-1 cancelled" in state["cloud_cancel"] and "ftjob-1 cancelled" in client.get("/jobs/c1").text
            assert registry.list_runs()[0].status == "cancelled" and "cancelled" in registry.list_runs()[0].error
            client.post("/api/jobs/c1/cancel", headers=HEADERS)  # again: the provider is not asked twice
            assert provider.count("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel") == 1
            # A local run's Cancel is what it was: the process stopped, no provider asked.
            local = sleeper(tmp_path / "local-sleeper.txt")
            client.app.state.jobs.jobs["l1"] = Job("l1", "c.yaml", ["x"] * 4, tmp_path / "runs" / "local", registry.path, local, tmp_path / "l.txt")
            state = client.post("/api/jobs/l1/cancel", headers=HEADERS).json()
            assert local.wait(60) is not None and state["cloud_cancel"] is None and not state["cloud"]
            assert provider.count("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel") == 1
    finally:
        provider.stop()


def test_a_key_in_the_address_wins_over_a_stale_key_cookie(made_run):
    """Cookies are shared by every port of a host: a cookie left by another `tunelab ui` (or this one before its key
    changed) made `?key=RIGHT` a 401, with no way out but clearing the browser's cookies."""
    registry, _, _ = made_run
    with _client(registry, api_key="sesame") as client:
        client.cookies.set("tunelab_ui_key", "the-key-of-another-ui", domain="127.0.0.1")
        opened = client.get("/?key=sesame", follow_redirects=False)
        assert opened.status_code == 303, opened.text
        assert client.get("/").status_code == 200  # the cookie now holds this UI's key
        assert client.get("/?key=wrong").status_code == 401  # a wrong key given is still refused


def test_an_interrupted_run_is_resumed_from_its_page_as_tunelab_run_resume(made_run, monkeypatch):
    """Cancel marks a run cancelled; the page only said `tunelab run --resume RUN` (a command, for a user of the UI)."""
    import tunelab.ui.jobs as jobs_module
    from tunelab.runs import RunFolder

    registry, record, _ = made_run
    started = []

    class Running:  # a process that goes on until the UI shuts down
        code = None

        def poll(self):
            return self.code

        def send_signal(self, signal):
            self.code = 130

        def wait(self, timeout=None):
            return self.code

    monkeypatch.setattr(jobs_module, "start_process", lambda command, log, env: started.append(command) or Running())
    with _client(registry) as client:
        assert client.post(f"/api/runs/{record.id}/resume", headers=HEADERS).status_code == 400  # finished: nothing to resume
        assert 'id="resume-button"' not in client.get(f"/runs/{record.id}").text
        registry.update_run(record.id, status="cancelled", error="cancelled by the user (Ctrl-C / SIGINT); `tunelab run --resume RUN` continues it")
        RunFolder(record.run_dir).pipeline_state.write_text(json.dumps({"config": {"task": "classify", "train": {"backend": "local"}}, "steps": {"check": {}}}))
        assert 'id="resume-button"' in client.get(f"/runs/{record.id}").text
        job = client.post(f"/api/runs/{record.id}/resume", headers=HEADERS)
        assert job.status_code == 200, job.text
        assert started == [started[0]] and started[0][3:] == ["run", "--resume", record.run_dir]
        assert client.get(job.json()["url"]).status_code == 200
        again = client.post(f"/api/runs/{record.id}/resume", headers=HEADERS)  # its job still going: refused
        assert again.status_code == 400 and "already being made" in again.json()["error"] and len(started) == 1


def test_a_cloud_run_whose_providers_job_was_cancelled_offers_no_resume(made_run, monkeypatch):
    """The page offered Resume on a cloud run whose job the user had cancelled at the provider: `tunelab run --resume`
    follows that job to its end and stops there (a cancelled job is never started again), so the new job stopped at once."""
    import tunelab.ui.jobs as jobs_module
    from tunelab.remote.finetune import CloudJob
    from tunelab.runs import RunFolder

    registry, record, _ = made_run
    started = []
    monkeypatch.setattr(jobs_module, "start_process", lambda command, log, env: started.append(command))
    registry.update_run(record.id, status="cancelled", error="cancelled: job ftjob-1 was cancelled on http://127.0.0.1:9/v1")
    RunFolder(record.run_dir).pipeline_state.write_text(json.dumps({"config": {"task": "classify", "train": {"backend": "openai"}},
                                                                    "steps": {"check": {}}}))
    CloudJob(job_id="ftjob-1", base_url="http://127.0.0.1:9/v1", model="gpt-4o-mini", status="cancelled").save(record.run_dir)
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}").text
        assert 'id="resume-button"' not in page and "a cancelled job is not resumed" in page
        refused = client.post(f"/api/runs/{record.id}/resume", headers=HEADERS)
        assert refused.status_code == 400 and "ftjob-1" in refused.json()["error"] and started == []
        # Cancelled before its job was created (no job id yet): a resume creates the job, so it is offered.
        CloudJob(base_url="http://127.0.0.1:9/v1", model="gpt-4o-mini", status="uploaded", training_file="file-1").save(record.run_dir)
        assert 'id="resume-button"' in client.get(f"/runs/{record.id}").text


def test_a_cancel_that_comes_after_the_run_finished_leaves_the_job_finished(made_run):
    """Cancel pressed as the run registered its verdict (the process then printing its outcome, past its Ctrl-C handling,
    died of the SIGINT): the job page said cancelled while the run's page said finished, with its verdict."""
    import subprocess
    import sys

    from tunelab.ui.jobs import Job

    registry, record, _ = made_run
    with _client(registry) as client:
        process = subprocess.Popen([sys.executable, "-c", "import os, signal; signal.signal(signal.SIGINT, signal.SIG_DFL); os.kill(os.getpid(), signal.SIGINT)"])
        assert process.wait(60) != 0
        job = Job("f1", "c.yaml", [sys.executable, "-m", "tunelab.cli.main", "run", "c.yaml"], Path(record.run_dir), registry.path,
                  process, Path(record.run_dir) / "log.txt", cancelled=True)
        client.app.state.jobs.jobs[job.id] = job
        state = client.get(f"/api/jobs/{job.id}").json()
        assert state["job_status"] == "finished" and state["verdict"] == record.verdict
        # Stopped before it finished: cancelled, as before.
        registry.update_run(record.id, status="cancelled", error="cancelled by the user (Ctrl-C / SIGINT)")
        assert client.get(f"/api/jobs/{job.id}").json()["job_status"] == "cancelled"


def test_estimate_loads_the_tokenizer_once(made_run, tmp_path, tiny_model_dir, monkeypatch):
    """Estimate loaded the model with its tokenizer for the estimate, then the tokenizer again for the data check's
    warnings: a second load of a large tokenizer (seconds on a cold cache) for the one the model already had."""
    from transformers import AutoTokenizer

    registry, _, _ = made_run
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"request {i}", "label": "xy"[i % 2]}) for i in range(40)) + "\n")
    config = tmp_path / "run.yaml"
    config.write_text(f"task: classify\nmodel: {tiny_model_dir}\ndata: {{train: {data}}}\ntrain: {{output_dir: {tmp_path / 'runs'}}}\n")
    loads = []
    load = AutoTokenizer.from_pretrained
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *args, **kwargs: loads.append(args) or load(*args, **kwargs))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    with _client(registry, project=tmp_path) as client:
        response = client.post("/api/estimate", json={"config": str(config)}, headers=HEADERS)
    assert response.status_code == 200, response.text
    assert response.json()["lines"] and any("test split" in w for w in response.json()["warnings"])  # the check's warnings came
    assert len(loads) == 1, loads


def test_the_estimate_of_a_provider_trained_config_is_its_price_not_timed_steps_here(made_run, tmp_path, tiny_model_dir):
    """A `train.backend: openai` config: the Start page's estimate timed LoRA steps on this machine and priced GPUs (what
    `tunelab estimate` did too before it priced the provider's job), while `tunelab run` bills the provider's tokens."""
    registry, _, _ = made_run
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"prompt": f"question {i}?", "completion": f"answer {i}."}) + "\n" for i in range(40)))
    config = tmp_path / "cloud.yaml"
    config.write_text(
        f"task: sft\nmodel:\n  name: {tiny_model_dir}\n  endpoint: {{base_url: 'http://127.0.0.1:9/v1', name: gpt-4o-mini-2024-07-18, "
        f"api_key_env: null}}\ndata:\n  train: {tmp_path / 'train.jsonl'}\n  max_length: 32\ntrain:\n  backend: openai\n  epochs: 3\n"
        f"  output_dir: {tmp_path / 'runs'}\nbudget:\n  max_usd: 0.000001\n"
    )
    with _client(registry, project=tmp_path) as client:
        response = client.post("/api/estimate", json={"config": str(config)}, headers=HEADERS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["estimate"]["backend"] == "openai" and body["estimate"]["usd"] > 0 and "seconds" not in body["estimate"]
    lines = dict(body["lines"])
    assert lines["training tokens billed"] == f"{body['estimate']['training_tokens']:,}" and lines["price"].startswith("$")
    assert lines["budget"].startswith("over: ") and "budget.max_usd" in lines["budget"], lines
    assert not any("time on this machine" in what or "cheapest" in what for what in lines), lines


def test_the_runs_page_has_each_run_folders_size(made_run):
    from pathlib import Path

    from tunelab.paths import human_bytes
    from tunelab.registry.cleanup import folder_bytes
    from tunelab.ui.views import run_row

    registry, record, _ = made_run
    size = folder_bytes(Path(record.run_dir))
    assert size and run_row(registry.get_run(record.id)).size == size
    with _client(registry) as client:
        page = client.get("/").text
    assert f'<td data-value="{size}">{human_bytes(size)}</td>' in page
