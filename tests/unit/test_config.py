import pytest

from tunelab.config import (
    OverriddenKey,
    ResolvedConfig,
    RunConfig,
    apply_overrides,
    dump_config,
    field_docs,
    load_config,
    overridden_keys,
    parse_config,
    resolve_defaults,
)
from tunelab.errors import ConfigError


def test_minimal_config_gets_task_defaults():
    config = parse_config({"task": "classify"})
    assert isinstance(config, ResolvedConfig)  # parse_config resolves, once
    assert config.model.name == "default"
    assert config.train.lr == 1e-3 and config.train.epochs == 5.0  # classify with LoRA
    assert config.classify.label_head and config.classify.select_by == "accuracy"
    sft = parse_config({"task": "sft"})
    assert sft.train.lr == 2e-4 and sft.train.epochs == 2.0
    assert parse_config({"task": "classify", "train": {"lr": 5e-4}}).train.lr == 5e-4  # the user's value wins
    assert config.data.stride == config.data.max_length
    full = parse_config({"task": "sft", "train": {"method": "full"}})
    assert full.train.lr == 2e-5


def test_unknown_key_names_key_and_valid_keys():
    with pytest.raises(ConfigError) as info:
        parse_config({"task": "sft", "train": {"learning_rate": 1e-3}}, source="cfg.yaml")
    message = str(info.value)
    assert "cfg.yaml" in message and "train.learning_rate" in message
    assert "lr" in message and "epochs" in message


def test_unknown_top_level_key_suggests_close_match():
    with pytest.raises(ConfigError, match="Did you mean 'train'"):
        parse_config({"task": "sft", "trian": {}})


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match="train.batch_size"):
        parse_config({"task": "sft", "train": {"batch_size": "eight"}})
    with pytest.raises(ConfigError, match="missing required key 'task'"):
        parse_config({})
    with pytest.raises(ConfigError, match="task"):
        parse_config({"task": "translate"})


def test_overrides_are_dotted_and_typed():
    data = apply_overrides({"task": "sft", "model": "default"}, ["train.lr=3e-4", "lora.r=8", "model=other/model"])
    config = parse_config(data)
    assert config.train.lr == pytest.approx(3e-4)
    assert config.lora.r == 8
    assert config.model.name == "other/model"
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="lora.rank"):
        parse_config(apply_overrides({"task": "sft"}, ["lora.rank=4"]))


def test_overridden_keys_are_the_file_keys_an_override_set_again(tmp_path):
    # The CLI said nothing of which won when the file and the command line both set a key.
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sft\nmodel: default\ntrain:\n  lr: 0.001\n  epochs: 2\nlora:\n  r: 8\n")
    overrides = ["train.lr=0.002", "train.batch_size=4", "lora.r=8", "model=other/model", "train.epochs=1", "train.epochs=3"]
    assert overridden_keys(cfg, overrides) == [
        OverriddenKey("train.lr", 0.001, 0.002),
        OverriddenKey("model.name", "default", "other/model"),
        OverriddenKey("train.epochs", 2, 3),
    ]  # train.batch_size: not in the file; lora.r: the same value
    assert overridden_keys(cfg, []) == []
    assert overridden_keys(None, ["train.lr=0.002"]) == []


