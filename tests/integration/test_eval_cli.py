"""End to end on the tiny model: eval base and tuned (a saved PEFT adapter), report, review."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.data.labels import build_label_map
from tunelab.errors import DataError

TEXTS = ["my card has not arrived", "refund my money", "cannot login", "billing is wrong", "cancel it", "where is my card", "login fails"]
LABELS = ["billing", "refund", "technical", "billing", "refund", "billing", "technical"]


@pytest.fixture(scope="module")
def cli():
    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    return CliRunner()


def _perturbed_adapter(model_dir, folder):
    """A LoRA adapter of the tiny model at ``folder`` whose weights visibly change its answers, as training would."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(0)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False))
    with torch.no_grad():
        for name, parameter in adapted.named_parameters():
            if "lora_" in name:
                parameter.mul_(20)
    adapted.save_pretrained(folder)


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir, tiny_tokenizer):
    """A classify run folder with a perturbed LoRA adapter on the tiny model."""
    run = tmp_path / "run"
    _perturbed_adapter(tiny_model_dir, run / "adapter")
    (run / "config.yaml").write_text(f"task: classify\nmodel:\n  name: {tiny_model_dir}\neval:\n  bootstrap_samples: 200\n")
    build_label_map(["billing", "refund", "technical"], tiny_tokenizer).save(run / "labels.json")
    lines = [{"step": s, "loss": 2 / s} for s in range(1, 9)] + [{"step": 8, "val_loss": 0.4}]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)))
    return run


