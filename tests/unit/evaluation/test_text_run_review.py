"""A text run read and judged by people: continuation samples beside perplexity, the blind sheet made of them, its
score, the judge's question about the author's voice, and their time in the estimate."""

import csv
import json

import pytest

from tunelab.config import DataConfig, EvalConfig, parse_config
from tunelab.data.records import TextRecord
from tunelab.errors import DataError
from tunelab.evaluation.evaluate import evaluate
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import export_review, load_sheet, score_review
from tunelab.models.loader import LoadedModel
from tunelab.models.resolve import ModelSource
from tunelab.runs import RunFolder

LOG = [
    "Wind from the north-west, strong. The lamp was lit at dusk and trimmed twice before midnight. A schooner passed "
    "close to the reef at four bells and showed no light. I signalled her and she answered late. Rain after two.",
    "Calm sea all day. Painted the rail of the gallery and mended the oil store door, which the gale had loosened. "
    "The supply boat did not come. We have oil for eleven nights more if the weather holds as it is.",
    "Fog since morning, thick as wool. Sounded the horn every two minutes from six until the light came back. "
    "Heard a steamer's whistle to the south but saw nothing of her. My hands are stiff with the cold tonight.",
    "Clear and cold. Counted the gulls on the north rock, more than forty. The keeper's wife sent bread across with "
    "the boy. Wrote to the board about the cracked pane in the lantern; it lets in the spray when the wind is east.",
]


def _documents():
    return [TextRecord(text, source=f"log.jsonl:{i + 1}") for i, text in enumerate(LOG)]


def _loaded(tiny_tokenizer, seed, name, sharpness=1.0):
    from tests.conftest import build_tiny_model

    model = build_tiny_model(len(tiny_tokenizer), seed=seed)
    # A random tiny model's next-token distribution is near uniform: two of them sampled with one seed write the same
    # tokens. Scaling the (tied) embeddings sharpens the "tuned" one, so the two models' continuations differ.
    model.get_input_embeddings().weight.data *= sharpness
    return LoadedModel(model, tiny_tokenizer, ModelSource("folder", f"/{name}", name))


def _evaluations(tiny_tokenizer, **settings):
    # Sampled: greedy, a random tiny model with tied embeddings repeats its last token, and the two models agree.
    config = EvalConfig(**{"text_samples": 3, "max_new_tokens": 12, "temperature": 1.0, **settings})
    data = DataConfig(max_length=64)
    base = evaluate(_loaded(tiny_tokenizer, 0, "base"), _documents(), "text", config=config, data_config=data, baseline=True)
    tuned = evaluate(_loaded(tiny_tokenizer, 1, "tuned", sharpness=20.0), _documents(), "text", config=config, data_config=data)
    return base, tuned


def test_a_text_evaluation_keeps_continuations_of_the_same_openings_for_base_and_tuned(tiny_tokenizer):
    base, tuned = _evaluations(tiny_tokenizer)
    assert len(base.samples) == len(tuned.samples) == 3
    assert [(s["id"], s["prompt"], s["reference"]) for s in base.samples] == [(s["id"], s["prompt"], s["reference"]) for s in tuned.samples]
    texts = {record.id: record.text for record in _documents()}
    for sample in tuned.samples:
        document = texts[sample["id"]]
        # The opening is the document's start, cut at a sentence end; the reference is what the author wrote next.
        assert document.startswith(sample["prompt"]) and sample["prompt"].endswith(".")
        assert document[len(sample["prompt"]):].strip().startswith(sample["reference"])
        assert sample["reference"] and sample["prediction"]
    assert [s["prediction"] for s in base.samples] != [s["prediction"] for s in tuned.samples]
    # Perplexity is scored as before, over every document.
    assert tuned.n == 4 and [row["prediction"] for row in tuned.rows] == [""] * 4


def test_a_text_review_sheet_is_the_samples_and_scores_back(tiny_tokenizer, tmp_path):
    base, tuned = _evaluations(tiny_tokenizer)
    sheet, key = export_review(base, tuned, tmp_path / "review.csv", seed=2)
    with sheet.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", "prompt", "output_a", "output_b", "reference", "preference"]
    samples = {s["id"]: s for s in tuned.samples}
    base_samples = {s["id"]: s for s in base.samples}
    assert sorted(row["id"] for row in rows) == sorted(samples)
    sides = json.loads(key.read_text())["sides"]
    for row in rows:
        assert row["prompt"] == samples[row["id"]]["prompt"] and row["reference"] == samples[row["id"]]["reference"]
        by_side = {sides[row["id"]]["A"]: row["output_a"], sides[row["id"]]["B"]: row["output_b"]}
        assert by_side == {"tuned": samples[row["id"]]["prediction"], "base": base_samples[row["id"]]["prediction"]}
    assert load_sheet(sheet).task == "text" and load_sheet(sheet).rows[0]["reference"]
    # The reviewer finds the tuned continuation closer to the author on every row but one, which is a tie.
    for index, row in enumerate(rows):
        row["preference"] = "tie" if index == 0 else next(side for side, model in sides[row["id"]].items() if model == "tuned")
    with sheet.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    score = score_review(sheet)
    assert (score.judged, score.tuned_wins, score.ties) == (3, 2, 1)
    assert score.win_rate == pytest.approx(2.5 / 3)


