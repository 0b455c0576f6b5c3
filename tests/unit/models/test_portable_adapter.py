"""A classify run's adapter is portable: plain ``peft.PeftModel.from_pretrained`` reproduces tunelab's predictions
(the trained label rows are PEFT trainable tokens), runs saved before (``label_head.safetensors``) still load
alike, the adapter names a base a user can fetch, and its README is a filled model card."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tunelab.data.labels import build_label_map
from tunelab.data.templates import classify_messages, render_prompt_ids
from tunelab.inference import Classifier
from tunelab.models.adapters import save_trained
from tunelab.models.heads import LabelHead
from tunelab.runs import BaseModel, Run, RunFolder, make_adapter_portable, portable_base
from tunelab.serve.vllm import vllm_adapter_problems

LABELS = ["billing", "technical", "account"]
SYSTEM = "Route support requests."
TEXTS = ["my card has not arrived", "login fails every time", "refund please", "the capital of France"]


def _classify_run(root, base_dir, tokenizer, *, old_format: bool = False) -> RunFolder:
    """A run saved by training's own ``save_trained`` (LoRA + a label head with random rows), or the old way."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    label_map = build_label_map(LABELS, tokenizer)
    head = LabelHead(label_map.token_ids, torch.randn((len(LABELS), model.config.hidden_size), generator=generator))
    run = RunFolder(root)
    root.mkdir(parents=True)
    if old_format:
        model.save_pretrained(run.adapter)
        head.save(run.adapter)  # how runs were saved before their adapters held the label rows
        tokenizer.save_pretrained(run.tokenizer)
    else:
        model.add_module("label_head", head)
        save_trained(model, tokenizer, adapter_dir=run.adapter, model_dir=run.model, tokenizer_dir=run.tokenizer)
    label_map.save(run.labels)
    run.config.write_text(yaml.safe_dump({"task": "classify", "model": {"name": str(base_dir)}, "data": {"system_prompt": SYSTEM}}))
    return run


