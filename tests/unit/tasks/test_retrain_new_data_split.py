"""How a retrain shares its new records out (``retrain.split_new``): by the split module's one rule, as ``make_split``
does. Its own per-label shuffle put near copies of one request (case, punctuation) on both sides of the recent slice,
gave a small group of ``data.group_field`` no recent rows, and changed with the order of the file."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from tunelab.data.keys import input_key
from tunelab.data.records import ClassifyRecord
from tunelab.tasks.retrain import split_new


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _near_copies() -> list[ClassifyRecord]:
    # 20 requests written twice, as users do: "Refund please 3" and "refund please 3!" (not exact repeats, so
    # ``new_records`` keeps both).
    records = []
    for i in range(20):
        label = "A" if i % 2 else "B"
        records += [ClassifyRecord(f"Refund please {i}", label), ClassifyRecord(f"refund please {i}!", label)]
    return records


@pytest.mark.parametrize("seed", range(4))
def test_near_copies_of_one_request_never_straddle_the_recent_slice(seed):
    train, validation, recent = split_new(_near_copies(), recent_share=0.5, validation_size=0.1, seed=seed)
    assert recent and validation and train
    sides = [{input_key(r) for r in side} for side in (train, validation, recent)]
    assert not sides[0] & sides[2], "a recent test request has a copy in the new training records"
    assert not sides[0] & sides[1] and not sides[1] & sides[2]
    assert len(train) + len(validation) + len(recent) == 40


def _grouped() -> list[ClassifyRecord]:
    # FR: 40 requests; DE: 4 (2 per label). Each group must get its share of the recent slice.
    records = [ClassifyRecord(f"fr request {i}", "AB"[i % 2], group="FR") for i in range(40)]
    return records + [ClassifyRecord(f"de request {i}", "AB"[i % 2], group="DE") for i in range(4)]


@pytest.mark.parametrize("seed", range(4))
def test_every_group_gets_its_share_of_the_recent_slice(seed):
    train, validation, recent = split_new(_grouped(), recent_share=0.5, validation_size=0.1, seed=seed)
    by_group = Counter(r.group for r in recent)
    assert by_group == {"FR": 20, "DE": 2}, by_group
    # Within the small group, each label its share too.
    assert Counter(r.label for r in recent if r.group == "DE") == {"A": 1, "B": 1}


def test_the_split_depends_on_the_seed_not_on_the_order_of_the_records():
    records = _near_copies() + _grouped()
    first = split_new(records, recent_share=0.5, validation_size=0.1, seed=3)
    again = split_new(list(records), recent_share=0.5, validation_size=0.1, seed=3)
    assert first == again
    shuffled = list(records)
    random.Random(7).shuffle(shuffled)
    reordered = split_new(shuffled, recent_share=0.5, validation_size=0.1, seed=3)
    assert [sorted(r.id for r in side) for side in reordered] == [sorted(r.id for r in side) for side in first]
    other = split_new(records, recent_share=0.5, validation_size=0.1, seed=4)
    assert sorted(r.id for r in other[2]) != sorted(r.id for r in first[2])


def test_each_label_keeps_its_share_and_a_label_of_two_inputs_is_in_the_recent_slice():
    """The contract kept from before: the slice is a share of each label, and a label with two inputs is in it (its
    last input trains, so the challenger can learn it); a label with one input only trains."""
    records = [ClassifyRecord(f"billing question {i}", "A") for i in range(30)]
    records += [ClassifyRecord(f"login question {i}", "B") for i in range(10)]
    records += [ClassifyRecord("paris capital one", "C"), ClassifyRecord("paris capital two", "C"), ClassifyRecord("lonely", "D")]
    train, validation, recent = split_new(records, recent_share=0.5, validation_size=0.1, seed=0)
    shares = Counter(r.label for r in recent)
    assert abs(shares["A"] - 15) <= 1 and abs(shares["B"] - 5) <= 1 and shares["C"] == 1 and shares["D"] == 0, shares
    assert {"A", "B", "C", "D"} <= {r.label for r in train}


def test_a_retrain_never_trains_on_a_near_copy_of_a_recent_test_row(tmp_path, tiny_model_dir):
    from tests.unit.tasks.test_retrain import _router_v1, _write

    from tunelab.tasks.retrain import retrain

    runs, registry_path, champion = _router_v1(tmp_path, tiny_model_dir)
    new = _write(tmp_path / "new.jsonl", [{"text": r.text, "label": r.label} for r in _near_copies()])
    outcome = retrain(champion.registry_id, [new], registry_path=registry_path, promote=False)
    folder = runs / "retrain-data" / outcome.challenger["name"]

    def keys(name):
        return {input_key(ClassifyRecord(json.loads(line)["text"], "x")) for line in (folder / name).read_text().splitlines()}

    recent = {input_key(r) for r in _near_copies()} & keys("test.jsonl")
    assert len(recent) == outcome.sizes["recent_test"] // 2 > 0  # both copies of each recent request, no other
    assert not recent & keys("train.jsonl") and not recent & keys("validation.jsonl")
