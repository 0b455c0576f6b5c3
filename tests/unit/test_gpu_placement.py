"""What a GPU user's run does with its tensors, checked on a machine without one.

``CudaAsMeta`` turns every ``cuda`` device torch is asked for into ``meta``: a tensor the code sends to the
GPU lands on a device other than the CPU, so a model left on the CPU beside its inputs on the "GPU" shows.
A checkpoint written on a GPU is imitated by tagging its tensors' storages ``cuda:0`` when they are saved,
as torch does there; torch on a machine without CUDA then refuses them unless they are mapped to the CPU.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode

from tunelab.config import parse_config


def _as_meta(value):
    if isinstance(value, str) and value.startswith("cuda"):
        return "meta"
    if isinstance(value, torch.device) and value.type == "cuda":
        return torch.device("meta")
    return value


class CudaAsMeta(TorchFunctionMode):
    """Every ``cuda`` device in a torch call (``.to("cuda")``, ``device=``) becomes ``meta``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args = tuple(_as_meta(a) for a in args)
        kwargs = {k: _as_meta(v) for k, v in (kwargs or {}).items()}
        return func(*args, **kwargs)


class _Stop(Exception):
    pass


def test_calibration_on_a_gpu_times_evaluation_with_the_model_where_its_inputs_are(tiny_model_dir, tiny_model, monkeypatch):
    # The estimate calibrates on the GPU (device "cuda") with a model loaded on the CPU: the forward evaluation's
    # timing runs (before the adapters go on) got the model on the CPU and the token ids on the GPU, and every
    # `tunelab estimate` / `tunelab run` on a GPU machine stopped on "Expected all tensors to be on the same device".
    import importlib

    calibrate_module = importlib.import_module("tunelab.estimate.calibrate")  # the package exports a function of that name

    seen = {}

    def spy(model, input_ids, *args, **kwargs):
        seen["model"] = next(model.parameters()).device.type
        seen["inputs"] = input_ids.device.type
        raise _Stop

    monkeypatch.setattr(calibrate_module, "_time_generation", spy)
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32"}, "lora": {"r": 4}})
    with CudaAsMeta(), pytest.raises(_Stop):
        calibrate_module.calibrate(config, 16, model=tiny_model, steps=1, device="cuda", use_cache=False)
    assert seen == {"model": "meta", "inputs": "meta"}


