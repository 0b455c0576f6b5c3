"""`tunelab generate` keeps prompt + answer inside the model's context, as the server does (one context length)."""

from __future__ import annotations

import pytest
from tests.conftest import save_tiny_gpt2
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.errors import TunelabError

CONTEXT = 128


@pytest.fixture(scope="module", autouse=True)
def _commands():
    _register_commands()


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny GPT-2 (absolute positions: a position past n_positions is an IndexError) with a 32-token context."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), tiny_tokenizer, CONTEXT)


def _prompt_tokens(tokenizer, text: str) -> int:
    from tunelab.inference import chat_prompt

    return len(chat_prompt(tokenizer, [{"role": "user", "content": text}]).ids)


def test_new_tokens_past_the_context_are_one_line_not_an_index_error(gpt2_dir, tiny_tokenizer):
    # A plain model has no max_length: prompt + --max-new-tokens ran past n_positions into an IndexError traceback.
    prompt_tokens = _prompt_tokens(tiny_tokenizer, "hello")
    assert prompt_tokens < CONTEXT
    result = CliRunner().invoke(app, ["generate", "hello", "--model", str(gpt2_dir), "--max-new-tokens", "100"])
    assert isinstance(result.exception, TunelabError), repr(result.exception)
    message = str(result.exception)
    assert "\n" not in message, message
    assert f"{prompt_tokens} tokens" in message and "100 more" in message and f"context of {CONTEXT}" in message, message
    assert f"--max-new-tokens {CONTEXT - prompt_tokens} or less" in message, message


def test_a_prompt_as_long_as_the_context_is_refused(gpt2_dir):
    result = CliRunner().invoke(app, ["generate", "four score and seven years ago " * 30, "--model", str(gpt2_dir), "--max-new-tokens", "1"])
    assert isinstance(result.exception, TunelabError), repr(result.exception)
    assert f"the model's context is {CONTEXT}" in str(result.exception), str(result.exception)


def test_without_max_new_tokens_the_answer_gets_what_the_context_leaves(gpt2_dir, monkeypatch):
    # As the server without max_tokens: the default 256 is capped to the room left, never an error.
    from tunelab.models import generate

    asked: list[int] = []
    real = generate.generate_ids

    def spy(model, input_ids, attention_mask, **options):
        asked.append(input_ids.shape[1] + options["max_new_tokens"])
        return real(model, input_ids, attention_mask, **options)

    monkeypatch.setattr(generate, "generate_ids", spy)
    result = CliRunner().invoke(app, ["generate", "hello", "--model", str(gpt2_dir)])
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert asked == [CONTEXT]


def test_the_context_length_is_the_configs_max_position_embeddings(gpt2_dir, tiny_model_dir):
    # The one context length the server's checks and `tunelab generate` read (GPT-2 spells it n_positions).
    from tunelab.models import load_model
    from tunelab.models.generate import context_length

    assert context_length(load_model(str(gpt2_dir)).model) == CONTEXT
    assert context_length(load_model(str(tiny_model_dir)).model) == 1024
