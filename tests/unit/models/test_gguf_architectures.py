"""GGUF export of each supported architecture, quantizations and metadata, read back by transformers' GGUF reader.

Each architecture is a tiny random model built in-process (as the tiny Llama of conftest), saved as a
finished full-model run; its export is read back with ``from_pretrained(gguf_file=...)``, the reader
that is not the writer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tunelab.models.gguf_export import LABELS_KEY
from tunelab.runs import export_gguf, merge_run

PROMPT_IDS = [[1, 20, 33, 47, 58, 61, 70, 82, 95, 101, 4, 7]]


def _tiny(kind: str, vocab: int, *, hidden: int = 64, intermediate: int = 128, seed: int = 0):
    import transformers

    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    if kind == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, tie_word_embeddings=False))
    elif kind == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common, tie_word_embeddings=False, sliding_window=None))
    elif kind == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, tie_word_embeddings=True))
    elif kind == "gemma2":
        # Gemma's defaults where the GGUF reader has no key for them (query_pre_attn_scalar, soft-capping).
        model = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(**common, head_dim=16))
    else:
        raise ValueError(kind)
    with torch.no_grad():
        for parameter in model.parameters():
            # Norms and biases random too, so that a missing +1 offset or a dropped bias would show.
            if parameter.ndim == 1:
                parameter.copy_(torch.randn_like(parameter) * 0.1)
    return model.eval()


def _full_run(root: Path, model, tokenizer, task: str = "sft") -> Path:
    root.mkdir(parents=True)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "config.yaml").write_text(yaml.safe_dump({"task": task, "model": {"name": str(root / "model")}, "data": {}}))
    return root


def _read_back(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _metadata(path: Path) -> dict:
    from transformers.integrations.gguf import read_gguf_metadata

    return read_gguf_metadata(str(path))[0]


@pytest.mark.parametrize(("kind", "written_as"), [("llama", "llama"), ("mistral", "llama"), ("qwen2", "qwen2"), ("gemma2", "gemma2")])
def test_each_architecture_reads_back_as_its_weights_and_logits(kind, written_as, tiny_tokenizer, tmp_path):
    model = _tiny(kind, len(tiny_tokenizer))
    run = _full_run(tmp_path / f"{kind}-run", model, tiny_tokenizer)
    result = export_gguf(run, tmp_path / f"{kind}.gguf")
    assert result.architecture == written_as and _metadata(result.path)["general.architecture"] == written_as
    read, tokenizer = _read_back(result.path)
    expected = merge_run(run).state_dict
    got = read.state_dict()
    assert set(got) == set(expected)
    assert read.config.tie_word_embeddings == model.config.tie_word_embeddings
    for name, tensor in got.items():
        want = expected[name].to(torch.float16).float() if expected[name].ndim == 2 else expected[name]
        # Gemma's norms come back as (1 + w) - 1: exact but for the float32 rounding of the offset.
        torch.testing.assert_close(tensor, want, atol=1e-6, rtol=0, msg=name)
    ids = torch.tensor(PROMPT_IDS)
    with torch.no_grad():
        torch.testing.assert_close(read(ids).logits, model(ids).logits, atol=3e-2, rtol=3e-2)
    assert tokenizer("my card has not arrived")["input_ids"] == tiny_tokenizer("my card has not arrived")["input_ids"]


def test_q4_k_m_file_has_llama_cpps_tensor_types_and_stays_close(tiny_tokenizer, tmp_path):
    from gguf import GGUFReader

    # 256 wide, so that the K-quants apply (SmolLM2's 576 columns take the fallbacks, tested in test_gguf_quants).
    model = _tiny("llama", len(tiny_tokenizer), hidden=256, intermediate=512, seed=3)
    run = _full_run(tmp_path / "wide", model, tiny_tokenizer)
    sizes = {}
    for quant in ("f16", "q8_0", "q5_K_M", "q4_K_M", "q4_0"):
        result = export_gguf(run, tmp_path / f"wide-{quant}.gguf", quant=quant)
        sizes[quant] = result.size_bytes
        types = {t.name: t.tensor_type.name for t in GGUFReader(result.path).tensors}
        read, _ = _read_back(result.path)
        ids = torch.tensor(PROMPT_IDS)
        with torch.no_grad():
            expected, got = model(ids).logits, read(ids).logits
        error = float((got - expected).pow(2).mean().sqrt() / expected.pow(2).mean().sqrt())
        if quant == "q4_K_M":
            assert types["output.weight"] == "Q6_K" and types["token_embd.weight"] == "Q4_K"
            # Of 2 layers, use_more_bits picks the last one for 6 bits.
            assert types["blk.1.attn_v.weight"] == "Q6_K" and types["blk.1.ffn_down.weight"] == "Q6_K"
            assert types["blk.0.attn_v.weight"] == "Q4_K" and types["blk.0.ffn_down.weight"] == "Q4_K"
            assert types["blk.0.attn_q.weight"] == "Q4_K" and types["blk.0.attn_norm.weight"] == "F32"
            assert _metadata(result.path)["general.file_type"] == 15  # LLAMA_FTYPE_MOSTLY_Q4_K_M
            assert error < 0.1, error
        if quant == "q5_K_M":
            assert types["blk.0.ffn_up.weight"] == "Q5_K" and error < 0.05, error
        assert sorted(result.tensor_types) == sorted(set(types.values()))
    assert sizes["q4_K_M"] < sizes["q5_K_M"] < sizes["q8_0"] < sizes["f16"]
    assert sizes["q4_0"] < sizes["q8_0"]


def test_general_metadata_names_the_run_and_its_base(tiny_tokenizer, tmp_path):
    model = _tiny("llama", len(tiny_tokenizer))
    run = _full_run(tmp_path / "support-short", model, tiny_tokenizer, task="sft")
    # A base model folder whose model card states its licence, as a hub model's README does.
    base = tmp_path / "base"
    model.save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    (base / "README.md").write_text("---\nlicense: apache-2.0\nlanguage: [en]\n---\n# A tiny base\n")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["name"] = str(base)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "model" / "README.md").unlink(missing_ok=True)
    metadata = _metadata(export_gguf(run, tmp_path / "s.gguf").path)
    assert metadata["general.name"] == "support-short" and metadata["general.finetune"] == "support-short"
    assert metadata["general.license"] == "apache-2.0"
    assert metadata["general.base_model.count"] == 1 and metadata["general.base_model.0.name"] == "base"
    assert metadata["tunelab.task"] == "sft"


def _spm_tokenizer():
    """A SentencePiece-style BPE tokenizer (``▁`` pieces, byte fallback) as transformers' Llama converter writes one."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = ["the capital of France is Paris", "my card has not arrived yet", "two plus two is four"] * 30
    trainer = trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False)
    learner = Tokenizer(models.BPE(unk_token="<unk>"))
    learner.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    learner.train_from_iterator(corpus, trainer=trainer)
    learned = json.loads(learner.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{b:02X}>": 3 + b for b in range(256)}}
    for token in sorted(learned["vocab"], key=learned["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned["merges"]]
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.chat_template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}</s>{% endfor %}"
    return tokenizer


def test_sentencepiece_style_tokenizers_are_written_as_llama_vocabularies(tmp_path):
    tokenizer = _spm_tokenizer()
    model = _tiny("mistral", len(tokenizer))
    run = _full_run(tmp_path / "spm", model, tokenizer)
    result = export_gguf(run, tmp_path / "spm.gguf")
    metadata = _metadata(result.path)
    assert metadata["tokenizer.ggml.model"] == "llama" and metadata["tokenizer.ggml.add_space_prefix"] is True
    _, read = _read_back(result.path)
    for text in ("the capital of France is Paris", "my card has not arrived", "zebra ünïcode 42"):
        assert read(text)["input_ids"] == tokenizer(text)["input_ids"], text
        assert read.decode(read(text)["input_ids"], skip_special_tokens=True) == text


def test_classify_export_answers_label_names(tiny_tokenizer, tmp_path):
    from tunelab.data.labels import build_label_map
    from tunelab.data.templates import classify_messages, render_prompt_ids
    from tunelab.evaluation.predict import label_logits

    model = _tiny("llama", len(tiny_tokenizer), seed=5)
    run = _full_run(tmp_path / "router", model, tiny_tokenizer, task="classify")
    labels = ["billing_issue", "technical", "card arrival"]
    build_label_map(labels, tiny_tokenizer).save(run / "labels.json")
    merged = merge_run(run)
    result = export_gguf(run, tmp_path / "router.gguf", ollama=True, classify_instruction="Classify the following text.")
    stored = json.loads(_metadata(result.path)[LABELS_KEY])
    read, tokenizer = _read_back(result.path)
    # Each answer token reads as its label's name, and scores as the run's own label row did.
    assert [tokenizer.decode([i]) for i in stored["answer_ids"]] == labels
    texts = ["my card has not arrived", "the login is wrong", "refund please", "two plus two", "technical billing_issue: card arrival"]
    prompts = [render_prompt_ids(merged.tokenizer, classify_messages(text)) for text in texts]
    # Text that spells a label still reads as before: no merge makes the new tokens.
    assert [render_prompt_ids(tokenizer, classify_messages(text)) for text in texts] == prompts
    expected = label_logits(merged.model, prompts, stored["token_ids"])
    got = label_logits(read, prompts, stored["answer_ids"])
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=2e-2, rtol=0)
    # The code tokens no longer compete as answers.
    with torch.no_grad():
        logits = read(torch.tensor([prompts[0]])).logits[0, -1]
    assert all(float(logits[code]) == 0.0 for code, answer in zip(stored["token_ids"], stored["answer_ids"], strict=True) if code != answer)
    modelfile = result.modelfile.read_text()
    assert "Classify the following text.\n\nText: {{ .Prompt }}<|im_end|>" in modelfile
    assert "#   card arrival" in modelfile and "PARAMETER num_predict 1" in modelfile
