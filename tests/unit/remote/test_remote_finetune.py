"""`train.backend: openai` end to end against a local fine-tuning API server (fake_provider), through the official client."""

from __future__ import annotations

import json
import re

import pytest
from fake_provider import BASE_ANSWER

from tunelab.config import parse_config
from tunelab.errors import DataError
from tunelab.remote.finetune import CloudJob, CloudJobFailed, chat_lines, estimate_cloud_cost
from tunelab.runs import RunFolder
from tunelab.tasks.pipeline import run_pipeline

BASE_MODEL = "gpt-4o-mini-2024-07-18"
TEXTS = {
    "billing": ["my bill is wrong", "I was charged twice", "refund my invoice please", "the invoice amount is too high",
                "billing error on my card", "why is my bill so high", "wrong charge on invoice"],
    "technical": ["the app crashes on start", "I cannot login", "the screen freezes", "error when I open the app",
                  "login page is broken", "app freezes after update", "crash when saving"],
}


@pytest.fixture
def provider(cloud_provider):
    return cloud_provider


def cloud_config(tmp_path, provider, model, *, copies=1, data=None, **train):
    rows = [{"text": text + (f" ({copy})" if copy else ""), "label": label}
            for label, items in TEXTS.items() for text in items for copy in range(copies)]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return parse_config({
        "task": "classify", "name": "cloud", "model": {"name": str(model), "endpoint": {"base_url": provider.url, "name": BASE_MODEL, "max_retries": 5}},
        "data": {"train": str(path), "test_size": 0.3, "validation_size": 0.0, **(data or {})},
        "train": {"backend": "openai", "epochs": 2, "output_dir": str(tmp_path / "runs"), **train},
        "eval": {"baselines": ["base", "classical"], "bootstrap_samples": 200},
    })


def test_cloud_run_end_to_end_through_a_429_storm_and_a_dropped_connection(provider, tmp_path, tiny_model_dir):
    config = cloud_config(tmp_path, provider, tiny_model_dir)
    events = []

    def on_event(step, status, details):
        events.append((step, status, details))
        if step == "train" and status == "start":
            provider.rate_limit_next = 3  # the upload is refused three times (Retry-After honoured) ...
        if step == "train" and status == "event" and "started" in str(details.get("message")):
            provider.drop_next = 1  # ... and a connection drops while the job is followed

    outcome = run_pipeline(config, on_event=on_event)
    assert provider.count("POST", "/v1/files", 429) == 3 and any(status == 0 for _, _, status in provider.requests)
    assert provider.count("POST", "/v1/fine_tuning/jobs", 200) == 1  # one job, despite the retries
    job = CloudJob.load(outcome.run_dir)
    assert job.status == "succeeded" and job.fine_tuned_model.startswith(f"ft:{BASE_MODEL}:tunelab")
    # Every event reported once, oldest first.
    messages = [d["message"] for s, st, d in events if s == "train" and st == "event" and "id" in d]
    assert messages[0].startswith("Created fine-tuning job") and messages[-1] == "The job has successfully completed"
    assert len(messages) == len(set(messages)) == len(provider.events[job.job_id])
    # The price before the start: tokens x epochs x the dated per-training-token price of gpt-4o-mini.
    estimate = outcome.estimate
    assert estimate["epochs"] == 2 and estimate["usd"] == pytest.approx(estimate["tokens_per_epoch"] * 2 * 3.00 / 1e6)
    # Evaluated like any model, against the provider's base model (asked remotely) and the classical baseline.
    assert set(outcome.baseline_metrics) == {"remote:base", "classical"}
    assert outcome.tuned_metrics["accuracy"] > outcome.baseline_metrics["remote:base"]["accuracy"] == 0.0
    assert outcome.comparison is not None and outcome.registry_id
    from tunelab.evaluation.report import report_run

    assert set(report_run(outcome.run_dir)[0].comparisons) == {"remote:base", "classical"}  # `tunelab report RUN` finds it
    training = (outcome.run_dir / "cloud_train.jsonl").read_text().splitlines()
    assert all(json.loads(line)["messages"][-1]["role"] == "assistant" for line in training)
    from tunelab.registry.store import Registry

    record = Registry(tmp_path / "runs" / "registry.db").get_run(outcome.registry_id)
    assert record.status == "finished" and record.artifacts["train"]["fine_tuned_model"] == job.fine_tuned_model


