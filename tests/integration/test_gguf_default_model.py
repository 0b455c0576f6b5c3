"""GGUF export of a LoRA run on the real default model, read back by transformers (and llama.cpp when installed).

The run is the default model with a LoRA adapter whose B weights are small and random: the merged
model answers differently from the base (so a missing merge would show) yet still speaks English.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

SYSTEM = "Route support requests."
LABELS = ["billing", "technical", "account", "shipping", "refund"]
PROMPTS = ["What is the capital of France?", "Name three primary colors."]
TEXTS = [
    f"{subject} {problem}"
    for subject in ["My card", "The app", "My account", "My parcel", "The refund", "My invoice", "The login page",
                    "My subscription", "The delivery", "My password"]
    for problem in ["was charged twice", "crashes on start", "is locked", "has not arrived", "is missing",
                    "shows the wrong amount", "does not load", "was cancelled", "is late", "expired"]
]


def write_default_lora_run(root: Path, tokenizer, *, task: str, scale: float = 0.002) -> Path:
    from peft import LoraConfig, get_peft_model

    from tunelab.data.labels import build_label_map
    from tunelab.runs import load_model

    base = load_model("default")
    torch.manual_seed(0)
    peft_model = get_peft_model(base.model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    root.mkdir(parents=True)
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "tokenizer")
    config = {"task": task, "model": {"name": "default"}, "data": {"system_prompt": SYSTEM if task == "classify" else None}}
    if task == "classify":
        build_label_map(LABELS, tokenizer).save(root / "labels.json")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def read_back(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.mark.slow
def test_default_model_lora_run_round_trips_through_gguf(default_model, tmp_path):
    from transformers.integrations.gguf import read_gguf_metadata

    from tunelab.data.templates import classify_messages, render_prompt_ids, with_system_prompt
    from tunelab.evaluation.predict import label_logits
    from tunelab.models.generate import generate_text
    from tunelab.models.gguf_export import LABELS_KEY
    from tunelab.runs import export_gguf, merge_run

    run = write_default_lora_run(tmp_path / "router", default_model.tokenizer, task="classify")
    merged = merge_run(run)
    # The merge changed the weights, so a GGUF of the base alone would not pass what follows.
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict[name], default_model.model.state_dict()[name])
    token_ids = merged.label_map["token_ids"]
    prompts = [render_prompt_ids(merged.tokenizer, classify_messages(text, SYSTEM)) for text in TEXTS]
    expected_labels = label_logits(merged.model, prompts, token_ids).argmax(axis=1)
    assert len(set(expected_labels.tolist())) > 1

    # f16 must agree everywhere (checked on the first 20: the tiny-model test checks all of its set); q8_0
    # on at least 99 of the 100, q4_K_M (Ollama's default) on at least 95. Each pass costs 10-20 s on 2 cores.
    for quant, texts, min_agreement in (("f16", TEXTS[:20], 1.0), ("q8_0", TEXTS, 0.99), ("q4_K_M", TEXTS, 0.95)):
        exported = export_gguf(run, tmp_path / f"router-{quant}.gguf", quant=quant, ollama=True)
        # The head is untied: each label answers with a token spelled as its name (its own trained row).
        assert not exported.tied_output and exported.modelfile.is_file()
        metadata, _ = read_gguf_metadata(str(exported.path))
        stored = json.loads(metadata[LABELS_KEY])
        assert stored["token_ids"] == token_ids
        assert metadata["tokenizer.ggml.pre"] == "smollm"  # the base file's value, for llama.cpp's pre-tokenizer
        assert metadata["general.license"] == "apache-2.0" and metadata["general.base_model.0.organization"] == "HuggingFaceTB"
        model, tokenizer = read_back(exported.path)
        assert [tokenizer.decode([i]) for i in stored["answer_ids"]] == LABELS
        got = label_logits(model, [render_prompt_ids(tokenizer, classify_messages(t, SYSTEM)) for t in texts], stored["answer_ids"])
        assert float(np.mean(got.argmax(axis=1) == expected_labels[: len(texts)])) >= min_agreement, quant
        if quant != "f16":
            continue
        torch.testing.assert_close(model.state_dict()[name], merged.state_dict[name].half().float(), atol=0, rtol=0)
        for prompt in PROMPTS:
            # A request without a system message gets the run's (the file's chat template carries it as its default).
            ids = render_prompt_ids(merged.tokenizer, with_system_prompt([{"role": "user", "content": prompt}], SYSTEM))
            assert render_prompt_ids(tokenizer, [{"role": "user", "content": prompt}]) == ids
            with torch.no_grad():
                expected, logits = merged.model(torch.tensor([ids])).logits, model(torch.tensor([ids])).logits
            # The label tokens' output rows are the file's own: the codes' cleared, the names' the trained label rows.
            kept = [i for i in range(expected.shape[-1]) if i not in {*token_ids, *stored["answer_ids"]}]
            torch.testing.assert_close(logits[..., kept], expected[..., kept], atol=0.15, rtol=0.02)
            answer = generate_text(merged.model, merged.tokenizer, prompt, system=SYSTEM, max_new_tokens=12)
            assert generate_text(model, tokenizer, prompt, max_new_tokens=12) == answer
        del model


@pytest.mark.slow
def test_export_of_the_untrained_default_model_matches_llama_cpps_own_file(default_model, tmp_path):
    """The bundled default GGUF was written by llama.cpp's converter: the same weights exported by tunelab
    must come out with its tensor names, shapes and q/k layout, and its vocabulary, merges and token types."""
    from gguf import GGUFReader, dequantize

    from tunelab.models.resolve import default_gguf_path
    from tunelab.runs import export_gguf

    run = write_default_lora_run(tmp_path / "untrained", default_model.tokenizer, task="sft", scale=0.0)
    ours, theirs = GGUFReader(export_gguf(run, tmp_path / "untrained.gguf").path), GGUFReader(default_gguf_path())
    assert {t.name: tuple(t.shape) for t in ours.tensors} == {t.name: tuple(t.shape) for t in theirs.tensors}
    keys = [key for key in theirs.fields if key.startswith(("llama.", "tokenizer."))]
    assert keys and set(keys) <= set(ours.fields)
    for key in keys:
        assert ours.fields[key].contents() == pytest.approx(theirs.fields[key].contents()), key
    our_tensors, their_tensors = {t.name: t for t in ours.tensors}, {t.name: t for t in theirs.tensors}
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.29.attn_q.weight", "blk.0.ffn_down.weight"):
        reference = dequantize(their_tensors[name].data, their_tensors[name].tensor_type)
        ours_data = dequantize(our_tensors[name].data, our_tensors[name].tensor_type)
        # Ours is theirs dequantized (by transformers, un-permuted), then permuted back and rounded to f16.
        np.testing.assert_allclose(ours_data, reference, atol=float(np.abs(reference).max()) * 1e-3, err_msg=name)


@pytest.mark.slow
def test_llama_cpp_reads_the_export(default_model, tmp_path):
    """Optional: llama.cpp itself (``pip install llama-cpp-python``, which compiles it) gives the same answers."""
    llama_cpp = pytest.importorskip("llama_cpp")
    from tunelab.data.templates import render_prompt_ids
    from tunelab.models.generate import generate_text
    from tunelab.runs import export_gguf, merge_run

    run = write_default_lora_run(tmp_path / "sft", default_model.tokenizer, task="sft")
    merged = merge_run(run)
    path = export_gguf(run, tmp_path / "sft.gguf", quant="f16").path
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=512, verbose=False, seed=0)
    for prompt in PROMPTS:
        ids = render_prompt_ids(merged.tokenizer, [{"role": "user", "content": prompt}])
        text = merged.tokenizer.decode(ids)
        assert llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids
        expected = generate_text(merged.model, merged.tokenizer, prompt, max_new_tokens=16)
        out = llm.create_completion(ids, max_tokens=16, temperature=0.0, top_k=1, stop=["<|im_end|>"])
        assert out["choices"][0]["text"].strip() == expected
