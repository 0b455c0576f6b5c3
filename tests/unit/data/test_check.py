import json

from tunelab.config import DataConfig
from tunelab.data.check import check_data, render_example
from tunelab.data.records import ClassifyRecord, SFTRecord, TextRecord
from tunelab.data.tokenize import IGNORE_INDEX, tokenize_sft


def _write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "".join(line + "\n" for line in extra_lines))
    return path


def test_classify_report_contents(tmp_path, tiny_tokenizer):
    rows = [{"text": f"my card number {i} was lost", "label": "card"} for i in range(6)]
    rows += [{"text": "refund me", "label": "refund"}, {"text": "Refund   me!", "label": "refund"}]  # near duplicate
    rows += [{"text": "refund me", "label": "refund"}]  # exact duplicate
    rows += [{"text": "help", "label": "card"}, {"text": "HELP", "label": "refund"}]  # conflicting labels
    path = _write_jsonl(tmp_path / "train.jsonl", rows, ['{"text": "no label"}'])
    test = _write_jsonl(tmp_path / "test.jsonl", [{"text": "my card number 2 was LOST", "label": "card"}, {"text": "hi", "label": "other"}])
    report = check_data(str(path), "classify", DataConfig(max_length=40), tokenizer=tiny_tokenizer, test_path=str(test))
    assert report.records == 11 and not report.ok
    assert [(e.source, "missing label" in e.reason) for e in report.errors] == [(f"{path}:12", True)]
    assert report.exact_duplicates == 1 and report.near_duplicates == 1 and report.conflicts == 1
    assert report.conflict_groups[0].labels == ["card", "refund"]
    assert report.labels == {"card": 7, "refund": 4}
    assert [row["label"] for row in report.label_map] == ["card", "refund"]  # sorted, one token each
    assert len({row["token_id"] for row in report.label_map}) == 2
    assert report.lengths.max > 40 and report.lengths.over_max_length == 11  # the tiny template alone is longer
    assert report.test.leaked == 1 and report.test.unseen_labels == ["other"]
    assert any("only 11 examples" in w for w in report.warnings)
    assert any("leakage" in w for w in report.warnings)
    data = report.to_dict()
    json.dumps(data)
    assert data["ok"] is False and data["errors"][0]["source"] == f"{path}:12"
    skipped = check_data(str(path), "classify", DataConfig(skip_invalid=True), tokenizer=tiny_tokenizer)
    assert skipped.ok and [e.source for e in skipped.skipped] == [f"{path}:12"]


def test_rendered_sft_example_marks_exactly_the_trained_tokens(tiny_tokenizer):
    record = SFTRecord(({"role": "user", "content": "What is two plus two?"}, {"role": "assistant", "content": "four"}), "f:1")
    rendered = render_example(record, tiny_tokenizer, DataConfig())
    example = tokenize_sft(record, tiny_tokenizer, 512)
    # Token by token: the trained segments are the decoded labels, the whole is the decoded input.
    assert "".join(text for text, _ in rendered.segments) == tiny_tokenizer.decode(example.input_ids)
    trained_ids = [t for t, label in zip(example.input_ids, example.labels, strict=True) if label != IGNORE_INDEX]
    assert "".join(text for text, trained in rendered.segments if trained) == tiny_tokenizer.decode(trained_ids)
    assert rendered.bracketed().endswith("[[four<|im_end|>]]\n")


def test_rendered_text_and_classify_examples(tiny_tokenizer):
    from tunelab.data.labels import build_label_map

    text = render_example(TextRecord("Four score and seven years ago", "f:1"), tiny_tokenizer, DataConfig())
    assert text.segments == [("Four score and seven years ago<|im_end|>", True)]
    label_map = build_label_map(["billing", "shipping"], tiny_tokenizer)
    classify = render_example(ClassifyRecord("card charged twice", "shipping", "f:2"), tiny_tokenizer, DataConfig(), label_map)
    assert classify.segments[-1] == (label_map.token_strings[1], True)
    assert classify.segments[0][0].endswith("<|im_start|>assistant\n")