def test_a_failed_job_is_one_clear_error_and_the_run_is_marked_failed(provider, tmp_path, tiny_model_dir):
    provider.fail_jobs = True
    config = cloud_config(tmp_path, provider, tiny_model_dir)
    with pytest.raises(CloudJobFailed, match="too many tokens"):
        run_pipeline(config)
    job = CloudJob.load(tmp_path / "runs" / "cloud")
    assert job.status == "failed" and "line 3" in job.error
    from tunelab.registry.store import Registry

    assert Registry(tmp_path / "runs" / "registry.db").list_runs()[0].status == "failed"


def test_following_resumes_after_ctrl_c_without_a_second_job(provider, tmp_path, tiny_model_dir):
    config = cloud_config(tmp_path, provider, tiny_model_dir)
    seen, warnings = [], []

    def interrupt(step, status, details):
        if step == "train" and status == "warn":
            warnings.append(details["message"])
        if step == "train" and status == "event" and "id" in details:
            seen.append(details["id"])
            if details["message"].startswith("Step 1"):
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(config, on_event=interrupt)
    run_dir = tmp_path / "runs" / "cloud"
    # Ctrl-C stops tunelab, not the provider's job: the user is told it goes on (and is billed), and how to stop it.
    assert len(warnings) == 1 and "ftjob-1 keeps running" in warnings[0] and "billed" in warnings[0] and "--resume" in warnings[0]
    assert RunFolder(run_dir).cloud_job.is_file() and CloudJob.load(run_dir).status == "running"
    resumed = []
    outcome = run_pipeline(resume=run_dir, on_event=lambda s, st, d: resumed.append(d.get("id")) if s == "train" and st == "event" else None)
    assert provider.count("POST", "/v1/fine_tuning/jobs") == 1
    assert CloudJob.load(run_dir).status == "succeeded" and outcome.tuned_metrics is not None
    # The events after the interruption, each once: none of those already reported comes again.
    new = [event for event in resumed if event]
    assert not set(new) & set(seen) and len(seen) + len(new) == len(provider.events["ftjob-1"])


