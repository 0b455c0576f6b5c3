"""`tunelab generate --model RUN` decodes as the run's evaluation did (as the server and `tunelab eval` do)."""

from __future__ import annotations

import pytest
import yaml
from tests.unit.serve.conftest import write_fake_run
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app


@pytest.fixture(scope="module", autouse=True)
def _commands():
    _register_commands()


def test_generate_decodes_as_the_run_was_judged_unless_told(monkeypatch, tmp_path, tiny_model_dir, tiny_tokenizer):
    # A run judged on sampled answers (eval.temperature 0.7) was answered greedily by `tunelab generate`.
    import tunelab.models.generate as generation

    seen = []

    def spy(model, tokenizer, ids, **options):
        seen.append((options["temperature"], options["top_p"]))
        yield "x"

    monkeypatch.setattr(generation, "stream_generate", spy)
    run = write_fake_run(tmp_path / "warm", tiny_model_dir, tiny_tokenizer, seed=2)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"] = {"temperature": 0.7, "top_p": 0.9}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for extra in ([], ["--temperature", "0"], ["--top-p", "0.5"]):
        result = CliRunner().invoke(app, ["generate", "hello", "--model", str(run), "--max-new-tokens", "2", *extra])
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["generate", "hello", "--model", str(tiny_model_dir), "--max-new-tokens", "2"])
    assert result.exit_code == 0, result.output
    assert seen == [(0.7, 0.9), (0.0, 0.9), (0.7, 0.5), (0.0, 1.0)]  # a plain model: greedy, as before


def test_generate_answers_at_the_runs_judged_length_unless_told(monkeypatch, tmp_path, tiny_model_dir, tiny_tokenizer):
    # A run judged on 5-token answers answered 256 tokens by default, where its merged export answers 5.
    import tunelab.models.generate as generation

    seen = []

    def spy(model, tokenizer, ids, **options):
        seen.append(options["max_new_tokens"])
        yield "x"

    monkeypatch.setattr(generation, "stream_generate", spy)
    run = write_fake_run(tmp_path / "short", tiny_model_dir, tiny_tokenizer, seed=1)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["eval"] = {"max_new_tokens": 5}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for extra in ([], ["--max-new-tokens", "2"]):
        result = CliRunner().invoke(app, ["generate", "hello", "--model", str(run), *extra])
        assert result.exit_code == 0, result.output
    assert seen == [5, 2]
