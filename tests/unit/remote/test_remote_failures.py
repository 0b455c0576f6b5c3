"""A remote endpoint that misbehaves, on the loopback: each request gets the next scripted response.

What a user must see: a failed request is an ``Answer`` with a one-line ``error`` (never an exception out
of a batch, never cached as if the model had answered), and the API key appears in no error.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelab.config import EndpointConfig
from tunelab.remote.cache import RequestCache
from tunelab.remote.client import RemoteClient

KEY = "sk-test-0123456789abcdef"


def completion(text: str, finish_reason: str = "stop", usage: bool = True) -> tuple[int, str, str]:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "teacher",
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text}}]}
    if usage:
        body["usage"] = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    return 200, "application/json", json.dumps(body)


class Scripted:
    """Answers chat requests with ``script`` in order (the last one repeats); ``seen`` counts them."""

    def __init__(self) -> None:
        self.script: list = [completion("fine")]
        self.seen = 0
        self.lock = threading.Lock()

    def next(self, request: BaseHTTPRequestHandler) -> tuple[int, str, str]:
        with self.lock:
            self.seen += 1
            item = self.script[min(self.seen - 1, len(self.script) - 1)]
        return item(request) if callable(item) else item


@pytest.fixture
def scripted():
    state = Scripted()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            status, content_type, text, *headers = state.next(self)
            data = text.encode()
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(data)))
            for name, value in (headers[0] if headers else {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST  # /models (RemoteClient.check) gets the script too

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def client_for(scripted, tmp_path, monkeypatch, name: str = "teacher", retries: int = 0) -> RemoteClient:
    monkeypatch.setenv("TEACHER_KEY", KEY)
    endpoint = EndpointConfig(base_url=scripted.url, name=name, api_key_env="TEACHER_KEY", max_retries=retries, timeout_s=5)
    return RemoteClient(endpoint, cache=RequestCache(tmp_path / "requests.db"))


ASK = [{"role": "user", "content": "What is two plus two?"}]
NOT_COMPLETIONS = {
    "a 200 with an error object": (200, "application/json", json.dumps({"error": {"message": "upstream overloaded", "code": 502}})),
    "a 200 without choices": (200, "application/json", json.dumps({"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": []})),
    "an HTML page with 200": (200, "text/html", "<html>\n<body>\n<h1>Sign in to the proxy</h1>\n</body>\n</html>\n"),
    "invalid JSON with 200": (200, "application/json", '{"id": "chatcmpl-1", "choices": ['),
}


@pytest.mark.parametrize("case", sorted(NOT_COMPLETIONS))
def test_a_200_that_is_not_a_completion_is_a_failed_request_and_never_cached(scripted, tmp_path, monkeypatch, case):
    client = client_for(scripted, tmp_path, monkeypatch)
    scripted.script = [NOT_COMPLETIONS[case], completion("four")]
    answers = client.chat_many([ASK], max_tokens=8)  # no exception out of the batch
    assert answers[0].text is None and answers[0].error and "\n" not in answers[0].error
    assert len(client.cache) == 0
    # Asked again, the request reaches the server (nothing was cached) and the real answer comes back.
    assert client.chat_many([ASK], max_tokens=8)[0].text == "four" and scripted.seen == 2


def test_the_200_error_object_names_the_servers_message(scripted, tmp_path, monkeypatch):
    client = client_for(scripted, tmp_path, monkeypatch)
    scripted.script = [NOT_COMPLETIONS["a 200 with an error object"]]
    assert "upstream overloaded" in client.chat_many([ASK], max_tokens=8)[0].error


def test_the_api_key_is_in_no_error_even_when_the_server_echoes_it(scripted, tmp_path, monkeypatch):
    from tunelab.remote.client import RemoteError

    def echo(request):
        return 401, "application/json", json.dumps({"error": {"message": f"invalid key: {request.headers['authorization']}"}})

    client = client_for(scripted, tmp_path, monkeypatch)
    scripted.script = [echo]
    error = client.chat_many([ASK], max_tokens=8)[0].error
    assert error.startswith("HTTP 401") and KEY not in error
    # check() says the key was refused, not what it is.
    with pytest.raises(RemoteError) as raised:
        client.check()
    assert KEY not in raised.value.message


def test_a_failed_request_does_not_make_the_distillation_cost_unknown(scripted, tmp_path, monkeypatch):
    from tunelab.config import parse_config
    from tunelab.evaluation.answering import RemoteModel
    from tunelab.tasks.distill import TeacherInput, ask_teacher, distillation_cost

    client = client_for(scripted, tmp_path, monkeypatch, name="gpt-4o-mini")  # priced in the bundled table
    assert client.price is not None
    scripted.script = [completion("fine"), (500, "application/json", json.dumps({"error": {"message": "boom"}})), completion("fine")]
    client.concurrency = 1
    config = parse_config({"task": "sft", "data": {"train": "unused.jsonl"}, "distill": {"teacher": "openai:gpt-4o-mini"}})
    inputs = [TeacherInput(f"id{i}", f"row {i}", messages=({"role": "user", "content": f"question {i}"},)) for i in range(3)]
    lines = ask_teacher(RemoteModel(client), inputs, config, [], tmp_path / "distill.jsonl")
    assert sorted(line.status for line in lines.values()) == ["ok", "ok", "rejected"]
    # The failed request cost nothing; the two answers cost what the price table says.
    assert distillation_cost(lines.values()) == pytest.approx(2 * client.price.cost(10, 5))


def test_teacher_answers_cut_at_max_new_tokens_are_marked_and_named(scripted, tmp_path, monkeypatch):
    from tunelab.config import parse_config
    from tunelab.evaluation.answering import RemoteModel
    from tunelab.tasks.distill import TeacherInput, ask_teacher, cut_answers_warning, read_distill_file

    client = client_for(scripted, tmp_path, monkeypatch)
    client.concurrency = 1
    scripted.script = [completion("The answer is a long story that", finish_reason="length"), completion("It is four.")]
    config = parse_config({"task": "sft", "data": {"train": "unused.jsonl"}, "eval": {"max_new_tokens": 7}, "distill": {"teacher": "openai:x"}})
    inputs = [TeacherInput(f"id{i}", f"row {i}", messages=({"role": "user", "content": f"question {i}"},)) for i in range(2)]
    ask_teacher(RemoteModel(client), inputs, config, [], tmp_path / "distill.jsonl")
    lines = read_distill_file(tmp_path / "distill.jsonl")  # what a resume reads back
    assert lines["id0"].finish_reason == "length" and lines["id1"].finish_reason == "stop"
    warning = cut_answers_warning(lines.values(), config)
    assert warning is not None and warning.startswith("1 of 2 teacher answers") and "eval.max_new_tokens (7 tokens)" in warning
    assert "row 0" in warning and "row 1" not in warning


def test_a_damaged_request_cache_is_one_clear_error(tmp_path):
    from tunelab.errors import TunelabError

    path = tmp_path / "requests.db"
    path.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(TunelabError) as raised:
        RequestCache(path)
    assert str(path) in raised.value.message and "TUNELAB_REMOTE_CACHE" in (raised.value.hint or "")


def test_a_folder_as_the_request_cache_is_never_to_be_deleted(tmp_path):
    # $TUNELAB_REMOTE_CACHE=~/.cache/tunelab (a folder, like $TUNELAB_CACHE) was told "fix: delete it".
    from tunelab.errors import TunelabError

    folder = tmp_path / "cache"
    (folder / "keep.txt").parent.mkdir()
    (folder / "keep.txt").write_text("a user's files")
    with pytest.raises(TunelabError) as raised:
        RequestCache(folder)
    assert "folder" in raised.value.message and "delete" not in (raised.value.hint or "")
    assert str(folder / "requests.db") in (raised.value.hint or "")


def test_answers_without_usage_make_the_cost_unknown_not_zero(scripted, tmp_path, monkeypatch):
    client = client_for(scripted, tmp_path, monkeypatch, name="gpt-4o-mini")  # priced in the bundled table
    scripted.script = [completion("four", usage=False)]
    usage = client.usage(client.chat_many([ASK], max_tokens=8))
    assert usage.cost_usd is None and usage.paid_usd is None and usage.cost_per_1000_requests is None


def test_a_teacher_failing_midway_stops_before_the_student_trains_and_resume_asks_only_the_failed(scripted, tmp_path, tiny_model_dir):
    # The teacher answered 4 prompts, then every request was a 500: the student trained and was registered on those 4
    # answers, then the run failed at the teacher's evaluation; a resume once the teacher was back asked the rest, but the
    # student's finished steps were not run again, so it never learned them.
    from tunelab.config import parse_config
    from tunelab.remote.client import RemoteError
    from tunelab.runs import RunFolder
    from tunelab.tasks.distill import read_distill_file, run_distill

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"What is {i} plus one?", "completion": f"It is {i + 1}."}) + "\n" for i in range(14)))
    config = parse_config({
        "task": "sft", "name": "distilled", "model": str(tiny_model_dir),
        "data": {"train": str(train), "test_size": 0.3, "validation_size": 0.15, "max_length": 64},
        "train": {"max_steps": 2, "batch_size": 4, "output_dir": str(tmp_path / "runs"), "threads": 1},
        "eval": {"max_new_tokens": 6, "baselines": ["base"], "bootstrap_samples": 200},
        "distill": {"teacher": {"base_url": scripted.url, "name": "teacher", "max_retries": 0, "timeout_s": 5}, "concurrency": 1},
    })
    # The first request is open_model's check of the endpoint (GET /models gets the script too), then 4 answers.
    scripted.script = [completion("It is a number.")] * 5 + [(500, "application/json", json.dumps({"error": {"message": "boom"}}))]
    with pytest.raises(RemoteError) as raised:
        run_distill(config, calibrate=False)
    run = tmp_path / "runs" / "distilled"
    message = raised.value.message + " " + (raised.value.hint or "")
    assert "\n" not in message and "HTTP 500" in message and f"tunelab distill --resume {run}" in message
    lines = read_distill_file(run / "distill.jsonl")
    asked = len(lines)
    assert sum(line.status == "ok" for line in lines.values()) == 4  # what came back is kept
    assert not RunFolder(run).adapter.exists() and not RunFolder(run).pipeline_state.exists()  # no student on a partial dataset

    scripted.script, scripted.seen = [completion("It is a number.")], 0
    outcome = run_distill(resume=run, calibrate=False)
    # Only the failed prompts are asked again (after the check, before the teacher's evaluation on the test prompts).
    assert scripted.seen == 1 + (asked - 4) + outcome.report["n"]
    assert outcome.accepted == asked and len((run / "distill" / "train.jsonl").read_text().splitlines()) == asked
    split = json.loads((run / "split.json").read_text())
    assert split["sizes"]["train"] + split["sizes"]["validation"] == asked


def chat_body(choices: object, usage: object = None) -> tuple[int, str, str]:
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "teacher", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return 200, "application/json", json.dumps(body)


SPOILT_COMPLETIONS = {
    "choices is a string": chat_body("four"),
    "a choice is null": chat_body([None]),
    "the message is a string": chat_body([{"index": 0, "finish_reason": "stop", "message": "four"}]),
    "the content is a list of parts": chat_body([{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": [{"type": "text", "text": "four"}]}}]),
    "usage is a string": chat_body([{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "four"}}], usage="lots"),
}


@pytest.mark.parametrize("case", sorted(SPOILT_COMPLETIONS))
def test_a_completion_of_the_wrong_shape_is_one_failed_request_not_a_crash_of_the_batch(scripted, tmp_path, monkeypatch, case):
    # A gateway's completion whose fields have the wrong types raised AttributeError (or sqlite's ProgrammingError when
    # the cache stored a list as text) out of chat_many: the whole evaluation or distillation died on one answer.
    client = client_for(scripted, tmp_path, monkeypatch)
    scripted.script = [SPOILT_COMPLETIONS[case], completion("four")]
    answers = client.chat_many([ASK], max_tokens=8)
    assert answers[0].text is None and answers[0].error.startswith("HTTP 200") and "\n" not in answers[0].error
    assert len(client.cache) == 0
    assert client.chat_many([ASK], max_tokens=8)[0].text == "four"


def test_an_error_status_with_a_plain_text_body_names_the_servers_text(scripted, tmp_path, monkeypatch):
    # A proxy's "HTTP 502" page in plain text came out as "HTTP 502: Error code: 502": what the server said was lost.
    client = client_for(scripted, tmp_path, monkeypatch)
    scripted.script = [(502, "text/plain", "upstream connect error or disconnect/reset before headers\n")]
    error = client.chat_many([ASK], max_tokens=8)[0].error
    assert error.startswith("HTTP 502") and "upstream connect error" in error and "\n" not in error


@pytest.mark.parametrize("text", ["The first half of the answer, then", ""])
def test_a_teacher_answer_stopped_by_the_content_filter_is_rejected_and_named(scripted, tmp_path, monkeypatch, text):
    # finish_reason "content_filter": the provider cut (or blanked) the answer; the student learned the cut text as an answer.
    from tunelab.config import parse_config
    from tunelab.evaluation.answering import RemoteModel
    from tunelab.tasks.distill import TeacherInput, ask_teacher

    client = client_for(scripted, tmp_path, monkeypatch)
    client.concurrency = 1
    scripted.script = [completion(text, finish_reason="content_filter"), completion("It is four.")]
    config = parse_config({"task": "sft", "data": {"train": "unused.jsonl"}, "distill": {"teacher": "openai:x"}})
    inputs = [TeacherInput(f"id{i}", f"row {i}", messages=({"role": "user", "content": f"question {i}"},)) for i in range(2)]
    lines = ask_teacher(RemoteModel(client), inputs, config, [], tmp_path / "distill.jsonl")
    assert lines["id0"].status == "rejected" and "content filter" in lines["id0"].reason and not lines["id0"].retry
    assert lines["id1"].status == "ok"


def test_a_timeout_names_the_setting_that_bounds_it(scripted, tmp_path, monkeypatch):
    # "APITimeoutError: Request timed out." told a user neither how long was waited nor which key to raise.
    import time

    def slow(request):
        time.sleep(1.5)
        return completion("late")

    monkeypatch.setenv("TEACHER_KEY", KEY)
    endpoint = EndpointConfig(base_url=scripted.url, name="teacher", api_key_env="TEACHER_KEY", max_retries=0, timeout_s=0.5)
    client = RemoteClient(endpoint, cache=RequestCache(tmp_path / "requests.db"))
    scripted.script = [slow]
    error = client.chat_many([ASK], max_tokens=8)[0].error
    assert "timeout_s" in error and "0.5" in error and "\n" not in error


def test_a_classify_teacher_answer_outside_the_labels_is_rejected_naming_what_it_said(scripted, tmp_path, monkeypatch):
    # The rejected line said only "names no category of 2": the user could not tell a chatty teacher from one that
    # answers with a category the data does not have.
    from tunelab.config import parse_config
    from tunelab.evaluation.answering import RemoteModel
    from tunelab.tasks.distill import TeacherInput, ask_teacher

    client = client_for(scripted, tmp_path, monkeypatch)
    client.concurrency = 1
    scripted.script = [completion("neutral"), completion("positive")]
    config = parse_config({"task": "classify", "data": {"train": "unused.jsonl"}, "distill": {"teacher": "openai:x"}})
    inputs = [TeacherInput(f"id{i}", f"row {i}", text=f"text {i}") for i in range(2)]
    lines = ask_teacher(RemoteModel(client), inputs, config, ["negative", "positive"], tmp_path / "distill.jsonl")
    assert lines["id0"].status == "rejected" and "'neutral'" in lines["id0"].reason and lines["id0"].label is None
    assert lines["id1"].status == "ok" and lines["id1"].label == "positive"


KEY_GIVEN_AS_NAME = "sk-proj-Ab3dEf9hIjKlMn0pQr"


def test_a_key_given_where_its_variable_belongs_is_refused_without_being_printed_or_saved(tmp_path):
    # api_key_env: sk-... (the key itself) was printed twice ("needs an API key in $sk-..., export sk-...=...") and saved
    # in the run folder's distill_config.json before the teacher was opened.
    from tunelab.errors import ConfigError
    from tunelab.tasks.distill import run_distill

    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": f"a{i}"}) + "\n" for i in range(8)))
    data = {"task": "sft", "name": "leaky", "data": {"train": str(train)}, "train": {"output_dir": str(tmp_path / "runs")},
            "distill": {"teacher": {"base_url": "http://127.0.0.1:9/v1", "name": "teacher", "api_key_env": KEY_GIVEN_AS_NAME}}}
    from tunelab.config import parse_config

    with pytest.raises(ConfigError) as raised:
        run_distill(parse_config(data), calibrate=False)
    said = raised.value.message + " " + (raised.value.hint or "")
    assert "api_key_env" in said and KEY_GIVEN_AS_NAME not in said
    assert not (tmp_path / "runs").exists() or KEY_GIVEN_AS_NAME not in " ".join(
        path.read_text(errors="replace") for path in (tmp_path / "runs").rglob("*") if path.is_file())


def test_the_endpoint_key_option_refuses_a_key_without_printing_it(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    if not any(c.name == "eval" for c in app.registered_commands):
        _register_commands()
    test = tmp_path / "test.jsonl"
    test.write_text(json.dumps({"prompt": "hi", "completion": "hello"}) + "\n")
    result = CliRunner().invoke(app, ["eval", "--data", str(test), "--task", "sft", "--endpoint", "http://127.0.0.1:9/v1",
                                      "--endpoint-model", "m", "--endpoint-key-env", KEY_GIVEN_AS_NAME])
    said = result.output + str(result.exception or "")
    assert result.exit_code != 0 and "--endpoint-key-env" in said and KEY_GIVEN_AS_NAME not in said


@pytest.mark.parametrize("key_env", ["TEACHER_KEY", None])
def test_a_refused_key_names_the_variable_to_fix(scripted, tmp_path, monkeypatch, key_env):
    # The hint said "check api_key_env" whichever variable held the key, and also when no key was sent at all.
    from tunelab.remote.client import RemoteError

    monkeypatch.setenv("TEACHER_KEY", KEY)
    endpoint = EndpointConfig(base_url=scripted.url, name="teacher", api_key_env=key_env, max_retries=0, timeout_s=5)
    scripted.script = [(401, "application/json", json.dumps({"error": {"message": "Incorrect API key provided"}}))]
    with pytest.raises(RemoteError) as raised:
        RemoteClient(endpoint, cache=None).check()
    hint = raised.value.hint or ""
    assert ("$TEACHER_KEY" in hint) if key_env else ("api_key_env" in hint and "no key" in raised.value.message)
    assert KEY not in raised.value.message + hint


def test_a_404_says_what_to_check(scripted, tmp_path, monkeypatch):
    # A base_url without its /v1 (or a model the server does not have): "HTTP 404: Error code: 404" on every request.
    client = client_for(scripted, tmp_path, monkeypatch)
    scripted.script = [(404, "application/json", json.dumps({"detail": "Not Found"}))]
    error = client.chat_many([ASK], max_tokens=8)[0].error
    assert error.startswith("HTTP 404: Not Found") and "base_url" in error and "model" in error


def rate_limited(retry_after: str) -> tuple[int, str, str, dict]:
    return 429, "application/json", json.dumps({"error": {"message": "Rate limit reached"}}), {"retry-after": retry_after}


@pytest.fixture
def waits(monkeypatch):
    """The client's waits between tries, recorded instead of slept (no test waits a real minute)."""
    import tunelab.remote.client as client_module

    waited: list[float] = []
    monkeypatch.setattr(client_module, "_sleep", lambda seconds, stop=None: waited.append(seconds))
    return waited