def test_chat_file_validation_and_an_unknown_price():
    with pytest.raises(DataError, match="at least 10"):
        chat_lines([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]] * 3)
    with pytest.raises(DataError, match="non-empty assistant"):
        chat_lines([[{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]] * 10)
    rows = chat_lines([[{"role": "user", "content": "abcd" * 10}, {"role": "assistant", "content": "abcd"}]] * 10)
    known = estimate_cloud_cost(rows, 3, "gpt-4o-mini")
    assert known.tokens_per_epoch == 10 * ((10 + 4) + (1 + 4)) and known.usd == pytest.approx(known.training_tokens * 3.0 / 1e6)
    assert estimate_cloud_cost(rows, 3, "some-model-nobody-prices").usd is None  # unknown, never 0


def test_over_budget_stops_before_anything_is_uploaded(provider, tmp_path, tiny_model_dir):
    from tunelab.tasks.pipeline import BudgetExceeded

    config = cloud_config(tmp_path, provider, tiny_model_dir).model_copy(update={})
    config = parse_config({**config.model_dump(mode="json"), "budget": {"max_usd": 1e-9}})
    with pytest.raises(BudgetExceeded, match="budget.max_usd") as first:
        run_pipeline(config)
    assert not re.search(r"\$0\.00(?!\d)", str(first.value))  # a tiny price is written with its digits, never "$0.00"
    assert provider.count("POST", "/v1/files") == 0
    # A resume (its config, and so its budget, is pipeline.json's) stops the same way: nothing is uploaded.
    with pytest.raises(BudgetExceeded, match="budget.max_usd") as stopped:
        run_pipeline(resume=tmp_path / "runs" / "cloud")
    assert provider.count("POST", "/v1/files") == 0 and provider.count("POST", "/v1/fine_tuning/jobs") == 0
    # As for a local run: the hint is one a user can follow (a resume cannot raise the limit, and the name is taken).
    assert "new run (another name=...)" in stopped.value.hint


def test_base_answers_are_the_providers(provider):
    import openai

    client = openai.OpenAI(base_url=provider.url, api_key="x", max_retries=0)
    answer = client.chat.completions.create(model=BASE_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == BASE_ANSWER


# ------------------------------------------------------------------ real money: one job per run, one upload per file

JOBS = "POST /v1/fine_tuning/jobs"


def other_job(provider) -> str:
    """A job of someone else's on the same account (another run, another file): never taken for this run's."""
    import openai

    client = openai.OpenAI(base_url=provider.url, api_key="x", max_retries=0)
    lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": "a"}]}) + "\n" for n in range(10))
    uploaded = client.files.create(file=("other.jsonl", lines.encode()), purpose="fine-tune")
    return client.fine_tuning.jobs.create(model=BASE_MODEL, training_file=uploaded.id).id


@pytest.mark.parametrize("lost", [0, 500], ids=["connection dropped", "HTTP 500"])
def test_a_lost_reply_to_the_job_creation_never_pays_for_a_second_job(provider, tmp_path, tiny_model_dir, lost):
    # The provider creates the job, then the reply is lost: asking again would create (and bill) a second one.
    others = [other_job(provider) for _ in range(3)]
    provider.lose_reply[JOBS] = [lost]
    outcome = run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    ours = [job_id for job_id in provider.jobs if job_id not in others]
    assert len(ours) == 1 and provider.count("POST", "/v1/fine_tuning/jobs") == 1 + len(others)
    job = CloudJob.load(outcome.run_dir)
    assert job.job_id == ours[0] and job.status == "succeeded" and outcome.train["job_id"] == ours[0]
    assert all(provider.jobs[other]["job"]["status"] == "validating_files" for other in others)  # never followed as ours


def test_a_rate_limited_job_creation_is_asked_again_once_it_is_allowed(provider, tmp_path, tiny_model_dir):
    # A 429 is refused before anything is done: asking again is safe (and what the client's retries did).
    provider.refuse_next[JOBS] = [429, 429]
    outcome = run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    assert provider.count("POST", "/v1/fine_tuning/jobs", 429) == 2 and len(provider.jobs) == 1
    assert CloudJob.load(outcome.run_dir).status == "succeeded"


def test_uploaded_files_are_kept_when_the_job_cannot_be_created_and_reused_on_resume(provider, tmp_path, tiny_model_dir):
    from tunelab.remote.client import RemoteError

    config = cloud_config(tmp_path, provider, tiny_model_dir, copies=2, data={"validation_size": 0.2})
    provider.refuse_next[JOBS] = [0] * 20  # the provider cannot be reached for the creation, whatever the retries
    with pytest.raises(RemoteError) as stopped:
        run_pipeline(config)
    run_dir = tmp_path / "runs" / "cloud"
    saved = CloudJob.load(run_dir)  # the files' ids, saved as each upload returned
    assert saved is not None and saved.job_id is None and not provider.jobs and "--resume" in str(stopped.value)
    assert {saved.training_file, saved.validation_file} == set(provider.files) and len(provider.files) == 2
    provider.refuse_next[JOBS] = []
    outcome = run_pipeline(resume=run_dir)
    assert provider.count("POST", "/v1/files") == 2 and len(provider.jobs) == 1  # nothing uploaded twice
    job = CloudJob.load(run_dir)
    assert (job.training_file, job.validation_file) == (saved.training_file, saved.validation_file) and outcome.tuned_metrics is not None
    # Every request that could create the job carried the same key, so a provider that honours Idempotency-Key
    # recognises the one asked again.
    assert len(provider.idempotency_keys) >= 2 and len(set(provider.idempotency_keys)) == 1 and None not in provider.idempotency_keys


def test_a_file_deleted_on_the_provider_is_uploaded_again_on_resume(provider, tmp_path, tiny_model_dir):
    from tunelab.remote.client import RemoteError

    provider.refuse_next[JOBS] = [0] * 20
    with pytest.raises(RemoteError):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    run_dir = tmp_path / "runs" / "cloud"
    del provider.files[CloudJob.load(run_dir).training_file]  # the user cleaned the provider's storage
    provider.refuse_next[JOBS] = []
    run_pipeline(resume=run_dir)
    job = CloudJob.load(run_dir)
    assert job.status == "succeeded" and job.training_file in provider.files and provider.count("POST", "/v1/files", 200) == 2


def test_a_resume_finds_the_job_whose_creation_it_never_heard_of(provider, tmp_path, tiny_model_dir):
    # The job is created, its reply lost, and the provider cannot be asked which jobs it has (or the process is
    # killed there): the run stops, saying so; the resume finds that job and follows it, creating none.
    from tunelab.remote.client import RemoteError

    provider.lose_reply[JOBS] = [0]
    provider.refuse_next["GET /v1/fine_tuning/jobs"] = [0] * 20
    with pytest.raises(RemoteError, match="--resume"):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    run_dir = tmp_path / "runs" / "cloud"
    assert list(provider.jobs) == ["ftjob-1"] and CloudJob.load(run_dir).job_id is None
    provider.refuse_next = {}
    events = []
    outcome = run_pipeline(resume=run_dir, on_event=lambda s, st, d: events.append(d) if s == "train" and st == "event" else None)
    assert provider.count("POST", "/v1/fine_tuning/jobs") == 1 and list(provider.jobs) == ["ftjob-1"]
    assert CloudJob.load(run_dir).job_id == "ftjob-1" and outcome.train["job_id"] == "ftjob-1"
    assert "ftjob-1" in events[0]["message"] and provider.count("POST", "/v1/files") == 1


def test_an_early_resume_waits_for_a_lagging_job_list_before_it_asks_for_a_second_job(provider, tmp_path, tiny_model_dir, monkeypatch):
    # The job is created, its reply lost and the list unreadable (or the process killed there); the user resumes at
    # once, while the provider does not list the new job yet: asking again then creates (and bills) a second job.
    from tunelab.remote.client import RemoteError

    provider.lose_reply[JOBS] = [0]
    provider.refuse_next["GET /v1/fine_tuning/jobs"] = [0] * 20
    provider.list_lag = 3
    monkeypatch.setattr("tunelab.remote.finetune.LIST_LAG_S", 60.0)  # the default: looked for until it is listed
    with pytest.raises(RemoteError, match="--resume"):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    run_dir = tmp_path / "runs" / "cloud"
    provider.refuse_next = {}
    outcome = run_pipeline(resume=run_dir)
    assert list(provider.jobs) == ["ftjob-1"] and provider.count("POST", "/v1/fine_tuning/jobs") == 1
    assert CloudJob.load(run_dir).job_id == "ftjob-1" and outcome.train["job_id"] == "ftjob-1"


@pytest.mark.parametrize("lost", [0, 500], ids=["connection dropped", "HTTP 500"])
def test_an_upload_whose_reply_is_lost_is_stored_once_at_the_provider(provider, tmp_path, tiny_model_dir, lost):
    # The provider stores the training file, then the reply is lost: uploading it again stored a second copy.
    provider.lose_reply["POST /v1/files"] = [lost]
    outcome = run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    job = CloudJob.load(outcome.run_dir)
    assert list(provider.files) == [job.training_file] and job.status == "succeeded"


def test_a_resume_finds_the_upload_it_never_heard_back_from(provider, tmp_path, tiny_model_dir):
    # The file is stored, its reply lost, and the file list cannot be read (or the process is killed there): the run
    # stops, and the resume finds that file by its name rather than store a second copy.
    from tunelab.remote.client import RemoteError

    provider.lose_reply["POST /v1/files"] = [0]
    provider.refuse_next["GET /v1/files"] = [0] * 20
    with pytest.raises(RemoteError, match="--resume"):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    assert list(provider.files) == ["file-1"]
    provider.refuse_next = {}
    outcome = run_pipeline(resume=tmp_path / "runs" / "cloud")
    assert list(provider.files) == ["file-1"] and CloudJob.load(outcome.run_dir).training_file == "file-1"
    assert provider.count("POST", "/v1/files") == 1 and len(provider.jobs) == 1


def test_a_failed_job_is_never_started_again_by_a_resume(provider, tmp_path, tiny_model_dir):
    provider.fail_jobs = True
    with pytest.raises(CloudJobFailed, match="too many tokens"):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    with pytest.raises(CloudJobFailed, match="too many tokens"):
        run_pipeline(resume=tmp_path / "runs" / "cloud")
    assert provider.count("POST", "/v1/fine_tuning/jobs") == 1 and provider.count("POST", "/v1/files") == 1


def test_a_job_cancelled_on_the_provider_is_one_clear_error_and_not_started_again(provider, tmp_path, tiny_model_dir):
    def cancel(step, status, details):
        if step == "train" and status == "event" and "started" in str(details.get("message")):
            with provider.lock:
                provider.cancel("ftjob-1")  # in the provider's dashboard

    with pytest.raises(CloudJobFailed, match="cancelled"):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir), on_event=cancel)
    with pytest.raises(CloudJobFailed, match="cancelled"):
        run_pipeline(resume=tmp_path / "runs" / "cloud")
    assert provider.count("POST", "/v1/fine_tuning/jobs") == 1
    from tunelab.registry.store import Registry

    # Cancelled at the provider: the row says so, not that the run broke.
    assert Registry(tmp_path / "runs" / "registry.db").get_run("cloud").status == "cancelled"


