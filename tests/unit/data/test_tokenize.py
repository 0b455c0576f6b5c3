import pytest

from tunelab.data.labels import build_label_map
from tunelab.data.records import ClassifyRecord, SFTRecord, TextRecord
from tunelab.data.templates import classify_messages, render_prompt_ids
from tunelab.data.tokenize import (
    IGNORE_INDEX,
    tokenize_classify,
    tokenize_records,
    tokenize_sft,
    tokenize_text,
)


def _trained_text(tokenizer, example):
    return tokenizer.decode([t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX])


def test_sft_masks_prompt_and_trains_answer_with_end_of_turn(tiny_tokenizer):
    record = SFTRecord(({"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"}))
    example = tokenize_sft(record, tiny_tokenizer, max_length=256)
    # The ids are exactly the chat template's rendering of the whole conversation.
    whole = tiny_tokenizer.apply_chat_template(list(record.messages), tokenize=False)
    assert tiny_tokenizer.decode(example.input_ids) == whole
    assert _trained_text(tiny_tokenizer, example) == "four<|im_end|>"
    # Token by token: everything up to the answer is masked, the prompt ids are the inference prompt.
    prompt_ids = render_prompt_ids(tiny_tokenizer, record.prompt_messages)
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(label == IGNORE_INDEX for label in example.labels[: len(prompt_ids)])
    answer_and_eos = tiny_tokenizer.encode("four<|im_end|>", add_special_tokens=False)
    n = len(answer_and_eos)
    assert example.labels[len(prompt_ids) : len(prompt_ids) + n] == answer_and_eos
    assert all(label == IGNORE_INDEX for label in example.labels[len(prompt_ids) + n :])


def test_sft_multi_turn_trains_every_weighted_assistant_turn(tiny_tokenizer):
    record = SFTRecord(
        (
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "capital of France?"},
            {"role": "assistant", "content": "Paris", "weight": 0},
            {"role": "user", "content": "and Italy?"},
            {"role": "assistant", "content": "Rome"},
        )
    )
    example = tokenize_sft(record, tiny_tokenizer, max_length=512)
    assert _trained_text(tiny_tokenizer, example) == "Rome<|im_end|>"
    assert "Paris" in tiny_tokenizer.decode(example.input_ids)


def test_sft_truncation_is_flagged(tiny_tokenizer):
    record = SFTRecord(({"role": "user", "content": "hello " * 50}, {"role": "assistant", "content": "ok"}))
    example = tokenize_sft(record, tiny_tokenizer, max_length=16)
    assert example.truncated and len(example.input_ids) == 16


def test_sft_long_prompt_loses_its_start_and_keeps_the_answer(tiny_tokenizer):
    # A prompt longer than max_length kept its start and lost the whole answer: the row trained nothing (dropped
    # with a warning), while evaluation and serving prompt the model with a long prompt's end.
    record = SFTRecord(({"role": "user", "content": "hello " * 50 + "What is two plus two?"}, {"role": "assistant", "content": "four"}))
    full = tokenize_sft(record, tiny_tokenizer, max_length=10**9)
    example = tokenize_sft(record, tiny_tokenizer, max_length=16)
    assert example.truncated and len(example.input_ids) == 16
    assert _trained_text(tiny_tokenizer, example) == "four<|im_end|>"
    assert example.input_ids == full.input_ids[-16:] and example.labels == full.labels[-16:]
    # The answer alone longer than max_length: one prompt token stays to predict the answer's first token, whose start is kept.
    long_answer = SFTRecord(({"role": "user", "content": "hello " * 50}, {"role": "assistant", "content": "two plus two is four " * 20}))
    full = tokenize_sft(long_answer, tiny_tokenizer, max_length=10**9)
    cut = tokenize_sft(long_answer, tiny_tokenizer, max_length=16)
    first = next(i for i, label in enumerate(full.labels) if label != -100)
    assert cut.input_ids == full.input_ids[first - 1 : first + 15] and cut.trained_tokens == 15


def test_text_windows_cover_each_token_once(tiny_tokenizer):
    text = "Four score and seven years ago our fathers brought forth on this continent a new nation. " * 6
    record = TextRecord(text, source="speech.txt:1")
    ids = tiny_tokenizer.encode(text, add_special_tokens=False) + [tiny_tokenizer.eos_token_id]
    windows = tokenize_text(record, tiny_tokenizer, max_length=32, stride=24)
    assert len(windows) > 1
    assert all(len(w.input_ids) <= 32 for w in windows)
    # Reassemble the targets by absolute position: every token from the document appears exactly once.
    targets = {}
    for n, window in enumerate(windows):
        for i, label in enumerate(window.labels):
            if label != IGNORE_INDEX:
                position = n * 24 + i
                assert position not in targets
                targets[position] = label
    assert [targets[p] for p in sorted(targets)] == ids
    short = tokenize_text(TextRecord("hello"), tiny_tokenizer, max_length=32)
    assert len(short) == 1 and short[0].input_ids[-1] == tiny_tokenizer.eos_token_id