@pytest.mark.parametrize("seconds", [61, 150])
def test_a_long_retry_after_is_waited_for_with_one_line_saying_so(scripted, tmp_path, monkeypatch, waits, caplog, seconds):
    # A provider's 429 with Retry-After above what the openai client honours (60 s, 120 s in later versions) was retried
    # after a second of backoff, or not at all: the batch failed on requests the provider would have answered.
    client = client_for(scripted, tmp_path, monkeypatch, retries=2)
    scripted.script = [rate_limited(str(seconds)), completion("four")]
    with caplog.at_level("WARNING", logger="tunelab.remote"):
        answer = client.chat_many([ASK], max_tokens=8)[0]
    assert answer.error is None and answer.text == "four" and scripted.seen == 2
    assert waits == [seconds]
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and f"{seconds} s" in said[0] and "429" in said[0] and "\n" not in said[0]


def test_a_retry_after_beyond_the_cap_fails_the_request_at_once_naming_the_wait(scripted, tmp_path, monkeypatch, waits):
    # A daily quota's Retry-After (hours) is not slept through: the request fails now, and says why and what to do.
    from tunelab.remote.client import MAX_RETRY_AFTER_S

    client = client_for(scripted, tmp_path, monkeypatch, retries=3)
    scripted.script = [rate_limited(str(int(MAX_RETRY_AFTER_S) * 10)), completion("four")]
    answer = client.chat_many([ASK], max_tokens=8)[0]
    assert answer.text is None and scripted.seen == 1 and waits == []
    assert "HTTP 429" in answer.error and f"{int(MAX_RETRY_AFTER_S) * 10} s" in answer.error and "\n" not in answer.error


