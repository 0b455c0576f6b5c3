"""`tunelab promote` of a run whose stored test perplexity is not a number (a NaN NLL from a model overflowing): refused
in one line saying why, not as "may be worse ... difference +nan (95% CI +nan to +nan)"; and a text evaluation scored
by the old rule (the first token unpredicted, the EOS predicted) is never compared with one scored by the new."""

from __future__ import annotations

import math

import pytest
from typer.testing import CliRunner

from tunelab.errors import TunelabError
from tunelab.registry.store import Registry
from tunelab.runs import RunFolder


def _cli(*args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _text_evaluation(folder, perplexity: float, *, broken: int = 0, settings=None) -> None:
    from tunelab.evaluation.result import EvalResult

    rows = [{"id": f"d{i}", "reference": "", "prediction": "",
             "scores": {"nll": float("nan") if i < broken else 50 * math.log(perplexity) + 5 * math.sin(i), "tokens": 50.0, "bytes": 200.0}}
            for i in range(100)]
    EvalResult("text", "tuned", 100, {"perplexity": perplexity}, rows, settings=settings or {}, test_fingerprint="docs-v1").save(
        RunFolder(folder).tuned_eval)


@pytest.fixture
def text_runs(tmp_path, tiny_model_dir, tiny_tokenizer):
    from tests.unit.serve.conftest import write_fake_run

    store = Registry(tmp_path / "registry.db")
    folders = {name: write_fake_run(tmp_path / name, tiny_model_dir, tiny_tokenizer, seed=30 + i, task="text") for i, name in enumerate(("lm-v1", "lm-v2"))}
    ids = {name: store.create_run(name=name, task="text", status="finished", run_dir=str(folder)).id for name, folder in folders.items()}
    _text_evaluation(folders["lm-v1"], 12.3, settings={"text_scoring": 2})
    assert _cli("promote", "lm", "lm-v1", "--registry", store.path).exit_code == 0
    return store, ids, folders


def test_a_run_whose_perplexity_is_not_a_number_is_refused_saying_so(text_runs):
    store, ids, folders = text_runs
    _text_evaluation(folders["lm-v2"], 10.0, broken=3, settings={"text_scoring": 2})
    refused = _cli("promote", "lm", "lm-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    message = refused.exception.message
    assert "cannot be judged" in message and "3 of 100 examples' scores are NaN" in message and "nan" not in message.replace("NaN", ""), message
    assert store.alias("lm") == ids["lm-v1"]


def test_a_run_scored_by_the_old_text_rule_is_not_compared_with_one_scored_by_the_new(text_runs):
    store, ids, folders = text_runs
    _text_evaluation(folders["lm-v2"], 10.0)  # no text_scoring: written before the rule was recorded
    refused = _cli("promote", "lm", "lm-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    assert "scored by different rules" in refused.exception.message, refused.exception.message
    assert store.alias("lm") == ids["lm-v1"]