def test_a_refused_job_creation_is_one_error_and_a_resume_asks_once_more_with_the_same_files(provider, tmp_path, tiny_model_dir):
    from tunelab.remote.client import RemoteError

    provider.refuse_next[JOBS] = [400]  # refused outright: no job was made, nothing to look for
    with pytest.raises(RemoteError, match=r"refused the fine-tuning job \(HTTP 400\)"):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    run_dir = tmp_path / "runs" / "cloud"
    assert provider.count("GET", "/v1/fine_tuning/jobs") == 0 and CloudJob.load(run_dir).status == "uploaded"
    run_pipeline(resume=run_dir)
    assert provider.count("POST", "/v1/files") == 1 and len(provider.jobs) == 1 and CloudJob.load(run_dir).status == "succeeded"


@pytest.mark.parametrize("newest_first", [True, False], ids=["newest first", "oldest first"])
def test_the_job_of_a_lost_reply_is_found_whatever_order_the_provider_lists_jobs_in(newest_first):
    # A provider listing oldest first must be searched to the end: stopping at its first (old, someone else's) job
    # would miss this run's job, and a resume would then ask for, and pay for, a second one.
    from types import SimpleNamespace

    from tunelab.remote.finetune import _find_job

    jobs = [SimpleNamespace(id="ftjob-a", created_at=10, training_file="file-other"),
            SimpleNamespace(id="ftjob-b", created_at=50, training_file="file-other"),
            SimpleNamespace(id="ftjob-mine", created_at=120, training_file="file-mine")]
    listed = list(reversed(jobs)) if newest_first else jobs
    client = SimpleNamespace(fine_tuning=SimpleNamespace(jobs=SimpleNamespace(list=lambda limit: iter(listed))))
    record = CloudJob(base_url="x", model=BASE_MODEL, training_file="file-mine", uploaded_at=100)
    found = _find_job(client, record)
    assert found is not None and found.id == "ftjob-mine"


