"""The run module is the one reader of a run folder: no other source file spells a run folder's file name,
and ``Run.open`` gives everything a consumer needs (typed)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tunelab.config import dump_config, parse_config
from tunelab.data.labels import LabelMap, OutOfScope
from tunelab.errors import ModelError
from tunelab.runs import Run, RunFolder

SOURCE = Path(__file__).resolve().parents[2] / "src" / "tunelab"


def run_file_names() -> set[str]:
    """Every file name the layout defines (folders such as adapter/ or eval/ are too common a word to grep)."""
    folder = RunFolder(Path("R"))
    names = {folder.baseline_eval("base").name}
    for attribute, value in vars(RunFolder).items():
        if isinstance(value, property):
            path = getattr(folder, attribute)
            if isinstance(path, Path) and path.suffix:
                names.add(path.name)
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def spelled_names(path: Path, names: set[str]) -> list[str]:
    """``file:line name`` for each string literal of ``path`` that is a run-folder file name (or a path ending in one).

    Prose (docstrings, help texts, messages with spaces) may mention the names; code that builds a path may not.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Constant) or not isinstance(node.value, str) or id(node) in docstrings:
            continue
        value = node.value.strip()
        if " " in value:
            continue
        for name in names:
            if value == name or value.endswith("/" + name) or value.endswith("/" + name.rsplit(".", 1)[0] + "."):
                found.append(f"{path.relative_to(SOURCE.parent)}:{node.lineno} {name}")
    return found


def test_the_layout_knows_the_usual_names():
    names = run_file_names()
    assert {"tuned.json", "pipeline.json", "config.yaml", "labels.json", "out_of_scope.json", "base.json", "comparison.json"} <= names


def test_no_run_folder_file_name_is_spelled_outside_the_run_module():
    names = run_file_names()
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path == SOURCE / "runs.py":
            continue
        offenders += spelled_names(path, names)
    assert not offenders, "run-folder file names spelled outside tunelab/runs.py (ask RunFolder for the path):\n" + "\n".join(offenders)


def test_the_check_finds_a_spelled_name(tmp_path):
    source = tmp_path / "offender.py"
    source.write_text('"""Reads eval/tuned.json."""\nfrom pathlib import Path\nPATH = Path("run") / "tuned.json"\nOTHER = "eval/labels.json"\n')
    global SOURCE
    saved, SOURCE = SOURCE, tmp_path
    try:
        found = spelled_names(source, run_file_names())
    finally:
        SOURCE = saved
    assert len(found) == 2 and all("offender.py" in line for line in found)


def _write_run(root: Path, *, task: str = "classify", system: str | None = "Be brief.", registry_id: str | None = "r-1") -> RunFolder:
    folder = RunFolder(root)
    root.mkdir(parents=True)
    config = parse_config({"task": task, "data": {"system_prompt": system, "max_length": 96}, "model": {"name": "default", "revision": "main"}})
    folder.config.write_text(dump_config(config))
    (folder.adapter).mkdir()
    if task == "classify":
        LabelMap(["billing", "shipping"], [10, 11], ["A", "B"]).save(folder.labels)
        OutOfScope("other", 0.42).save(folder.out_of_scope)
    if registry_id:
        folder.pipeline_state.write_text(json.dumps({"config": config.model_dump(mode="json"), "registry_id": registry_id, "steps": {}}))
    folder.eval_dir.mkdir()
    for name in ("base", "classical", "openai:org/m"):
        folder.baseline_eval(name).write_text("{}")
    folder.tuned_eval.write_text("{}")
    folder.comparison.write_text("{}")
    return folder


def test_run_open_gives_every_part_typed(tmp_path):
    folder = _write_run(tmp_path / "run")
    run = Run.open(folder.root)
    assert run.task == "classify" and run.name == "run" and run.root == folder.root
    assert isinstance(run.label_map, LabelMap) and run.label_map.labels == ["billing", "shipping"]
    assert isinstance(run.out_of_scope, OutOfScope) and run.out_of_scope.threshold == pytest.approx(0.42)
    assert run.system_prompt == "Be brief." and run.max_length == 96
    assert run.base.name == "default" and run.base.revision == "main"
    assert run.registry_id == "r-1" and run.state["steps"] == {}
    assert run.is_finished and run.is_adapter
    assert list(run.baseline_evaluations()) == ["base", "classical", "openai:org/m"]
    assert {"tuned", "comparison"} <= set(run.evaluations())


def test_a_run_without_pipeline_state_has_no_registry_id(tmp_path):
    run = Run.open(_write_run(tmp_path / "run", task="sft", system=None, registry_id=None).root)
    assert run.registry_id is None and run.state is None and run.label_map is None and run.out_of_scope is None
    assert run.system_prompt is None


@pytest.mark.parametrize("damage", ["no_config", "bad_labels", "bad_yaml"])
def test_an_unreadable_run_is_one_clear_error(tmp_path, damage):
    folder = _write_run(tmp_path / "run")
    if damage == "no_config":
        folder.config.unlink()
        folder.pipeline_state.unlink()
    elif damage == "bad_labels":
        folder.labels.write_text("{not json")
    else:
        folder.config.write_text("task: [unclosed")
    with pytest.raises(ModelError) as error:
        Run.open(folder.root)
    assert str(folder.root) in error.value.message


@pytest.mark.parametrize(("damage", "content", "reason"), [
    ("labels", "{not json", "not JSON"),
    ("out_of_scope", '{"label": "out_of_scope"}', "'threshold'"),
])
def test_a_damaged_file_of_a_run_is_named(tmp_path, damage, content, reason):
    """"cannot read run X: Expecting property name ..." left the user to guess which of its files to restore."""
    folder = _write_run(tmp_path / "run")
    damaged = getattr(folder, damage)
    damaged.write_text(content)
    with pytest.raises(ModelError) as error:
        Run.open(folder.root)
    assert damaged.name in error.value.message and reason in error.value.message
    assert "\n" not in error.value.message and damaged.name in error.value.hint


def test_only_the_run_module_calls_the_plain_model_loaders():
    """``tunelab.models`` knows no run folder: every module above it loads model names through ``tunelab.runs``."""
    plain = {"load_model", "resolve_model", "load_tokenizer"}
    offenders = []
    for path in sorted(SOURCE.rglob("*.py")):
        if path == SOURCE / "runs.py" or SOURCE / "models" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunelab.models"):
                offenders += [f"{path.relative_to(SOURCE.parent)}:{node.lineno} {alias.name}" for alias in node.names if alias.name in plain]
    assert not offenders, "import these from tunelab.runs (it also knows run folders):\n" + "\n".join(offenders)


def test_a_missing_run_folder_is_named_as_missing(tmp_path):
    # `tunelab serve --adapter /no/such/dir` said the folder "has no config.yaml", as if it existed.
    from tunelab.errors import ModelError
    from tunelab.runs import Run

    with pytest.raises(ModelError, match="no run folder") as missing:
        Run.open(tmp_path / "no-such-run")
    assert "config.yaml" not in missing.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="has no config.yaml"):
        Run.open(tmp_path / "empty")
