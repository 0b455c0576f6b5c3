"""Validation on several processes: each process scores its share of the validation rows and the sums are
gathered, so the validation loss and accuracy a run keeps its checkpoint by are the one-process values, also when
the rows do not split evenly between the processes."""

import subprocess
import sys

import pytest
import torch
from test_resume_and_distributed import CHILD, FSDP, _args, _env, _failure, _launched, _result


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_validation_on_two_processes_with_an_odd_row_count_is_the_one_process_value(tiny_model_dir, tmp_path, mode):
    # 5 validation rows at 2 a batch: 3 (two batches) on the first process, 2 (one batch) on the second.
    common = {"task": "classify", "validation_rows": 5, "max_steps": 2, "eval_every": 1, "lora": {"dropout": 0.0}}
    one, two = _one_and_two_processes(tiny_model_dir, tmp_path, mode, common, port=29523)
    assert two["best_validation_score"] == one["best_validation_score"]
    assert two["best_validation_loss"] == pytest.approx(one["best_validation_loss"], rel=1e-4)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_passes_of_uneven_counts_on_the_processes_train_like_one_process(tiny_model_dir, tmp_path, mode):
    """train.max_pass_tokens cuts each process's share of a step into passes by its own rows' lengths: two short rows
    make one pass of 128 tokens, a short and a long one two. Under FSDP every pass gathers the weights from every
    process, so the processes must run as many passes each (they hung); DDP synchronises on the last pass only."""
    common = {"long_answers": True, "max_length": 128, "max_pass_tokens": 128, "max_steps": 3, "lora": {"dropout": 0.0}, "lr": 1e-2}
    one, two = _one_and_two_processes(tiny_model_dir, tmp_path, mode, common, port=29524)
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)


def _one_and_two_processes(tiny_model_dir, tmp_path, mode: str, common: dict, *, port: int) -> tuple[dict, dict]:
    """The child's result trained in one process at batch 4, and launched in two (DDP or FSDP) at batch 2 each."""
    single = subprocess.run(
        [sys.executable, str(CHILD), str(tiny_model_dir), str(tmp_path / "one"), "fresh", *_args({**common, "batch_size": 4})],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    options = f"{FSDP if mode == 'fsdp' else ''} --num_processes 2 --mixed_precision no --main_process_port {port}"
    launch = _launched(options, [str(tiny_model_dir), str(tmp_path / "two"), "fresh", *_args({**common, "batch_size": 2})])
    double = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=150)
    assert double.returncode == 0, _failure(double)
    return _result(single.stdout), _result(double.stdout)
