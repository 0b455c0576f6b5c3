"""Exactness: a run killed with SIGKILL and resumed ends where an uninterrupted run ends, and two
processes with half the batch each train like one process with the whole batch."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

CHILD = Path(__file__).with_name("train_child.py")
SRC = Path(__file__).resolve().parents[3] / "src"


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _args(settings: dict) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in settings.items()]


def _result(output: str) -> dict:
    """The RESULT a child printed; under accelerate each rank prints one, and only the main process sees progress
    (its ``first_step``), so that one is preferred."""
    decoder = json.JSONDecoder()
    results = [decoder.raw_decode(output, match.end())[0] for match in re.finditer(r"RESULT ", output)]
    return ([r for r in results if r.get("first_step") is not None] or results)[-1]


def _failure(completed: subprocess.CompletedProcess) -> str:
    """The first traceback a failed launch printed (the rank that failed first), not the launcher's own."""
    text = completed.stderr
    start = text.find("Traceback")
    return text[start : start + 4000] if start >= 0 else text[-4000:]


def _adapter(run_dir: Path) -> dict:
    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_sigkilled_run_resumes_to_the_same_weights_and_loss(tiny_model_dir, tmp_path):
    # Dropout on, so the RNG state must be restored too; validation on, so best/ is exercised.
    settings = {"max_steps": 12, "save_every": 3, "eval_every": 3, "batch_size": 3, "lora": {"dropout": 0.2}}
    run = [sys.executable, str(CHILD), str(tiny_model_dir)]
    uninterrupted = subprocess.run(
        run + [str(tmp_path / "a"), "fresh", *_args(settings)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-2000:]

    victim = subprocess.Popen(run + [str(tmp_path / "b"), "slow", *_args(settings)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    killed_after = None
    while time.time() < deadline and victim.poll() is None:
        if (tmp_path / "b" / "checkpoints" / "step-6" / "state.json").is_file():
            victim.send_signal(signal.SIGKILL)
            killed_after = 6
            break
        time.sleep(0.05)
    victim.wait(timeout=60)
    assert killed_after == 6 and victim.returncode == -signal.SIGKILL
    assert not (tmp_path / "b" / "adapter").exists()

    resumed = subprocess.run(
        run + [str(tmp_path / "b"), "resume", *_args(settings)], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    first, again = _result(uninterrupted.stdout), _result(resumed.stdout)
    assert first["first_step"] == 1 and again["first_step"] == 7  # really continued after step 6
    assert again["final_loss"] == first["final_loss"] and again["steps"] == first["steps"] == 12
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # lines written after the checkpoint before the kill were dropped


def _launched(launch: str, child_arguments: list[str]) -> list[str]:
    """The product's launch command (tunelab.tasks.launch) running the child script instead of the CLI."""
    from tunelab.tasks.launch import launch_command

    command = launch_command(launch, [])
    module = command.index("-m", 3)  # accelerate's own "-m accelerate.commands.launch" comes first
    return command[:module] + [str(CHILD), *child_arguments]


# FSDP2: every decoder layer its own shard group, checkpoints written sharded by each process.
FSDP = ("--use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP --fsdp_transformer_layer_cls_to_wrap "
        "LlamaDecoderLayer --fsdp_state_dict_type SHARDED_STATE_DICT --fsdp_reshard_after_forward true")


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("mode", ["", "--cpu"])
def test_two_processes_train_like_one_with_the_same_global_batch(tiny_model_dir, tmp_path, mode):
    """``--cpu`` as well: accelerate alone starts one process for ``--num_processes 2 --cpu`` (several only through
    mpirun), and that one trained with half the global batch, the loss and weights of another run, without a word."""
    from tunelab.tasks.launch import launch_environment

    common = {"max_steps": 4, "lora": {"dropout": 0.0}, "lr": 1e-2}
    single = subprocess.run(
        [sys.executable, str(CHILD), str(tiny_model_dir), str(tmp_path / "one"), "fresh", *_args({**common, "batch_size": 4})],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    # No mode given: several processes are DDP (--multi_gpu is added, gloo between CPU processes).
    options = f"--num_processes 2 --mixed_precision no --main_process_port 29517 {mode}"
    launch = _launched(options, [str(tiny_model_dir), str(tmp_path / "two"), "fresh", *_args({**common, "batch_size": 2})])
    assert "--multi_gpu" in launch
    double = subprocess.run(launch, env={**_env(), **launch_environment(options)}, capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    # Only the main process writes the run folder; both report the same reduced loss.
    one, two = _result(single.stdout), _result(double.stdout)
    assert one["steps"] == two["steps"] == 4
    # Tolerance: packing differs (2 vs 4 examples per row set) and gloo sums in another order.
    assert two["final_loss"] == pytest.approx(one["final_loss"], rel=1e-4)
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_a_full_disk_on_the_main_process_stops_every_process_of_a_launch(tiny_model_dir, tmp_path):
    """The main process fails writing a checkpoint while the other waits for it at the barrier after the write:
    both end (the launch does not hang until its timeout), and the disk-full error is what the output says."""
    settings = {"max_steps": 4, "save_every": 2, "batch_size": 2, "full_disk_on_rank0": True}
    options = "--num_processes 2 --cpu --mixed_precision no --main_process_port 29519"
    launch = _launched(options, [str(tiny_model_dir), str(tmp_path / "run"), "fresh", *_args(settings)])
    from tunelab.tasks.launch import launch_environment

    failed = subprocess.run(launch, env={**_env(), **launch_environment(options)}, capture_output=True, text=True, timeout=240)
    assert failed.returncode != 0 and "RESULT" not in failed.stdout
    assert "disk full while writing" in failed.stderr, failed.stderr[-3000:]
    assert not (tmp_path / "run" / "checkpoints" / "step-2").exists()


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_fsdp2_on_two_processes_trains_like_one_and_resumes_after_one_rank_is_killed(tiny_model_dir, tmp_path):
    """FSDP2 (sharded weights, optimizer state and checkpoints) with half the batch on each of 2 processes makes the
    updates of one process with the whole batch; SIGKILL of one rank after a checkpoint, then a resume under FSDP,
    ends with the weights and losses of the uninterrupted run."""
    settings = {"max_steps": 6, "save_every": 3, "eval_every": 3, "lora": {"dropout": 0.0}, "lr": 1e-2}
    single = subprocess.run(
        [sys.executable, str(CHILD), str(tiny_model_dir), str(tmp_path / "one"), "fresh", *_args({**settings, "batch_size": 4})],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-2000:]
    fsdp = f"{FSDP} --num_processes 2 --mixed_precision no --main_process_port 29518"
    half = _args({**settings, "batch_size": 2})
    sharded = subprocess.run(_launched(fsdp, [str(tiny_model_dir), str(tmp_path / "fsdp"), "fresh", *half]),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, _failure(sharded)
    assert (tmp_path / "fsdp" / "checkpoints" / "step-3" / "accelerate").is_dir()  # sharded checkpoints
    # Tolerance: the same as DDP's (gloo sums in another order; the sharded optimizer steps on shards).
    assert _result(sharded.stdout)["final_loss"] == pytest.approx(_result(single.stdout)["final_loss"], rel=1e-4)
    a, b = _adapter(tmp_path / "one"), _adapter(tmp_path / "fsdp")
    assert a.keys() == b.keys() and len(a) == 28
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-3, atol=1e-5)

    victim = subprocess.Popen(_launched(fsdp, [str(tiny_model_dir), str(tmp_path / "killed"), "slow", *half]),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "killed.rank1.pid"
    deadline, killed = time.time() + 300, False
    while time.time() < deadline and victim.poll() is None:
        if (tmp_path / "killed" / "checkpoints" / "step-3" / "state.json").is_file() and pid_file.is_file():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)  # one rank of two dies; the launcher ends the other
            killed = True
            break
        time.sleep(0.05)
    victim.communicate(timeout=120)
    assert killed and victim.returncode != 0
    assert not (tmp_path / "killed" / "adapter").exists()
    resumed = subprocess.run(_launched(fsdp, [str(tiny_model_dir), str(tmp_path / "killed"), "resume", *half]),
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, _failure(resumed)
    again = _result(resumed.stdout)
    assert again["first_step"] == 4 and again["steps"] == 6  # continued after step 3
    assert again["final_loss"] == pytest.approx(_result(sharded.stdout)["final_loss"], rel=1e-5)
    b, c = _adapter(tmp_path / "fsdp"), _adapter(tmp_path / "killed")
    for name in b:
        torch.testing.assert_close(c[name], b[name], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_a_run_resumed_on_another_number_of_processes_is_refused(tiny_model_dir, tmp_path):
    """The global batch is batch_size x processes: resumed on one process, a run trained on two once went on with other
    examples per step and twice the steps (12 examples, 1 epoch: 3 steps of 4 became 6 of 2) without a word."""
    settings = {"max_steps": None, "epochs": 1, "batch_size": 2, "lora": {"dropout": 0.0}}
    launch = _launched("--num_processes 2 --mixed_precision no --main_process_port 29519",
                       [str(tiny_model_dir), str(tmp_path / "two"), "fresh", *_args(settings)])
    double = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=300)
    assert double.returncode == 0, _failure(double)
    assert _result(double.stdout)["steps"] == 3
    single = subprocess.run([sys.executable, str(CHILD), str(tiny_model_dir), str(tmp_path / "two"), "resume", *_args(settings)],
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode != 0 and "RESULT" not in single.stdout
    assert "trained on 2 processes" in single.stderr and "resumed on 1" in single.stderr
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["best", "step-2", "step-3"]  # nothing lost


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_classify_run_under_fsdp_saves_its_label_rows(tiny_model_dir, tmp_path, method):
    """Under FSDP the output head is sharded: a classify run trained to its end, then failed writing its label rows
    (`aten.index.Tensor got mixed torch.Tensor and DTensor`), and no adapter was saved."""
    labels = ["billing", "shipping", "login"]
    (tmp_path / "train.jsonl").write_text("".join(
        json.dumps({"text": f"request {i} about {labels[i % 3]}", "label": labels[i % 3]}) + "\n" for i in range(24)
    ))
    config = {"task": "classify", "name": "fsdp", "model": str(tiny_model_dir), "data": {"train": "train.jsonl", "max_length": 64},
              "train": {"method": method, "batch_size": 2, "max_steps": 2, "precision": "fp32", "output_dir": str(tmp_path / "runs")}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    launch = f"{FSDP} --num_processes 2 --mixed_precision no --main_process_port 29521"
    done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "train", "config.json", "--launch", launch],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, _failure(done)
    single = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "train", "config.json", "name=one", "train.batch_size=4"],
                            cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    if method == "full":  # the label rows folded into an untied output head, as the one-process run's
        sharded, whole = (load_file(str(tmp_path / "runs" / name / "model" / "model.safetensors")) for name in ("fsdp", "one"))
        rows = ["lm_head.weight"]
    else:  # the label rows as PEFT keeps them
        sharded, whole = _adapter(tmp_path / "runs" / "fsdp"), _adapter(tmp_path / "runs" / "one")
        rows = [name for name in whole if name.endswith("trainable_tokens_delta")]
    assert len(rows) == 1 and rows[0] in whole and sharded.keys() == whole.keys()
    # Full fine-tuning moves every head row: one whose gradient is near zero moves by up to lr (2e-5) a step on noise.
    torch.testing.assert_close(sharded[rows[0]], whole[rows[0]], rtol=1e-3, atol=1e-4 if method == "full" else 1e-5)
