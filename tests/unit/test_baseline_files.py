"""A baseline's evaluation file: remote names (openai:org/model) make one plain file, found again by name."""

from tunelab.runs import RunFolder


def test_remote_baseline_names_make_plain_files_found_again_by_name(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.eval_dir.mkdir(parents=True)
    names = ["base", "classical", "openai:org/model-1", "remote:big"]
    for name in names:
        path = run.baseline_eval(name)
        assert path.parent == run.eval_dir and ":" not in path.name and "/" not in path.name
        path.write_text("{}")
    (run.eval_dir / "tuned.json").write_text("{}")
    (run.eval_dir / "comparison.json").write_text("{}")
    (run.eval_dir / "remote:legacy.json").write_text("{}")  # a run written before names were encoded
    found = run.baseline_evaluations()
    assert list(found)[:2] == ["base", "classical"]
    assert set(found) == {*names, "remote:legacy"}
    assert found["openai:org/model-1"] == run.baseline_eval("openai:org/model-1")
    assert run.baseline_eval("base").name == "base.json"