def test_no_samples_when_text_samples_is_0_and_the_export_says_why(tiny_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    base, tuned = _evaluations(tiny_tokenizer, text_samples=0)
    assert base.samples == tuned.samples == []
    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    run = tmp_path / "run"
    base.save(RunFolder(run).baseline_eval("base"))
    tuned.save(RunFolder(run).tuned_eval)
    result = CliRunner().invoke(app, ["review", "export", str(run)])
    assert isinstance(result.exception, DataError)
    assert "eval.text_samples" in str(result.exception) and "\n" not in str(result.exception)
    # An evaluation written before samples were kept says so too.
    older = EvalResult.from_dict({key: value for key, value in tuned.to_dict().items() if key != "samples"})
    with pytest.raises(DataError, match="no continuation samples"):
        export_review(older, older, tmp_path / "older.csv")


def test_text_samples_follow_the_runs_decoding_and_its_seed(tiny_tokenizer):
    greedy = _evaluations(tiny_tokenizer, temperature=0.0)[0]
    sampled = _evaluations(tiny_tokenizer, temperature=1.0, top_p=0.95, seed=7)[0]
    again = _evaluations(tiny_tokenizer, temperature=1.0, top_p=0.95, seed=7)[0]
    assert [s["prediction"] for s in sampled.samples] == [s["prediction"] for s in again.samples]
    assert [s["prediction"] for s in sampled.samples] != [s["prediction"] for s in greedy.samples]
    assert sampled.settings["samples"]["temperature"] == 1.0


def test_the_judge_asks_a_text_row_about_the_authors_voice(tiny_tokenizer):
    from tunelab.evaluation.judge import JUDGE_PROMPT, judge_conversation

    chat = judge_conversation("The lamp was lit.", "It burned low.", "Cheap flights now.", reference="Rain after two.", task="text")
    content = chat[0]["content"]
    assert "author" in content and "Rain after two." in content and "The lamp was lit." in content
    assert content != JUDGE_PROMPT.format(question="The lamp was lit.", answer_a="It burned low.", answer_b="Cheap flights now.")
    # An sft row is asked as before, to the character.
    assert judge_conversation("q", "a", "b")[0]["content"] == JUDGE_PROMPT.format(question="q", answer_a="a", answer_b="b")


def test_the_estimate_of_a_text_run_prices_its_continuation_samples():
    from tests.unit.test_estimate import FACTS, PRICES, _generation_calibration

    from tunelab.estimate import estimate_run

    config = parse_config({"task": "text", "model": "tiny", "eval": {"max_new_tokens": 10, "batch_size": 2}})
    calibration = _generation_calibration()
    common = {"test_token_counts": [64, 64, 64], "calibration": calibration, "prices": PRICES}
    without = estimate_run(config, [64] * 4, FACTS, **common)
    sampled = estimate_run(config, [64] * 4, FACTS, test_prompt_token_counts=[40, 41, 42], **common)
    assert sampled.seconds["eval"] > without.seconds["eval"]
    assert sampled.seconds["baseline"] > without.seconds["baseline"]


def _text_run(tiny_tokenizer, tmp_path):
    from tunelab.registry import Registry

    base, tuned = _evaluations(tiny_tokenizer)
    run_dir = tmp_path / "runs" / "keeper"
    base.save(RunFolder(run_dir).baseline_eval("base"))
    tuned.save(RunFolder(run_dir).tuned_eval)
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="keeper", task="text", run_dir=str(run_dir))
    return registry, tuned


def test_the_review_page_asks_about_the_voice_and_shows_the_authors_continuation(tiny_tokenizer, tmp_path):
    from tunelab.ui.views import review_state

    registry, tuned = _text_run(tiny_tokenizer, tmp_path)
    state = review_state(registry, "keeper", "ann")
    assert state["question"] == "Which continuation is closer to the author's voice?"
    assert state["total"] == 3
    sample = next(s for s in tuned.samples if s["id"] == state["next"]["id"])
    assert state["next"]["prompt"] == sample["prompt"] and state["next"]["reference"] == sample["reference"]


