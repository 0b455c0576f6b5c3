"""Data problems a user should hear of before any compute: a label only in conflicting duplicates, look-alike text."""

import json

import pytest

from tunelab.config import DataConfig
from tunelab.data.check import check_data
from tunelab.data.records import ClassifyRecord
from tunelab.data.split import split_records


def _with_label_only_in_a_conflict():
    records = [ClassifyRecord(f"request {i} about a card", "card", source=f"f.jsonl:{i + 1}") for i in range(20)]
    records += [ClassifyRecord(f"request {i} about a refund", "refund", source=f"f.jsonl:{i + 21}") for i in range(20)]
    # "fraud" is only ever said of an input that is also labelled "card" (twice): the group is filed under "card".
    records += [
        ClassifyRecord("someone used my card", "card", source="f.jsonl:41"),
        ClassifyRecord("Someone used my card!", "card", source="f.jsonl:42"),
        ClassifyRecord("someone used my card", "fraud", source="f.jsonl:43"),
    ]
    return records


@pytest.mark.parametrize("seed", range(12))
def test_a_label_only_in_a_conflicting_group_is_kept_in_train_and_said(seed):
    records = _with_label_only_in_a_conflict()
    split = split_records(records, "classify", test_size=0.3, validation_size=0.1, seed=seed)
    assert "fraud" in {r.label for r in split.train}
    said = [w for w in split.warnings if "'fraud'" in w]
    assert len(said) == 1 and "f.jsonl:43" in said[0] and "\n" not in said[0]


def test_the_split_of_data_without_such_a_label_is_unchanged():
    # Conflicting groups whose labels all occur elsewhere too: the split stays the one everyone already has.
    records = _with_label_only_in_a_conflict()[:-1] + [ClassifyRecord("someone used my card", "refund", source="f.jsonl:43")]
    split = split_records(records, "classify", test_size=0.3, validation_size=0.1, seed=1)
    assert not any("only" in w and "refund" in w for w in split.warnings)
    assert sorted(r.source for r in split.test) == EXPECTED_TEST_SEED_1


# The split of this data before labels only in conflicting groups were kept in train.
EXPECTED_TEST_SEED_1 = sorted(f"f.jsonl:{n}" for n in (1, 6, 7, 11, 12, 14, 18, 22, 28, 36, 37, 38, 40))


def test_the_check_names_a_label_only_in_conflicting_groups(tmp_path):
    rows = [{"text": f"request {i} about a card", "label": "card"} for i in range(5)]
    rows += [{"text": "someone used my card", "label": "card"}, {"text": "someone used my card", "label": "fraud"}]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    report = check_data(str(path), "classify", DataConfig())
    said = [w for w in report.warnings if "'fraud'" in w]
    assert len(said) == 1 and f"{path}:7" in said[0] and f"{path}:6" in said[0]


LOOKALIKES = [
    "ｒｅｆｕｎｄ my order",  # full-width letters
    "ref\u200bund my order",  # a zero-width space inside a word
    "ref\u200dund my order",  # a zero-width joiner
    "refund\u00a0my order",  # a non-breaking space
    "ref\ufeffund my order",  # a BOM in the middle of the text
]


def test_look_alike_inputs_are_near_duplicates_with_their_lines(tmp_path):
    rows = [{"text": "refund my order", "label": "refund"}] + [{"text": text, "label": "refund"} for text in LOOKALIKES]
    rows += [{"text": f"request {i}", "label": "card"} for i in range(4)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    report = check_data(str(path), "classify", DataConfig())
    assert report.near_duplicates == 5
    assert sorted(report.near_duplicate_groups[0].sources) == sorted(f"{path}:{n}" for n in range(1, 7))
    said = [w for w in report.warnings if "look-alike" in w]
    assert len(said) == 1 and f"{path}:2" in said[0]


def test_look_alike_inputs_on_both_sides_of_a_split_are_warned_about(tmp_path):
    train = [ClassifyRecord("refund my order", "refund", source="train:1"), ClassifyRecord("where is my card", "card", source="train:2")]
    test = [ClassifyRecord(text, "refund", source=f"test:{n}") for n, text in enumerate(LOOKALIKES, start=1)]
    split = split_records(train, "classify", test_size=0.0, validation_size=0.0, test_records=test)
    said = [w for w in split.warnings if "also occur in train" in w]
    assert said and said[0].startswith("5 test example(s)")


def test_look_alike_test_rows_are_leakage_in_the_check(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"text": t, "label": "refund" if i else "card"}) + "\n" for i, t in enumerate(["card lost", "refund my order"])))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": "refund"}, ensure_ascii=False) + "\n" for t in LOOKALIKES))
    report = check_data(str(train), "classify", DataConfig(), test_path=str(test))
    assert report.test.leaked == 5


def test_a_relative_data_path_not_found_names_where_it_was_looked_for(tmp_path, monkeypatch):
    from tunelab.config import load_config
    from tunelab.data.split import make_split
    from tunelab.errors import DataError

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text("task: classify\ndata:\n  train: data/train.jsonl\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        make_split(load_config("cfg/run.yaml"))
    message = str(error.value)
    assert "data/train.jsonl" in message and str(tmp_path / "data" / "train.jsonl") in message
    assert f"working folder {tmp_path}" in message and "config file's folder" in message


def test_a_local_folder_name_not_found_is_not_only_called_a_hub_dataset(tmp_path, monkeypatch):
    from tunelab.data.read import read_records
    from tunelab.errors import DataError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        read_records("mydata", "classify", DataConfig())
    assert str(tmp_path / "mydata") in str(error.value)


def test_files_joined_with_their_byte_order_marks_are_read_as_written(tmp_path):
    from tunelab.data.read import read_records

    bom = "\ufeff"
    jsonl = tmp_path / "joined.jsonl"
    jsonl.write_text(bom + json.dumps({"text": "first", "label": "a"}) + "\n" + bom + json.dumps({"text": "second", "label": "b"}) + "\n")
    result = read_records(str(jsonl), "classify", DataConfig())
    assert [(r.text, r.label) for r in result.records] == [("first", "a"), ("second", "b")] and not result.errors
    part = "text,label\r\nreq 0,card\r\nreq 1,refund\r\n"
    csv = tmp_path / "joined.csv"
    csv.write_text(bom + part + bom + part, encoding="utf-8")
    result = read_records(str(csv), "classify", DataConfig())
    assert {r.label for r in result.records} == {"card", "refund"}  # the second header is no record labelled 'label'
    assert all(not r.text.startswith(bom) for r in result.records)
    assert [(e.source, "header row again" in e.reason) for e in result.errors] == [(f"{csv}:4", True)]


@pytest.mark.parametrize(
    ("labels", "warned"),
    [
        (["card", "card\u200b", "ｃａｒｄ", "\ufeffcard"], True),  # zero-width, full-width, a BOM: one class to a reader
        (["1", "1.0"], True),  # one number written two ways (a float column exported as text)
        (["-1", "1"], False),  # two numbers: a sign is no separator
        (["-1", "0", "1"], False),
    ],
)
def test_labels_that_look_alike_are_warned_about(tmp_path, labels, warned):
    rows = [{"text": f"request {i} {label}", "label": label} for label in labels for i in range(6)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    report = check_data(str(path), "classify", DataConfig())
    assert len(report.labels) == len(labels)
    assert any("spelled two ways" in w for w in report.warnings) == warned
