"""The Compare page's "Base model metrics" of a preference run: its base model is the reference the run's implicit reward
is measured against, scored as itself, so it has no value of those metrics (``MetricSpec.against_reference``). The page
listed the reference's own preference_accuracy and a reward margin of 0 as the base model's, where the run's verdict
(``compare_evaluations``, as the run page, the report and the CLI show it) says "not compared"."""

import re

from fastapi.testclient import TestClient
from tests.unit.evaluation.test_preference_comparison import _pair

from tunelab.evaluation.compare import compare_with_baselines
from tunelab.registry import Registry
from tunelab.ui import UISettings, create_app

# What a DPO run's base evaluation stores: its likelihood ranks the pairs, its reward against itself is zero.
REFERENCE = {"primary": "likelihood_accuracy", "likelihood_accuracy": 0.55, "preference_accuracy": 0.625, "reward_margin": 0.0,
             "log_ratio_chosen": 0.0, "log_ratio_rejected": 0.0}
TUNED = {"primary": "likelihood_accuracy", "likelihood_accuracy": 0.6, "preference_accuracy": 0.9, "reward_margin": 0.4,
         "log_ratio_chosen": 0.1, "log_ratio_rejected": -0.3}


def _base_model_metrics(page: str) -> dict[str, list[str]]:
    """The "Base model metrics" table as {metric: [cell text per run]}."""
    table = page.split("<h3>Base model metrics</h3>", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><th>([^<]+)</th>(.*?)</tr>", table)
    return {name: [re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", cells)] for name, cells in rows}


def test_a_preference_runs_base_model_metrics_leave_the_reference_metrics_not_compared(tmp_path):
    registry = Registry(tmp_path / "runs" / "registry.db")
    base, tuned = _pair()
    verdict = compare_with_baselines({"base": base}, tuned, samples=100).to_dict()  # as the pipeline registers it
    runs = [
        registry.create_run(name=name, task="preference", model="/models/tiny", status="finished", run_dir=str(tmp_path / name),
                            baseline_metrics=REFERENCE, tuned_metrics=TUNED, comparison=verdict)
        for name in ("dpo-a", "dpo-b")
    ]
    # A classify run beside them keeps its base model's values: it has no metric measured against a reference.
    classify = registry.create_run(name="router", task="classify", model="/models/tiny", status="finished",
                                   run_dir=str(tmp_path / "router"), baseline_metrics={"accuracy": 0.5}, tuned_metrics={"accuracy": 0.8})
    app = create_app(UISettings(registry=registry.path))
    with TestClient(app, base_url="http://127.0.0.1:7860") as client:
        page = client.get("/compare", params={"runs": [runs[0].id, runs[1].id, classify.id]})
        assert page.status_code == 200, page.text
    shown = _base_model_metrics(page.text)
    for name in ("preference_accuracy", "reward_margin", "log_ratio_chosen", "log_ratio_rejected"):
        assert [cell.startswith("not compared") for cell in shown[name]] == [True, True, False], (name, shown[name])
        assert "reference" in shown[name][0], shown[name]  # why, as the run page says it
    assert shown["likelihood_accuracy"][:2] == ["0.55", "0.55"]  # the like-for-like rule is the base model's own
    assert shown["accuracy"] == ["-", "-", "0.5"]