def test_sft_rows_past_max_length_are_counted_by_what_they_lose(tmp_path, tiny_tokenizer):
    # A long prompt used to keep its start and lose the whole answer (the row trained nothing); it now loses the
    # prompt's start and keeps the answer, and the check says before training how many rows lose what.
    rows = [
        {"prompt": "hello " * 40, "completion": "ok"},
        {"prompt": "hi", "completion": "ok"},
        {"prompt": "hi", "completion": "two plus two is four " * 20},
        {"prompt": "hello " * 40, "completion": "fine"},
    ]
    path = _write_jsonl(tmp_path / "sft.jsonl", rows)
    report = check_data(str(path), "sft", DataConfig(max_length=60), tokenizer=tiny_tokenizer)
    assert report.lengths.untrainable == 0
    # Row 3's answer alone is too long: its prompt keeps one token, its answer's end is cut.
    assert report.lengths.over_max_length == 3 and report.lengths.prompt_cut == 2 and report.lengths.answer_cut == 1
    assert report.lengths.answer_cut_sources == [f"{path}:3"]
    assert any("2 would lose the start of their prompt (answer kept)" in w and "1 the end of their answer" in w for w in report.warnings)
    # ... and all of the prompt before it but one token: the answer is trained without its question, which the warning
    # said nothing of.
    assert any("1 the end of their answer and all but the last token of the prompt before it" in w for w in report.warnings), report.warnings
    assert report.ok


def test_length_sample_is_reported(tmp_path, tiny_tokenizer):
    path = _write_jsonl(tmp_path / "t.jsonl", [{"text": f"document {i}"} for i in range(50)])
    report = check_data(str(path), "text", DataConfig(), tokenizer=tiny_tokenizer, length_sample=10)
    assert report.lengths.measured == 10 and report.lengths.sampled
    assert any("sample of 10 of 50" in note for note in report.notes)
    assert check_data(str(path), "text", DataConfig()).lengths is None


def test_batched_lengths_equal_the_tokenized_examples(tmp_path, tiny_tokenizer):
    from tunelab.data.labels import build_label_map
    from tunelab.data.tokenize import tokenize_classify

    rows = [
        {"messages": [{"role": "user", "content": "capital of France?"}, {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "and Italy?"}, {"role": "assistant", "content": "Rome"}]},
        {"prompt": "What is two plus two? " * 3, "completion": "four"},
    ]
    path = _write_jsonl(tmp_path / "sft.jsonl", rows)
    report = check_data(str(path), "sft", DataConfig(), tokenizer=tiny_tokenizer)
    from tunelab.data.read import load_records

    expected = sorted(len(tokenize_sft(r, tiny_tokenizer, 10_000).input_ids) for r in load_records(str(path), "sft", DataConfig()))
    assert (report.lengths.min, report.lengths.max) == (expected[0], expected[-1])
    classify = _write_jsonl(tmp_path / "c.jsonl", [{"text": "card charged twice", "label": "billing"}])
    report = check_data(str(classify), "classify", DataConfig(), tokenizer=tiny_tokenizer)
    label_map = build_label_map(["billing"], tiny_tokenizer)
    example = tokenize_classify(ClassifyRecord("card charged twice", "billing"), tiny_tokenizer, label_map, 10_000)
    assert report.lengths.max == len(example.input_ids) + 1


def test_texts_of_only_symbols_or_emoji_are_not_one_example(tmp_path):
    # Normalization drops punctuation and symbols; a text made only of them must not become "" for all.
    rows = [{"text": ":)", "label": "pos"}, {"text": ":(", "label": "neg"}, {"text": "😀", "label": "pos"}, {"text": "😡", "label": "neg"}]
    rows += [{"text": ":)", "label": "pos"}, {"text": " :) ", "label": "pos"}]  # an exact and a near duplicate of line 1
    report = check_data(str(_write_jsonl(tmp_path / "emoji.jsonl", rows)), "classify", DataConfig())
    assert report.conflicts == 0 and report.conflict_groups == []
    assert report.exact_duplicates == 1 and report.near_duplicates == 1
    assert not any("conflicting" in warning for warning in report.warnings)