def interrupted_cloud_run(provider, tmp_path, model, warnings=None):
    """A cloud run stopped by Ctrl-C while its job runs at the provider (and is billed): its run folder."""
    def interrupt(step, status, details):
        if step == "train" and status == "warn" and warnings is not None:
            warnings.append(details["message"])
        if step == "train" and status == "event" and str(details.get("message")).startswith("Step 1"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cloud_config(tmp_path, provider, model), on_event=interrupt)
    return tmp_path / "runs" / "cloud"


def test_tunelab_cancel_stops_the_providers_job_and_a_resume_starts_no_other(provider, tmp_path, tiny_model_dir):
    from tunelab.registry.store import Registry
    from tunelab.tasks.pipeline import cancel_cloud_run

    warnings = []
    run_dir = interrupted_cloud_run(provider, tmp_path, tiny_model_dir, warnings)
    # The Ctrl-C warning names the command that stops the spending.
    assert f"`tunelab cancel {run_dir}`" in warnings[0] and provider.jobs["ftjob-1"]["job"]["status"] == "running"
    registry = Registry(tmp_path / "runs" / "registry.db")
    # While another process works in the run folder (following the job), only the provider is asked: that process
    # records the cancel itself, and two writers of cloud_job.json would lose each other's events.
    import subprocess
    import sys
    import time

    from tunelab.paths import run_folder_holder

    holder = subprocess.Popen([sys.executable, "-c", f"import time; from tunelab.paths import lock_run_folder; lock_run_folder({str(run_dir)!r}); "
                                                     "time.sleep(120)"])
    try:
        deadline = time.monotonic() + 60
        while run_folder_holder(run_dir) != holder.pid and time.monotonic() < deadline:
            time.sleep(0.05)
        meanwhile = cancel_cloud_run(run_dir)
    finally:
        holder.kill()
        holder.wait()
    assert (meanwhile.outcome, meanwhile.following_pid) == ("cancelled", holder.pid) and f"process {holder.pid}" in meanwhile.summary
    assert provider.jobs["ftjob-1"]["job"]["status"] == "cancelled"
    assert CloudJob.load(run_dir).status == "running" and registry.list_runs()[0].status == "cancelled"  # Ctrl-C
    cancelled = cancel_cloud_run(run_dir)  # the folder free: recorded there and in the registry
    assert (cancelled.outcome, cancelled.job_id, cancelled.status) == ("cancelled", "ftjob-1", "cancelled")
    assert "ftjob-1" in cancelled.summary and "cancelled" in cancelled.summary and "\n" not in cancelled.summary
    assert provider.jobs["ftjob-1"]["job"]["status"] == "cancelled" and provider.count("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel", 200) == 2
    assert CloudJob.load(run_dir).status == "cancelled"
    row = registry.list_runs()[0]
    assert row.status == "cancelled" and "cancelled" in row.error and "ftjob-1" in row.error
    # Again: it says the job has ended, and asks the provider nothing.
    again = cancel_cloud_run(run_dir)
    assert (again.outcome, again.status) == ("finished", "cancelled") and "already" in again.summary
    assert provider.count("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel") == 2
    # A resume never starts a new job for a cancelled run.
    with pytest.raises(CloudJobFailed, match="cancelled"):
        run_pipeline(resume=run_dir)
    assert list(provider.jobs) == ["ftjob-1"] and provider.count("POST", "/v1/files") == 1
    row = registry.list_runs()[0]
    assert row.status == "cancelled" and "cancelled" in row.error


