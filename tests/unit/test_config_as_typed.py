"""A config as a new user types it: YAML files and key=value overrides whose meaning is plain, read as meant,
and mistakes that would silently change a run stopped with one line naming the key."""

from __future__ import annotations

import pytest

from tunelab.config import load_config, parse_config
from tunelab.errors import ConfigError


def test_a_key_written_twice_in_a_file_is_an_error_not_the_last_one(tmp_path):
    # PyYAML keeps the last of two equal keys: a second `train:` section silently dropped the first's lr.
    path = tmp_path / "run.yaml"
    path.write_text("task: classify\ntrain:\n  lr: 1e-4\ntrain:\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:4: the key 'train' is written twice") as info:
        load_config(path)
    assert "line 2" in str(info.value)
    path.write_text("task: classify\ntrain:\n  lr: 1e-4\n  lr: 3e-4\n")
    with pytest.raises(ConfigError, match="'lr' is written twice"):
        load_config(path)
    path.write_text("task: classify\n? [a, b]\n: 1\n")  # a complex key: PyYAML's own one line, not a TypeError
    with pytest.raises(ConfigError, match="unhashable key"):
        load_config(path)


def test_a_comma_separated_override_of_a_list_is_the_list():
    config = load_config(None, ["task=classify", "eval.baselines=classical,base", "train.method=freeze", "train.trainable_layers=-1,-2"])
    assert config.eval.baselines == ["classical", "base"]
    assert config.train.trainable_layers == [-1, -2]
    assert load_config(None, ["task=classify", "eval.baselines=classical"]).eval.baselines == ["classical"]
    assert load_config(None, ["task=classify", "eval.baselines=[classical]"]).eval.baselines == ["classical"]


def test_target_modules_named_by_a_string_are_a_list_of_names():
    # peft reads a string as one regular expression matched against whole module paths: "q_proj,v_proj" matched nothing.
    assert load_config(None, ["task=sft", "lora.target_modules=q_proj,v_proj"]).lora.target_modules == ["q_proj", "v_proj"]
    assert parse_config({"task": "sft", "lora": {"target_modules": "q_proj"}}).lora.target_modules == ["q_proj"]
    assert parse_config({"task": "sft"}).lora.target_modules == "all-linear"


def test_an_override_of_a_text_key_keeps_the_text_typed():
    config = load_config(None, ["task=classify", "name=2024", "data.label_field=yes", "data.system_prompt=You: answer briefly"])
    assert config.name == "2024"
    assert config.data.label_field == "yes"
    assert config.data.system_prompt == "You: answer briefly"
    assert load_config(None, ["task=classify", "data.system_prompt=null"]).data.system_prompt is None
    with pytest.raises(ConfigError, match="'data.train': Input should be a valid string"):  # one path, not a list
        load_config(None, ["task=classify", "data.train=[a.jsonl,b.jsonl]"])


def test_a_config_path_with_a_tilde_is_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run.yaml").write_text("task: sft\n")
    assert load_config("~/run.yaml").task == "sft"


def test_a_section_key_given_at_the_top_level_names_its_section():
    with pytest.raises(ConfigError, match="Did you mean 'train.lr'"):
        load_config(None, ["task=sft", "lr=1e-4"])


def test_a_key_of_several_sections_names_them_all_and_a_missing_task_says_which_tasks():
    with pytest.raises(ConfigError, match="Did you mean 'data.seed' or 'train.seed' or 'eval.seed'"):
        load_config(None, ["task=sft", "seed=1"])
    with pytest.raises(ConfigError, match="missing required key 'task' \\(text, sft, classify or preference"):
        load_config(None, [])


def test_output_folder_and_registry_under_a_tilde_are_in_the_home_folder(tmp_path, monkeypatch):
    # The shell expands no ~ after `train.output_dir=`: the runs went to a folder named "~" in the working folder.
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(None, ["task=sft", "train.output_dir=~/runs", "registry=~/runs/reg.db"])
    assert config.train.output_dir == str(tmp_path / "runs")
    assert config.registry == str(tmp_path / "runs" / "reg.db")


def test_a_text_value_yaml_read_as_another_type_says_to_quote_it(tmp_path):
    # YAML reads `out_of_scope_label: no` as false and `name: 2024` as a number; "Input should be a valid string
    # (got False)" left the user to guess why.
    path = tmp_path / "run.yaml"
    path.write_text("task: classify\ndata:\n  out_of_scope_label: no\n")
    with pytest.raises(ConfigError, match="data.out_of_scope_label.*YAML read it as a boolean.*quote it.*\"no\""):
        load_config(path)
    path.write_text("task: classify\nname: 2024\n")
    with pytest.raises(ConfigError, match="'name'.*YAML read it as a number.*quote it.*\"2024\""):
        load_config(path)


def test_an_override_given_before_the_config_says_the_config_comes_first(tmp_path, monkeypatch):
    # `tunelab train train.lr=1e-4 run.yaml` said only "config file not found: train.lr=1e-4".
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="config file not found: train.lr=1e-4") as info:
        load_config("train.lr=1e-4", ["run.yaml"])
    assert "the config file comes first" in (info.value.hint or "")


def test_a_section_with_every_key_commented_out_is_its_defaults(tmp_path):
    # `train:` with its keys commented out is null to YAML: "Input should be a valid dictionary ... (got None)".
    path = tmp_path / "run.yaml"
    path.write_text("task: classify\nmodel:\ntrain:\n#  lr: 1e-4\nmonitor:\n  thresholds:\n")
    config = load_config(path)
    assert config.train.lr == 1e-3 and config.model.name == "default"
    assert config.monitor.thresholds == type(config.monitor.thresholds)()


def test_eval_baselines_none_says_how_to_write_no_baseline():
    # The eval command takes --baselines none; in a config `eval.baselines=none` is an unknown baseline, and the
    # message did not say how to ask for none.
    with pytest.raises(ConfigError) as info:
        load_config(None, ["task=classify", "eval.baselines=none"])
    assert "none" in info.value.message and "eval.baselines=[] for none" in info.value.message


def test_a_key_of_several_types_is_named_once_without_pydantics_branch_names():
    # `train.compile=fast` named 'train.compile.bool' and "train.compile.literal['auto',...]" as two keys.
    with pytest.raises(ConfigError) as info:
        load_config(None, ["task=sft", "train.compile=fast"])
    message = info.value.message
    assert message.count("'train.compile'") == 1 and "literal[" not in message and ".bool" not in message
    assert "valid boolean" in message and "'elementwise'" in message and "got 'fast'" in message
    with pytest.raises(ConfigError) as info:
        load_config(None, ["task=sft", "distill.teacher={base_url: http://x}"])
    assert "'distill.teacher.name'" in info.value.message and "EndpointConfig" not in info.value.message
