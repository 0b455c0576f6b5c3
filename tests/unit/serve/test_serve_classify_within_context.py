"""A classify run whose max_length is longer than its model's context answers over HTTP as it is evaluated: the text is
shortened to the context in the one classify inference (``inference.Classifier``), not an IndexError (a 500)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from tests.conftest import save_tiny_gpt2
from tests.unit.serve.conftest import write_fake_run

from tunelab.serve import ServeSettings, create_app
from tunelab.serve.adapters import load_registry

LOCAL = "http://127.0.0.1"
CONTEXT = 128


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), tiny_tokenizer, CONTEXT)


def test_a_text_past_the_context_is_shortened_as_evaluated(tmp_path, gpt2_dir, tiny_tokenizer):
    from tunelab.data.records import ClassifyRecord
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.runs import Run

    # The run's data.max_length is the default 512, four times the model's 128 positions.
    run = write_fake_run(tmp_path / "router", gpt2_dir, tiny_tokenizer, seed=3, task="classify")
    texts = ["my card has not arrived " * 20, "login fails"]
    registry = load_registry(str(gpt2_dir), [("router", str(run))])
    with TestClient(create_app(registry, ServeSettings(log_path=tmp_path / "requests.db")), base_url=LOCAL) as client:
        response = client.post("/v1/classify", json={"model": "router", "input": texts})
    assert response.status_code == 200, response.text
    served = response.json()["data"]
    opened = Run.open(run)
    records = [ClassifyRecord(text, "billing") for text in texts]
    evaluated = evaluate(opened.load(), records, "classify", config=opened.config.eval, data_config=opened.config.data)
    assert any(f"context of {CONTEXT}" in warning for warning in evaluated.warnings), evaluated.warnings
    for item, row in zip(served, evaluated.rows, strict=True):
        assert item["label"] == row["prediction"] and max(item["probabilities"].values()) == pytest.approx(row["scores"]["confidence"], abs=1e-5)


def test_tunelab_generate_answers_a_classify_run_within_the_context(tmp_path, gpt2_dir, tiny_tokenizer):
    # `tunelab generate RUN TEXT` of the same run was an IndexError traceback for a text past the model's positions.
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    _register_commands()
    run = write_fake_run(tmp_path / "router", gpt2_dir, tiny_tokenizer, seed=3, task="classify")
    result = CliRunner().invoke(app, ["generate", "my card has not arrived " * 20, "--model", str(run)])
    assert result.exit_code == 0, repr(result.exception)
    assert result.stdout.strip().splitlines()[-1] in ("billing", "technical", "account")