def test_cancel_says_when_there_is_nothing_to_cancel_and_a_refusal_is_one_line(provider, tmp_path, tiny_model_dir):
    from tunelab.remote.client import RemoteError
    from tunelab.remote.finetune import cancel_job
    from tunelab.tasks.pipeline import cancel_cloud_run

    for name in "abc":
        (tmp_path / name).mkdir()
    # Only the uploads: no job was made, nothing is billed for training.
    provider.refuse_next[JOBS] = [400]
    with pytest.raises(RemoteError):
        run_pipeline(cloud_config(tmp_path / "a", provider, tiny_model_dir))
    nothing = cancel_cloud_run(tmp_path / "a" / "runs" / "cloud")
    assert (nothing.outcome, nothing.job_id) == ("no-job", None) and "nothing to cancel" in nothing.summary
    # A finished job: said so, nothing asked of the provider but its state.
    done = run_pipeline(cloud_config(tmp_path / "b", provider, tiny_model_dir))
    finished = cancel_cloud_run(done.run_dir)
    assert (finished.outcome, finished.status) == ("finished", "succeeded") and "succeeded" in finished.summary
    assert provider.count("POST", "/v1/fine_tuning/jobs/ftjob-1/cancel") == 0 and CloudJob.load(done.run_dir).status == "succeeded"
    # The provider refusing, or out of reach: one line, the job left as it was recorded.
    run_dir = interrupted_cloud_run(provider, tmp_path / "c", tiny_model_dir)
    job_id = CloudJob.load(run_dir).job_id
    provider.refuse_next[f"POST /v1/fine_tuning/jobs/{job_id}/cancel"] = [403]
    with pytest.raises(RemoteError, match=r"refused to cancel .*HTTP 403") as refused:
        cancel_cloud_run(run_dir)
    assert "\n" not in refused.value.message
    endpoint = cloud_config(tmp_path / "c", provider, tiny_model_dir).model.endpoint.model_copy(update={"max_retries": 0})
    provider.refuse_next[f"POST /v1/fine_tuning/jobs/{job_id}/cancel"] = [0]
    with pytest.raises(RemoteError, match="cannot reach") as unreachable:
        cancel_job(endpoint, run_dir)
    assert "\n" not in unreachable.value.message
    assert CloudJob.load(run_dir).status == "running" and provider.jobs[job_id]["job"]["status"] == "running"
    # It ended meanwhile, and the provider refuses to cancel an ended job: said so, its state recorded.
    provider.jobs[job_id]["job"].update(status="succeeded", fine_tuned_model=f"ft:{BASE_MODEL}:tunelab:x:1")
    provider.refuse_next[f"POST /v1/fine_tuning/jobs/{job_id}/cancel"] = [400]
    ended = cancel_cloud_run(run_dir)
    assert (ended.outcome, ended.status) == ("finished", "succeeded") and CloudJob.load(run_dir).status == "succeeded"


