"""Promote a finished run under an alias from its page, see the refusal `tunelab promote` gives, and roll back, in a real
browser over a real `tunelab ui` (the runs are the serving tests' LoRA run folders on the tiny model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from ui_helpers import check_screen

from tunelab.registry import Registry


@pytest.fixture(scope="module")
def alias_runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    path = Path(__file__).resolve().parents[1] / "unit" / "serve" / "conftest.py"
    spec = importlib.util.spec_from_file_location("serve_fake_runs_browser", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runs = tmp_path_factory.mktemp("alias-runs") / "runs"
    registry = Registry(runs / "registry.db")
    ids = {}
    for name, seed, task in (("router-v1", 21, "classify"), ("router-v2", 22, "classify"), ("legal", 23, "sft")):
        folder = module.write_fake_run(runs / name, tiny_model_dir, tiny_tokenizer, seed=seed, task=task)
        if task == "classify":
            # Equally good on one test set: router-v2 is not worse than router-v1, so `tunelab promote` lets it replace it.
            module.write_fake_evaluation(folder, 150)
        ids[name] = registry.create_run(name=name, task=task, model=str(tiny_model_dir), status="finished", run_dir=str(folder)).id
    return registry, ids


@pytest.fixture(scope="module")
def alias_url(alias_runs):
    from tunelab.serve.server import BackgroundServer
    from tunelab.ui import UISettings, create_app

    registry, _ = alias_runs
    with BackgroundServer(create_app(UISettings(registry=registry.path, project=registry.path.parent)), port=0) as url:
        yield url


def _promote(page, alias):
    page.fill("#promote-alias", alias)
    page.click("#promote-button")


def test_promote_from_the_run_page_refuses_as_the_cli_does_and_rolls_back(page, alias_url, alias_runs):
    registry, ids = alias_runs
    page.goto(f"{alias_url}/runs/{ids['router-v1']}")
    assert "No alias points at this run" in page.inner_text("#serving")
    _promote(page, "router")
    page.wait_for_selector("#run-aliases li[data-alias=router]")  # the page, rendered again, says the alias points here
    assert registry.alias("router") == ids["router-v1"]
    page.goto(f"{alias_url}/runs/{ids['router-v2']}")
    _promote(page, "router")
    page.wait_for_selector("#run-aliases li[data-alias=router] .rollback-button")
    assert "Roll back router to router-v1" in page.inner_text("#serving") and registry.alias("router") == ids["router-v2"]
    check_screen(page, "run-promoted")
    # An sft run under the alias of a classify run: the refusal `tunelab promote router legal` prints, in the page.
    page.goto(f"{alias_url}/runs/{ids['legal']}")
    _promote(page, "router")
    page.wait_for_function("document.getElementById('promote-error').textContent.length > 0")
    error = page.inner_text("#promote-error")
    assert "it is a sft run, and the alias's run answers classify requests" in error and "\n" not in error
    assert registry.alias("router") == ids["router-v2"]
    check_screen(page, "run-promote-refused")
    # Roll back from the page of the run the alias serves: it goes back to router-v1.
    page.goto(f"{alias_url}/runs/{ids['router-v2']}")
    page.click("#run-aliases .rollback-button")
    page.wait_for_selector("#run-aliases.empty")
    assert registry.alias("router") == ids["router-v1"] and registry.alias_history("router")[-1].action == "rollback"
