"""`tunelab sweep` over a provider-trained config (`train.backend: openai`), run again after a variant's job ended at the
provider without a model, against a local fine-tuning API server (fake_provider).

The rerun took the variant's earlier run up as one to continue, and a resume of a job that ended without a model is
refused: the sweep refused that variant on every rerun and could never finish. A job the provider cancelled or failed
is now started again as a new job (said in one line); one the user cancelled (`tunelab cancel`) is refused, as
`tunelab run --resume` refuses it, and never paid for again.
"""

from __future__ import annotations

import json

import pytest

from tunelab.remote.finetune import CloudJob
from tunelab.tasks.sweep import run_sweep

BASE_MODEL = "gpt-4o-mini-2024-07-18"
GRID = ["train.epochs=2"]


@pytest.fixture
def provider(cloud_provider):
    return cloud_provider


def _project(tmp_path, monkeypatch, provider, model) -> str:
    import itertools
    from types import SimpleNamespace

    import tunelab.tasks.sweep as sweep_module

    monkeypatch.chdir(tmp_path)
    # Each sweep its own stamp in its run names: these sweeps may start within the same second.
    stamps = itertools.count()
    monkeypatch.setattr(sweep_module, "time", SimpleNamespace(strftime=lambda _: f"20260101-{next(stamps):06d}"))
    rows = [{"text": f"my bill number {i} is wrong" if i % 2 else f"the app crashes at step {i}", "label": ["technical", "billing"][i % 2]}
            for i in range(20)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "cloud.yaml").write_text(json.dumps({  # JSON is YAML
        "task": "classify", "name": "cloud",
        "model": {"name": str(model), "endpoint": {"base_url": provider.url, "name": BASE_MODEL, "max_retries": 2}},
        "data": {"train": "train.jsonl", "test_size": 0.3, "validation_size": 0.0},
        "train": {"backend": "openai", "output_dir": "runs"},
        "eval": {"baselines": ["base"], "bootstrap_samples": 100},
    }))
    return "cloud.yaml"


def _sweep(config: str, on_event=None):
    said = []

    def events(step, status, details):
        if step == "variant" and status == "warn":
            said.append(details["message"])
        if on_event is not None:
            on_event(step, status, details)

    return run_sweep(config, [], GRID, on_event=events), said


@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_a_variant_whose_job_the_provider_ended_is_started_again_as_a_new_job(provider, tmp_path, monkeypatch, tiny_model_dir, ending):
    config = _project(tmp_path, monkeypatch, provider, tiny_model_dir)

    def end_at_provider(step, status, details):
        if ending == "cancelled" and step == "train" and status == "event" and details.get("message") == "Fine-tuning job started":
            with provider.lock:
                provider.cancel("ftjob-1")  # in the provider's dashboard (or by the provider itself)

    provider.fail_jobs = ending == "failed"
    entries, _ = _sweep(config, end_at_provider)
    assert entries[0].outcome is None and ending in entries[0].error
    provider.fail_jobs = False
    entries, said = _sweep(config)
    assert entries[0].error is None and entries[0].outcome.tuned_metrics is not None
    assert list(provider.jobs) == ["ftjob-1", "ftjob-2"] and CloudJob.load(entries[0].outcome.run_dir).job_id == "ftjob-2"
    assert len(said) == 1 and "ftjob-1" in said[0] and ending in said[0] and "new job" in said[0] and "\n" not in said[0]
    # Once more: the finished variant is read back, no third job.
    entries, said = _sweep(config)
    assert entries[0].error is None and said == [] and list(provider.jobs) == ["ftjob-1", "ftjob-2"]


def test_a_variant_whose_job_the_user_cancelled_is_not_started_again(provider, tmp_path, monkeypatch, tiny_model_dir):
    from tunelab.tasks.pipeline import cancel_cloud_run

    config = _project(tmp_path, monkeypatch, provider, tiny_model_dir)
    cancelled = []

    def user_cancels(step, status, details):
        if step == "variant" and status == "start":
            cancelled.append(details["name"])
        if step == "train" and status == "event" and details.get("message") == "Fine-tuning job started":
            cancel_cloud_run(f"runs/{cancelled[0]}")  # `tunelab cancel RUN` (or the UI's Cancel) while the sweep follows it

    entries, _ = _sweep(config, user_cancels)
    assert entries[0].outcome is None and "cancelled" in entries[0].error
    for _ in range(2):  # as `tunelab run --resume RUN` does: refused, saying why, and never paid for again
        entries, said = _sweep(config)
        assert entries[0].outcome is None and "cancelled" in entries[0].error and "not resumed" in entries[0].error
        assert list(provider.jobs) == ["ftjob-1"] and not any("new job" in line for line in said)


def test_a_stopped_variant_whose_job_the_provider_cancelled_meanwhile_is_started_again_on_the_same_rerun(provider, tmp_path, monkeypatch,
                                                                                                         tiny_model_dir):
    config = _project(tmp_path, monkeypatch, provider, tiny_model_dir)

    def ctrl_c(step, status, details):
        if step == "train" and status == "event" and details.get("message") == "Fine-tuning job started":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _sweep(config, ctrl_c)
    with provider.lock:
        provider.cancel("ftjob-1")  # at the provider, while tunelab was stopped
    # The rerun continues the stopped variant, finds its job cancelled at the provider, and starts it again at once.
    entries, said = _sweep(config)
    assert entries[0].error is None and entries[0].outcome.tuned_metrics is not None
    assert list(provider.jobs) == ["ftjob-1", "ftjob-2"] and CloudJob.load(entries[0].outcome.run_dir).job_id == "ftjob-2"
    assert len(said) == 1 and "ftjob-1" in said[0] and "new job" in said[0]
