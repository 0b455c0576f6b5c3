"""`tunelab promote ALIAS RUN` refuses, in one line naming the run and why, a run that a `tunelab serve` following
the alias could not serve (it took it, and the server then logged a failure at every poll): checked with the server's
own rule (`serve.adapters.adapter_run`), against a real server on the loopback that keeps answering with its run."""

from __future__ import annotations

import logging
import shutil
import time

import httpx
import pytest
from tests.unit.serve.conftest import write_fake_run
from typer.testing import CliRunner

from tunelab.errors import TunelabError
from tunelab.registry.store import Registry
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.adapters import load_registry


def _promote(registry_path, alias, run, *options):
    from tunelab.cli.main import _register_commands, app

    _register_commands()
    return CliRunner().invoke(app, ["promote", alias, run, "--registry", str(registry_path), *options])


def test_promote_refuses_what_a_server_following_the_alias_could_not_serve(
    tiny_model_dir, tiny_tokenizer, router_versions, tmp_path, caplog
):
    registry_path = tmp_path / "registry.db"
    store = Registry(registry_path)
    first, second = (store.create_run(name=p.name, task="classify", status="finished", run_dir=str(p)).id for p in router_versions)
    store.set_alias("router", first)

    # A run of every kind the server refuses, each finished unless its status is the point.
    failed = store.create_run(name="crashed", task="classify", status="failed", run_dir=str(router_versions[1])).id
    no_folder = store.create_run(name="cloud-only", task="classify", status="finished").id
    unfinished_dir = tmp_path / "no-weights"
    shutil.copytree(router_versions[1], unfinished_dir)
    shutil.rmtree(unfinished_dir / "adapter")
    no_weights = store.create_run(name="no-weights", task="classify", status="finished", run_dir=str(unfinished_dir)).id
    other_base_dir = tmp_path / "other-base"
    shutil.copytree(tiny_model_dir, other_base_dir)
    other_run = write_fake_run(tmp_path / "other-base-run", other_base_dir, tiny_tokenizer, seed=5, task="classify")
    other_base = store.create_run(name="other-base-run", task="classify", status="finished", run_dir=str(other_run)).id
    gone = store.create_run(name="gone", task="classify", status="finished", run_dir=str(tmp_path / "deleted")).id
    # An sft run over the same base: the server would load it, and every /v1/classify call to the name would be a 400.
    sft_dir = write_fake_run(tmp_path / "chat-run", tiny_model_dir, tiny_tokenizer, seed=6, task="sft")
    sft = store.create_run(name="chat-run", task="sft", status="finished", run_dir=str(sft_dir)).id

    served = load_registry(str(tiny_model_dir), [("router", "alias:router")], registry_path=registry_path)
    app = create_app(served, ServeSettings(alias_poll_s=0.05))
    refusals = {
        failed: "is failed, not finished",
        no_folder: "has no run folder",
        no_weights: "is not a finished tunelab run",
        other_base: f"was trained on '{other_base_dir}'",
        gone: "no-such",  # replaced below: Run.open's own message for a missing folder
        sft: "it is a sft run, and the alias's run answers classify requests",
    }
    with caplog.at_level(logging.WARNING), BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.get("/v1/models/router").json()["run_id"] == first
        for run_id, why in refusals.items():
            result = _promote(registry_path, "router", run_id)
            assert isinstance(result.exception, TunelabError), (run_id, result.output, repr(result.exception))
            message = result.exception.message
            name = store.get_run(run_id).name
            assert "\n" not in message and name in message, message
            if run_id != gone:
                assert why in message, message
        # Nothing was written: the alias, its history and what the server answers with stay on the first run.
        assert store.alias("router") == first and len(store.alias_history("router")) == 1
        time.sleep(0.3)  # several polls of the server's alias follower
        assert client.get("/v1/models/router").json()["run_id"] == first
        assert not [r for r in caplog.records if "could not follow" in r.getMessage()]

        # A run it can serve is promoted, and the server follows it (forced: these runs have no test evaluation to
        # compare, which test_promote_not_worse.py covers).
        result = _promote(registry_path, "router", second, "--force")
        assert result.exit_code == 0, (result.output, repr(result.exception))
        deadline = time.monotonic() + 30
        while client.get("/v1/models/router").json()["run_id"] != second and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v1/models/router").json()["run_id"] == second
    assert served.alias_changes == [("router", first, second)]
    assert not [r for r in caplog.records if "could not follow" in r.getMessage()]


def test_a_retrain_s_challenger_the_server_could_not_serve_is_not_promoted(router_versions, tmp_path):
    from tunelab.tasks.retrain import promote_challenger

    store = Registry(tmp_path / "registry.db")
    champion = store.create_run(name="champion", task="classify", status="finished", run_dir=str(router_versions[0])).id
    challenger = store.create_run(name="challenger", task="classify", status="finished", run_dir=str(tmp_path / "nowhere")).id
    store.set_alias("router", champion)
    change, refused = promote_challenger(store, "router", champion, challenger, reason="won", details={})
    assert change is None and "challenger" in refused and store.alias("router") == champion


@pytest.mark.parametrize("method", ["qlora"])
def test_promote_refuses_a_run_the_server_serves_only_on_its_own(router_versions, tmp_path, method):
    import yaml

    run_dir = tmp_path / "q"
    shutil.copytree(router_versions[1], run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["train"] = {"method": method}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    store = Registry(tmp_path / "registry.db")
    run = store.create_run(name="q-run", task="classify", status="finished", run_dir=str(run_dir)).id
    result = _promote(store.path, "router", run)
    assert isinstance(result.exception, TunelabError) and "q-run" in result.exception.message and method in result.exception.message
    assert store.alias("router") is None


def test_rollback_refuses_a_run_whose_folder_is_gone_since_it_was_served(router_versions, tmp_path):
    from tunelab.cli.main import _register_commands, app

    earlier = tmp_path / "router-v0"
    shutil.copytree(router_versions[0], earlier)
    store = Registry(tmp_path / "registry.db")
    first = store.create_run(name="router-v0", task="classify", status="finished", run_dir=str(earlier)).id
    second = store.create_run(name="router-v2", task="classify", status="finished", run_dir=str(router_versions[1])).id
    assert _promote(store.path, "router", first).exit_code == 0 and _promote(store.path, "router", second, "--force").exit_code == 0
    shutil.rmtree(earlier / "adapter")  # cleaned up since it was served
    _register_commands()
    result = CliRunner().invoke(app, ["rollback", "router", "--registry", str(store.path)])
    assert isinstance(result.exception, TunelabError) and "router-v0" in result.exception.message, repr(result.exception)
    assert store.alias("router") == second and len(store.alias_history("router")) == 2
