"""Near-copies across the split (``data.near_copies``): a test request that differs from a training one by a word and a
number is said by ``tunelab data check --test`` and by ``tunelab run``'s split step; unrelated requests are not, and
identical-normalized ones are left to the exact leakage rule."""

import json

import pytest
from typer.testing import CliRunner

from tunelab.config import DataConfig, parse_config
from tunelab.data.check import check_data
from tunelab.data.near_copies import NEAR_COPY_THRESHOLD, find_near_copies
from tunelab.data.records import ClassifyRecord, PreferenceRecord, SFTRecord, TextRecord

TRAIN = [
    "I want to cancel order 1234",
    "Where is my parcel? It has been two weeks",
    "The app crashes when I open the camera",
    "Do the cotton tea towels shrink in the wash?",
    "How do I change the email address on my account?",
    "Can I pay with a gift card?",
]


def _records(texts, name):
    return [ClassifyRecord(text, "ab"[i % 2], f"{name}:{i + 1}") for i, text in enumerate(texts)]


def _write(path, texts):
    path.write_text("".join(json.dumps({"text": text, "label": "ab"[i % 2]}) + "\n" for i, text in enumerate(texts)))
    return path


def test_a_request_differing_by_a_word_and_a_number_is_found():
    test = _records(["i want to cancel my order 5678", "Is there a discount for students?"], "test.jsonl")
    found = find_near_copies(test, _records(TRAIN, "train.jsonl"))
    assert found.compared == 2 and found.count == 1
    (pair,) = found.pairs
    assert (pair.test, pair.train) == ("test.jsonl:1", "train.jsonl:1") and pair.similarity >= NEAR_COPY_THRESHOLD
    assert "1 of 2 test examples" in found.warning() and "test.jsonl:1 ≈ train.jsonl:1" in found.warning()


def test_unrelated_requests_are_not_near_copies():
    test = _records(["Is there a discount for students?", "My coffee grinder arrived broken", "What are your opening hours?"], "t")
    found = find_near_copies(test, _records(TRAIN, "train.jsonl"))
    assert (found.count, found.pairs, found.warning()) == (0, [], None)


def test_identical_normalized_inputs_are_left_to_the_leakage_rule():
    # The same request but for case and punctuation: exact leakage, counted there and not a second time here.
    test = _records(["i want to cancel ORDER 1234!!", "Where is my parcel?? it has been two weeks."], "t")
    assert find_near_copies(test, _records(TRAIN, "train.jsonl")).count == 0


@pytest.mark.parametrize("texts", [["", " "], ["a", "?"], ["x"]])
def test_empty_and_short_texts_do_not_crash(texts):
    found = find_near_copies(_records(texts, "t"), _records(["", "b", *TRAIN], "train"))
    assert found.compared == len(texts)
    assert find_near_copies(_records(texts, "t"), _records(["", "!"], "train")).count == 0  # no n-gram anywhere
    assert find_near_copies(_records(texts, "t"), []).count == 0


def test_what_is_compared_per_task():
    def sft(prompt, answer="ok"):
        return SFTRecord(({"role": "system", "content": "You are a shop's assistant."}, {"role": "user", "content": prompt},
                          {"role": "assistant", "content": answer}), source=prompt)

    # sft: the request (the last user turn); a shared system prompt would make every pair alike.
    found = find_near_copies([sft("please cancel order 77"), sft("what is the weather")], [sft("cancel order 123 please")])
    assert [pair.test for pair in found.pairs] == ["please cancel order 77"]
    preference = PreferenceRecord(({"role": "user", "content": "cancel my order 5 please"},), "yes", "no", source="p")
    assert find_near_copies([preference], [PreferenceRecord(({"role": "user", "content": "please cancel my order 6"},), "a", "b")]).count == 1
    assert find_near_copies([TextRecord("a document")], [TextRecord("a document too")]) is None  # documents: not compared


