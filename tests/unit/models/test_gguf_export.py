"""GGUF export, checked by a reader that is not the writer: transformers' own GGUF loader (``gguf_file=``).

The runs are built the way a finished run stores them (``adapter/`` or ``model/``, ``config.yaml``,
``tokenizer/``, ``labels.json``), on the tiny Llama, with LoRA B weights random so that the merged
model differs from the base and a wrong merge or a wrong q/k permutation would show.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from tunelab.data.labels import build_label_map
from tunelab.data.templates import classify_messages, render_prompt_ids
from tunelab.errors import ModelError
from tunelab.evaluation.predict import label_logits
from tunelab.models.generate import generate_text
from tunelab.models.gguf_export import LABELS_KEY, modelfile_path
from tunelab.runs import export_gguf, merge_run

PROMPTS = ["What is the capital of France?", "What is two plus two?", "my card has not arrived", "Four score"]
LABELS = ["billing", "technical", "account"]
SYSTEM = "Route support requests."
TEXTS = [
    f"{a} {b} ({i})"
    for i, (a, b) in enumerate(
        (a, b)
        for a in ["my card", "the login", "a refund", "shipping", "my account", "billing", "cancel", "the capital"]
        for b in ["has not arrived", "is wrong", "please help", "two plus two", "of France", "yet again", "now", "ok"]
    )
]


def write_lora_run(root: Path, base_dir: Path, tokenizer, *, seed: int, task: str = "sft", system: str | None = None):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir))
    torch.manual_seed(seed)  # peft draws the LoRA A weights from the global generator
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    root.mkdir(parents=True)
    peft_model.save_pretrained(root / "adapter")
    tokenizer.save_pretrained(root / "tokenizer")
    config = {"task": task, "model": {"name": str(base_dir)}, "data": {"system_prompt": system}}
    if task == "classify":
        build_label_map(LABELS, tokenizer).save(root / "labels.json")
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def write_full_run(root: Path, model, tokenizer) -> Path:
    root.mkdir(parents=True)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "tokenizer")
    (root / "config.yaml").write_text(yaml.safe_dump({"task": "sft", "model": {"name": "unused"}, "data": {}}))
    return root


def read_back(path: Path):
    """The exported file as transformers reads it: the path tunelab reads the default model with."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model.eval()
    return model, tokenizer


def gguf_string(path: Path, key: str) -> str | None:
    from gguf import GGUFReader

    field = GGUFReader(path).get_field(key)
    return None if field is None else field.contents()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-runs")
    return {
        "sft": write_lora_run(root / "sft-run", tiny_model_dir, tiny_tokenizer, seed=1),
        "classify": write_lora_run(
            root / "Router Run", tiny_model_dir, tiny_tokenizer, seed=2, task="classify", system=SYSTEM
        ),
    }


@pytest.fixture(scope="module")
def sft_f16(runs, tmp_path_factory) -> Path:
    return export_gguf(runs["sft"], tmp_path_factory.mktemp("out") / "sft.gguf", quant="f16").path


def test_f16_weights_read_back_as_the_merged_weights_rounded_to_f16(runs, sft_f16):
    merged = merge_run(runs["sft"])
    model, _ = read_back(sft_f16)
    read = model.state_dict()
    assert set(read) == set(merged.state_dict)
    assert model.config.tie_word_embeddings is True
    for name, tensor in merged.state_dict.items():
        # Matrices are stored in f16, norms in f32: q/k come back un-permuted, bit for bit.
        expected = tensor.to(torch.float16).float() if tensor.ndim == 2 else tensor
        assert torch.equal(read[name], expected), name


def test_f16_gives_the_merged_runs_tokens_logits_and_greedy_answers(runs, sft_f16):
    merged = merge_run(runs["sft"])
    model, tokenizer = read_back(sft_f16)
    assert tokenizer.chat_template == merged.tokenizer.chat_template
    for ids_name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        assert getattr(tokenizer, ids_name) == getattr(merged.tokenizer, ids_name)
    for prompt in PROMPTS:
        messages = [{"role": "user", "content": prompt}]
        ids = render_prompt_ids(merged.tokenizer, messages)
        assert render_prompt_ids(tokenizer, messages) == ids
        assert tokenizer(prompt)["input_ids"] == merged.tokenizer(prompt)["input_ids"]
        with torch.no_grad():
            expected = merged.model(torch.tensor([ids])).logits
            got = model(torch.tensor([ids])).logits
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
        assert generate_text(model, tokenizer, prompt, max_new_tokens=12) == generate_text(
            merged.model, merged.tokenizer, prompt, max_new_tokens=12
        )


