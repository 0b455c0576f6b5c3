"""The UI's pages as a user clicks through them: what the report and `tunelab show` say, the run page says too."""

import pytest
from fastapi.testclient import TestClient

from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.metrics import classify_metrics
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.ui import UISettings, create_app
from tunelab.ui.views import verdict_table


def _client(registry):
    return TestClient(create_app(UISettings(registry=registry.path)), base_url="http://127.0.0.1:7860")


def _metric(name, before, after, higher_is_better=True):
    return {"name": name, "before": before, "after": after, "difference": after - before, "low": -0.1, "high": 0.1,
            "outcome": "no significant difference", "higher_is_better": higher_is_better, "not_compared": None}


def _classify_eval(name, predictions, references, settings=None):
    rows = [{"id": f"e{i}", "source": f"data.jsonl:{i + 1}", "prompt": f"request {i}", "reference": r, "prediction": p,
             "scores": {"correct": float(p == r), "confidence": 0.9, "probability_of_reference": 0.9 if p == r else 0.2, "known_label": True}}
            for i, (p, r) in enumerate(zip(predictions, references, strict=True))]
    metrics = classify_metrics(references, predictions, [0.9] * len(rows), ["x", "y", "other"])
    return EvalResult("classify", name, len(rows), {"primary": "accuracy", **metrics}, rows, settings=settings or {}, labels=["x", "y", "other"])


def test_a_metric_only_a_later_baseline_is_compared_on_is_still_shown_as_the_report_shows_it(tmp_path):
    # The out-of-scope metrics exist only in the comparisons whose baseline was thresholded: the report lists every
    # metric any comparison has (n/a in the others' columns); the run page and `tunelab show` listed only the first's.
    comparison = {
        "primary": "accuracy", "strongest": "few_shot", "n": 40, "samples": 200, "verdict": "no significant difference",
        "comparisons": {
            "majority": {"n": 40, "metrics": [_metric("accuracy", 0.5, 0.8)]},
            "few_shot": {"n": 40, "metrics": [_metric("accuracy", 0.7, 0.8), _metric("in_scope_accuracy", 0.6, 0.9)]},
        },
    }
    names, lines = verdict_table(comparison)
    assert [line.name for line in lines] == ["accuracy", "in_scope_accuracy"]
    scoped = lines[1]
    assert scoped.tuned == 0.9 and scoped.cells[0]["missing"] and not scoped.cells[1]["missing"]
    registry = Registry(tmp_path / "runs" / "registry.db")
    # Its folder deleted since: the page still shows what the registry holds.
    record = registry.create_run(name="scoped", task="classify", model="/models/tiny", status="finished",
                                 run_dir=str(tmp_path / "runs" / "deleted"), comparison=comparison)
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}")
    assert page.status_code == 200
    assert "in_scope_accuracy" in page.text
    assert "tuned n/a" not in page.text  # the majority column says n/a, not an interval of nothing


def test_the_run_page_marks_each_metrics_direction_as_the_report_does(tmp_path):
    # A text run's perplexity falls as the model gets better: the report writes ↓ beside it, the page only hid it in a tooltip.
    comparison = {
        "primary": "nll", "strongest": "base", "n": 40, "samples": 200, "verdict": "no significant difference",
        "comparisons": {"base": {"n": 40, "metrics": [_metric("nll", 2.0, 1.8, higher_is_better=False),
                                                      _metric("token_accuracy", 0.3, 0.35)]}},
    }
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="texts", task="text", model="/models/tiny", status="finished",
                                 run_dir=str(tmp_path / "runs" / "texts"), comparison=comparison)
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}").text
    assert "nll ↓" in page and "token_accuracy ↑" in page


def test_a_classify_run_with_an_out_of_scope_label_shows_its_thresholds_as_the_report_does(tmp_path):
    references = ["x", "y", "other", "x"] * 10
    rule = {"label": "other", "threshold": 0.4213, "rule": "the threshold that maximises validation accuracy"}
    base = _classify_eval("base-model", ["x"] * 40, references)
    tuned = _classify_eval("tuned-run", references, references, settings={"out_of_scope": rule})
    run_dir = tmp_path / "runs" / "scoped"
    base.save(run_dir / "eval" / "base.json")
    tuned.save(run_dir / "eval" / "tuned.json")
    verdict = compare_with_baselines({"base": base}, tuned, samples=200)
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="scoped", task="classify", model="/models/tiny", status="finished", run_dir=str(run_dir),
                                 comparison=verdict.to_dict())
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}").text
    assert "out of scope: &#39;other&#39;" in page and "tuned 0.421" in page


def test_an_unknown_job_is_a_404_as_an_unknown_run_is(tmp_path):
    registry = Registry(tmp_path / "runs" / "registry.db")
    with _client(registry) as client:
        page = client.get("/jobs/nope")
        api = client.get("/api/jobs/nope")
        cancel = client.post("/api/jobs/nope/cancel", headers={"X-Tunelab-UI": "1"})
    assert page.status_code == 404 and "no started run" in page.text
    assert api.status_code == 404 and "no started run" in api.json()["error"]
    assert cancel.status_code == 404


@pytest.mark.parametrize("text", ["task: [classify\n", "- task: classify\n", "task: classify\ntrain: {epochs: many}\n", "task: classify\nnot_a_key: 1\n"])
def test_a_job_started_with_a_bad_config_gets_a_one_line_error_not_a_traceback(tmp_path, text):
    registry = Registry(tmp_path / "runs" / "registry.db")
    (tmp_path / "bad.yaml").write_text(text)
    app = create_app(UISettings(registry=registry.path, project=tmp_path))
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        started = client.post("/api/jobs", json={"config": "bad.yaml"}, headers={"X-Tunelab-UI": "1"})
    assert started.status_code == 400
    error = started.json()["error"]
    assert error and "Traceback" not in error and "\n" not in error.strip()


def test_the_playground_says_why_a_run_without_weights_cannot_answer(tmp_path):
    registry = Registry(tmp_path / "runs" / "registry.db")
    run_dir = tmp_path / "runs" / "broke"
    run_dir.mkdir(parents=True)
    (run_dir / "pipeline.json").write_text("{}")
    record = registry.create_run(name="broke", task="sft", model="/models/tiny", status="failed", run_dir=str(run_dir))
    with _client(registry) as client:
        asked = client.post("/api/playground", json={"runs": [record.id], "prompt": "hello"}, headers={"X-Tunelab-UI": "1"})
        too_long = client.post("/api/playground", json={"runs": [record.id], "prompt": "x" * 20_001}, headers={"X-Tunelab-UI": "1"})
    assert asked.status_code == 400 and asked.json()["error"]
    assert too_long.status_code == 400 and "longer than" in too_long.json()["error"]


def test_baselines_skipped_without_a_verdict_are_named_with_their_reasons_as_tunelab_show_names_them(tmp_path):
    # Every baseline skipped: no comparison, the reasons only in the registry's artifacts. `tunelab show` lists them;
    # the page said "no baseline was scored" without why once the run folder (its pipeline.json) was gone.
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(
        name="alone", task="classify", model="/models/tiny", status="finished", run_dir=str(tmp_path / "runs" / "gone"),
        tuned_metrics={"primary": "accuracy", "accuracy": 0.9},
        artifacts={"baselines_skipped": {"base": "cannot win: it answers 3 of 4 labels never"}},
    )
    with _client(registry) as client:
        page = client.get(f"/runs/{record.id}").text
    assert "baselines skipped" in page and "cannot win: it answers 3 of 4 labels never" in page
