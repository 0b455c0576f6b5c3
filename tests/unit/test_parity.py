"""One run, one model: for the same held-out inputs, evaluation's saved predictions, `tunelab generate`, `tunelab serve`
over real HTTP on loopback, the merged export loaded in plain transformers and the GGUF export read back with
transformers give the same answers — per task (classify with out-of-scope, sft, text, preference).

The runs are trained by the pipeline on the tiny model (a few steps of LoRA, each with a system prompt); the
plain-transformers side is what a user does without tunelab: the chat template, a forward pass or greedy
``generate``, the label tokens of labels.json and the threshold of out_of_scope.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tunelab.config import parse_config
from tunelab.data.templates import classify_messages, with_system_prompt
from tunelab.evaluation.result import EvalResult
from tunelab.runs import Run, export_folder, export_gguf
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.adapters import load_registry
from tunelab.tasks.pipeline import run_pipeline

SYSTEM = "You answer for the parity test."
NEW_TOKENS = 8
STOPS = ("<|im_end|>", "<|endoftext|>")  # the chat template's end-of-turn markers: where any reader stops


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _write(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def _train(tmp_path: Path, model_dir: Path, task: str, rows: list[dict], **extra) -> Run:
    data = {"train": _write(tmp_path / f"{task}.jsonl", rows), "test_size": 0.25, "validation_size": 0.2, "max_length": 128,
            "system_prompt": SYSTEM if task != "text" else None, **extra.pop("data", {})}
    config = parse_config({
        "task": task, "model": str(model_dir), "name": f"parity-{task}", "data": data,
        "train": {"lr": 1e-2, "epochs": 6, "batch_size": 8, "precision": "fp32", "output_dir": str(tmp_path / "runs")},
        "eval": {"baselines": [], "max_new_tokens": NEW_TOKENS, "bootstrap_samples": 200, "batch_size": 4}, **extra,
    })
    return Run.open(run_pipeline(config, calibrate=False).run_dir)


def _plain(folder: Path, gguf: Path | None = None):
    """A model folder (or GGUF file) loaded the way a user without tunelab loads it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name} if gguf is not None else {}
    where = str(gguf.parent if gguf is not None else folder)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(where, **kwargs)


def _exports(run: Run, tmp_path: Path) -> dict:
    merged = export_folder(run.root, tmp_path / "merged", merge=True)
    gguf = export_gguf(run.root, tmp_path / "model.gguf").path
    return {"merged": _plain(merged), "gguf": _plain(merged, gguf)}


def _plain_chat(model, tokenizer, messages, name: str) -> str:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    stops = [tokenizer.convert_tokens_to_ids(token) for token in STOPS]
    # The merged folder is read as a user reads it, with no decoding of one's own: its generation_config.json holds the
    # run's (greedy, its stop tokens, its eval.max_new_tokens). The GGUF file leaves that to llama.cpp and its Modelfile.
    told = {} if name == "merged" else {"max_new_tokens": NEW_TOKENS, "do_sample": False, "eos_token_id": stops, "pad_token_id": stops[0]}
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **told)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _generate_cli(run: Run, prompt: str, *extra: str) -> str:
    from tunelab.cli.main import _register_commands, app

    if not any(c.name == "generate" for c in app.registered_commands):
        _register_commands()
    result = CliRunner().invoke(app, ["generate", "--model", str(run.root), "--max-new-tokens", str(NEW_TOKENS), *extra, prompt])
    assert result.exit_code == 0, result.output
    return result.stdout.strip()


class _Server:
    def __init__(self, run: Run):
        self.registry = load_registry(str(run.root))
        self.server = BackgroundServer(create_app(self.registry, ServeSettings(max_tokens_limit=64, log_path=None)), "127.0.0.1", 0)
        self.name = run.name

    def __enter__(self):
        self.client = httpx.Client(base_url=self.server.start(), timeout=120)
        return self

    def __exit__(self, *exc):
        self.client.close()
        self.server.stop()

    def post(self, path: str, body: dict) -> dict:
        response = self.client.post(path, json={"model": self.name, **body})
        assert response.status_code == 200, response.text
        return response.json()


def _held_out(run: Run) -> list[dict]:
    return EvalResult.load(run.folder.tuned_eval).rows


# ------------------------------------------------------------------------------------------ classify