@pytest.mark.parametrize("pasted", ["f3a90c1e5b7d2468ace013579bdf2468ace01357", "AbCdEfGh12345678IjKlMnOp90QrStUvWx",
                                    "sk_live_51H8xYzAbCdEfGhIjKlMnOpQrSt", "gsk7Q2mZp9XwLk4Vb8NcRt1YhJf6Du3Se0"])
def test_an_alphanumeric_key_given_as_api_key_env_is_refused_without_being_repeated(pasted):
    # A key of letters and digits only (a hex token, a key without dashes) passed the variable-name check: it was echoed
    # in "needs an API key in $<key>" and saved with the run's config.
    from tunelab.config import parse_config
    from tunelab.errors import ConfigError

    with pytest.raises(ConfigError) as raised:
        parse_config({"task": "sft", "distill": {"teacher": {"base_url": "http://127.0.0.1:9/v1", "name": "teacher", "api_key_env": pasted}}})
    said = raised.value.message + " " + (raised.value.hint or "")
    assert "api_key_env" in said and pasted not in said


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "MY_KEY_2", "together_api_key", "HF_TOKEN", "KEY", "AZURE_OPENAI_API_KEY_2",
                                  "AZUREOPENAIAPIKEY2", "GROQ_API_KEY", "x"])