class _Judge:
    """A judge client that answers A to every request and keeps what it was asked."""

    def __init__(self):
        from types import SimpleNamespace

        # A judge has a name and an address: the address is named before the rows leave the machine (data.pii).
        self.endpoint = SimpleNamespace(name="judge-model", base_url="http://127.0.0.1:9/v1")
        self.asked = []

    def estimate(self, conversations, **options):
        from types import SimpleNamespace

        return SimpleNamespace(refuse_over=lambda *args: None)

    def chat_many(self, conversations, **options):
        from types import SimpleNamespace

        self.asked += conversations
        return [SimpleNamespace(error=None, text="A") for _ in conversations]

    def usage(self, answers):
        return None


def test_the_judge_of_a_text_run_is_asked_about_the_voice_with_the_authors_continuation(tiny_tokenizer, tmp_path):
    from tunelab.evaluation.judge import judge_run

    registry, tuned = _text_run(tiny_tokenizer, tmp_path)
    judge = _Judge()
    outcome = judge_run(registry, "keeper", judge)
    assert outcome.judged == 3 and outcome.position_disagreements == 3  # "A" in both orders: a tie, by position
    references = {s["reference"] for s in tuned.samples}
    for chat in judge.asked:
        content = chat[0]["content"]
        assert "closer to the author's voice" in content
        assert any(f"[The author's own continuation]\n{reference}\n" in content for reference in references)


def test_the_estimate_counts_the_openings_evaluation_continues(tiny_tokenizer):
    from tunelab.data.split import Split
    from tunelab.estimate import count_tokens
    from tunelab.inference import completion_prompt, text_openings

    documents = _documents()
    config = parse_config({"task": "text", "model": "tiny", "data": {"max_length": 64}, "eval": {"text_samples": 2, "max_new_tokens": 12}})
    counts = count_tokens(config, Split("text", documents, [], documents), tiny_tokenizer)
    openings = text_openings(documents, tiny_tokenizer, 2, 0, 12)
    assert counts.test_prompts == [len(completion_prompt(tiny_tokenizer, o.opening).ids) for o in openings] and len(openings) == 2
    none = parse_config({"task": "text", "model": "tiny", "eval": {"text_samples": 0}})
    assert count_tokens(none, Split("text", documents, [], documents), tiny_tokenizer).test_prompts == []


def test_a_context_too_short_for_the_samples_still_scores_perplexity_and_says_why(tiny_tokenizer, tmp_path):
    from tests.conftest import build_tiny_gpt2

    # eval.max_new_tokens (128) fills a 32-position model's context: the samples cannot be written, perplexity can.
    small = LoadedModel(build_tiny_gpt2(len(tiny_tokenizer), 32), tiny_tokenizer, ModelSource("folder", "/small", "small"))
    result = evaluate(small, _documents(), "text", config=EvalConfig(text_samples=2), data_config=DataConfig(max_length=32))
    assert result.metrics["perplexity"] > 0 and result.samples == []
    assert any("no continuation samples" in warning and "eval.max_new_tokens" in warning for warning in result.warnings)
    with pytest.raises(DataError, match="eval.max_new_tokens"):
        export_review(result, result, tmp_path / "review.csv")


def test_the_run_page_offers_the_review_of_a_text_run_with_samples(tiny_tokenizer, tmp_path):
    from tunelab.ui.views import run_files

    registry, tuned = _text_run(tiny_tokenizer, tmp_path)
    assert run_files(registry.get_run("keeper"))["review"]
    EvalResult.from_dict({**tuned.to_dict(), "samples": []}).save(RunFolder(tmp_path / "runs" / "keeper").tuned_eval)
    assert not run_files(registry.get_run("keeper"))["review"]


def test_review_export_of_a_text_run_names_the_question_and_tunelab_config_documents_the_key(tiny_tokenizer, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    _text_run(tiny_tokenizer, tmp_path)
    runner = CliRunner()
    exported = runner.invoke(app, ["review", "export", str(tmp_path / "runs" / "keeper")])
    assert exported.exit_code == 0, exported.output
    assert "Which continuation is closer to the author's voice?" in " ".join(exported.output.split())
    documented = runner.invoke(app, ["config", "--json"])
    keys = {row["key"]: row for row in json.loads(documented.output)}
    assert str(keys["eval.text_samples"]["default"]) == "16" and "0: none" in keys["eval.text_samples"]["description"]