@pytest.mark.parametrize("score", ["probability", "nearest"])
def test_classify_with_out_of_scope_answers_the_same_everywhere(tmp_path, tiny_model_dir, score):
    words = {"billing": ["card", "refund", "invoice", "charge"], "shipping": ["parcel", "delivery", "courier", "tracking"]}
    rows = [{"text": f"my {words[label][i % 4]} {words[label][(i // 4) % 4]} {i}", "label": label}
            for i in range(40) for label in ("billing", "shipping")]
    rows += [{"text": f"poem about the weather {i}", "label": "other"} for i in range(16)]
    run = _train(tmp_path, tiny_model_dir, "classify", rows, data={"out_of_scope_label": "other"}, classify={"out_of_scope_score": score})
    assert run.out_of_scope is not None and run.label_map is not None and run.out_of_scope.score == score
    held = _held_out(run)
    texts = [row["prompt"] for row in held][:8]
    saved = {row["prompt"]: row for row in held}
    long_text = "my card refund invoice charge " * 40  # longer than max_length: shortened the same way everywhere
    from tunelab.data.records import ClassifyRecord
    from tunelab.evaluation.evaluate import evaluate

    evaluated = evaluate(run.load(), [ClassifyRecord(long_text, "billing")], "classify", config=run.config.eval, data_config=run.config.data)
    assert "longer than max_length" in " ".join(evaluated.warnings)
    evaluated_long = evaluated.rows[0]

    generated = {text: _generate_cli(run, text) for text in [*texts, long_text]}
    with _Server(run) as server:
        served = server.post("/v1/classify", {"input": [*texts, long_text]})["data"]
    served = dict(zip([*texts, long_text], served, strict=True))
    exports = _exports(run, tmp_path)
    # The GGUF file answers each label with a token spelled as its name (its trained row moved there): the
    # label's scores are read at the tokens the file names in its metadata; the merged folder keeps the codes.
    from transformers.integrations.gguf import read_gguf_metadata

    from tunelab.models.gguf_export import LABELS_KEY

    answer_ids = {"merged": list(run.label_map.token_ids),
                  "gguf": json.loads(read_gguf_metadata(str(tmp_path / "model.gguf"))[0][LABELS_KEY])["answer_ids"]}
    for text in texts:
        expected = saved[text]
        assert generated[text] == expected["prediction"] == served[text]["label"]
        assert served[text]["probabilities"][served[text]["top_label"]] == pytest.approx(expected["scores"]["confidence"], abs=1e-4)
        assert served[text]["out_of_scope_score"] == pytest.approx(expected["scores"]["out_of_scope_score"], abs=1e-4)
        assert served[text]["out_of_scope_score_kind"] == score
        for name, (model, tokenizer) in exports.items():
            ids = tokenizer.apply_chat_template(classify_messages(text, SYSTEM), add_generation_prompt=True, return_tensors="pt",
                                                return_dict=True)["input_ids"]
            with torch.inference_mode():
                logits = model(ids).logits[0, -1, answer_ids[name]].double()
                state = model.get_decoder()(input_ids=ids).last_hidden_state[0, -1].double().numpy()
            probabilities = torch.softmax(logits, -1).numpy()
            top = run.label_map.labels[int(np.argmax(probabilities))]
            # The rule as a user applies it: the top probability, or the cosine similarity to the nearest of the
            # training requests' states that the export carries (out_of_scope.npy).
            if score == "probability":
                value = float(probabilities.max())
            else:
                reference = np.load(tmp_path / "merged" / "out_of_scope.npy")
                value = float((reference @ (state / np.linalg.norm(state))).max())
            answer = run.out_of_scope.answer(top, value)
            assert answer == expected["prediction"], (name, text)
            tolerance = 1e-4 if name == "merged" else 2e-2  # the GGUF file holds f16 weights
            assert float(probabilities.max()) == pytest.approx(expected["scores"]["confidence"], abs=tolerance), name
    assert generated[long_text] == served[long_text]["label"] == evaluated_long["prediction"]


# ----------------------------------------------------------------------------------------------- sft