def test_eval_base_and_tuned_then_report_and_review(cli, run_dir, tmp_path, tiny_model_dir):
    data = tmp_path / "test.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": label}) for t, label in zip(TEXTS, LABELS, strict=True)))
    base_args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--task", "classify",
                 "--labels", str(run_dir / "labels.json"), "--out", str(run_dir / "eval" / "base.json")]
    result = cli.invoke(app, base_args)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    result = cli.invoke(app, ["eval", "--adapter", str(run_dir), "--data", str(data), "--task", "classify",
                              "--out", str(run_dir / "eval" / "tuned.json"), "--json"])
    assert result.exit_code == 0, result.output
    base = json.loads((run_dir / "eval" / "base.json").read_text())
    tuned = json.loads((run_dir / "eval" / "tuned.json").read_text())
    assert base["baseline"] is True and base["settings"]["prompt"] == "zero_shot"
    assert tuned["baseline"] is False and "adapter on" in tuned["model"]
    assert base["test_fingerprint"] == tuned["test_fingerprint"]
    assert [r["scores"]["confidence"] for r in base["rows"]] != [r["scores"]["confidence"] for r in tuned["rows"]]

    result = cli.invoke(app, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "verdict:" in result.output
    assert (run_dir / "report.md").is_file() and (run_dir / "plots" / "loss.png").is_file()
    assert "data:image/png;base64," in (run_dir / "report.html").read_text()

    result = cli.invoke(app, ["review", "export", str(run_dir), "--seed", "1"])
    assert result.exit_code == 0, result.output
    sheet = run_dir / "review.csv"
    rows = list(csv.DictReader(sheet.open()))
    for row in rows:
        row["preference"] = "tie"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = cli.invoke(app, ["review", "score", str(sheet), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["win_rate"] == pytest.approx(0.5)

    # Ties are no preference: pairs need a decided row; one "A" row (with two different outputs) makes one pair.
    result = cli.invoke(app, ["review", "pairs", str(sheet), "--out", str(tmp_path / "pairs.jsonl")])
    assert isinstance(result.exception, DataError) and "no row prefers A or B" in str(result.exception)
    rows[0]["output_b"] = rows[0]["output_a"] + " (the other answer)"
    rows[0]["preference"] = "A"
    with sheet.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = cli.invoke(app, ["review", "pairs", str(sheet), "--out", str(tmp_path / "pairs.jsonl"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["pairs"] == 1
    pair = json.loads((tmp_path / "pairs.jsonl").read_text())
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == (rows[0]["prompt"], rows[0]["output_a"], rows[0]["output_b"])


def test_user_mistakes_raise_tunelab_errors(cli, tmp_path):
    result = cli.invoke(app, ["report", str(tmp_path)])
    assert isinstance(result.exception, DataError) and "base.json not found" in str(result.exception)
    result = cli.invoke(app, ["review", "score", str(tmp_path / "nope.csv")])
    assert isinstance(result.exception, DataError)


def test_eval_against_baselines_learned_from_train(cli, run_dir, tmp_path):
    data, train = tmp_path / "test.jsonl", tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": label}) for t, label in zip(TEXTS, LABELS, strict=True)))
    rows = [{"text": f"{word} issue {i}", "label": label} for i in range(4)
            for word, label in (("card billing", "billing"), ("refund money", "refund"), ("login fails", "technical"))]
    train.write_text("\n".join(map(json.dumps, rows)))
    out = tmp_path / "eval" / "tuned.json"
    result = cli.invoke(app, ["eval", "--adapter", str(run_dir), "--data", str(data), "--task", "classify", "--train", str(train),
                              "--baselines", "base,classical", "--samples", "200", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert set(printed["baselines"]) == {"base", "classical"}
    assert printed["verdict"]["strongest"] in ("base", "classical") and set(printed["verdict"]["comparisons"]) == {"base", "classical"}
    classical = json.loads((tmp_path / "eval" / "tuned.classical.json").read_text())
    assert classical["baseline_name"] == "classical" and classical["test_fingerprint"] == json.loads(out.read_text())["test_fingerprint"]
    assert (tmp_path / "eval" / "tuned.base.json").is_file()
    # The table form: one column per baseline and the verdict line.
    result = cli.invoke(app, ["eval", "--adapter", str(run_dir), "--data", str(data), "--task", "classify", "--train", str(train),
                              "--baselines", "classical", "--samples", "200"])
    assert result.exit_code == 0, result.output
    assert "classical" in result.output and "verdict:" in result.output
    result = cli.invoke(app, ["eval", "--adapter", str(run_dir), "--data", str(data), "--task", "classify", "--baselines", "classical"])
    assert isinstance(result.exception, DataError) and "--train FILE" in str(result.exception)


def test_eval_of_a_run_uses_its_own_prompt_and_decoding(cli, tmp_path, tiny_model_dir):
    """``tunelab eval --adapter RUN`` scores the run as its pipeline evaluated it (and as it is served): its
    data.system_prompt, max_length and eval decoding, unless an option says otherwise. It used --system's
    default (none), max_length 512 and 128 new tokens: on examples/qa-assistant every one of the 40 answers
    differed from the run's own evaluation (ROUGE-L 0.196 against 0.208)."""

    from tunelab.data.read import load_records
    from tunelab.evaluation.answering import LocalModel
    from tunelab.runs import Run

    run = tmp_path / "sft-run"
    _perturbed_adapter(tiny_model_dir, run / "adapter")
    (run / "config.yaml").write_text(
        f"task: sft\nmodel:\n  name: {tiny_model_dir}\ndata:\n  system_prompt: Answer about the leave policy in one sentence.\n"
        "  max_length: 48\neval:\n  max_new_tokens: 6\n  bootstrap_samples: 200\n"
    )
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"how many days {word}?", "completion": f"{word} days"})
                              for word in ("card", "refund", "login", "billing", "cancel")))
    out = tmp_path / "eval.json"
    result = cli.invoke(app, ["eval", "--adapter", str(run), "--data", str(data), "--task", "sft", "--out", str(out)])
    assert result.exit_code == 0, result.output
    scored = json.loads(out.read_text())
    opened = Run.open(run)
    records = load_records(str(data), "sft", opened.config.data)
    expected = LocalModel(opened.load()).evaluate(records, "sft", config=opened.config.eval, data_config=opened.config.data)
    assert (scored["settings"]["max_length"], scored["settings"]["max_new_tokens"]) == (48, 6)
    assert [row["prediction"] for row in scored["rows"]] == [row["prediction"] for row in expected.rows]
    # An option given still wins over the run's own setting.
    result = cli.invoke(app, ["eval", "--adapter", str(run), "--data", str(data), "--task", "sft", "--max-new-tokens", "3",
                              "--max-length", "40", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (json.loads(out.read_text())["settings"]["max_length"], json.loads(out.read_text())["settings"]["max_new_tokens"]) == (40, 3)
