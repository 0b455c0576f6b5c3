"""Training refuses rows longer than the model's context (``models.generate.context_length``) before any compute:
a GPT-2-style model (absolute positions) past ``n_positions`` failed mid-training with an IndexError traceback."""

from __future__ import annotations

import json

import pytest
from tests.conftest import save_tiny_gpt2
from train_helpers import records_split

from tunelab.config import parse_config
from tunelab.data.records import SFTRecord
from tunelab.errors import ConfigError
from tunelab.tasks import run_training

CONTEXT = 64


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny GPT-2 (absolute positions: a position past n_positions is an IndexError) with a 64-token context."""
    return save_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2"), tiny_tokenizer, CONTEXT)


def _records(answer: str) -> list[SFTRecord]:
    return [SFTRecord(({"role": "user", "content": "hi"}, {"role": "assistant", "content": answer})) for _ in range(8)]


def _config(model_dir, max_length: int, **train):
    settings = {"batch_size": 4, "max_steps": 2, "precision": "fp32", "seed": 0, **train}
    return parse_config({"task": "sft", "model": str(model_dir), "data": {"max_length": max_length}, "train": settings})


def _one_line(error: ConfigError, key: str) -> str:
    message = str(error)
    assert "\n" not in message and key in message and f"context of {CONTEXT}" in message, message
    return message


@pytest.mark.parametrize("packing", [True, False])
def test_max_length_past_the_context_is_one_line_not_an_index_error(gpt2_dir, tmp_path, packing):
    # data.max_length 128 on a 64-position GPT-2: a conversation longer than 64 tokens was an IndexError mid-training.
    with pytest.raises(ConfigError) as caught:
        run_training(_config(gpt2_dir, 2 * CONTEXT, packing=packing), records_split(_records("ok " * 12)), run_dir=tmp_path / "run")
    _one_line(caught.value, "data.max_length")


def test_packed_rows_past_the_context_are_one_line_not_an_index_error(gpt2_dir, tmp_path):
    # Every example fits the context, but rows of train.pack_tokens (192) did not: a short row's padding ran on to
    # positions past 64, an IndexError mid-training.
    with pytest.raises(ConfigError) as caught:
        run_training(_config(gpt2_dir, CONTEXT, pack_tokens=3 * CONTEXT), records_split(_records("ok")), run_dir=tmp_path / "run")
    _one_line(caught.value, "train.pack_tokens")


def test_within_the_context_trains(gpt2_dir, tmp_path):
    result = run_training(_config(gpt2_dir, CONTEXT), records_split(_records("ok")), run_dir=tmp_path / "run")
    assert result.steps == 2


def test_tunelab_run_refuses_at_the_data_check_before_anything_is_written(gpt2_dir, tmp_path, monkeypatch):
    from tunelab.tasks.pipeline import run_pipeline

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"hi {i}", "completion": "ok"}) for i in range(24)) + "\n")
    config = parse_config({
        "task": "sft", "model": str(gpt2_dir), "name": "long",
        "data": {"train": str(data), "max_length": 2 * CONTEXT},
        "train": {"max_steps": 1, "output_dir": str(tmp_path / "runs")},
    })  # fmt: skip
    events = []
    with pytest.raises(ConfigError) as caught:
        run_pipeline(config, on_event=lambda step, status, details: events.append((step, status)))
    _one_line(caught.value, "data.max_length")
    assert ("check", "done") not in events and not (tmp_path / "runs" / "long").exists()


def test_classify_rows_after_the_shared_prefix_stay_inside_the_context(tiny_tokenizer, tmp_path):
    # max_length = the context (128): a packed row's padding after a short prompt ran on from the shared prefix
    # (69 tokens) to position 165, an IndexError mid-training, though every prompt fit.
    from tunelab.data.records import ClassifyRecord

    context = 128
    folder = save_tiny_gpt2(tmp_path / "gpt2", tiny_tokenizer, context)
    records = [ClassifyRecord("x " * n, "AB"[i % 2]) for i, n in enumerate([1, 60, 2, 2, 2, 2, 2, 2])]
    run_config = parse_config({
        "task": "classify", "model": str(folder), "data": {"max_length": context},
        "train": {"batch_size": 8, "max_steps": 1, "precision": "fp32", "seed": 0},
    })  # fmt: skip
    result = run_training(run_config, records_split(records), run_dir=tmp_path / "run")
    assert result.steps == 1


def test_tunelab_estimate_refuses_as_training_would(gpt2_dir, tmp_path, monkeypatch):
    # The timed training steps of `tunelab estimate` ran rows of data.max_length (128) through a 64-position GPT-2:
    # an IndexError traceback before the estimate said anything.
    from tunelab.estimate import estimate_from_config

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"hi {i} " * 10, "completion": "ok " * 10}) for i in range(24)) + "\n")
    config = parse_config({"task": "sft", "model": str(gpt2_dir), "data": {"train": str(data), "max_length": 2 * CONTEXT}, "train": {"max_steps": 2}})
    with pytest.raises(ConfigError) as caught:
        estimate_from_config(config, calibrate_here=True, calibration_steps=1)
    _one_line(caught.value, "data.max_length")


def test_tunelab_train_refuses_before_a_run_folder_or_registry_row_exists(gpt2_dir, tmp_path):
    # `tunelab train` checked the context only once the model was loaded, after the run folder (config.yaml, split,
    # .lock) and a registry row were written: the refused config left a run folder and a "failed" row behind.
    from tunelab.registry.store import Registry
    from tunelab.tasks.pipeline import train_registered

    runs = tmp_path / "runs"
    config = _config(gpt2_dir, 2 * CONTEXT, output_dir=str(runs))
    with pytest.raises(ConfigError) as caught:
        train_registered(config, records_split(_records("ok")), run_dir=runs / "long")
    _one_line(caught.value, "data.max_length")
    assert not (runs / "long").exists()
    assert not (runs / "registry.db").exists() or Registry(runs / "registry.db").list_runs() == []


def test_run_training_refuses_before_the_run_folder_exists(gpt2_dir, tmp_path):
    with pytest.raises(ConfigError):
        run_training(_config(gpt2_dir, 2 * CONTEXT), records_split(_records("ok")), run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_tunelab_train_with_a_missing_model_leaves_no_run_folder_or_registry_row(tmp_path):
    # The same order: a model path that does not exist failed at the model load, after the run folder and its row.
    from tunelab.errors import ModelError
    from tunelab.tasks.pipeline import train_registered

    runs = tmp_path / "runs"
    config = _config(tmp_path / "no-such-model", CONTEXT, output_dir=str(runs))
    with pytest.raises(ModelError):
        train_registered(config, records_split(_records("ok")), run_dir=runs / "missing")
    assert not runs.exists()


def test_a_run_trained_over_a_run_is_checked_against_its_base_models_context(gpt2_dir, tmp_path):
    first = tmp_path / "first"
    run_training(_config(gpt2_dir, CONTEXT), records_split(_records("ok")), run_dir=first)
    with pytest.raises(ConfigError) as caught:
        run_training(_config(first, 2 * CONTEXT), records_split(_records("ok")), run_dir=tmp_path / "second")
    _one_line(caught.value, "data.max_length")
    assert not (tmp_path / "second").exists()
    assert run_training(_config(first, CONTEXT), records_split(_records("ok")), run_dir=tmp_path / "third").steps == 2
