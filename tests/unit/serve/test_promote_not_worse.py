"""`tunelab promote ALIAS RUN` moves a served name only to a run that is not worse than the one it serves: both runs'
stored test evaluations (eval/tuned.json) compared with the paired bootstrap and retrain's non-inferiority margin;
runs judged on different (or unknown) test sets are refused unless --force. The first promotion, the run already
served and `tunelab rollback` are never blocked; the UI's Promote refuses as the CLI does."""

from __future__ import annotations

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
