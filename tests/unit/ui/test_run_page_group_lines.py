"""The run page shows, under the verdict, each group the tuned model is significantly worse on (data.group_field), as
`tunelab show` does: a verdict that paid off on average does not hide a lost group."""

import html

from fastapi.testclient import TestClient

from tunelab.evaluation.compare import PAID_OFF, compare_with_baselines
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.ui import UISettings, create_app


def _classify(name, outcomes, groups):
    rows = [{"id": f"x{i}", "source": f"t:{i + 1}", "prompt": f"text {i}", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9, "probability_of_reference": 0.9 if ok else 0.1}, "group": group}
            for i, (ok, group) in enumerate(zip(outcomes, groups, strict=True))]
    return EvalResult("classify", name, len(rows), {"primary": "accuracy"}, rows, labels=["a", "b"])


def test_the_run_page_names_the_group_the_tuned_model_lost(tmp_path):
    groups = ["FR"] * 150 + ["DE"] * 60
    tuned = _classify("tuned", [i % 20 != 0 for i in range(150)] + [i < 20 for i in range(60)], groups)
    base = _classify("base", [i % 3 == 0 for i in range(150)] + [i < 55 for i in range(60)], groups)
    verdict = compare_with_baselines({"base": base}, tuned, samples=200)
    assert verdict.verdict == PAID_OFF and len(verdict.group_lines) == 1
    registry = Registry(tmp_path / "registry.db")
    record = registry.create_run(name="grouped", task="classify", model="/models/tiny", status="finished", run_dir=str(tmp_path / "run"),
                                 comparison=verdict.to_dict())
    with TestClient(create_app(UISettings(registry=registry.path)), base_url="http://127.0.0.1:7860") as client:
        page = client.get(f"/runs/{record.id}").text
    assert "groups lost" in page and html.unescape(page).count(verdict.group_lines[0]) == 1