def test_real_variable_names_are_accepted_as_api_key_env(name):
    assert EndpointConfig(base_url="http://127.0.0.1:9/v1", name="teacher", api_key_env=name).api_key_env == name


def cut_mid_body(request: BaseHTTPRequestHandler) -> tuple[int, str, str]:
    """A completion whose connection closes half-way through its body (a proxy's timeout, a server restarting)."""
    import socket

    data = completion("four")[2].encode()
    request.send_response(200)
    request.send_header("content-type", "application/json")
    request.send_header("content-length", str(len(data)))
    request.end_headers()
    request.wfile.write(data[: len(data) // 2])
    request.wfile.flush()
    request.connection.shutdown(socket.SHUT_RDWR)
    request.close_connection = True
    raise ConnectionAbortedError  # the handler's own reply is not sent


def test_a_connection_closed_mid_body_is_retried_and_named_when_it_stays(scripted, tmp_path, monkeypatch, waits):
    # It failed as "APIConnectionError: Connection error.": neither what happened nor that it was tried again was said.
    client = client_for(scripted, tmp_path, monkeypatch, retries=1)
    scripted.script = [cut_mid_body, completion("four")]
    assert client.chat_many([ASK], max_tokens=8)[0].text == "four" and scripted.seen == 2
    scripted.script, scripted.seen = [cut_mid_body], 0
    answer = client.chat_many([[{"role": "user", "content": "And three plus three?"}]], max_tokens=8)[0]
    assert answer.text is None and scripted.seen == 2 and len(client.cache) == 1
    assert "closed" in answer.error and "tried 2 times" in answer.error and "\n" not in answer.error, answer.error


@pytest.mark.parametrize(("headers", "seconds"), [({"retry-after": "90"}, 90.0), ({"retry-after-ms": "1500"}, 1.5), ({"retry-after": "86400"}, None)])
def test_a_fine_tuning_upload_waits_what_the_provider_asks_up_to_the_clients_cap(headers, seconds):
    # Uploads and job creations after a 429 waited at most 60 s whatever the provider asked (and were refused again);
    # beyond the cap (a daily quota) they are not retried at all, as chat requests are not.
    import httpx
    import openai

    from tunelab.remote.finetune import _retry_after

    response = httpx.Response(429, headers=headers, request=httpx.Request("POST", "http://127.0.0.1:9/v1/files"))
    error = openai.RateLimitError("Rate limit reached", response=response, body=None)
    assert _retry_after(error, 0) == seconds
