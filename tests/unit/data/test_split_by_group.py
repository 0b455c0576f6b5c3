"""data.group_field in the split: every group (a country) gets its share of test and validation, as each label does, so
a small group is not left with none of its examples in test by the luck of a hash; without groups nothing changes."""

import json
import random
from collections import Counter

from tunelab.config import parse_config
from tunelab.data.records import ClassifyRecord, SFTRecord
from tunelab.data.split import check_classify_labels, make_split, split_records
from tunelab.evaluation.compare import MIN_TEST_EXAMPLES
from tunelab.tasks.pipeline import too_few_group_examples


def _classify(counts, labels="ab"):
    return [ClassifyRecord(f"request {i} from {country}", labels[i % len(labels)], group=country)
            for country, n in counts.items() for i in range(n)]


def _sft(counts):
    return [SFTRecord(({"role": "user", "content": f"question {i} from {country}"}, {"role": "assistant", "content": f"answer {i}"}),
                      group=country) for country, n in counts.items() for i in range(n)]


def _groups(records):
    return Counter(record.group for record in records)


def test_a_small_group_gets_its_share_of_test_and_validation():
    # Before, seed 9 put none of IT's 20 requests in test (and other seeds 1 to 5): its verdict said "too few" by chance.
    records = _classify({"FR": 400, "IT": 20})
    for seed in range(20):
        split = split_records(records, "classify", test_size=0.1, validation_size=0.1, seed=seed)
        assert _groups(split.test) == {"FR": 40, "IT": 2}, seed
        assert _groups(split.validation) == {"FR": 40, "IT": 2}, seed
        # Labels stay stratified within each group.
        assert Counter((r.group, r.label) for r in split.test) == {("FR", "a"): 20, ("FR", "b"): 20, ("IT", "a"): 1, ("IT", "b"): 1}, seed


def test_sft_is_split_by_group_too():
    # Before, seed 8 put none of IT's 20 conversations in test.
    records = _sft({"FR": 400, "IT": 20})
    for seed in range(20):
        split = split_records(records, "sft", test_size=0.1, validation_size=0.1, seed=seed)
        assert _groups(split.test) == {"FR": 40, "IT": 2}, seed
        assert _groups(split.validation) == {"FR": 40, "IT": 2}, seed


def test_the_split_by_group_is_deterministic_and_independent_of_file_order():
    records = _classify({"FR": 200, "DE": 50, "IT": 13}, labels="abc")
    first = split_records(records, "classify", test_size=0.2, validation_size=0.1, seed=5)
    assert split_records(records, "classify", test_size=0.2, validation_size=0.1, seed=5).fingerprint == first.fingerprint
    shuffled = list(records)
    random.Random(1).shuffle(shuffled)
    for order in (list(reversed(records)), shuffled):
        again = split_records(order, "classify", test_size=0.2, validation_size=0.1, seed=5)
        assert again.fingerprint == first.fingerprint
        assert sorted(r.id for r in again.test) == sorted(r.id for r in first.test)
    other = split_records(records, "classify", test_size=0.2, validation_size=0.1, seed=6)
    assert {r.id for r in other.test} != {r.id for r in first.test}
    assert _groups(other.test) == _groups(first.test) == {"FR": 40, "DE": 10, "IT": 3}


def test_without_groups_the_split_is_the_one_before_groups():
    # Recorded from the split before it knew groups: the same records without a group give exactly that split.
    records = [ClassifyRecord(r.text, r.label) for r in _classify({"FR": 400, "IT": 20}, labels="abc")]
    split = split_records(records, "classify", test_size=0.1, validation_size=0.1, seed=9)
    assert split.fingerprint == "41c1730d0e38fce96442a8e4"
    assert [r.text for r in split.test[:3]] == ["request 18 from FR", "request 22 from FR", "request 29 from FR"]


