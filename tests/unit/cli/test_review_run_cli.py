"""``tunelab review score/pairs --run RUN``: the judgments made in `tunelab ui` (registry rows), scored and paired from the CLI."""

import json

from typer.testing import CliRunner

from tunelab.cli.main import _register_commands, app
from tunelab.evaluation.result import EvalResult
from tunelab.evaluation.review import open_run_review
from tunelab.registry import Registry


def _result(name):
    rows = [{"id": f"q{i}", "source": "", "prompt": f"question {i}", "reference": "r", "prediction": f"{name} answer {i}", "scores": {}} for i in range(6)]
    return EvalResult("sft", name, len(rows), {}, rows)


def test_score_and_pairs_read_the_registry(tmp_path):
    _register_commands()
    run_dir = tmp_path / "runs" / "demo"
    _result("base").save(run_dir / "eval" / "base.json")
    _result("tuned").save(run_dir / "eval" / "tuned.json")
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="demo", task="sft", run_dir=str(run_dir))
    sheet = open_run_review(run_dir)
    for row in sheet.rows[:4]:
        tuned_side = next(side for side, model in sheet.sides[row["id"]].items() if model == "tuned")
        registry.add_review(record.id, sheet=sheet.path, example_id=row["id"], reviewer="ann", preference=tuned_side)
    runner = CliRunner()
    score = runner.invoke(app, ["review", "score", "--run", "demo", "--registry", str(registry.path), "--json"])
    assert score.exit_code == 0, score.output
    assert json.loads(score.output)["tuned_wins"] == 4 and json.loads(score.output)["judged"] == 4
    pairs = runner.invoke(app, ["review", "pairs", "--run", "demo", "--registry", str(registry.path), "--out", str(tmp_path / "p.jsonl"), "--json"])
    assert pairs.exit_code == 0, pairs.output
    assert json.loads(pairs.output)["pairs"] == 4 and len((tmp_path / "p.jsonl").read_text().splitlines()) == 4
    neither = runner.invoke(app, ["review", "score"])
    assert neither.exit_code != 0


def test_a_registry_folder_names_the_file_it_likely_meant(tmp_path):
    # `--registry runs` said "no run registry at runs" beside runs/registry.db (the other registry commands name the file).
    from tunelab.registry import RegistryError

    _register_commands()
    registry = Registry(tmp_path / "runs" / "registry.db")
    registry.create_run(name="demo", task="sft", run_dir=str(tmp_path / "runs" / "demo"))
    for command in (["score"], ["pairs", "--out", str(tmp_path / "p.jsonl")]):
        result = CliRunner().invoke(app, ["review", *command, "--run", "demo", "--registry", str(tmp_path / "runs")])
        assert isinstance(result.exception, RegistryError), (command, repr(result.exception))
        assert str(tmp_path / "runs" / "registry.db") in result.exception.hint, (command, result.exception.hint)


def test_the_score_line_names_the_opponent_it_was_reviewed_against(tmp_path):
    # The base model skipped (it could not win): the sheet is the tuned model against the strongest baseline, and the
    # line said "base wins 2" of the embedding baseline's answers.
    _register_commands()
    run_dir = tmp_path / "runs" / "demo"
    _result("embedding").save(run_dir / "eval" / "embedding.json")
    _result("tuned").save(run_dir / "eval" / "tuned.json")
    (run_dir / "eval" / "comparison.json").write_text(json.dumps({"strongest": "embedding"}))
    registry = Registry(tmp_path / "runs" / "registry.db")
    record = registry.create_run(name="demo", task="sft", run_dir=str(run_dir))
    sheet = open_run_review(run_dir)
    for row in sheet.rows[:2]:
        other = next(side for side, model in sheet.sides[row["id"]].items() if model != "tuned")
        registry.add_review(record.id, sheet=sheet.path, example_id=row["id"], reviewer="ann", preference=other)
    result = CliRunner().invoke(app, ["review", "score", "--run", "demo", "--registry", str(registry.path)])
    assert result.exit_code == 0, result.output
    assert "embedding wins 2" in result.output and "base wins" not in result.output