def test_load_config_resolves_relative_data_paths(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    cfg = tmp_path / "run.yaml"
    cfg.write_text("task: sft\ndata:\n  train: data/train.jsonl\n")
    config = load_config(cfg)
    assert config.data.train == str(tmp_path / "data" / "train.jsonl")


def test_load_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: sft\n  oops: [\n")
    with pytest.raises(ConfigError, match="bad.yaml:"):
        load_config(bad)


def test_dump_roundtrip_and_docs():
    config = parse_config({"task": "text", "train": {"lr": 1e-3}})
    import yaml

    again = parse_config(yaml.safe_load(dump_config(config)))
    assert again == config
    keys = {key for key, _, _ in field_docs()}
    assert {"train.lr", "lora.r", "data.train", "model.name", "task"} <= keys
    assert all(doc for _, _, doc in field_docs())


def test_a_hand_built_config_is_resolved_by_resolve_defaults_and_refused_unresolved():
    raw = RunConfig(task="sft")
    assert raw.train.lr is None
    resolved = resolve_defaults(raw)
    assert resolved.train.lr == 2e-4 and resolve_defaults(resolved) is resolved
    from tunelab.config import require_resolved

    with pytest.raises(ConfigError, match="parse_config"):
        require_resolved(raw)


def test_resolve_defaults_is_called_only_in_config_py():
    """Defaults are filled once, on load: any other caller would mean a config of unknown state."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    callers = [
        str(path.relative_to(root))
        for folder in ("src", "bench")
        for path in (root / folder).rglob("*.py")
        if "resolve_defaults" in path.read_text(encoding="utf-8") and path.name != "config.py"
    ]
    assert callers == []


def test_a_text_stride_longer_than_max_length_is_a_config_error():
    # Was accepted here, then tokenization raised a bare ValueError (a traceback from `tunelab train`).
    with pytest.raises(ConfigError, match=r"data.stride \(128\).*data.max_length \(64\)"):
        parse_config({"task": "text", "data": {"max_length": 64, "stride": 128}})
    assert parse_config({"task": "text", "data": {"max_length": 64, "stride": 64}}).data.stride == 64
    assert parse_config({"task": "text", "data": {"max_length": 64, "stride": 16}}).data.stride == 16


def test_seeds_the_random_generators_refuse_are_config_errors():
    # train.seed seeds accelerate's set_seed (numpy: 0..2**32-1) once the run folder exists; eval.seed numpy's bootstrap:
    # a negative or too large seed was accepted here and failed later with a ValueError traceback.
    for section, value in (("train", -1), ("train", 2**32), ("eval", -1)):
        with pytest.raises(ConfigError, match=rf"{section}\.seed"):
            parse_config({"task": "sft", section: {"seed": value}})
    config = parse_config({"task": "sft", "train": {"seed": 2**32 - 1}, "eval": {"seed": 12345}, "data": {"seed": -3}})
    assert config.train.seed == 2**32 - 1 and config.data.seed == -3  # the split's seed only names a hash order


def test_freeze_without_its_layers_is_refused_when_the_config_is_read():
    # It was refused at the estimate step, after the run folder and a failed registry row existed.
    from tunelab.config import parse_config

    with pytest.raises(ConfigError, match="train.trainable_layers"):
        parse_config({"task": "sft", "model": "default", "data": {"train": "x.jsonl"}, "train": {"method": "freeze"}})
    parse_config({"task": "sft", "model": "default", "data": {"train": "x.jsonl"}, "train": {"method": "freeze", "trainable_layers": [-1]}})


def test_classify_on_small_data_runs_at_least_the_steps_its_defaults_were_chosen_at():
    # 63 SNIPS rows (7 intents x 9) at the default 5 epochs were 40 optimizer steps, a third of the 113-115 the
    # classify defaults were chosen at; 120 steps scored higher on two of three draws (bench/README.md).
    config = parse_config({"task": "classify"})
    assert config.train.min_steps == 120
    small = config.train.schedule(63)
    assert (small.steps_per_epoch, small.total_steps) == (8, 120)
    assert small.epochs_run == 15.0
    assert config.train.schedule(256).total_steps == 160  # the quickstart: 5 epochs are already more
    assert config.train.schedule(63, world_size=2).total_steps == 120  # steps, whatever a step holds
    # The user's own epochs, min_steps or max_steps win; other tasks have no floor.
    assert parse_config({"task": "classify", "train": {"epochs": 2}}).train.schedule(63).total_steps == 16
    assert parse_config({"task": "classify", "train": {"min_steps": 50}}).train.schedule(63).total_steps == 50
    assert parse_config({"task": "classify", "train": {"max_steps": 6}}).train.schedule(63).total_steps == 6
    assert parse_config({"task": "sft"}).train.min_steps is None
    assert parse_config({"task": "sft"}).train.schedule(63).total_steps == 16
    # A resolved config written before the floor existed (epochs filled in, no min_steps) keeps its schedule on resume.
    import yaml

    saved = yaml.safe_load(dump_config(parse_config({"task": "classify", "train": {"epochs": 5}})))
    saved["train"].pop("min_steps")
    assert parse_config(saved).train.schedule(63).total_steps == 40


def test_a_model_named_by_a_relative_folder_is_saved_absolute(tmp_path, monkeypatch):
    """README's dpo.yaml names its SFT parent `model: runs/my-sft`: the DPO run saved that relative name, so from any
    other folder `tunelab generate --model /abs/runs/my-dpo` (serve, eval, the UI) said "model 'runs/my-sft' is not
    available offline ... allow the network"."""
    (tmp_path / "runs" / "my-sft").mkdir(parents=True)
    (tmp_path / "base.gguf").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert parse_config({"task": "preference", "model": "runs/my-sft"}).model.name == str(tmp_path / "runs" / "my-sft")
    assert load_config(None, ["task=sft", "model=./base.gguf"]).model.name == str(tmp_path / "base.gguf")
    # Names that are no local path stay as written: the bundled model, a hub id.
    (tmp_path / "default").mkdir()
    assert parse_config({"task": "sft", "model": "default"}).model.name == "default"
    assert parse_config({"task": "sft", "model": "other/model"}).model.name == "other/model"
