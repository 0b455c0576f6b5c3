"""`tunelab generate`, evaluation and serving all generate through one function: patch it, see all three."""

from __future__ import annotations

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tunelab.config import DataConfig, EvalConfig
from tunelab.data.records import SFTRecord
from tunelab.models import generate, load_model
from tunelab.serve import ServeSettings, create_app

LOCAL = "http://127.0.0.1"  # the Host a loopback-bound server answers (its DNS-rebinding guard refuses others)


def test_generate_evaluation_and_serving_share_generate_ids(monkeypatch, registry, tiny_model_dir, tmp_path):
    calls: list[str] = []
    real = generate.generate_ids

    def spy(model, input_ids, attention_mask, **options):
        calls.append(caller)
        return real(model, input_ids, attention_mask, **options)

    monkeypatch.setattr(generate, "generate_ids", spy)

    caller = "cli"
    from tunelab.cli.main import _register_commands, app

    if not any(command.name == "generate" for command in app.registered_commands):
        _register_commands()
    result = CliRunner().invoke(app, ["generate", "hello", "--model", str(tiny_model_dir), "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output

    caller = "evaluation"
    from tunelab.evaluation.evaluate import evaluate

    record = SFTRecord(({"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}), source="t:1")
    evaluate(load_model(str(tiny_model_dir)), [record], "sft", config=EvalConfig(max_new_tokens=3), data_config=DataConfig())

    caller = "serve"
    app = create_app(registry, ServeSettings(log_path=tmp_path / "requests.db"))
    with TestClient(app, base_url=LOCAL) as client:
        body = {"model": "france", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "temperature": 0}
        assert client.post("/v1/chat/completions", json=body).status_code == 200

    assert set(calls) == {"cli", "evaluation", "serve"}