def _gpu_saved(value, path, monkeypatch):
    """``torch.save`` of ``value`` as a GPU process writes it: every storage tagged ``cuda:0``."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        with path.open("wb") as handle:
            torch.save(value, handle)


def test_a_checkpoint_written_on_a_gpu_resumes_on_a_machine_without_one(tmp_path, monkeypatch):
    # A run trained on a GPU and resumed on a CPU (or a machine whose GPU is busy: ACCELERATE_USE_CPU) read
    # optimizer.pt without map_location: torch refused its CUDA tensors, and every checkpoint was called damaged.
    from safetensors.torch import save_file

    from tunelab.train.checkpoints import LoopState, load_checkpoint, trainable_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    folder = tmp_path / "step-1"
    folder.mkdir()
    save_file(trainable_state(model), str(folder / "trainable.safetensors"))
    _gpu_saved(optimizer.state_dict(), folder / "optimizer.pt", monkeypatch)
    _gpu_saved(scheduler.state_dict(), folder / "scheduler.pt", monkeypatch)
    (folder / "state.json").write_text(LoopState(step=1, processes=1).to_json())
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(folder / "optimizer.pt", weights_only=True)  # the checkpoint is a GPU one, as torch sees it

    fresh = torch.nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    accelerator = SimpleNamespace(num_processes=1, process_index=0)
    state = load_checkpoint(folder, accelerator=accelerator, model=fresh, optimizer=fresh_optimizer,
                            scheduler=torch.optim.lr_scheduler.LambdaLR(fresh_optimizer, lambda step: 1.0))  # fmt: skip
    assert state.step == 1
    moments = fresh_optimizer.state_dict()["state"][0]["exp_avg"]
    assert moments.device.type == "cpu" and torch.equal(moments, optimizer.state_dict()["state"][0]["exp_avg"])


def test_rng_states_of_more_gpus_than_this_machine_has_restore_those_it_has(monkeypatch):
    # One process sees every GPU of its machine and saves each one's random state: resumed where fewer are
    # visible (another machine, CUDA_VISIBLE_DEVICES), torch.cuda.set_rng_state_all asked for a device that is not
    # there, and the checkpoint was called damaged.
    from tunelab.train import checkpoints

    restored = []

    def set_one(state, device):
        if device >= 1:
            raise RuntimeError("CUDA error: invalid device ordinal")
        restored.append(device)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_one)
    monkeypatch.setattr(torch.cuda.random, "set_rng_state", set_one)  # what torch.cuda.set_rng_state_all calls
    state = {**checkpoints.rng_state(), "cuda": [torch.get_rng_state(), torch.get_rng_state()]}
    checkpoints.set_rng_state(state)
    assert restored == [0]


def _a_gpu_with(monkeypatch, free_bytes: int) -> None:
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 2 * free_bytes))


def _moves_of(model, monkeypatch) -> list[str]:
    moves: list[str] = []

    def to(device, *args, **kwargs):
        moves.append(str(device))
        return model

    monkeypatch.setattr(model, "to", to)
    return moves


def test_evaluation_runs_a_model_loaded_on_the_cpu_on_the_gpu_and_gives_it_back(tiny_model, monkeypatch):
    # Models load on the CPU (training's accelerate moves its own): evaluation, the baselines and serving ran them
    # there on a GPU machine, hours for a 7B model, while the estimate priced them at the GPU's timed forward.
    from tunelab.models.loader import on_inference_device

    _a_gpu_with(monkeypatch, 10**12)
    moves = _moves_of(tiny_model, monkeypatch)
    with on_inference_device(tiny_model):
        assert moves == ["cuda"]
    assert moves == ["cuda", "cpu"]  # back where it was: a base model kept for later steps holds no GPU memory in training


def test_a_model_that_does_not_fit_the_free_gpu_memory_stays_on_the_cpu(tiny_model, monkeypatch):
    from tunelab.models.loader import on_inference_device

    _a_gpu_with(monkeypatch, 1000)  # far less than the tiny model's weights
    moves = _moves_of(tiny_model, monkeypatch)
    with on_inference_device(tiny_model):
        pass
    _a_gpu_with(monkeypatch, 10**12)
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")  # the user keeps the work on the CPU, GPU or not
    with on_inference_device(tiny_model):
        pass
    assert moves == []


def test_evaluate_puts_the_model_on_the_inference_device(tiny_model, tiny_tokenizer, monkeypatch):
    import importlib

    from tunelab.config import DataConfig, EvalConfig
    from tunelab.data.records import TextRecord
    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource

    evaluate_module = importlib.import_module("tunelab.evaluation.evaluate")  # the package exports a function of that name
    placed = []
    real = evaluate_module.on_inference_device

    def spy(model):
        placed.append(model)
        return real(model)

    monkeypatch.setattr(evaluate_module, "on_inference_device", spy)
    loaded = LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))
    evaluate_module.evaluate(loaded, [TextRecord("one two three four five six", source="a.txt")], "text",
                             config=EvalConfig(), data_config=DataConfig(max_length=64))  # fmt: skip
    assert placed == [tiny_model]


def test_the_server_places_its_model_for_inference(tiny_model_dir, monkeypatch):
    import importlib

    adapters = importlib.import_module("tunelab.serve.adapters")
    placed = []
    monkeypatch.setattr(adapters, "place_for_inference", lambda model: placed.append(model))
    registry = adapters.load_registry(str(tiny_model_dir), [])
    assert placed == [registry.model]