def _plain_peft_probabilities(base_dir, adapter_dir, tokenizer, label_map) -> list[list[float]]:
    """What a user does with plain PEFT: load the base, put the adapter on, read the label tokens' logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base_dir)), str(adapter_dir)).eval()
    rows = []
    for text in TEXTS:
        ids = torch.tensor([render_prompt_ids(tokenizer, classify_messages(text, SYSTEM))])
        with torch.inference_mode():
            rows.append(torch.softmax(model(input_ids=ids).logits[0, -1, label_map.token_ids], dim=-1).tolist())
    return rows


def test_plain_peft_reproduces_tunelabs_predictions_and_old_runs_still_load(tmp_path, tiny_model_dir, tiny_tokenizer):
    new = _classify_run(tmp_path / "new", tiny_model_dir, tiny_tokenizer)
    old = _classify_run(tmp_path / "old", tiny_model_dir, tiny_tokenizer, old_format=True)
    config = json.loads((new.adapter / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == {"lm_head": Run.open(new.root).label_map.token_ids}
    assert not (new.adapter / "label_head.safetensors").exists() and (old.adapter / "label_head.safetensors").is_file()
    answers = {}
    for name, run in (("new", new), ("old", old)):
        loaded = Run.open(run.root).load()
        answers[name] = Classifier.for_model(loaded).classify(loaded.model, TEXTS)
    label_map = Run.open(new.root).label_map
    plain = _plain_peft_probabilities(tiny_model_dir, new.adapter, tiny_tokenizer, label_map)
    for mine, theirs, before in zip(answers["new"], plain, answers["old"], strict=True):
        assert [mine.probabilities[label] for label in label_map.labels] == pytest.approx(theirs, abs=1e-5)
        assert mine.label == label_map.labels[max(range(len(LABELS)), key=theirs.__getitem__)]
        # The same rows saved the old way give the same answers: older runs stay loadable.
        assert before.label == mine.label and before.confidence == pytest.approx(mine.confidence, abs=1e-5)
    # Without the rows (the bare LoRA, as a PEFT without trainable tokens would see it) the answers are another model's.
    untrained = _plain_peft_probabilities(tiny_model_dir, old.adapter, tiny_tokenizer, label_map)
    assert max(abs(a - b) for row, other in zip(untrained, plain, strict=True) for a, b in zip(row, other, strict=True)) > 1e-3


def test_merged_export_keeps_the_label_rows_and_leaves_the_input_embeddings(tmp_path, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    from tunelab.runs import export_folder

    run = _classify_run(tmp_path / "run", tiny_model_dir, tiny_tokenizer)
    loaded = Run.open(run.root).load()
    answers = Classifier.for_model(loaded).classify(loaded.model, TEXTS)
    merged = AutoModelForCausalLM.from_pretrained(str(export_folder(run.root, tmp_path / "merged"))).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    label_ids = Run.open(run.root).label_map.token_ids
    # The label tokens' input embeddings are the base's (PEFT would have written the head rows into a tied embedding).
    assert torch.equal(merged.get_input_embeddings().weight[label_ids], base.get_input_embeddings().weight[label_ids])
    for text, answer in zip(TEXTS, answers, strict=True):
        ids = torch.tensor([render_prompt_ids(tiny_tokenizer, classify_messages(text, SYSTEM))])
        with torch.inference_mode():
            probabilities = torch.softmax(merged(input_ids=ids).logits[0, -1, label_ids], dim=-1)
        assert float(probabilities.max()) == pytest.approx(answer.confidence, abs=1e-5)


def test_the_adapter_names_a_fetchable_base_and_carries_a_model_card(tmp_path, tiny_model_dir, tiny_tokenizer):
    run = _classify_run(tmp_path / "run", tiny_model_dir, tiny_tokenizer)
    (run.eval_dir).mkdir()
    run.tuned_eval.write_text(json.dumps({"task": "classify", "model": "m", "n": 40, "rows": [],
                                          "metrics": {"primary": "accuracy", "accuracy": 0.875, "macro_f1": 0.8}}))
    run.comparison.write_text(json.dumps({"verdict": "fine-tuning paid off", "strongest": "classical", "summary": "beats all 3",
                                          "comparisons": {"base": {}, "classical": {}, "few_shot": {}}}))
    run.split.write_text(json.dumps({"data_fingerprint": "d" * 16, "fingerprint": "s" * 16, "sizes": {"train": 100, "test": 40}}))
    make_adapter_portable(Run.open(run.root))
    card = (run.adapter / "README.md").read_text()
    for expected in ("task **classify**", "d" * 16, "| accuracy | 0.875 |", "fine-tuning paid off", "strongest opponent: **classical**",
                     "`billing`", SYSTEM, "PeftModel.from_pretrained"):
        assert expected in card, expected
    assert json.loads((run.adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    # vLLM's LoRA support does not load trainable tokens: the check says so and names the way out.
    assert any("merged export" in problem for problem in vllm_adapter_problems(run.adapter))


def test_the_default_models_adapter_names_the_hub_model_and_the_exact_gguf(tmp_path, monkeypatch):
    """The bundled default is a Q4_1 GGUF: the adapter names the hub model a user fetches and records the file and hash."""
    import hashlib

    import tunelab.runs as runs
    from tunelab.models.resolve import DEFAULT_MODEL_HUB_ID, ModelSource

    gguf = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    real = runs.resolve_model
    monkeypatch.setattr(runs, "resolve_model", lambda name: ModelSource("default", str(gguf), "SmolLM2-135M-Instruct") if name == "default" else real(name))
    base = portable_base(BaseModel("default", revision=None))
    assert base["base_model_name_or_path"] == DEFAULT_MODEL_HUB_ID == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert base["weights"]["gguf_file"] == gguf.name and base["weights"]["sha256"] == hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert portable_base(BaseModel("HuggingFaceTB/SmolLM2-360M-Instruct", revision="abc123")) == {
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-360M-Instruct", "revision": "abc123"}


def test_a_lora_on_a_tied_output_head_merges_into_the_head_alone(tmp_path, tiny_model_dir, tiny_tokenizer):
    """``lora.target_modules`` naming ``lm_head`` on a model whose head is tied to its input embeddings (the default
    model's): the merged export answers as the run (merging wrote the head's delta into the embeddings as well)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.runs import export_folder

    torch.manual_seed(3)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape) * 0.5)
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    save_trained(model, tiny_tokenizer, adapter_dir=run.adapter, model_dir=run.model, tokenizer_dir=run.tokenizer)
    run.config.write_text(yaml.safe_dump({"task": "sft", "model": {"name": str(tiny_model_dir)}, "lora": {"target_modules": ["q_proj", "lm_head"]}}))
    loaded = Run.open(run.root).load()
    ids = torch.tensor([render_prompt_ids(tiny_tokenizer, classify_messages("my card has not arrived, billing", SYSTEM))])
    merged = AutoModelForCausalLM.from_pretrained(str(export_folder(run.root, tmp_path / "merged", merge=True))).eval()
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    with torch.inference_mode():
        torch.testing.assert_close(merged(input_ids=ids).logits, loaded.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_a_copied_adapter_carries_the_labels_and_the_out_of_scope_rule_its_card_names(tmp_path, tiny_model_dir, tiny_tokenizer):
    """``tunelab export RUN OUT`` (no --merge) copies the adapter: a classify run's labels.json, out_of_scope.json and
    the training requests' states (out_of_scope.npy, which the model card points to) go along, as with --merge."""
    import numpy as np

    from tunelab.data.labels import OutOfScope
    from tunelab.runs import export_folder

    run = _classify_run(tmp_path / "run", tiny_model_dir, tiny_tokenizer)
    reference = np.eye(3, 64, dtype=np.float32)
    OutOfScope("other", 0.5, score="nearest", reference=reference).save(run.out_of_scope, run.out_of_scope_reference)
    make_adapter_portable(Run.open(run.root))
    out = export_folder(run.root, tmp_path / "adapter", merge=False)
    assert "out_of_scope.npy" in (out / "README.md").read_text()
    for path in (run.labels, run.out_of_scope, run.out_of_scope_reference):
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("name", ["merged", "adapter", "model.gguf"])
def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(tmp_path, tiny_model_dir, tiny_tokenizer, name):
    """An OUT under a file (or a folder this user cannot write) stopped with a FileExistsError / PermissionError traceback,
    after the run had been merged; now a TunelabError (one line, exit 2) names the folder before anything is loaded."""
    from tunelab.errors import TunelabError
    from tunelab.runs import export_folder, export_gguf

    run = _classify_run(tmp_path / "run", tiny_model_dir, tiny_tokenizer)
    (tmp_path / "notes.txt").write_text("a file, not a folder")
    out = tmp_path / "notes.txt" / name
    with pytest.raises(TunelabError, match="cannot write into"):
        if name.endswith(".gguf"):
            export_gguf(run.root, out)
        else:
            export_folder(run.root, out, merge=name == "merged")
