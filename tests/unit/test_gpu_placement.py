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
from tests.conftest import build_tiny_model
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


def _placements(monkeypatch, *modules) -> list:
    """The models held on the inference device now: ``on_inference_device`` (in the loader, and where ``modules`` bound
    its name) replaced by the real one that also notes what it holds, so a spy on the work sees whether it ran placed."""
    import contextlib

    from tunelab.models import loader

    real = loader.on_inference_device
    held: list = []

    @contextlib.contextmanager
    def noting(model):
        with real(model):
            held.append(model)
            try:
                yield model
            finally:
                held.remove(model)

    for module in (loader, *modules):
        monkeypatch.setattr(module, "on_inference_device", noting, raising=False)
    return held


def _classify_run_loaded(tiny_model, tiny_tokenizer, records):
    from tunelab.data.labels import LabelMap
    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource

    run = SimpleNamespace(label_map=LabelMap.for_records(records, tiny_tokenizer), max_length=64, system_prompt=None, out_of_scope=None)
    return LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/run", "run"), label_head=object(), run=run)


@pytest.mark.parametrize("step", ["calibrate_temperature", "calibrate_run"])
def test_classify_calibration_scores_the_validation_queries_on_the_gpu(step, tiny_model, tiny_tokenizer, tmp_path, monkeypatch):
    # The temperature and the out-of-scope rule are fitted on the saved run's scores of every validation query: the
    # run was loaded on the CPU and scored there on a GPU machine (evaluation and serving moved theirs).
    import importlib

    from tunelab.data.records import ClassifyRecord
    from tunelab.inference import Classifier

    classify = importlib.import_module("tunelab.tasks.classify")
    records = [ClassifyRecord(f"query {i}", "AB"[i % 2], source="t.jsonl") for i in range(4)]
    loaded = _classify_run_loaded(tiny_model, tiny_tokenizer, records)
    monkeypatch.setattr(classify, "Run", SimpleNamespace(open=lambda root: SimpleNamespace(load=lambda: loaded)))
    (tmp_path / "adapter").mkdir()  # calibrate_temperature folds T into an adapter's label rows
    held = _placements(monkeypatch, classify)
    scored_placed = []

    def spy(self, model, prompts, **kwargs):
        scored_placed.append(model in held)
        raise _Stop

    monkeypatch.setattr(Classifier, "logits", spy)
    config = parse_config({"task": "classify", "model": "/run", "data": {"max_length": 64}})
    with pytest.raises(_Stop):
        getattr(classify, step)(config, SimpleNamespace(validation=records, train=records), tmp_path)
    assert scored_placed == [True]


def test_a_preference_runs_reference_model_is_scored_on_the_gpu(tiny_model, tiny_tokenizer, monkeypatch):
    # A full or freeze preference run's reference is its parent, loaded for the evaluation on the CPU: scored there on
    # a GPU machine while the run itself was scored on the GPU.
    import importlib

    from tunelab.config import DataConfig, EvalConfig
    from tunelab.data.records import PreferenceRecord
    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource

    preference = importlib.import_module("tunelab.evaluation.preference")
    parent = build_tiny_model(len(tiny_tokenizer), seed=1)
    run = SimpleNamespace(base=SimpleNamespace(load=lambda: SimpleNamespace(model=parent)), config=SimpleNamespace(preference=None))
    loaded = LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/run", "run"), run=run)
    held = _placements(monkeypatch, preference)
    scored = []
    real = preference.answer_log_probs

    def spy(model, examples, **kwargs):
        scored.append((model is parent, model in held))
        return real(model, examples, **kwargs)

    monkeypatch.setattr(preference, "answer_log_probs", spy)
    records = [PreferenceRecord(({"role": "user", "content": "say one"},), "one two", "three four five", source="p.jsonl")]
    preference.evaluate_preference(loaded, records, EvalConfig(), DataConfig(max_length=64), False, {}, None)
    assert (True, True) in scored


def test_generate_answers_on_the_gpu(tiny_model_dir, monkeypatch):
    # `tunelab generate` loaded the model on the CPU and generated there on a GPU machine (`tunelab serve` answers on the GPU).
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.models import generate

    _register_commands()
    held = _placements(monkeypatch)
    answered = []

    def spy(model, tokenizer, ids, **options):
        answered.append(model in held)
        yield "ok"

    monkeypatch.setattr(generate, "stream_generate", spy)
    result = CliRunner().invoke(app, ["generate", "hello", "--model", str(tiny_model_dir), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert answered == [True]


def test_distill_times_each_request_with_the_model_already_on_the_gpu(tiny_model, tiny_tokenizer, monkeypatch):
    # The latency of a local student or teacher is timed one request at a time: each timed evaluation moved the whole
    # model to the GPU and back, and the median "request" was mostly that copy.
    import importlib

    from tunelab.data.records import TextRecord
    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource
    from tunelab.tasks.distill import local_latency

    evaluate_module = importlib.import_module("tunelab.evaluation.evaluate")
    held = _placements(monkeypatch, evaluate_module)
    timed = []
    monkeypatch.setattr(evaluate_module, "evaluate", lambda loaded, records, task, **kwargs: timed.append(loaded.model in held))
    loaded = LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))
    config = parse_config({"task": "text", "model": "/tiny"})
    local_latency(loaded, [TextRecord(f"text {i}", source="a.txt") for i in range(3)], config, None)
    assert timed == [True, True, True]


