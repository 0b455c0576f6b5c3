"""`tunelab promote ALIAS RUN` moves a served name only to a run that is not worse than the one it serves: both runs'
stored test evaluations (eval/tuned.json) compared with the paired bootstrap and retrain's non-inferiority margin;
runs judged on different (or unknown) test sets are refused unless --force. The first promotion, the run already
served and `tunelab rollback` are never blocked; the UI's Promote refuses as the CLI does."""

from __future__ import annotations

import math
import shutil

import httpx
import pytest
from tests.unit.serve.conftest import write_fake_evaluation
from typer.testing import CliRunner

from tunelab.errors import TunelabError
from tunelab.registry.store import Registry
from tunelab.runs import RunFolder

N = 200


def _cli(*args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _evaluate(folder, correct: int, *, fingerprint: str = "test-v1") -> None:
    write_fake_evaluation(folder, correct, n=N, fingerprint=fingerprint)


@pytest.fixture
def runs(router_versions, tmp_path):
    """A registry with servable classify runs (copies of the serving tests' LoRA runs, so each test writes its own
    evaluations): v1 served under alias router, v2 and v3 to promote."""
    store = Registry(tmp_path / "registry.db")
    ids, folders = {}, {}
    for name, source in (("router-v1", router_versions[0]), ("router-v2", router_versions[1]), ("router-v3", router_versions[1])):
        folders[name] = tmp_path / name
        shutil.copytree(source, folders[name])
        ids[name] = store.create_run(name=name, task="classify", status="finished", run_dir=str(folders[name])).id
    _evaluate(folders["router-v1"], 180)
    assert _cli("promote", "router", "router-v1", "--registry", store.path).exit_code == 0  # the first promotion: nothing to compare
    return store, ids, folders


def test_a_worse_run_is_refused_in_one_line_with_the_difference_and_its_interval(runs):
    store, ids, folders = runs
    _evaluate(folders["router-v2"], 150)  # 0.90 -> 0.75 on the same 200 rows
    result = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert isinstance(result.exception, TunelabError), (result.output, repr(result.exception))
    message = result.exception.message
    assert "\n" not in message and "router-v2" in message and "router-v1" in message, message
    assert "-0.15" in message and "95% CI" in message and "0.02" in message and "--force" in message, message
    assert store.alias("router") == ids["router-v1"] and len(store.alias_history("router")) == 1


def test_a_run_not_worse_is_promoted_and_the_comparison_printed_and_kept(runs):
    store, ids, folders = runs
    _evaluate(folders["router-v2"], 181)
    result = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert store.alias("router") == ids["router-v2"]
    assert "accuracy" in result.output and "95% CI" in result.output and "+0.005" in result.output, result.output
    details = store.alias_history("router")[-1].details
    assert details["compared_with"] == ids["router-v1"] and not details.get("forced"), details


def test_runs_judged_on_different_test_sets_are_refused_unless_forced(runs):
    store, ids, folders = runs
    _evaluate(folders["router-v2"], 199, fingerprint="test-v2")
    refused = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    message = refused.exception.message
    assert "\n" not in message and "different test sets" in message and "tunelab retrain" in message and "--force" in message, message
    assert store.alias("router") == ids["router-v1"]
    forced = _cli("promote", "router", "router-v2", "--force", "--registry", store.path)
    assert forced.exit_code == 0, (forced.output, repr(forced.exception))
    assert store.alias("router") == ids["router-v2"] and "forced" in forced.output, forced.output
    assert store.alias_history("router")[-1].details["forced"] is True


def test_a_run_without_a_stored_evaluation_is_an_unknown_test_set(runs):
    store, ids, folders = runs
    refused = _cli("promote", "router", "router-v3", "--registry", store.path)  # router-v3 was never evaluated
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    assert "router-v3" in refused.exception.message and "--force" in refused.exception.message, refused.exception.message
    assert store.alias("router") == ids["router-v1"]
    assert _cli("promote", "router", "router-v3", "--force", "--registry", store.path).exit_code == 0
    assert store.alias("router") == ids["router-v3"]


def test_the_run_already_served_and_a_rollback_are_never_blocked(runs):
    store, ids, folders = runs
    (RunFolder(folders["router-v1"]).tuned_eval).unlink()
    assert _cli("promote", "router", "router-v1", "--registry", store.path).exit_code == 0  # the run already served
    _evaluate(folders["router-v2"], 190)
    assert _cli("promote", "router", "router-v2", "--force", "--registry", store.path).exit_code == 0
    back = _cli("rollback", "router", "--registry", store.path)  # back to a run with no evaluation: not compared
    assert back.exit_code == 0, (back.output, repr(back.exception))
    assert store.alias("router") == ids["router-v1"]


def test_the_ui_promote_refuses_a_worse_run_as_the_cli_does(runs):
    from tunelab.serve.server import BackgroundServer
    from tunelab.tasks.retrain import promote_checked
    from tunelab.ui import UISettings, create_app

    store, ids, folders = runs
    _evaluate(folders["router-v2"], 150)
    with pytest.raises(TunelabError) as cli:
        promote_checked(store, "router", ids["router-v2"], reason="check")
    headers = {"X-Tunelab-UI": "1"}
    with BackgroundServer(create_app(UISettings(registry=store.path)), port=0) as url, httpx.Client(base_url=url, timeout=120) as client:
        refused = client.post(f"/api/runs/{ids['router-v2']}/promote", json={"alias": "router"}, headers=headers)
        assert refused.status_code == 400 and refused.json()["error"] == cli.value.message, refused.text
        assert store.alias("router") == ids["router-v1"]
        _evaluate(folders["router-v2"], 185)
        done = client.post(f"/api/runs/{ids['router-v2']}/promote", json={"alias": "router"}, headers=headers)
        assert done.status_code == 200 and store.alias("router") == ids["router-v2"], done.text


def test_a_served_run_gone_from_the_registry_is_not_compared_but_can_be_replaced_with_force(runs):
    store, ids, folders = runs
    store.delete_run(ids["router-v1"])
    _evaluate(folders["router-v2"], 190)
    refused = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    assert ids["router-v1"] in refused.exception.message and "--force" in refused.exception.message, refused.exception.message
    forced = _cli("promote", "router", "router-v2", "--force", "--registry", store.path)
    assert forced.exit_code == 0 and store.alias("router") == ids["router-v2"], (forced.output, repr(forced.exception))


def test_a_comparison_on_too_few_test_examples_is_no_verdict(runs):
    store, ids, folders = runs
    write_fake_evaluation(folders["router-v1"], 18, n=20)
    write_fake_evaluation(folders["router-v2"], 20, n=20)  # better on every row, yet 20 rows show nothing
    refused = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    assert "too few test examples (n=20" in refused.exception.message, refused.exception.message
    assert store.alias("router") == ids["router-v1"]


def _text_evaluation(folder, perplexity: float, *, n: int = N) -> None:
    """A text run's stored test evaluation at about ``perplexity``: 50 tokens a document, the same per-document noise
    for every run, so two runs differ by a constant factor of perplexity on every resample."""
    from tunelab.evaluation.result import EvalResult

    rows = [{"id": f"d{i}", "reference": "", "prediction": "",
             "scores": {"nll": 50 * math.log(perplexity) + 5 * math.sin(i), "tokens": 50.0, "bytes": 200.0}} for i in range(n)]
    EvalResult("text", "tuned", n, {"perplexity": perplexity}, rows, test_fingerprint="docs-v1").save(RunFolder(folder).tuned_eval)


@pytest.fixture
def text_runs(tmp_path, tiny_model_dir, tiny_tokenizer):
    """Two servable text runs, lm-v1 served under alias lm at perplexity 12.3."""
    from tests.unit.serve.conftest import write_fake_run

    store = Registry(tmp_path / "registry.db")
    folders = {name: write_fake_run(tmp_path / name, tiny_model_dir, tiny_tokenizer, seed=20 + i, task="text") for i, name in enumerate(("lm-v1", "lm-v2"))}
    ids = {name: store.create_run(name=name, task="text", status="finished", run_dir=str(folder)).id for name, folder in folders.items()}
    _text_evaluation(folders["lm-v1"], 12.3)
    assert _cli("promote", "lm", "lm-v1", "--registry", store.path).exit_code == 0
    return store, ids, folders


def test_the_margin_on_perplexity_is_relative_to_the_served_runs_value(text_runs):
    store, ids, folders = text_runs
    _text_evaluation(folders["lm-v2"], 13.0)  # 5.7% higher perplexity: beyond 2% of 12.3
    refused = _cli("promote", "lm", "lm-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    assert "perplexity" in refused.exception.message and "2%" in refused.exception.message, refused.exception.message
    _text_evaluation(folders["lm-v2"], 12.4)  # 0.8% higher: within 2%, though 0.1 is far beyond an absolute 0.02
    done = _cli("promote", "lm", "lm-v2", "--registry", store.path)
    assert done.exit_code == 0, (done.output, repr(done.exception))
    assert store.alias("lm") == ids["lm-v2"] and "2%" in done.output, done.output


def test_the_margin_on_accuracy_stays_absolute(runs):
    store, ids, folders = runs
    write_fake_evaluation(folders["router-v1"], 100, n=1000)  # 0.100
    write_fake_evaluation(folders["router-v2"], 99, n=1000)  # 0.099: within 0.02, not within 2% of 0.1
    done = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert done.exit_code == 0, (done.output, repr(done.exception))
    assert store.alias("router") == ids["router-v2"]


def test_promoting_back_a_run_the_alias_served_is_a_rollback_and_never_blocked(runs):
    from tunelab.tasks.retrain import promote

    store, ids, folders = runs
    # A retrain's winner: judged on the fresh test set (old test + recent slice), the alias moved by the retrain.
    _evaluate(folders["router-v2"], 195, fingerprint="test-v1+recent")
    promote(store, "router", ids["router-v2"], reason="retrain: won")
    back = _cli("promote", "router", "router-v1", "--registry", store.path)
    assert back.exit_code == 0, (back.output, repr(back.exception))
    assert store.alias("router") == ids["router-v1"]
    details = store.alias_history("router")[-1].details
    assert details["returned"] is True and not details["forced"] and "served" in details["summary"], details
    # Like a rollback by name, it is undone by the next rollback.
    assert _cli("rollback", "router", "--registry", store.path).exit_code == 0
    assert store.alias("router") == ids["router-v2"]
    # A run the alias never served is judged as before.
    _evaluate(folders["router-v3"], 199, fingerprint="test-v3")
    refused = _cli("promote", "router", "router-v3", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError) and "different test sets" in refused.exception.message


def test_a_return_to_a_worse_earlier_run_shows_the_comparison_and_is_not_refused(runs):
    store, ids, folders = runs
    _evaluate(folders["router-v2"], 199)
    assert _cli("promote", "router", "router-v2", "--registry", store.path).exit_code == 0
    back = _cli("promote", "router", "router-v1", "--registry", store.path)  # 0.995 -> 0.90 on the same rows
    assert back.exit_code == 0, (back.output, repr(back.exception))
    assert store.alias("router") == ids["router-v1"] and "-0.095" in back.output and "served" in back.output, back.output


def test_the_comparison_uses_the_candidates_bootstrap_settings(runs):
    import yaml

    from tunelab.evaluation.compare import compare_evaluations
    from tunelab.evaluation.result import EvalResult

    store, ids, folders = runs
    config_path = RunFolder(folders["router-v2"]).config
    config = yaml.safe_load(config_path.read_text())
    config_path.write_text(yaml.safe_dump(config | {"eval": {"bootstrap_samples": 200, "seed": 7}}))
    _evaluate(folders["router-v2"], 186)
    old, new = (EvalResult.load(RunFolder(folders[name]).tuned_eval) for name in ("router-v1", "router-v2"))
    expected = compare_evaluations(old, new, seed=7, samples=200).metric("accuracy")
    default = compare_evaluations(old, new).metric("accuracy")
    assert (expected.low, expected.high) != (default.low, default.high)  # the settings matter on these rows
    done = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert done.exit_code == 0, (done.output, repr(done.exception))
    details = store.alias_history("router")[-1].details
    assert (details["low"], details["high"], details["samples"], details["seed"]) == (expected.low, expected.high, 200, 7), details


def test_the_alias_history_names_the_runs_and_says_how_each_promotion_was_judged(runs):
    # `tunelab aliases router` printed ids and "manual promote" only: a forced promotion read as a judged one.
    store, ids, folders = runs
    _evaluate(folders["router-v2"], 150)
    assert _cli("promote", "router", "router-v2", "--force", "--registry", store.path).exit_code == 0
    assert _cli("promote", "router", "router-v1", "--registry", store.path).exit_code == 0  # judged: better
    history = _cli("aliases", "router", "--registry", store.path)
    assert history.exit_code == 0, (history.output, repr(history.exception))
    lines = history.output.replace("\n  ", " ").splitlines()  # a wrapped summary read as one line
    forced, back = lines[-2], lines[-1]
    assert "router-v1" in forced and "router-v2" in forced and "forced with --force" in forced, history.output
    assert back.endswith("not worse by more than the margin 0.02") and "router-v1 vs router-v2" in back, history.output


def test_a_retrains_champion_and_challenger_are_compared_on_the_retrains_test_set_either_way(runs):
    import json

    from tunelab.evaluation.result import EvalResult

    store, ids, folders = runs
    # router-v2 as a retrain of router-v1 makes it: its test set is v1's plus a recent slice, v1 evaluated on it too.
    write_fake_evaluation(folders["router-v2"], 170, fingerprint="fresh").rename(RunFolder(folders["router-v2"]).champion_eval)
    _evaluate(folders["router-v2"], 190, fingerprint="fresh")
    RunFolder(folders["router-v2"]).retrain_outcome.write_text(json.dumps({"champion": {"id": ids["router-v1"]}}))
    assert EvalResult.load(RunFolder(folders["router-v2"]).champion_eval).metrics["accuracy"] == 0.85
    forward = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert forward.exit_code == 0 and "0.8500 -> 0.9500" in forward.output, (forward.output, repr(forward.exception))
    back = _cli("promote", "router", "router-v1", "--registry", store.path)  # a return, with the comparison shown
    assert back.exit_code == 0 and "0.9500 -> 0.8500" in back.output, (back.output, repr(back.exception))
