"""`tunelab promote ALIAS RUN` over a run whose stored test evaluation carries groups (data.group_field) judges each
group as it judges the whole test set: a run better on average but worse than the served run on one country by more
than the margin is refused in one line naming that country (unless --force, which the history says); a group under
MIN_TEST_EXAMPLES cannot refuse and is said not judged; without groups the judgement and its text are as before."""

from __future__ import annotations

import shutil

import pytest
from tests.unit.serve.conftest import CLASSIFY_LABELS
from typer.testing import CliRunner

from tunelab.errors import TunelabError
from tunelab.evaluation.result import EvalResult
from tunelab.registry.store import Registry
from tunelab.runs import RunFolder


def _cli(*args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _evaluate(folder, correct: list[bool], groups: list[str] | None) -> None:
    rows = [{"id": f"t{i}", "reference": "billing", "prediction": "billing" if ok else "technical",
             "scores": {"correct": float(ok), "confidence": 0.9}, **({"group": groups[i]} if groups else {})}
            for i, ok in enumerate(correct)]
    EvalResult("classify", "tuned", len(rows), {"accuracy": sum(correct) / len(rows)}, rows, labels=CLASSIFY_LABELS,
               test_fingerprint="test-v1").save(RunFolder(folder).tuned_eval)


# FR: 200 rows, the served run right on 140, the new run on all; DE: ``de`` rows, the served run right on all of them.
def _scenario(folders, de_lost: int, *, de: int = 60, grouped: bool = True) -> None:
    groups = ["FR"] * 200 + ["DE"] * de if grouped else None
    _evaluate(folders["router-v1"], [i % 10 < 7 for i in range(200)] + [True] * de, groups)
    _evaluate(folders["router-v2"], [True] * 200 + [i >= de_lost for i in range(de)], groups)


@pytest.fixture
def runs(router_versions, tmp_path):
    store = Registry(tmp_path / "registry.db")
    ids, folders = {}, {}
    for name, source in (("router-v1", router_versions[0]), ("router-v2", router_versions[1])):
        folders[name] = tmp_path / name
        shutil.copytree(source, folders[name])
        ids[name] = store.create_run(name=name, task="classify", status="finished", run_dir=str(folders[name])).id
    assert _cli("promote", "router", "router-v1", "--registry", store.path).exit_code == 0
    return store, ids, folders


def test_a_run_better_overall_but_worse_on_one_group_is_refused_naming_it(runs):
    store, ids, folders = runs
    _scenario(folders, de_lost=15)  # DE 1.00 -> 0.75; overall 0.77 -> 0.94
    refused = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert isinstance(refused.exception, TunelabError), (refused.output, repr(refused.exception))
    message = refused.exception.message
    assert "\n" not in message and "'DE'" in message and "'FR'" not in message, message
    assert "significantly worse" in message and "-0.25" in message and "95% CI" in message and "--force" in message, message
    assert store.alias("router") == ids["router-v1"]
    forced = _cli("promote", "router", "router-v2", "--force", "--registry", store.path)
    assert forced.exit_code == 0 and store.alias("router") == ids["router-v2"], (forced.output, repr(forced.exception))
    details = store.alias_history("router")[-1].details
    assert details["forced"] is True and "'DE'" in details["summary"], details
    assert [group["group"] for group in details["groups"]] == ["FR", "DE"]


def test_a_group_within_the_margin_is_promoted(runs):
    store, ids, folders = runs
    _scenario(folders, de_lost=0)
    result = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert result.exit_code == 0 and store.alias("router") == ids["router-v2"], (result.output, repr(result.exception))
    assert "not significantly worse on any group ('FR', 'DE')" in store.alias_history("router")[-1].details["summary"]


def test_a_small_group_cannot_refuse_and_is_said_not_judged(runs):
    store, ids, folders = runs
    _scenario(folders, de_lost=10, de=20)  # DE: half of 20 rows lost
    result = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert result.exit_code == 0 and store.alias("router") == ids["router-v2"], (result.output, repr(result.exception))
    assert "not judged (under 30 test examples): 'DE' (n=20)" in store.alias_history("router")[-1].details["summary"]


def test_without_groups_the_judgement_and_its_text_are_unchanged(runs):
    store, ids, folders = runs
    _scenario(folders, de_lost=15, grouped=False)
    result = _cli("promote", "router", "router-v2", "--registry", store.path)
    assert result.exit_code == 0, (result.output, repr(result.exception))
    details = store.alias_history("router")[-1].details
    assert "groups" not in details
    low, high = details["low"], details["high"]
    assert details["summary"] == (f"router-v2 vs router-v1: accuracy 0.7692 -> 0.9423, difference +0.1731 (95% CI {low:+.4f} to "
                                  f"{high:+.4f}, n=260, paired bootstrap x{details['samples']}), not worse by more than the margin 0.02")