@pytest.mark.parametrize("task", ["classify", "sft"])
def test_the_few_shot_baseline_answers_on_the_gpu(task, tiny_model, tiny_tokenizer, monkeypatch):
    # The few-shot baseline (pipeline and `tunelab advise`, refitted at every size of the curve) prompted the base
    # model on the CPU on a GPU machine, while the zero-shot base baseline ran on the GPU.
    from tunelab.evaluation import baselines
    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource

    held = _placements(monkeypatch, baselines)
    answered = []
    monkeypatch.setattr(baselines, f"few_shot_{task}", lambda base, *args, **kwargs: answered.append(base.model in held))
    base = LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))
    job = SimpleNamespace(task=task, base=base, train=[], records=[], config=None, data_config=None, label_map=None, train_ids=None,
                          progress=None, test_count=0)
    baselines._score_few_shot(job)
    assert answered == [True]


def _out_of_memory(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB")


def test_evaluation_out_of_memory_is_one_line_naming_what_to_lower(tiny_model, tiny_tokenizer, monkeypatch):
    # Training's out of memory is one line naming its batch and max_length; evaluation's (its batches on the GPU now)
    # was torch's traceback, naming neither eval.batch_size nor data.max_length.
    from tunelab.config import DataConfig, EvalConfig
    from tunelab.data.records import TextRecord
    from tunelab.errors import TunelabError
    from tunelab.evaluation.evaluate import evaluate
    from tunelab.models.loader import LoadedModel
    from tunelab.models.resolve import ModelSource

    monkeypatch.setattr(tiny_model, "forward", _out_of_memory)
    loaded = LoadedModel(tiny_model, tiny_tokenizer, ModelSource("folder", "/tiny", "tiny"))
    with pytest.raises(TunelabError) as raised:
        evaluate(loaded, [TextRecord("one two three four five six", source="a.txt")], "text",
                 config=EvalConfig(batch_size=8), data_config=DataConfig(max_length=64))  # fmt: skip
    message = str(raised.value)
    assert "\n" not in message and "eval.batch_size=8" in message and "data.max_length=64" in message, message


def test_timing_evaluation_on_a_gpu_makes_no_fp32_copy_that_would_not_fit(tiny_model, monkeypatch):
    # The estimate times evaluation's forward in fp32 (as evaluation loads models): model.float() on the GPU doubled a
    # bf16 model there, and a model whose training fits ran the estimate (and `tunelab run`) out of memory.
    import importlib

    calibrate_module = importlib.import_module("tunelab.estimate.calibrate")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *args: None)
    timed_in = []

    def forward(*args, **kwargs):
        timed_in.append(next(tiny_model.parameters()).dtype)
        raise _Stop

    monkeypatch.setattr(tiny_model.model, "forward", forward)
    model = tiny_model.to(torch.bfloat16)
    with CudaAsMeta():
        model.to("cuda")
        input_ids = torch.zeros((2, 8), dtype=torch.long, device="cuda")
        _a_gpu_with(monkeypatch, 1000)  # the bf16 weights are there; an fp32 copy does not fit beside them
        with pytest.raises(_Stop):
            calibrate_module._time_generation(model, input_ids, 2, [16], device="cuda")
        _a_gpu_with(monkeypatch, 10**12)  # room for it: timed in fp32, as evaluation runs
        with pytest.raises(_Stop):
            calibrate_module._time_generation(model, input_ids, 2, [16], device="cuda")
    assert timed_in == [torch.bfloat16, torch.float32]


def test_timing_evaluation_out_of_memory_is_one_line(tiny_model, monkeypatch):
    import importlib

    from tunelab.errors import TunelabError

    calibrate_module = importlib.import_module("tunelab.estimate.calibrate")
    monkeypatch.setattr(tiny_model.model, "forward", _out_of_memory)
    with pytest.raises(TunelabError) as raised:
        calibrate_module._time_generation(tiny_model, torch.zeros((2, 8), dtype=torch.long), 2, [16], device="cpu")
    message = str(raised.value)
    assert "\n" not in message and "out of memory" in message, message


@pytest.mark.parametrize(("task", "fit"), [("classify", "check"), ("text", "off")])
def test_the_estimates_training_steps_out_of_memory_is_one_line_naming_what_to_lower(task, fit, tiny_model_dir, tiny_model, monkeypatch):
    # The timed training steps (after evaluation's timing, which already said it in one line) ran out of GPU memory
    # as torch's traceback: `tunelab estimate` / `tunelab run` named neither the batch nor the length to lower.
    import importlib

    from tunelab.errors import TunelabError

    calibrate_module = importlib.import_module("tunelab.estimate.calibrate")
    monkeypatch.setattr(calibrate_module, "_time_generation", lambda *args, **kwargs: {})
    monkeypatch.setattr(tiny_model.model, "forward", _out_of_memory)
    config = parse_config({"task": task, "model": str(tiny_model_dir), "train": {"batch_size": 2, "precision": "fp32", "fit": fit},
                           "lora": {"r": 4}})
    with pytest.raises(TunelabError) as raised:
        calibrate_module.calibrate(config, 16, model=tiny_model, steps=1, device="cpu", use_cache=False)
    message = str(raised.value)
    assert "\n" not in message and "out of memory" in message and "train.batch_size=2" in message, message
    assert "data.max_length" in raised.value.hint and "train.max_pass_tokens" in raised.value.hint, raised.value.hint
    # train.fit: auto changes a run its memory check says will not fit: one timed here passed that check, unless it was off.
    assert ("train.fit: auto" in raised.value.hint) == (fit == "off"), raised.value.hint
