import pytest

from tunelab.data.labels import LabelMap, build_label_map, single_token_id
from tunelab.data.templates import classify_messages, render_prompt_ids, zero_shot_messages
from tunelab.errors import DataError


def test_single_token_labels_keep_their_token(tiny_tokenizer):
    labels = ["A", "B", "C"]
    mapping = build_label_map(labels, tiny_tokenizer)
    assert mapping.token_strings == labels
    assert not mapping.codes_differ
    for label, token in zip(labels, mapping.token_ids, strict=True):
        assert tiny_tokenizer.encode(label, add_special_tokens=False) == [token]


def test_multi_token_labels_get_distinct_codes(tiny_tokenizer):
    labels = ["card arrival", "lost or stolen card", "A"]
    mapping = build_label_map(labels, tiny_tokenizer)
    assert mapping.codes_differ
    assert len(set(mapping.token_ids)) == 3
    for token in mapping.token_ids:
        assert single_token_id(tiny_tokenizer, tiny_tokenizer.decode([token])) == token


def test_too_many_labels_is_a_clear_error(tiny_tokenizer):
    labels = [f"label number {i}" for i in range(5000)]
    with pytest.raises(DataError, match="5000 labels"):
        build_label_map(labels, tiny_tokenizer)


def test_label_map_roundtrip(tmp_path, tiny_tokenizer):
    mapping = build_label_map(["x y", "z w"], tiny_tokenizer)
    mapping.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json") == mapping


def test_prompts_end_with_open_assistant_turn(tiny_tokenizer):
    mapping = build_label_map(["card arrival", "refund"], tiny_tokenizer)
    ids = render_prompt_ids(tiny_tokenizer, classify_messages("where is my card"))
    assert tiny_tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    zero = tiny_tokenizer.decode(render_prompt_ids(tiny_tokenizer, zero_shot_messages("x", mapping)))
    for label, code in zip(mapping.labels, mapping.token_strings, strict=True):
        assert f"{code}: {label}" in zero
