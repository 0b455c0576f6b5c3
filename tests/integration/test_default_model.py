"""End to end on the real default model: load, cache, reload fast, the Paris answer, the CLI."""

import os
import subprocess
import sys

import pytest

from tunelab.models.generate import generate_text
from tunelab.runs import load_model

pytestmark = pytest.mark.slow


def test_default_model_answers_paris(default_model):
    assert sum(p.numel() for p in default_model.model.parameters()) == 134_515_008
    answer = generate_text(default_model.model, default_model.tokenizer, "What is the capital of France?", max_new_tokens=20)
    assert answer == "The capital of France is Paris."


def test_cached_reload_never_converts_again(default_model, monkeypatch):
    import tunelab.models.loader as loader

    def no_conversion(*args, **kwargs):
        raise AssertionError("the converted cache was not used: the GGUF was dequantized again")

    # Once converted, a load reads the cached safetensors (well under 2 s, see bench/startup.py)
    # and never dequantizes the GGUF again (about 20 s).
    monkeypatch.setattr(loader, "convert_gguf", no_conversion)
    assert loader.is_cached(loader.resolve_model("default"))
    again = load_model("default")
    assert again.model.config.num_hidden_layers == 30
    assert sum(p.numel() for p in again.model.parameters()) == 134_515_008


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_generate_and_errors(default_model, tmp_path):
    result = _cli("generate", "What is the capital of France?", "--max-new-tokens", "20")
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout
    result = _cli("generate", "--model", "no-such-model", "hi")
    assert result.returncode == 2
    assert "unknown model" in result.stderr and "Traceback" not in result.stderr
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    env = {**os.environ, "TUNELAB_CACHE": str(blocker / "cache")}
    result = _cli("generate", "hi", env=env)
    assert result.returncode == 2 and "not writable" in result.stderr, result.stderr


def test_cli_help_lists_commands():
    result = _cli("--help")
    assert result.returncode == 0
    for command in ("generate", "models", "env"):
        assert command in result.stdout