def test_labels_that_differ_only_in_case_or_symbols_are_a_conflict(tmp_path):
    # "+" and "-" (or "Yes" and "yes") are different classes to the label map: the same text with both conflicts.
    rows = [{"text": "great phone", "label": "+"}, {"text": "great phone!", "label": "-"}]
    rows += [{"text": "bad phone", "label": "Yes"}, {"text": "Bad phone", "label": "yes"}]
    report = check_data(str(_write_jsonl(tmp_path / "signs.jsonl", rows)), "classify", DataConfig())
    assert report.conflicts == 2 and report.near_duplicates == 0
    assert sorted(group.labels for group in report.conflict_groups) == [["+", "-"], ["Yes", "yes"]]


def test_the_label_tokens_shown_are_those_the_run_trains_without_the_out_of_scope_label(tmp_path, tiny_tokenizer):
    # The check built its map over every label, the out-of-scope one included, while training builds it without
    # (the threshold answers that label): `tunelab run`'s data_check.json showed 'refund' -> 'C' and the run trained
    # 'refund' -> 'B', and gave a token to a label that is never trained.
    from tunelab.data.labels import LabelMap
    from tunelab.data.read import load_records

    rows = [{"text": f"my card number {i} is broken", "label": "card"} for i in range(6)]
    rows += [{"text": f"refund my order {i}", "label": "refund"} for i in range(6)]
    rows += [{"text": f"weather on day {i}", "label": "out_of_scope"} for i in range(3)]
    path = _write_jsonl(tmp_path / "train.jsonl", rows)
    data = DataConfig(out_of_scope_label="out_of_scope")
    report = check_data(str(path), "classify", data, tokenizer=tiny_tokenizer)
    trained = LabelMap.for_records(load_records(str(path), "classify", data), tiny_tokenizer, "out_of_scope")
    assert report.ok, report.errors
    assert [(row["label"], row["token_id"]) for row in report.label_map] == list(zip(trained.labels, trained.token_ids, strict=True))
    assert report.labels == {"card": 6, "refund": 6, "out_of_scope": 3}  # still counted: it is validated and tested
    # The example shown is one that is trained, with its answer token.
    path.write_text("".join(json.dumps(row) + "\n" for row in rows[::-1]))
    report = check_data(str(path), "classify", data, tokenizer=tiny_tokenizer)
    assert report.example.source == f"{path}:4" and "is answered with the single token" in report.example.note


def test_labels_that_differ_only_in_case_or_separators_are_warned_about(tmp_path):
    # A helpdesk export with "Billing" and "billing" (or "card_arrival" and "card-arrival") trains two classes where the
    # user meant one: each half gets part of the examples and the model is scored wrong on the other half's spelling.
    rows = [{"text": f"charged twice {i}", "label": "Billing"} for i in range(6)]
    rows += [{"text": f"invoice wrong {i}", "label": "billing"} for i in range(2)]
    rows += [{"text": f"where is my card {i}", "label": "card_arrival"} for i in range(5)]
    rows += [{"text": f"card not here {i}", "label": "Card-Arrival"} for i in range(5)]
    rows += [{"text": f"good {i}", "label": "+"} for i in range(5)] + [{"text": f"bad {i}", "label": "-"} for i in range(5)]
    report = check_data(str(_write_jsonl(tmp_path / "labels.jsonl", rows)), "classify", DataConfig())
    spelled = [w for w in report.warnings if "spelled" in w]
    assert spelled == [
        "2 label(s) look like one category spelled two ways (case, spaces, '-' or '_'): "
        "'Billing' (6) / 'billing' (2); 'Card-Arrival' (5) / 'card_arrival' (5): "
        "each spelling is a class of its own; make them one in the data if they are the same category"
    ]
