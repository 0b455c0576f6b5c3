"""``tunelab data check --suspect-labels``: confident learning's rule, the flipped rows it finds, and what it says when it cannot."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from tunelab.data.records import ClassifyRecord
from tunelab.errors import ConfigError
from tunelab.evaluation.baselines import find_suspect_labels
from tunelab.evaluation.suspects import confident_suspects

REQUESTS = {
    "billing": [
        "I was charged twice for the same order", "my invoice shows the wrong amount", "please refund the extra fee on my card",
        "why was my credit card billed again this month", "the payment went through two times", "the receipt total does not match what I paid",
        "I got charged after I cancelled my subscription", "there is a charge on my statement I do not recognise",
        "can I get an invoice with my company's VAT number", "the discount code was not applied to my bill",
        "you took money from my account without asking", "how do I update the card you bill me on",
    ],
    "shipping": [
        "my parcel has not arrived yet", "the courier lost my package", "where is my delivery, it is a week late",
        "tracking says delivered but nothing came", "can you ship to a PO box", "how long does express delivery take",
        "the tracking number does not work", "my order is stuck in customs", "the driver left the box in the rain",
        "can I change the delivery address of my order", "do you ship to Canada", "the package was sent to my old address",
    ],
    "technical": [
        "the app crashes when I open it", "the website shows an error 500", "the page never finishes loading",
        "the mobile app freezes on the start screen", "images do not load on the product page", "the checkout button does nothing",
        "the app drains my phone battery", "I get a blank white screen in Safari", "notifications stopped working after the update",
        "the search bar returns no results", "the site is very slow today", "the app keeps logging me out by itself",
    ],
    "account": [
        "how do I change my email address", "please delete my account and my data", "I want to change my username",
        "how do I turn on two-factor authentication", "can I merge my two accounts", "I forgot my password",
        "how do I update my phone number on my profile", "someone else signed into my account", "I want to close my account",
        "how can I download all my personal data", "change the name on my profile", "I never got the verification email for sign up",
    ],
    "returns": [
        "I want to return these shoes", "how do I send back a damaged item", "the jacket does not fit, can I exchange it",
        "where is the return label", "how long do I have to return an item", "I returned the item but got no refund yet",
        "can I return something I bought on sale", "the blender arrived broken, I want a replacement", "do I pay for return shipping",
        "I received the wrong colour and want to swap it", "can I return a gift without the receipt", "the return window closed yesterday, can I still return it",
    ],
    "product": [
        "is this sofa available in green", "what are the dimensions of the oak table", "is the kettle dishwasher safe",
        "does the lamp come with a bulb", "what material is the rug made of", "will the black chair be back in stock",
        "is this mattress good for back pain", "does the phone case fit the new model", "are the mugs microwave safe",
        "how many watts is the blender", "is the desk easy to assemble", "does the coat have a hood",
    ],
}
# Three rows filed under the wrong category, by hand: (true label, index) -> the label written.
FLIPPED = {("billing", 0): "shipping", ("shipping", 1): "returns", ("product", 3): "technical"}


def _rows():
    rows = []
    for label, texts in REQUESTS.items():
        for index, text in enumerate(texts):
            rows.append({"text": text, "label": FLIPPED.get((label, index), label)})
    return rows


def _flipped_lines():
    texts = {REQUESTS[label][index] for label, index in FLIPPED}
    return {line for line, row in enumerate(_rows(), start=1) if row["text"] in texts}


def _cli(args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, args)


@pytest.fixture(scope="module")
def default_embedder():
    pytest.importorskip("sentence_transformers")
    from tunelab.models.embedding import load_embedding_model, resolve_embedding_model

    try:
        return load_embedding_model(resolve_embedding_model("default"))
    except Exception as error:  # noqa: BLE001
        pytest.skip(f"the default embedding model cannot be loaded here: {error}")


def test_the_rule_is_confident_learnings_as_computed_by_hand():
    probabilities = np.array([
        [0.70, 0.20, 0.10],  # 0: labelled 0, sure of it
        [0.30, 0.60, 0.10],  # 0: 1 is above t1 = (0.8 + 0.35) / 2 = 0.575 and above p0: suspect, suggested 1, margin 0.30
        [0.10, 0.80, 0.10],  # 1
        [0.20, 0.30, 0.50],  # 2
        [0.40, 0.35, 0.25],  # 1: 0 is the most probable, but 0.40 < t0 = (0.7 + 0.3) / 2 = 0.5: not suspect
        [0.55, 0.05, 0.40],  # 2: 0.55 >= t0 and > p2: suspect, suggested 0, margin 0.15
    ])
    assert confident_suspects(probabilities, [0, 0, 1, 2, 1, 2]) == [(1, 1), (5, 0)]
    # Two other classes above their thresholds (t0 = 0.4, t1 = 0.4, t2 = (0.6 + 0.14) / 2 = 0.37): the more probable is suggested.
    probabilities = np.array([[0.40, 0.30, 0.30], [0.30, 0.40, 0.30], [0.20, 0.20, 0.60], [0.41, 0.45, 0.14]])
    assert confident_suspects(probabilities, [0, 1, 2, 2]) == [(3, 1)]


def test_the_flipped_requests_are_found_and_few_clean_ones_flagged(default_embedder):
    records = [ClassifyRecord(row["text"], row["label"], source=f"train.jsonl:{line}") for line, row in enumerate(_rows(), start=1)]
    steps = {"expected": 0, "done": 0}

    class Count:
        def expect(self, n):
            steps["expected"] += n

        def __call__(self, n):
            steps["done"] += n

    report = find_suspect_labels(records, seed=0, progress=Count())
    assert report.skipped is None and report.checked == 72 and report.left_out == []
    found = {int(s.source.rsplit(":", 1)[1]) for s in report.suspects}
    assert _flipped_lines() <= found, [(s.source, s.text, s.given, s.suggested) for s in report.suspects]
    assert len(found - _flipped_lines()) <= 4
    by_line = {int(s.source.rsplit(":", 1)[1]): s for s in report.suspects}
    for (label, index), written in FLIPPED.items():
        suspect = next(s for line, s in by_line.items() if s.text == REQUESTS[label][index])
        assert suspect.given == written and suspect.suggested == label and suspect.p_suggested > suspect.p_given
    assert steps["done"] == steps["expected"] > 72  # texts embedded, then the classifiers fitted


def test_json_lists_the_suspects_and_the_exit_code_stays_0(tmp_path, default_embedder):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--suspect-labels", "--max-suspects", "2", "--json"])
    assert result.exit_code == 0, result.output
    suspects = json.loads(result.output)["suspect_labels"]
    assert set(suspects) == {"records", "checked", "count", "share", "suspects", "left_out", "skipped", "weak", "model", "settings"}
    assert suspects["records"] == suspects["checked"] == 72 and suspects["count"] >= 3 and len(suspects["suspects"]) == 2
    assert suspects["share"] == pytest.approx(suspects["count"] / 72) and suspects["skipped"] is None and suspects["weak"] is None
    first = suspects["suspects"][0]
    assert set(first) == {"source", "text", "given", "suggested", "p_given", "p_suggested", "margin"}
    assert first["source"].startswith(f"{path}:") and first["margin"] >= suspects["suspects"][1]["margin"]
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--suspect-labels"])
    assert result.exit_code == 0 and "Suspect labels" in result.output and "not errors" in result.output
    assert f"{suspects['count']} of 72 records" in result.output


def test_an_unavailable_embedding_model_is_one_line_and_too_little_data_is_said(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    missing = tmp_path / "no-such-model"
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--suspect-labels", "--embedding-model", str(missing)])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if "suspect labels not checked" in line)
    assert "the embedding model is unavailable" in line and "no-such-model" in result.output
    assert json.loads(_cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--suspect-labels", "--embedding-model",
                            str(missing), "--json"]).output)["suspect_labels"]["skipped"].startswith("the embedding model is unavailable")

    records = [ClassifyRecord("a", "x"), ClassifyRecord("b", "x"), ClassifyRecord("c", "y"), ClassifyRecord("d", "z")]
    report = find_suspect_labels(records)
    assert report.skipped.startswith("too little to check") and report.left_out == ["y", "z"] and report.checked == 0


def test_suspect_labels_is_refused_for_other_tasks_in_one_line(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps({"prompt": "q", "completion": "a"}) + "\n")
    result = _cli(["data", "check", str(path), "--task", "sft", "--no-tokens", "--suspect-labels"])
    # cli/main prints a ConfigError as one line and exits 2
    assert isinstance(result.exception, ConfigError) and "--suspect-labels" in str(result.exception), repr(result.exception)


def test_few_examples_per_label_are_said_to_give_weak_hints(tmp_path, monkeypatch):
    # 13 records with 7 labels flagged 46 % of the rows with 2 folds: a classifier that saw one example of a label
    # says little about a row of it. The list stays; a line and a JSON field say how weak it is. No embedding model
    # is needed to show it: each text's features are random.
    from tunelab.evaluation import baselines as B
    from tunelab.models import embedding

    monkeypatch.setattr(B, "load_embedder", lambda config, allow_network: (None, type("Source", (), {"display_name": "fake"})()))
    monkeypatch.setattr(embedding, "embed_texts", lambda model, texts, progress=None: np.random.default_rng(0).normal(size=(len(texts), 8)))
    labels = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f", "g"]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": f"request {i}", "label": label}) + "\n" for i, label in enumerate(labels)))
    report = find_suspect_labels([ClassifyRecord(f"request {i}", label) for i, label in enumerate(labels)])
    assert report.skipped is None and report.checked == 12
    assert report.weak == "few examples per label (median 2, fewer than 5): treat these as weak hints"
    shown = json.loads(_cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--suspect-labels", "--json"]).output)
    assert shown["suspect_labels"]["weak"] == report.weak and shown["suspect_labels"]["count"] == len(report.suspects)
    result = _cli(["data", "check", str(path), "--task", "classify", "--no-tokens", "--suspect-labels"])
    assert result.exit_code == 0 and report.weak in " ".join(result.output.split()), result.output
    assert "Suspect labels" in result.output
    many = [label for label in "abc" for _ in range(5)]
    assert find_suspect_labels([ClassifyRecord(f"request {i}", label) for i, label in enumerate(many)]).weak is None


def test_the_run_warning_names_the_training_file_once():
    # On the quickstart the top 3 were three "/abs/path/train.jsonl:N" in one 80-column warning of 8 lines: the file
    # is said once, then the lines. Rows from several files keep their own file:line.
    from tunelab.evaluation.suspects import Suspect, SuspectReport, run_warning

    def report(sources):
        return SuspectReport(records=320, checked=320, suspects=[
            Suspect(source, "text", given, suggested, 0.2, 0.7)
            for source, (given, suggested) in zip(sources, [("returns", "order_change"), ("order_change", "billing")], strict=True)])

    one_file = run_warning(report(["/data/shop/train.jsonl:154", "/data/shop/train.jsonl:228"]), "runs/r/suspect_labels.json")
    assert one_file.count("/data/shop/train.jsonl") == 1, one_file
    assert "/data/shop/train.jsonl: line 154 returns → order_change; line 228 order_change → billing; every one in" in one_file
    two_files = run_warning(report(["/data/a.jsonl:154", "/data/b.jsonl:2"]), "runs/r/suspect_labels.json")
    assert "/data/a.jsonl:154 returns → order_change; /data/b.jsonl:2 order_change → billing; every one in" in two_files


def test_the_report_says_its_rows_are_the_most_doubtful_of_all(tmp_path):
    # report.md showed 5 rows under "8 of 320 training rows ... have a label ... doubts" without saying which 5.
    from tunelab.evaluation.report import SUSPECTS_SHOWN, suspect_summary
    from tunelab.evaluation.suspects import Suspect, SuspectReport
    from tunelab.runs import RunFolder

    def report(count):
        return SuspectReport(records=320, checked=320, suspects=[Suspect(f"t:{i}", "text", "a", "b", 0.1, 0.8) for i in range(count)])

    line = suspect_summary(RunFolder(tmp_path), report(8))
    assert f"the {SUSPECTS_SHOWN} most doubtful of the 8" in line, line
    assert "most doubtful" not in suspect_summary(RunFolder(tmp_path), report(SUSPECTS_SHOWN)), "all are shown"
