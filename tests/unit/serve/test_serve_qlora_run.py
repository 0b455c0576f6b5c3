"""A qlora run served with ``--model RUN`` answers over the 4-bit NF4 base it was trained and evaluated on
(``Run.load``), not over the full-precision base a plain LoRA adapter shares; as a shared-base ``--adapter`` it is
refused with one line instead of answering differently from its evaluation."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tests.unit.train.train_helpers import classify_records, records_split, tiny_config

from tunelab.data.records import ClassifyRecord
from tunelab.evaluation.evaluate import evaluate
from tunelab.runs import Run
from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry
from tunelab.serve.errors import ServeError
from tunelab.tasks import run_training

pytest.importorskip("bitsandbytes", reason="qlora needs bitsandbytes (pip install 'tunelab[qlora]')")

LOCAL = "http://127.0.0.1"
TEXTS = ["my card was charged twice again", "where is my parcel", "cannot log in since monday", "refund please"]


@pytest.fixture(scope="module")
def qlora_run(tiny_model_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("served") / "qlora-router"
    config = tiny_config(tiny_model_dir, task="classify", method="qlora", precision="bf16", max_steps=4, lr=2e-2)
    run_training(config, records_split(classify_records(12), classify_records(6)), run_dir=run_dir)
    return run_dir


def test_a_qlora_run_answers_as_evaluated(qlora_run):
    run = Run.open(qlora_run)
    expected = evaluate(run.load(), [ClassifyRecord(text, "billing") for text in TEXTS], "classify", config=run.config.eval,
                        data_config=run.config.data).rows
    with TestClient(create_app(load_registry(str(qlora_run)), ServeSettings()), base_url=LOCAL) as client:
        response = client.post("/v1/classify", json={"model": "qlora-router", "input": TEXTS})
    assert response.status_code == 200, response.text
    for row, answer in zip(expected, response.json()["data"], strict=True):
        # The same weights, computed the same way: equal to float rounding. Over the full-precision base the tiny
        # model's probabilities moved by about 1e-4 (its answers, near uniform here, happened to stay).
        assert answer["label"] == row["prediction"]
        assert answer["probabilities"][answer["label"]] == pytest.approx(row["scores"]["confidence"], abs=1e-6)
        assert answer["probabilities"]["billing"] == pytest.approx(row["scores"]["probability_of_reference"], abs=1e-6)


def test_a_qlora_run_as_a_shared_base_adapter_is_refused(qlora_run, tiny_model_dir):
    with pytest.raises(ServeError, match="qlora") as error:
        load_registry(str(tiny_model_dir), [("router", str(qlora_run))])
    assert "--model" in (error.value.hint or "")