def test_tunelab_reads_the_export_back_as_a_model(sft_f16, runs, monkeypatch, tmp_path):
    from tunelab.runs import load_model

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    loaded = load_model(str(sft_f16))
    merged = merge_run(runs["sft"])
    assert generate_text(loaded.model, loaded.tokenizer, PROMPTS[0], max_new_tokens=8) == generate_text(
        merged.model, merged.tokenizer, PROMPTS[0], max_new_tokens=8
    )


# What a conversion writing into the model cache does (loader.convert_gguf): its atomic_directory, in its own process.
CONVERTING = """
import os, signal, sys, time
from pathlib import Path
from tunelab.paths import atomic_directory
with atomic_directory(Path(sys.argv[1])) as tmp:
    (tmp / "model.safetensors").write_bytes(b"0" * 100_000)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    print(tmp, flush=True)
    time.sleep(60)
"""


def test_a_killed_conversions_folder_is_removed_by_the_next_and_a_running_ones_kept(sft_f16, monkeypatch, tmp_path):
    # A first conversion of a GGUF killed midway left its hidden temporary folder (the whole model) in the cache,
    # and every later conversion kept it there: the cache only grew.
    import os
    import subprocess
    import sys

    import tunelab
    from tunelab.models.loader import converted_cache_path
    from tunelab.runs import load_model

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    target = converted_cache_path(sft_f16)
    env = {**os.environ, "PYTHONPATH": str(Path(tunelab.__file__).parents[1])}
    killed = subprocess.run([sys.executable, "-c", CONVERTING, str(target), "kill"], env=env, check=False)
    assert killed.returncode == -9
    (stale,) = [child for child in target.parent.iterdir() if child.name.startswith(f".{target.name}.")]
    running = subprocess.Popen([sys.executable, "-c", CONVERTING, str(target), "wait"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        writing = Path(running.stdout.readline().strip())  # a conversion of the same file, writing now
        assert writing.is_dir()
        load_model(str(sft_f16))
        assert (target / "config.json").is_file()
        assert not stale.exists()  # its writer is dead
        assert writing.is_dir() and (writing / "model.safetensors").is_file()  # its writer is not
    finally:
        running.kill()
        running.wait()


def test_classify_export_keeps_labels_and_label_predictions(runs, tmp_path):
    merged = merge_run(runs["classify"])
    token_ids = merged.label_map["token_ids"]
    prompts = [render_prompt_ids(merged.tokenizer, classify_messages(text, SYSTEM)) for text in TEXTS]
    expected = label_logits(merged.model, prompts, token_ids)
    assert len(set(expected.argmax(axis=1).tolist())) > 1, "the random adapter should not predict one label for all"
    # The tiny random model's label margins are ~1e-2, the size of q8_0's rounding: here q8_0 is held to
    # close logits and 95 %; the 99 % agreement is checked on the default model (test_gguf_default_model.py).
    for quant, atol, min_agreement in (("f16", 2e-3, 1.0), ("q8_0", 5e-2, 0.95)):
        result = export_gguf(runs["classify"], tmp_path / f"router-{quant}.gguf", quant=quant)
        stored = json.loads(gguf_string(result.path, LABELS_KEY))
        assert {key: stored[key] for key in ("labels", "token_ids", "token_strings")} == {
            key: merged.label_map[key] for key in ("labels", "token_ids", "token_strings")
        }
        assert gguf_string(result.path, "tunelab.system_prompt") == SYSTEM
        model, tokenizer = read_back(result.path)
        assert [render_prompt_ids(tokenizer, classify_messages(text, SYSTEM)) for text in TEXTS] == prompts
        # The file answers with each label's own token (its name): those rows score as the run's label rows.
        got = label_logits(model, prompts, stored["answer_ids"])
        np.testing.assert_allclose(got, expected, atol=atol)
        assert (got.argmax(axis=1) == expected.argmax(axis=1)).mean() >= min_agreement, quant
    f16, q8 = (tmp_path / "router-f16.gguf").stat().st_size, (tmp_path / "router-q8_0.gguf").stat().st_size
    assert q8 < f16


def test_modelfile_has_template_stops_system_and_label_notes(runs, tmp_path):
    from tunelab.data.templates import CLASSIFY_INSTRUCTION

    result = export_gguf(runs["classify"], tmp_path / "router.gguf", ollama=True, classify_instruction=CLASSIFY_INSTRUCTION)
    assert result.modelfile == tmp_path / "router.Modelfile"
    assert result.ollama_command == f"ollama create router-run -f {tmp_path / 'router.Modelfile'}"
    text = result.modelfile.read_text()
    assert "FROM ./router.gguf\n" in text
    # The user sends the text alone: the template wraps it in the prompt the run was trained on.
    template = (
        'TEMPLATE """{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}'
        f"<|im_start|>user\n{CLASSIFY_INSTRUCTION}\n\nText: {{{{ .Prompt }}}}<|im_end|>\n<|im_start|>assistant\n\"\"\""
    )
    assert template in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert f'SYSTEM """{SYSTEM}"""' in text
    for label in merge_run(runs["classify"]).label_map["labels"]:
        assert f"#   {label}\n" in text
    # The rendered template is exactly tunelab's classify prompt.
    from tunelab.data.templates import classify_messages

    rendered = template.split('"""')[1].replace("{{- if .System }}", "").replace("{{ end }}", "").replace("{{ .System }}", SYSTEM)
    expected = merge_run(runs["classify"]).tokenizer.apply_chat_template(
        classify_messages("my card", SYSTEM), tokenize=False, add_generation_prompt=True
    )
    assert rendered.replace("{{ .Prompt }}", "my card") == expected


def test_modelfile_system_is_the_templates_default_when_the_run_has_none(runs, tmp_path):
    result = export_gguf(runs["sft"], tmp_path / "sft.gguf", ollama=True)
    # The tiny chat template inserts this system message when a conversation has none.
    assert 'SYSTEM """You are a tiny test model."""' in result.modelfile.read_text()
    # An sft run answers at its judged length (eval.max_new_tokens, 128 by default), not a classify run's one token.
    assert "PARAMETER num_predict 128\n" in result.modelfile.read_text()


def test_untied_output_head_is_written_and_read_back(tiny_model, tiny_tokenizer, tmp_path):
    model = tiny_model
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight) * 0.1)
    run = write_full_run(tmp_path / "full", model, tiny_tokenizer)
    result = export_gguf(run, tmp_path / "full.gguf")
    assert result.tied_output is False
    read, _ = read_back(result.path)
    assert read.config.tie_word_embeddings is False
    assert torch.equal(read.lm_head.weight, model.lm_head.weight.detach().to(torch.float16).float())
    assert not torch.equal(read.lm_head.weight, read.model.embed_tokens.weight)