def test_data_check_reports_the_near_copies(tmp_path):
    from tunelab.cli.main import _register_commands, app

    train = _write(tmp_path / "train.jsonl", TRAIN)
    test = _write(tmp_path / "test.jsonl", ["Is there a discount for students?", "i want to cancel my order 5678"])
    report = check_data(str(train), "classify", DataConfig(), test_path=str(test))
    warning = next(w for w in report.warnings if w.startswith("near-copies:"))
    assert f"1 of 2 test examples (50%) have a training example at similarity ≥ {NEAR_COPY_THRESHOLD:g}" in warning
    assert f"{test}:2 ≈ {train}:1" in warning
    _register_commands()
    result = CliRunner().invoke(app, ["data", "check", str(train), "--task", "classify", "--test", str(test), "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)["test"]["near_copies"]
    assert shown["count"] == 1 and shown["pairs"][0]["train"] == f"{train}:1" and shown["threshold"] == NEAR_COPY_THRESHOLD
    result = CliRunner().invoke(app, ["data", "check", str(train), "--task", "classify", "--test", str(test), "--no-tokens"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "1 near-copies of training examples" in result.output and "i want to cancel my order 5678" in result.output


def _twice_each(tmp_path):
    # Forty distinct requests, each written twice with another order number: near-copies, never identical.
    topics = [f"{verb} my {thing}" for verb in ("cancel", "return", "track", "change", "repair")
              for thing in ("kettle", "teapot", "frying pan", "knife set", "toaster", "blender", "oven mitts", "scale")]
    texts = [f"Please {topic}, order {n}" for topic in topics for n in (1000 + len(topic), 2000 + len(topic))]
    return _write(tmp_path / "data.jsonl", texts)


def test_data_split_warns_of_near_copies_as_the_run_does(tmp_path):
    from tunelab.cli.main import _register_commands, app
    from tunelab.data.split import make_split
    from tunelab.tasks.pipeline import near_copy_warning

    path = _twice_each(tmp_path)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(f"task: classify\ndata: {{train: {path}, test_size: 0.25}}\n")
    _register_commands()
    result = CliRunner().invoke(app, ["data", "split", str(config_path), "--json"])
    assert result.exit_code == 0, result.output
    expected = near_copy_warning(make_split(parse_config({"task": "classify", "data": {"train": str(path), "test_size": 0.25}})))
    assert expected and expected in json.loads(result.output)["warnings"]


def test_the_split_step_warns_of_near_copies_and_keeps_the_split(tmp_path, tiny_model_dir):
    from tunelab.data.split import make_split
    from tunelab.tasks import pipeline

    path = _twice_each(tmp_path)
    config = parse_config({"task": "classify", "model": str(tiny_model_dir), "name": "near",
                           "data": {"train": str(path), "test_size": 0.25, "max_length": 64},
                           "train": {"output_dir": str(tmp_path / "runs")}})
    context = pipeline.open_pipeline(config, calibrate=False)
    split = pipeline.split_step(context)
    (warning,) = [message for message in context.warnings if "near-copies:" in message]
    found = find_near_copies(split.test, [*split.train, *split.validation])
    assert found.count > 0 and warning == "split: " + found.warning("test", "training or validation")
    assert f"{found.share:.0%})" in warning and "optimistic" in warning
    assert [r.id for r in split.test] == [r.id for r in make_split(config).test]  # said, never changed


def test_the_quickstart_has_no_near_copies_of_training_requests():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[3] / "examples" / "support-routing"
    report = check_data(str(folder / "train.jsonl"), "classify", DataConfig(), test_path=str(folder / "test.jsonl"))
    assert report.test.near_copies.compared == 80
    assert report.test.near_copies.count == 0, report.test.near_copies.pairs


def test_the_warning_says_near_copies_and_a_reworded_pair_never_reads_as_identical(tmp_path):
    # "near duplicates" is the data check's name for inputs equal once normalized (its Duplicates table); the test
    # requests a word away from a training one are near-copies, as the check's own block and the README call them.
    # A pair that differs by a word has a cosine under 1: printed rounded, it read "(1.00)" as if identical.
    from tunelab.cli.main import _register_commands, app

    long = "The barcode scanner in the app doesn't open the camera when I tap it, and the search bar returns no results"
    train = _write(tmp_path / "train.jsonl", [*TRAIN, long])
    test = _write(tmp_path / "test.jsonl", [long.replace("the", "a", 1)])
    report = check_data(str(train), "classify", DataConfig(), test_path=str(test))
    (pair,) = report.test.near_copies.pairs
    assert 0.995 <= pair.similarity < 1
    (warning,) = [w for w in report.warnings if "similarity ≥" in w]
    assert warning.startswith("near-copies: 1 of 1 test examples") and "near-duplicates" not in warning
    _register_commands()
    result = CliRunner().invoke(app, ["data", "check", str(train), "--task", "classify", "--test", str(test), "--no-tokens"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    assert "(0.99)" in result.output and "(1.00)" not in result.output, result.output  # wrapped at 80 columns


def test_data_check_names_the_near_copy_pairs_once(tmp_path, monkeypatch):
    # The "Test file" block listed the pairs with their texts, then the warning repeated the same pairs. The library's
    # warning (for `tunelab run` and --json) keeps them; the check's screen says them once, in the block.
    from tunelab.cli.common import console
    from tunelab.cli.main import _register_commands, app

    monkeypatch.setattr(console, "width", 400)  # each pair on one line, to be counted

    train = _write(tmp_path / "train.jsonl", TRAIN)
    test = _write(tmp_path / "test.jsonl", ["i want to cancel my order 5678", "The app crashes when I open the camera!!"])
    report = check_data(str(train), "classify", DataConfig(), test_path=str(test))
    assert any(w.startswith("near-copies:") and f"{test}:1 ≈ {train}:1" in w for w in report.warnings)
    _register_commands()
    result = CliRunner().invoke(app, ["data", "check", str(train), "--task", "classify", "--test", str(test), "--no-tokens"],
                                terminal_width=300)
    assert result.exit_code == 0, result.output
    assert result.output.count(f"{test}:1 ≈ {train}:1") == 1, result.output
    assert "near-copies: 1 of 2 test examples" in result.output and "scores on them are optimistic" in result.output, result.output
