"""`tunelab compare RUN RUN` of runs judged by group (data.group_field) on the same test set: each group's difference
against the opponent each verdict names, side by side; skipped, and said, when there are too many groups to read so, and
not shown for runs judged on different test sets (their warning already says the numbers do not compare)."""

import json

import pytest
from typer.testing import CliRunner

from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.registry.store import MAX_GROUPS_SIDE_BY_SIDE

pytestmark = pytest.mark.usefixtures("wide_console")

def _cli(*args):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, [str(arg) for arg in args])


def _classify(name, outcomes, groups, fingerprint):
    rows = [{"id": f"x{i}", "source": f"t:{i + 1}", "prompt": f"text {i}", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9, "probability_of_reference": 0.9 if ok else 0.1}, "group": group}
            for i, (ok, group) in enumerate(zip(outcomes, groups, strict=True))]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint=fingerprint)


def _run(store, name, tuned, groups, fingerprint="same"):
    base = _classify("base", [i % 2 == 0 for i in range(len(groups))], groups, fingerprint)
    verdict = compare_with_baselines({"base": base}, _classify("tuned", tuned, groups, fingerprint), samples=100)
    store.create_run(name=name, task="classify", status="finished", comparison=verdict.to_dict())
    return verdict


def test_the_groups_of_two_runs_side_by_side(tmp_path):
    store = Registry(tmp_path / "registry.db")
    groups = ["FR"] * 60 + ["DE"] * 40 + ["IT"] * 10
    first = _run(store, "first", [True] * 110, groups)
    second = _run(store, "second", [True] * 60 + [i % 2 == 0 for i in range(40)] + [True] * 10, groups)
    shown = _cli("compare", "first", "second", "--registry", store.path)
    assert shown.exit_code == 0, shown.output
    table = shown.output.split("by group", 1)[1]
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") >= 3}
    de_first, de_second = (next(g for g in v.groups if g.group == "DE") for v in (first, second))
    assert f"{de_first.difference:+.3g}" in rows["DE"] and "better" in rows["DE"] and "no significant difference" in rows["DE"]
    assert f"{de_second.difference:+.3g}" in rows["DE"] and "n=40" in rows["DE"]
    assert "too few (n=10)" in rows["IT"]
    data = json.loads(_cli("compare", "first", "second", "--registry", store.path, "--json").output)
    assert list(data["groups"]) == ["FR", "DE", "IT"] and data["groups"]["DE"][1]["outcome"] == "no significant difference"
    assert data["groups_note"] is None


def test_too_many_groups_are_skipped_and_said(tmp_path):
    store = Registry(tmp_path / "registry.db")
    groups = [f"g{i % (MAX_GROUPS_SIDE_BY_SIDE + 1)}" for i in range(60)]
    _run(store, "first", [True] * 60, groups)
    _run(store, "second", [True] * 60, groups)
    shown = _cli("compare", "first", "second", "--registry", store.path)
    assert shown.exit_code == 0, shown.output
    assert f"{MAX_GROUPS_SIDE_BY_SIDE + 1} groups" in shown.output and "tunelab show" in shown.output and "accuracy by group" not in shown.output
    assert json.loads(_cli("compare", "first", "second", "--registry", store.path, "--json").output)["groups"] == {}


def test_no_groups_side_by_side_on_different_test_sets(tmp_path):
    store = Registry(tmp_path / "registry.db")
    groups = ["FR"] * 40 + ["DE"] * 40
    _run(store, "first", [True] * 80, groups, fingerprint="one")
    _run(store, "second", [True] * 80, groups, fingerprint="two")
    data = json.loads(_cli("compare", "first", "second", "--registry", store.path, "--json").output)
    assert data["groups"] == {} and data["warnings"]
