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
    single = subprocess.run(
        [sys.executable, str(CHILD), str(tiny_model_dir), str(tmp_path / "one"), "fresh", *_args({**common, "batch_size": 4})],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    options = f"{FSDP if mode == 'fsdp' else ''} --num_processes 2 --mixed_precision no --main_process_port 29523"
    launch = _launched(options, [str(tiny_model_dir), str(tmp_path / "two"), "fresh", *_args({**common, "batch_size": 2})])
    double = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=150)
    assert double.returncode == 0, _failure(double)
    one, two = _result(single.stdout), _result(double.stdout)
    assert two["best_validation_score"] == one["best_validation_score"]
    assert two["best_validation_loss"] == pytest.approx(one["best_validation_loss"], rel=1e-4)