def test_classify_example_and_truncation(tiny_tokenizer):
    label_map = build_label_map(["billing", "shipping"], tiny_tokenizer)
    record = ClassifyRecord("my card was charged twice", "shipping")
    example = tokenize_classify(record, tiny_tokenizer, label_map, max_length=512)
    assert example.input_ids == render_prompt_ids(tiny_tokenizer, classify_messages(record.text))
    assert example.label == 1
    long = tokenize_classify(ClassifyRecord("billing " * 300, "billing"), tiny_tokenizer, label_map, max_length=120)
    assert long.truncated and len(long.input_ids) <= 120
    assert "Text: billing" in tiny_tokenizer.decode(long.input_ids)
    assert tiny_tokenizer.decode(long.input_ids).endswith("<|im_start|>assistant\n")
    with pytest.raises(KeyError):
        tokenize_classify(ClassifyRecord("x", "unknown"), tiny_tokenizer, label_map, max_length=64)


def test_tokenize_records_is_cached(tiny_tokenizer, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    import tunelab.data.tokenize as module

    records = [SFTRecord(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"})) for i in range(5)]
    first, stats = tokenize_records(records, "sft", tiny_tokenizer, max_length=64)
    assert stats.examples == 5
    calls = []
    original = module.tokenize_sft
    module.tokenize_sft = lambda *a, **k: calls.append(1) or original(*a, **k)
    try:
        second, _ = tokenize_records(records, "sft", tiny_tokenizer, max_length=64)
        assert calls == [] and [e.input_ids for e in second] == [e.input_ids for e in first]
        tokenize_records(records, "sft", tiny_tokenizer, max_length=63)
        assert len(calls) == 5
        # Another version of the tokenizing code (this module or the templates) never reads these entries.
        monkeypatch.setattr(module, "code_fingerprint", lambda: "another version")
        tokenize_records(records, "sft", tiny_tokenizer, max_length=64)
        assert len(calls) == 10
    finally:
        module.tokenize_sft = original


def test_a_changed_classify_prompt_is_never_served_from_the_cache(tiny_tokenizer, tmp_path, monkeypatch):
    """The cache key holds the prompt written around each text, not only the records and the tokenizer."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    import tunelab.data.tokenize as module

    label_map = build_label_map(["billing", "shipping"], tiny_tokenizer)
    records = [ClassifyRecord(f"request {i}", "billing") for i in range(3)]
    before, _ = tokenize_records(records, "classify", tiny_tokenizer, max_length=128, label_map=label_map)

    def asked_differently(text, system_prompt=None):
        return [{"role": "user", "content": f"Which team handles this?\n\n{text}"}]

    monkeypatch.setattr(module, "classify_messages", asked_differently)
    after, _ = tokenize_records(records, "classify", tiny_tokenizer, max_length=128, label_map=label_map)
    assert [e.input_ids for e in after] == [render_prompt_ids(tiny_tokenizer, asked_differently(r.text)) for r in records]
    assert [e.input_ids for e in after] != [e.input_ids for e in before]


def _cache_files(folder):
    return [p for p in (folder / "tokenized").iterdir() if not p.name.startswith(".")]


def test_the_tokenization_cache_holds_data_only_and_never_runs_code(tiny_tokenizer, tmp_path, monkeypatch):
    """A crafted cache file once ran code (pickle); now it is data (JSON) and a file that is not is rebuilt."""
    import json
    import pickle

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    records = [ClassifyRecord(f"my card {i}", "billing" if i % 2 else "login") for i in range(4)]
    label_map = build_label_map(["billing", "login"], tiny_tokenizer)
    first, _ = tokenize_records(records, "classify", tiny_tokenizer, max_length=64, label_map=label_map)
    (cache,) = _cache_files(tmp_path)
    json.loads(cache.read_text(encoding="utf-8"))  # plain data a person can read

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    cache.write_bytes(pickle.dumps(Payload()))
    again, _ = tokenize_records(records, "classify", tiny_tokenizer, max_length=64, label_map=label_map)
    assert not marker.exists()  # the crafted file was not executed
    assert [(e.input_ids, e.label) for e in again] == [(e.input_ids, e.label) for e in first]


@pytest.mark.parametrize(
    "damage",
    [b"\x00\xff random bytes \x13\x37", b"", b"[]", b'{"format": "tunelab-tokenized/1", "examples": [{"input_ids": "x"}]}'],
)
def test_a_damaged_tokenization_cache_entry_is_rebuilt(tiny_tokenizer, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path))
    records = [SFTRecord(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"})) for i in range(3)]
    first, _ = tokenize_records(records, "sft", tiny_tokenizer, max_length=64)
    (cache,) = _cache_files(tmp_path)
    cache.write_bytes(damage)
    again, stats = tokenize_records(records, "sft", tiny_tokenizer, max_length=64)
    assert stats.examples == 3 and [e.input_ids for e in again] == [e.input_ids for e in first]
    third, _ = tokenize_records(records, "sft", tiny_tokenizer, max_length=64)  # the rebuilt entry reads back
    assert [e.labels for e in third] == [e.labels for e in first]


def test_the_code_fingerprint_holds_without_source_files(monkeypatch):
    """Installed as bytecode only, the package version stands in for the sources (tokenizing still works)."""
    import tunelab.data.tokenize as module

    module.code_fingerprint.cache_clear()
    with_sources = module.code_fingerprint()

    def unreadable(self):
        raise FileNotFoundError(self)

    monkeypatch.setattr(module.Path, "read_bytes", unreadable)
    module.code_fingerprint.cache_clear()
    try:
        without = module.code_fingerprint()
        assert without != with_sources and without == module.code_fingerprint.__wrapped__()
    finally:
        module.code_fingerprint.cache_clear()


# Gemma 2's template (its turn markers replaced by the tiny tokenizer's): no system role, strictly alternating roles.
GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _with_template(tokenizer, template, name="google/gemma-2-2b-it"):
    import copy

    changed = copy.deepcopy(tokenizer)
    changed.chat_template = template
    changed.name_or_path = name
    return changed


def test_a_system_prompt_is_folded_into_the_first_user_turn_when_the_template_has_no_system_role(tiny_tokenizer):
    from tunelab.inference import chat_prompt

    gemma = _with_template(tiny_tokenizer, GEMMA_LIKE_TEMPLATE)
    record = SFTRecord(({"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"}))
    example = tokenize_sft(record, gemma, max_length=256, system_prompt="Be brief.")
    assert tiny_tokenizer.decode(example.input_ids).startswith("<|im_start|><|im_start|>user\nBe brief.\n\nWhat is two plus two?<|im_end|>")
    assert _trained_text(gemma, example) == "four<|im_end|>"
    # Training, classify and inference fold it the same way: the prompt trained on is the prompt served.
    prompt = chat_prompt(gemma, [{"role": "user", "content": "What is two plus two?"}], system_prompt="Be brief.")
    assert example.input_ids[: len(prompt.ids)] == prompt.ids
    label_map = build_label_map(["billing", "shipping"], gemma)
    classify = tokenize_classify(ClassifyRecord("my card", "billing"), gemma, label_map, 256, "Be brief.")
    assert "user\nBe brief.\n\nClassify" in gemma.decode(classify.input_ids)


def test_a_conversation_the_template_refuses_is_one_line_naming_the_record_and_model(tiny_tokenizer):
    from tunelab.errors import DataError

    gemma = _with_template(tiny_tokenizer, GEMMA_LIKE_TEMPLATE)
    record = SFTRecord(
        ({"role": "user", "content": "a"}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "c"}), source="chat.jsonl:3"
    )
    with pytest.raises(DataError, match=r"chat.jsonl:3: the chat template of google/gemma-2-2b-it refuses .*user/user.*alternate") as caught:
        tokenize_sft(record, gemma, max_length=256)
    assert "\n" not in caught.value.message


def test_a_template_that_rewrites_earlier_turns_fails_loudly_instead_of_masking_wrong_tokens(tiny_tokenizer):
    from tunelab.errors import DataError

    # Like Qwen3's: an assistant turn that is no longer the last is rendered shorter.
    template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n' + m['content'][:1] + '<|im_end|>\\n' }}"
        "{% else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    qwen = _with_template(tiny_tokenizer, template, name="Qwen/Qwen3-0.6B")
    record = SFTRecord(
        (
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "five"},
        ),
        source="chat.jsonl:7",
    )
    with pytest.raises(DataError, match=r"chat.jsonl:7: the chat template of Qwen/Qwen3-0.6B renders an earlier turn differently"):
        tokenize_sft(record, qwen, max_length=256)


def test_sft_without_a_chat_template_trains_the_answers_after_the_inference_prompt(tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing

    plain = _with_template(tiny_tokenizer, None, name="a-base-model")
    # A base model's tokenizer that starts every text with its BOS (Llama's do).
    bos = plain.bos_token_id
    plain.backend_tokenizer.post_processor = TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", bos)])
    record = SFTRecord(
        (
            {"role": "user", "content": "capital of France?"},
            {"role": "assistant", "content": "Paris"},
            {"role": "user", "content": "and Italy?"},
            {"role": "assistant", "content": "Rome"},
        )
    )
    example = tokenize_sft(record, plain, max_length=256)
    assert _trained_text(plain, example) == "Paris<|im_end|>Rome<|im_end|>"
    prompt_ids = render_prompt_ids(plain, list(record.messages[:1]))
    assert prompt_ids[0] == bos
    assert example.input_ids[: len(prompt_ids)] == prompt_ids
    assert plain.decode(example.input_ids) == (
        "<|im_start|>capital of France?\n\nAnswer: Paris<|im_end|>\n\nand Italy?\n\nAnswer: Rome<|im_end|>"
    )
