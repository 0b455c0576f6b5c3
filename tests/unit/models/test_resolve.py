import pytest

from tunelab.errors import ModelError
from tunelab.models import load_model, resolve_model
from tunelab.models.loader import _ensure_writable
from tunelab.paths import atomic_directory


def test_default_resolves_to_bundled_gguf():
    source = resolve_model("default")
    assert source.kind == "default" and source.location.endswith(".gguf")


def test_folder_and_run_and_hub(tiny_model_dir, tmp_path):
    assert resolve_model(str(tiny_model_dir)).kind == "folder"
    assert resolve_model("HuggingFaceTB/SmolLM2-360M-Instruct").kind == "hub"
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text("task: sft\n")
    # A run folder is known to the run module; the models layer knows no run folder.
    from tunelab.runs import resolve_model as resolve_any

    assert resolve_any(str(run)).kind == "run" and resolve_any(str(tiny_model_dir)).kind == "folder"
    with pytest.raises(ModelError, match="holds no model"):
        resolve_model(str(run))


@pytest.mark.parametrize(
    "name, message",
    [
        ("no-such-model", "unknown model"),
        ("./missing-folder", "not found"),
        ("missing.gguf", "not found"),
    ],
)
def test_bad_names_are_clear(name, message):
    with pytest.raises(ModelError, match=message):
        resolve_model(name)


def test_corrupt_gguf_and_empty_folder(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ModelError, match="not a GGUF file"):
        resolve_model(str(bad))
    with pytest.raises(ModelError, match="holds no model"):
        resolve_model(str(tmp_path))


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(ModelError, match="not available offline"):
        load_model("tunelab-test/definitely-not-cached")


def test_unwritable_cache_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ModelError, match="not writable"):
        _ensure_writable(blocker / "cache")


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "converted"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "model.safetensors").write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_directory(target) as tmp:
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").is_file()


def test_load_tiny_folder_generates(tiny_model_dir):
    import torch

    from tunelab.models.generate import chat_input_ids, generate_text, stop_token_ids

    loaded = load_model(str(tiny_model_dir))
    assert loaded.tokenizer.pad_token_id is not None
    text = generate_text(loaded.model, loaded.tokenizer, "hello", max_new_tokens=5)
    # The streamed answer is the model's own greedy continuation of the chat-templated prompt, to the first stop id.
    ids = chat_input_ids(loaded.tokenizer, "hello")
    assert loaded.tokenizer.decode(ids[0]).endswith("<|im_start|>assistant\n")
    with torch.no_grad():
        out = loaded.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, do_sample=False,
            pad_token_id=loaded.tokenizer.pad_token_id, eos_token_id=stop_token_ids(loaded.model, loaded.tokenizer),
        )
    expected = loaded.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    assert text == expected