def _nothing_written(folder: Path) -> bool:
    return not any(folder.iterdir())


def test_unsupported_architecture_fails_before_writing(tiny_tokenizer, tmp_path):
    from transformers import Phi3Config, Phi3ForCausalLM

    config = Phi3Config(
        vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
    )
    run = write_full_run(tmp_path / "phi", Phi3ForCausalLM(config), tiny_tokenizer)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match=r"cannot export a 'phi3' model to GGUF.*supported architectures: gemma2, llama, mistral, qwen2"):
        export_gguf(run, out / "phi.gguf", ollama=True)
    assert _nothing_written(out)


def test_missing_tokenizer_file_fails_before_writing(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["sft"], run)
    (run / "tokenizer" / "tokenizer.json").unlink()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ModelError, match="tokenizer.json is missing"):
        export_gguf(run, out / "x.gguf")
    assert _nothing_written(out)


def test_export_never_overwrites_and_rejects_unknown_quant(runs, sft_f16, tmp_path):
    before = sft_f16.stat().st_mtime_ns
    with pytest.raises(ModelError, match="already exists"):
        export_gguf(runs["sft"], sft_f16)
    assert sft_f16.stat().st_mtime_ns == before
    with pytest.raises(ModelError, match="q4_k.*q4_K_M"):
        export_gguf(runs["sft"], tmp_path / "x.gguf", quant="q4_k")
    assert not (tmp_path / "x.gguf").exists()