def test_a_group_of_one_record_and_records_without_a_group():
    # A group of one record has a share of 0.1 x 1 test examples: it stays in train, as a label's last group does.
    # Records without a group (split_records given records read without data.group_field, beside grouped ones: the
    # out-of-scope file's) are one group of their own, which gets its share like any other.
    records = _classify({"FR": 100, "LU": 1}) + [ClassifyRecord(f"no country {i}", "ab"[i % 2]) for i in range(30)]
    for seed in range(10):
        split = split_records(records, "classify", test_size=0.1, validation_size=0.1, seed=seed)
        assert _groups(split.test) == {"FR": 10, None: 3}, seed
        assert _groups(split.train)["LU"] == 1, seed


def test_the_last_group_rule_holds_with_groups():
    # A label's last input stays in train (held out, it could be neither learned nor validated), whatever its group.
    records = _classify({"FR": 60, "IT": 20}) + [ClassifyRecord("rare in Italy", "rare", group="IT"),
                                                   ClassifyRecord("rare in France", "rare", group="FR")]
    for seed in range(20):
        split = split_records(records, "classify", test_size=0.3, validation_size=0.3, seed=seed)
        assert "rare" in {r.label for r in split.train}, seed
        check_classify_labels(split)


def test_an_input_in_two_groups_never_straddles_sides():
    # The same request in two countries is one input: it is filed under the group most of its copies have.
    records = _classify({"FR": 100, "IT": 30}) + [ClassifyRecord(f"request {i} from FR", "ab"[i % 2], group="IT") for i in range(0, 100, 3)]
    for seed in range(10):
        split = split_records(records, "classify", test_size=0.2, validation_size=0.2, seed=seed)
        sides = {}
        for name, side in (("train", split.train), ("validation", split.validation), ("test", split.test)):
            for record in side:
                assert sides.setdefault(record.text, name) == name, seed


def _write(path, counts):
    rows = [{"text": f"request number {i} in {country}", "label": "ab"[i % 2], "country": country}
            for country, n in counts.items() for i in range(n)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_the_group_warning_names_only_groups_whose_data_is_too_small(tmp_path):
    # DE's 100 records are enough for 30 test examples at test_size 0.3: before, seed 5 gave it 23 and warned of it.
    path = _write(tmp_path / "data.jsonl", {"FR": 300, "DE": 100, "IT": 10})
    config = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.3, "group_field": "country", "seed": 5}})
    split = make_split(config)
    assert _groups(split.test) == {"FR": 90, "DE": 30, "IT": 3}
    (message,) = too_few_group_examples(config, split)
    assert "'DE'" not in message and "'FR'" not in message
    assert message.startswith(f"1 of 3 group(s) (country) will have fewer than {MIN_TEST_EXAMPLES} test examples")
    assert "'IT' 3 test examples of its 10 records" in message
    assert "at data.test_size 0.3 a group needs at least 100 records for 30 test examples" in message


def test_the_group_warning_names_a_group_left_wholly_in_train(tmp_path):
    # A group of one record stays in train: it gets no row in the verdict by group, which the warning says.
    path = _write(tmp_path / "data.jsonl", {"FR": 400, "LU": 1})
    config = parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.1, "group_field": "country"}})
    split = make_split(config)
    assert _groups(split.test) == {"FR": 40} and _groups(split.train)["LU"] == 1
    (message,) = too_few_group_examples(config, split)
    assert message.startswith("1 of 2 group(s) (country) will have fewer than 30 test examples, so their verdict by group will "
                              "say 'too few' (a group with none gets no row): 'LU' 0 test examples of its 1 record; at "
                              "data.test_size 0.1 a group needs at least 300 records for 30 test examples: ")


def test_with_a_test_file_the_warning_asks_for_test_rows(tmp_path):
    train = _write(tmp_path / "train.jsonl", {"FR": 100, "IT": 100})
    test = _write(tmp_path / "test.jsonl", {"FR": 40, "IT": 12})
    config = parse_config({"task": "classify", "data": {"train": str(train), "test": str(test), "group_field": "country"}})
    (message,) = too_few_group_examples(config, make_split(config))
    assert message.endswith(f"'IT' 12; give those groups at least 30 rows each in data.test ({test})")