def test_cancel_finds_and_cancels_a_job_whose_creation_had_no_answer(provider, tmp_path, tiny_model_dir):
    # The job was made but the run never heard of it: "nothing to cancel" would leave it billing.
    from tunelab.remote.client import RemoteError
    from tunelab.tasks.pipeline import cancel_cloud_run

    provider.lose_reply[JOBS] = [0]
    provider.refuse_next["GET /v1/fine_tuning/jobs"] = [0] * 20
    with pytest.raises(RemoteError):
        run_pipeline(cloud_config(tmp_path, provider, tiny_model_dir))
    run_dir = tmp_path / "runs" / "cloud"
    assert CloudJob.load(run_dir).job_id is None
    provider.refuse_next = {}
    cancelled = cancel_cloud_run(run_dir)
    assert (cancelled.outcome, cancelled.job_id) == ("cancelled", "ftjob-1") and provider.jobs["ftjob-1"]["job"]["status"] == "cancelled"
    assert CloudJob.load(run_dir).job_id == "ftjob-1"
    with pytest.raises(CloudJobFailed, match="cancelled"):
        run_pipeline(resume=run_dir)
    assert list(provider.jobs) == ["ftjob-1"]


def test_the_cancel_command_and_its_mistakes(provider, tmp_path, tiny_model_dir):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.errors import TunelabError

    if not any(command.name == "cancel" for command in app.registered_commands):
        _register_commands()
    run_dir = interrupted_cloud_run(provider, tmp_path, tiny_model_dir)
    shown = CliRunner().invoke(app, ["cancel", str(run_dir)])
    assert shown.exit_code == 0 and "ftjob-1" in shown.output and "cancelled" in shown.output, shown.output
    assert provider.jobs["ftjob-1"]["job"]["status"] == "cancelled"
    as_json = CliRunner().invoke(app, ["cancel", str(run_dir), "--json"])
    assert json.loads(as_json.output)["outcome"] == "finished"
    missing = CliRunner().invoke(app, ["cancel", str(tmp_path / "no-such-run")])
    assert isinstance(missing.exception, TunelabError) and "no run folder" in str(missing.exception)
    # A run trained here (not by a provider): one line, naming what it is.
    local = tmp_path / "runs" / "local"
    local.mkdir()
    state = json.loads(RunFolder(run_dir).pipeline_state.read_text())
    state["config"]["train"]["backend"] = "local"
    state.pop("registry_id", None)
    RunFolder(local).pipeline_state.write_text(json.dumps(state))
    refused = CliRunner().invoke(app, ["cancel", str(local)])
    assert isinstance(refused.exception, TunelabError) and "not" in str(refused.exception) and "openai" in str(refused.exception)
    assert refused.exception.exit_code == 2 and "\n" not in refused.exception.message