def test_cli_exports_gguf_with_modelfile_and_prints_the_ollama_line(runs, tmp_path):
    from tunelab.cli.main import _register_commands, app

    if not any(c.name == "export" for c in app.registered_commands):
        _register_commands()
    out = tmp_path / "router.gguf"
    result = CliRunner().invoke(
        app, ["export", str(runs["classify"]), str(out), "--format", "gguf", "--quant", "q8_0", "--ollama"]
    )
    assert result.exit_code == 0, result.output
    assert out.is_file() and modelfile_path(out).is_file()
    assert f"ollama create router-run -f {modelfile_path(out)}" in " ".join(result.output.split())
    assert gguf_string(out, "general.file_type") is not None

    failed = CliRunner().invoke(app, ["export", str(runs["classify"]), str(out), "--format", "gguf"])
    # main() prints a TunelabError as one line with exit code 2.
    assert isinstance(failed.exception, ModelError) and "already exists" in str(failed.exception)


def test_classify_export_says_it_cannot_apply_the_out_of_scope_rule_and_carries_it(runs, tmp_path):
    # llama.cpp answers a label token for every request: the run's "below the threshold, answer out_of_scope" was
    # dropped without a word (export result, CLI and Modelfile said nothing of it).
    from tunelab.cli.main import _register_commands, app
    from tunelab.data.labels import OutOfScope
    from tunelab.models.gguf_export import OUT_OF_SCOPE_KEY

    run = tmp_path / "guarded"
    shutil.copytree(runs["classify"], run)
    OutOfScope("out_of_scope", 0.4375).save(run / "out_of_scope.json")
    result = export_gguf(run, tmp_path / "guarded.gguf", ollama=True)
    rule = result.as_dict()["out_of_scope"]
    assert {key: rule[key] for key in ("label", "threshold", "score")} == {"label": "out_of_scope", "threshold": 0.4375, "score": "probability"}
    assert "every request" in rule["note"] and "0.4375" in rule["note"] and "out_of_scope" in rule["note"]
    stored = json.loads(gguf_string(result.path, OUT_OF_SCOPE_KEY))
    assert {key: stored[key] for key in ("label", "threshold", "score")} == {key: rule[key] for key in ("label", "threshold", "score")}
    assert f"# {rule['note']}" in result.modelfile.read_text()
    assert export_gguf(runs["classify"], tmp_path / "plain.gguf").out_of_scope is None
    from tunelab.runs import Run, model_card

    assert "A GGUF export (llama.cpp, Ollama) does not apply this rule" in model_card(Run.open(run))

    if not any(c.name == "export" for c in app.registered_commands):
        _register_commands()
    printed = CliRunner().invoke(app, ["export", str(run), str(tmp_path / "cli.gguf")])
    assert printed.exit_code == 0, printed.output
    assert rule["note"] in " ".join(printed.output.split())


def test_modelfile_decodes_as_the_run_was_judged(runs, tmp_path, tiny_model_dir, tiny_tokenizer):
    # An sft export's Modelfile set no temperature: Ollama sampled at its own default (0.8) answers nobody judged.
    greedy = export_gguf(runs["sft"], tmp_path / "sft.gguf", ollama=True).modelfile.read_text()
    assert "PARAMETER temperature 0\n" in greedy and "PARAMETER top_p 1\n" in greedy
    warm = write_lora_run(tmp_path / "warm-run", tiny_model_dir, tiny_tokenizer, seed=3)
    config = yaml.safe_load((warm / "config.yaml").read_text())
    config["eval"] = {"temperature": 0.7, "top_p": 0.9}
    (warm / "config.yaml").write_text(yaml.safe_dump(config))
    text = export_gguf(warm, tmp_path / "warm.gguf", ollama=True).modelfile.read_text()
    assert "PARAMETER temperature 0.7\n" in text and "PARAMETER top_p 0.9\n" in text
