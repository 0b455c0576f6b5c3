"""``tunelab runs``, ``show`` and ``compare`` on a registry written through the library."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tunelab.registry import Registry

pytestmark = pytest.mark.usefixtures("wide_console")

@pytest.fixture
def registry_path(tmp_path):
    path = tmp_path / "registry.db"
    registry = Registry(path)
    registry.create_run(
        name="lora-r16",
        task="classify",
        model="default",
        status="finished",
        config={"task": "classify", "lora": {"r": 16}, "train": {"lr": 0.0002}},
        baseline_metrics={"accuracy": 0.2},
        tuned_metrics={"accuracy": 0.9},
        comparison={"verdict": "better"},
    )
    registry.record_timing("lora-r16", "train", estimated_s=100, actual_s=112)
    registry.create_run(
        name="lora-r4", task="classify", model="default", status="failed", config={"task": "classify", "lora": {"r": 4}, "train": {"lr": 0.0002}}
    )
    return path


def test_runs_lists_and_filters(app, registry_path):
    runner = CliRunner()
    result = runner.invoke(app, ["runs", "--registry", str(registry_path)])
    assert result.exit_code == 0, result.output
    assert "lora-r16" in result.output and "accuracy 0.2 → 0.9" in result.output and "better" in result.output
    result = runner.invoke(app, ["runs", "--registry", str(registry_path), "--status", "failed", "--json"])
    assert [run["name"] for run in json.loads(result.output)] == ["lora-r4"]
    empty = runner.invoke(app, ["runs", "--registry", str(registry_path.parent / "none.db")])
    assert empty.exit_code == 0 and "no runs recorded" in empty.output


def test_show_has_estimate_and_actual_side_by_side(app, registry_path):
    runner = CliRunner()
    result = runner.invoke(app, ["show", "lora-r16", "--registry", str(registry_path)])
    assert result.exit_code == 0, result.output
    assert "estimate vs actual" in result.output and "1.12" in result.output
    data = json.loads(runner.invoke(app, ["show", "lora-r16", "--json", "--registry", str(registry_path)]).output)
    assert data["timings"]["train"] == {"estimated_s": 100.0, "actual_s": 112.0}


def test_compare_shows_differing_config_keys(app, registry_path):
    runner = CliRunner()
    data = json.loads(runner.invoke(app, ["compare", "lora-r16", "lora-r4", "--json", "--registry", str(registry_path)]).output)
    assert data["config_differences"] == {"lora.r": [16, 4]}
    assert data["tuned_metrics"] == {"accuracy": [0.9, None]}
    result = runner.invoke(app, ["compare", "lora-r16", "lora-r4", "--registry", str(registry_path)])
    assert result.exit_code == 0 and "lora.r" in result.output


def test_unknown_run_is_a_clear_error(app, registry_path):
    from tunelab.errors import TunelabError

    result = CliRunner().invoke(app, ["show", "nope", "--registry", str(registry_path)])
    assert isinstance(result.exception, TunelabError) and "no run 'nope'" in str(result.exception)


def test_compare_of_evaluation_files_uses_the_evaluation_comparison(app, tmp_path):
    from tunelab.evaluation.result import EvalResult

    def result(name, correct):
        rows = [{"id": f"x{i}", "source": f"t:{i}", "prompt": "p", "reference": "ab"[i % 2],
                 "prediction": "ab"[i % 2] if ok else "ab"[(i + 1) % 2], "scores": {"correct": float(ok), "confidence": 0.9}}
                for i, ok in enumerate(correct)]
        return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")

    a = result("base", [i % 2 == 0 for i in range(40)]).save(tmp_path / "base.json")
    b = result("tuned", [i % 10 != 0 for i in range(40)]).save(tmp_path / "tuned.json")
    output = CliRunner().invoke(app, ["compare", str(a), str(b)])
    assert output.exit_code == 0, output.output
    comparison = json.loads(output.output)
    assert comparison["primary"] == "accuracy" and comparison["verdict"] == "better"


def test_compare_names_an_evaluation_file_that_is_not_there(app, tmp_path, monkeypatch):
    # A mistyped or not yet written file read as "give either run names/ids or evaluation .json files, not both",
    # or (both missing) as run names: "no run registry at runs/registry.db".
    from tunelab.errors import DataError
    from tunelab.evaluation.result import EvalResult

    monkeypatch.chdir(tmp_path)
    here = EvalResult("sft", "m", 0, {}, []).save(tmp_path / "base.json")
    for items in ([str(here), "tuned.json"], ["base2.json", "tuned.json"]):
        result = CliRunner().invoke(app, ["compare", *items])
        assert isinstance(result.exception, DataError), (items, repr(result.exception))
        assert str(result.exception).startswith("evaluation file not found:"), str(result.exception)


def test_runs_never_shows_another_baselines_value_as_the_base_models_before(app, tmp_path):
    # eval.skip_hopeless skipped the base model; the row's baseline_metrics held the classical baseline's metrics
    # (what the pipeline stored then), and `tunelab runs` printed "accuracy 0.85 → 0.86" as if the base model scored 0.85.
    reason = "2 of 5 validation requests right (0.400, 95% interval up to 0.769), below the classical baseline's cross-validated accuracy 0.900: it cannot win, so it is not scored on the test rows"
    path = tmp_path / "registry.db"
    registry = Registry(path)
    classical = {"primary": "accuracy", "accuracy": 0.85}
    registry.create_run(
        name="hopeless-base", task="classify", model="default", status="finished",
        baseline_metrics=classical, tuned_metrics={"primary": "accuracy", "accuracy": 0.86},
        comparison={"verdict": "no significant difference", "primary": "accuracy", "skipped": {"base": reason}},
        artifacts={"baselines": {"classical": classical}, "baselines_skipped": {"base": reason}},
    )
    result = CliRunner().invoke(app, ["runs", "--registry", str(path)])
    assert result.exit_code == 0, result.output
    assert "0.85 →" not in result.output, result.output
    assert "accuracy n/a (base skipped) → 0.86" in result.output, result.output
    assert Registry(path).get_run("hopeless-base").key_metric() == ("accuracy", None, 0.86)


def test_show_gives_each_skipped_baselines_reason(app, tmp_path):
    # `tunelab show` said "not scored (cannot run here or cannot win, see each reason): base, few_shot" and gave no reason.
    reasons = {"base": "4 of 32 validation requests right (0.125, 95% interval up to 0.281): it cannot win",
               "few_shot": "the prompt cannot hold one example per label within 2048 tokens"}
    path = tmp_path / "registry.db"
    Registry(path).create_run(
        name="skips", task="classify", model="default", status="finished",
        tuned_metrics={"primary": "accuracy", "accuracy": 0.86},
        comparison={"verdict": "no significant difference", "primary": "accuracy", "skipped": {"base": reasons["base"]}},
        artifacts={"baselines": {"classical": {"primary": "accuracy", "accuracy": 0.85}}, "baselines_skipped": reasons},
    )
    result = CliRunner().invoke(app, ["show", "skips", "--registry", str(path)])
    assert result.exit_code == 0, result.output
    for name, reason in reasons.items():
        assert f"{name} skipped: {reason}" in result.output, result.output
    assert Registry(path).get_run("skips").baselines_skipped == reasons


def test_compare_warns_when_the_runs_were_judged_on_different_test_sets(app, tmp_path):
    # Side by side, 0.9 against 0.8 reads as the better run; on two different test sets it says nothing of the kind.
    path = tmp_path / "registry.db"
    registry = Registry(path)
    for name, accuracy, fingerprint in (("seed0", 0.9, "aaaa"), ("seed1", 0.8, "bbbb"), ("again", 0.85, "aaaa")):
        registry.create_run(name=name, task="classify", status="finished", config={"task": "classify", "data": {"seed": 0}},
                            tuned_metrics={"accuracy": accuracy}, comparison={"verdict": "no significant difference", "n": 40,
                                                                               "test_fingerprint": fingerprint})
    runner = CliRunner()
    result = runner.invoke(app, ["compare", "seed0", "seed1", "--registry", str(path)])
    assert result.exit_code == 0, result.output
    assert "different test sets" in result.output
    data = json.loads(runner.invoke(app, ["compare", "seed0", "seed1", "--json", "--registry", str(path)]).output)
    assert any("different test sets" in warning for warning in data["warnings"])
    same = json.loads(runner.invoke(app, ["compare", "seed0", "again", "--json", "--registry", str(path)]).output)
    assert same["warnings"] == []


@pytest.fixture
def served(tmp_path):
    # `runs` and `show` never said which alias serves a run: which one is live needed `tunelab aliases`.
    registry = Registry(tmp_path / "registry.db")
    for name in ("router-v1", "router-v2", "router-v3"):
        registry.create_run(name=name, task="classify", model="default", status="finished", tuned_metrics={"accuracy": 0.9})
    registry.set_alias("prod", "router-v2")
    registry.set_alias("staging", "router-v2")
    registry.set_alias("canary", "router-v3")
    return registry


def _row(output: str, name: str) -> str:
    return next(line for line in output.splitlines() if name in line)


def test_the_registry_says_which_aliases_serve_each_run(served):
    by_run = served.aliases_by_run()
    v1, v2, v3 = (served.get_run(name).id for name in ("router-v1", "router-v2", "router-v3"))
    assert by_run == {v2: ["prod", "staging"], v3: ["canary"]} and v1 not in by_run


def test_runs_marks_the_runs_an_alias_serves(app, served):
    result = CliRunner().invoke(app, ["runs", "--registry", str(served.path)])
    assert result.exit_code == 0, result.output
    assert "prod, staging" in _row(result.output, "router-v2")
    assert "canary" in _row(result.output, "router-v3")
    assert "prod" not in _row(result.output, "router-v1") and "canary" not in _row(result.output, "router-v1")
    listed = json.loads(CliRunner().invoke(app, ["runs", "--registry", str(served.path), "--json"]).output)
    assert {run["name"]: run["aliases"] for run in listed} == {"router-v1": [], "router-v2": ["prod", "staging"], "router-v3": ["canary"]}


def test_show_says_which_aliases_serve_the_run(app, served):
    result = CliRunner().invoke(app, ["show", "router-v2", "--registry", str(served.path)])
    assert result.exit_code == 0, result.output
    assert "prod, staging" in _row(result.output, "served as")
    shown = json.loads(CliRunner().invoke(app, ["show", "router-v2", "--registry", str(served.path), "--json"]).output)
    assert shown["aliases"] == ["prod", "staging"]
    unserved = CliRunner().invoke(app, ["show", "router-v1", "--registry", str(served.path)])
    assert "served as" in unserved.output and "no alias" in _row(unserved.output, "served as")


def test_runs_without_any_alias_has_no_alias_column(app, tmp_path):
    registry = Registry(tmp_path / "registry.db")
    registry.create_run(name="only", task="classify", model="default", status="finished")
    result = CliRunner().invoke(app, ["runs", "--registry", str(registry.path)])
    assert result.exit_code == 0 and "only" in result.output, result.output
    assert "alias" not in _row(result.output, "┃ name"), result.output  # no column of dashes


@pytest.fixture
def typical(tmp_path):
    # The reviewer's row on the real default model: a base model skipped, an alias serving the run, a folder on disk.
    folder = tmp_path / "runs" / "classify-walk2-r16-a"
    folder.mkdir(parents=True)
    (folder / "adapter.safetensors").write_bytes(b"0" * 2_000_000)
    registry = Registry(tmp_path / "registry.db")
    reason = "4 of 32 validation requests right: it cannot win"
    registry.create_run(
        name="classify-walk2-r16-a", task="classify", model="default", status="finished", run_dir=str(folder),
        tuned_metrics={"primary": "accuracy", "accuracy": 0.875},
        comparison={"verdict": "better", "primary": "accuracy", "skipped": {"base": reason}},
        artifacts={"baselines_skipped": {"base": reason}},
    )
    registry.set_alias("prod", "classify-walk2-r16-a")
    return registry


@pytest.mark.parametrize("width", [80, 160])
def test_runs_shows_a_typical_row_whole_at_80_and_160_columns(app, typical, monkeypatch, width):
    # At 80 columns the listing was mostly ellipses ("class…", "finis…", "accur… n/a (base skipp… → 0.875") and the
    # size folded onto two lines ("200.7" / "MB"): every shown cell is now whole, on the row's one line.
    from tunelab.cli.common import console

    monkeypatch.setattr(console, "width", width)
    result = CliRunner().invoke(app, ["runs", "--registry", str(typical.path)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    assert max(len(line) for line in result.output.splitlines()) <= width, result.output
    row = _row(result.output, "classify-walk2-r16-a")
    for cell in ("finished", "prod", "0.875", "better"):
        assert cell in row, result.output
    if width == 160:
        created = typical.get_run("classify-walk2-r16-a").created_at[:16].replace("T", " ")
        for cell in ("classify", "default", "2.0 MB", "accuracy n/a (base skipped) → 0.875", created):
            assert cell in row, result.output
    else:
        assert "accuracy n/a" in row, result.output
        # What is left out is said, and --json still has it.
        assert "--json" in result.output, result.output
    listed = json.loads(CliRunner().invoke(app, ["runs", "--registry", str(typical.path), "--json"]).output)
    assert listed[0]["task"] == "classify" and listed[0]["bytes"] == 2_000_000 and listed[0]["created_at"]


def test_show_labels_the_suspect_labels_row_in_words(app, tmp_path):
    # Its neighbours read "served as", "run dir"; the suspect row read "suspect_labels", the stored artifact key.
    path = tmp_path / "registry.db"
    Registry(path).create_run(name="sus", task="classify", model="default", status="finished",
                              artifacts={"suspect_labels": "3 of 320 training rows have a doubtful label"})
    result = CliRunner().invoke(app, ["show", "sus", "--registry", str(path)])
    assert result.exit_code == 0, result.output
    assert "suspect labels" in _row(result.output, "3 of 320") and "suspect_labels" not in result.output, result.output