def test_sft_answers_the_same_everywhere_with_the_runs_system_prompt(tmp_path, tiny_model_dir):
    capitals = ["Paris", "Rome", "Berlin", "Madrid", "Lisbon", "Vienna", "Athens", "Dublin"]
    rows = [{"prompt": f"Capital number {i} of the list?", "completion": f"It is {capitals[i % 8]}."} for i in range(32)]
    run = _train(tmp_path, tiny_model_dir, "sft", rows)
    held = _held_out(run)[:4]
    exports = _exports(run, tmp_path)
    with _Server(run) as server:
        for row in held:
            expected = row["prediction"]
            assert _generate_cli(run, row["prompt"]) == expected
            # The request brings no system message: the server applies the run's, as evaluation did.
            chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": NEW_TOKENS,
                                                        "temperature": 0})
            assert chat["choices"][0]["message"]["content"].strip() == expected
            messages = with_system_prompt([{"role": "user", "content": row["prompt"]}], SYSTEM)
            for name, (model, tokenizer) in exports.items():
                assert _plain_chat(model, tokenizer, messages, name) == expected, name


# ---------------------------------------------------------------------------------------------- text


def test_text_scores_and_continues_the_same_everywhere(tmp_path, tiny_model_dir):
    rows = [{"text": f"The capital of France is Paris. Line {i} of the corpus says two plus two is four."} for i in range(24)]
    run = _train(tmp_path, tiny_model_dir, "text", rows)
    held = _held_out(run)[:3]
    exports = _exports(run, tmp_path)
    from tunelab.data.records import TextRecord
    from tunelab.data.tokenize import tokenize_text

    for row in held:
        document = row["reference"]  # the held-out document (short: no excerpt cut)
        windows = tokenize_text(TextRecord(document), exports["merged"][1], run.max_length, run.max_length // 2)
        for name, (model, _) in exports.items():
            nll = 0.0
            for window in windows:
                with torch.inference_mode():
                    logits = model(torch.tensor([window.input_ids])).logits[0, :-1].double()
                targets = torch.tensor(window.labels[1:])
                keep = targets != -100
                nll += float(torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            tolerance = 1e-3 if name == "merged" else 2e-2
            assert nll == pytest.approx(row["scores"]["nll"], rel=tolerance), name
    prompt = "The capital of France"
    generated = _generate_cli(run, prompt)
    with _Server(run) as server:
        served = server.post("/v1/completions", {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0})["choices"][0]["text"]
    for name, (model, tokenizer) in exports.items():
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        stops = [tokenizer.convert_tokens_to_ids(token) for token in STOPS]
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=stops,
                                 pad_token_id=stops[0])
        assert tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == generated == served.strip(), name


# ---------------------------------------------------------------------------------------- preference


def test_preference_ranks_and_answers_the_same_everywhere(tmp_path, tiny_model_dir):
    rows = [{"prompt": f"What is {i} plus {i}?", "chosen": f"It is {2 * i}.", "rejected": f"Maybe {i + 3}, no idea."} for i in range(32)]
    run = _train(tmp_path, tiny_model_dir, "preference", rows, preference={"beta": 0.5})
    held = _held_out(run)[:4]
    exports = _exports(run, tmp_path)
    from tunelab.data.split import load_split
    from tunelab.data.tokenize import tokenize_preference

    records = {r.id: r for r in load_split(run.folder.split, run.config).test}
    with _Server(run) as server:
        for row in held:
            # The policy's log-probability of the chosen answer (what the implicit reward is made of), re-read by plain models.
            example = tokenize_preference(records[row["id"]], exports["merged"][1], run.max_length, SYSTEM)
            for name, (model, _) in exports.items():
                with torch.inference_mode():
                    logits = model(torch.tensor([example.chosen_ids])).logits[0, :-1].double()
                targets = torch.tensor(example.chosen_labels[1:])
                keep = targets != -100
                log_prob = -float(torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum"))
                tolerance = 1e-3 if name == "merged" else 2e-2
                assert log_prob == pytest.approx(row["scores"]["chosen_log_prob"], rel=tolerance, abs=1e-3), name
            # Generation: the DPO model answers alike in generate, the server and the exports.
            answer = _generate_cli(run, row["prompt"])
            chat = server.post("/v1/chat/completions", {"messages": [{"role": "user", "content": row["prompt"]}], "max_tokens": NEW_TOKENS,
                                                        "temperature": 0})
            assert chat["choices"][0]["message"]["content"].strip() == answer
            messages = with_system_prompt([{"role": "user", "content": row["prompt"]}], SYSTEM)
            for name, (model, tokenizer) in exports.items():
                assert _plain_chat(model, tokenizer, messages, name) == answer, name
    assert held  # at least one held-out pair was checked
