"""A small OpenAI-compatible provider on the loopback: files, fine_tuning.jobs (+ events), models, chat completions.

It implements the documented endpoints with their documented shapes and job states
(validating_files -> running -> succeeded | failed | cancelled), and can misbehave on purpose: a storm
of 429s, a connection dropped without a response, a request that is carried out but whose reply is
lost (the job is created, the client never hears of it), a job that fails. Every response body is validated
against the ``openai`` package's own response type before it is sent (``FileObject``,
``FineTuningJob``, ``FineTuningJobEvent``, ``Model``, ``ChatCompletion``), so this server cannot
drift from the client that talks to it.

The "fine-tuned" model answers with the answer of the most word-overlapping training example (so
it does learn its training file), the base model always says it does not know.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from openai.types import FileObject, Model
from openai.types.chat import ChatCompletion
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

BASE_ANSWER = "I do not know."


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


class FakeProvider:
    """State and knobs of the fake provider; ``start()`` serves it on 127.0.0.1 and returns the base URL."""

    def __init__(self, base_models=("gpt-4o-mini-2024-07-18",)) -> None:
        self.base_models = list(base_models)
        self.files: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.tuned: dict[str, list[tuple[str, str]]] = {}  # fine-tuned model -> (user text, answer) pairs
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) as answered
        self.rate_limit_next = 0  # the next N requests get 429
        self.rate_limit_headers = {"retry-after-ms": "5"}  # what those 429s ask the client to wait
        self.drop_next = 0  # the next N requests lose their connection without a response
        # "METHOD /path" -> statuses: the next such requests are answered with the status without being carried
        # out (0: the connection drops without a reply)
        self.refuse_next: dict[str, list[int]] = {}
        # "METHOD /path" -> statuses: the next such requests are carried out, then answered with the status
        # (0: the connection drops without a reply) in place of their result
        self.lose_reply: dict[str, list[int]] = {}
        self.idempotency_keys: list[str | None] = []  # the Idempotency-Key header of each job creation that arrived
        self.fail_jobs = False
        # A new job is missing from this many job lists after its creation (a provider whose list lags behind)
        self.list_lag = 0
        # Each chat request is answered this many seconds after it arrives (a slow provider; slept outside the lock, so
        # requests in flight overlap as they do at a real one); ``chats_arrived`` counts them on arrival.
        self.chat_delay_s = 0.0
        # The base model's answer to a chat's last user message (a model that follows the prompt); None: BASE_ANSWER
        self.base_answer: Callable[[str], str] | None = None
        self.chats_arrived = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.clock = 1_700_000_000

    # -------------------------------------------------------------------------------- lifecycle

    def start(self) -> str:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                provider.handle(self, "GET")

            def do_POST(self) -> None:
                provider.handle(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    # ------------------------------------------------------------------------------------ HTTP

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        url = urlparse(request.path)
        length = int(request.headers.get("content-length") or 0)
        body = request.rfile.read(length) if length else b""
        key = f"{method} {url.path}"
        if method == "POST" and url.path.endswith("/chat/completions"):
            with self.lock:
                self.chats_arrived += 1
            time.sleep(self.chat_delay_s)
        with self.lock:
            if method == "POST" and url.path.endswith("/fine_tuning/jobs"):
                self.idempotency_keys.append(request.headers.get("idempotency-key"))
            if self.drop_next > 0:
                self.drop_next -= 1
                return self.drop(request, method, url.path)
            if self.refuse_next.get(key):
                refused = self.refuse_next[key].pop(0)
                if refused == 0:
                    return self.drop(request, method, url.path)
                return self.send(request, method, url.path, refused, self.error_body(refused), {"retry-after-ms": "5"})
            if self.rate_limit_next > 0:
                self.rate_limit_next -= 1
                return self.send(request, method, url.path, 429, {"error": {"message": "Rate limit reached", "type": "requests",
                                                                            "code": "rate_limit_exceeded", "param": None}},
                                 self.rate_limit_headers)
            try:
                status, payload = self.route(method, url.path, parse_qs(url.query), body, request.headers.get("content-type", ""))
            except KeyError as missing:
                status, payload = 404, {"error": {"message": f"no such object: {missing}", "type": "invalid_request_error", "code": None, "param": None}}
            except ValueError as wrong:
                status, payload = 400, {"error": {"message": str(wrong), "type": "invalid_request_error", "code": None, "param": None}}
            if self.lose_reply.get(key):
                lost = self.lose_reply[key].pop(0)
                if lost == 0:
                    return self.drop(request, method, url.path)
                status, payload = lost, self.error_body(lost)
            self.send(request, method, url.path, status, payload)

    @staticmethod
    def error_body(status: int) -> dict:
        if status == 429:
            return {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded", "param": None}}
        return {"error": {"message": "The server had an error while processing your request.", "type": "server_error", "code": None, "param": None}}

    def drop(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        self.requests.append((method, path, 0))
        request.close_connection = True
        request.connection.shutdown(socket.SHUT_RDWR)

    def send(self, request, method, path, status, payload, headers=None) -> None:
        data = json.dumps(payload).encode()
        request.send_response(status)
        request.send_header("content-type", "application/json")
        request.send_header("content-length", str(len(data)))
        for key, value in (headers or {}).items():
            request.send_header(key, value)
        request.end_headers()
        request.wfile.write(data)
        self.requests.append((method, path, status))

    def route(self, method: str, path: str, query: dict, body: bytes, content_type: str) -> tuple[int, Any]:
        parts = path.strip("/").split("/")[1:]  # without "v1"
        if method == "POST" and parts == ["files"]:
            return 200, self.upload(body, content_type)
        if method == "GET" and parts == ["files"]:
            return 200, self.list_files(query)
        if method == "GET" and parts[:1] == ["files"] and len(parts) == 2:
            return 200, FileObject.model_validate(self.files[parts[1]]["object"]).model_dump(mode="json")
        if method == "POST" and parts == ["fine_tuning", "jobs"]:
            return 200, self.create_job(json.loads(body))
        if method == "GET" and parts == ["fine_tuning", "jobs"]:
            return 200, self.list_jobs(query)
        if method == "POST" and parts[:2] == ["fine_tuning", "jobs"] and parts[3:] == ["cancel"]:
            return 200, self.cancel(parts[2])
        if method == "GET" and parts[:2] == ["fine_tuning", "jobs"] and len(parts) == 3:
            return 200, self.advance(parts[2])
        if method == "GET" and parts[:2] == ["fine_tuning", "jobs"] and parts[3:] == ["events"]:
            return 200, self.list_events(parts[2], query)
        if method == "GET" and parts == ["models"]:
            return 200, {"object": "list", "data": [self.model(name) for name in [*self.base_models, *self.tuned]]}
        if method == "GET" and parts[:1] == ["models"]:
            return 200, self.model("/".join(parts[1:]))
        if method == "POST" and parts == ["chat", "completions"]:
            return 200, self.chat(json.loads(body))
        raise KeyError(path)

    # ------------------------------------------------------------------------------- resources

    def upload(self, body: bytes, content_type: str) -> dict:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            f"content-type: {content_type}\r\n\r\n".encode() + body
        )
        fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
        content = fields["file"].get_payload(decode=True)
        file_id = f"file-{len(self.files) + 1}"
        obj = {"id": file_id, "object": "file", "bytes": len(content), "created_at": self.tick(), "purpose": fields["purpose"].get_content().strip(),
               "filename": fields["file"].get_filename(), "status": "processed"}
        self.files[file_id] = {"object": obj, "content": content}
        return FileObject.model_validate(obj).model_dump(mode="json")

    def list_files(self, query: dict) -> dict:
        # Newest first; `after` pages toward older files; `purpose` filters (as the API documents).
        files = sorted((entry["object"] for entry in self.files.values()), key=lambda obj: obj["created_at"], reverse=True)
        if "purpose" in query:
            files = [obj for obj in files if obj["purpose"] == query["purpose"][0]]
        if "after" in query:
            ids = [obj["id"] for obj in files]
            files = files[ids.index(query["after"][0]) + 1:]
        limit = int(query.get("limit", ["10000"])[0])
        return {"object": "list", "data": [FileObject.model_validate(obj).model_dump(mode="json") for obj in files[:limit]],
                "has_more": len(files) > limit}

    def create_job(self, body: dict) -> dict:
        if body.get("model") not in self.base_models:
            raise ValueError(f"model {body.get('model')} cannot be fine-tuned here")
        training = self.files[body["training_file"]]
        pairs = []
        for number, line in enumerate(training["content"].decode().splitlines(), 1):
            messages = json.loads(line)["messages"]
            if messages[-1]["role"] != "assistant":
                raise ValueError(f"line {number} of the training file does not end with an assistant message")
            pairs.append((next(m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"]))
        job_id = f"ftjob-{len(self.jobs) + 1}"
        epochs = body.get("method", {}).get("supervised", {}).get("hyperparameters", {}).get("n_epochs", 1)
        job = {
            "id": job_id, "object": "fine_tuning.job", "created_at": self.tick(), "error": None, "fine_tuned_model": None, "finished_at": None,
            "hyperparameters": {"n_epochs": epochs, "batch_size": 1, "learning_rate_multiplier": 1.0}, "model": body["model"],
            "organization_id": "org-test", "result_files": [], "seed": body.get("seed") or 0, "status": "validating_files",
            "trained_tokens": None, "training_file": body["training_file"], "validation_file": body.get("validation_file"),
            "method": body.get("method"),
        }
        self.jobs[job_id] = {"job": job, "pairs": pairs, "polls": 0, "suffix": body.get("suffix"), "unlisted": self.list_lag}
        self.events[job_id] = []
        self.event(job_id, f"Created fine-tuning job: {job_id}")
        return FineTuningJob.model_validate(job).model_dump(mode="json")

    def list_jobs(self, query: dict) -> dict:
        # Newest first; `after` pages toward older jobs (as the API documents). Looking does not advance a job.
        for entry in self.jobs.values():
            entry["unlisted"] -= 1
        jobs = sorted((entry["job"] for entry in self.jobs.values() if entry["unlisted"] < 0), key=lambda job: job["created_at"], reverse=True)
        if "after" in query:
            ids = [job["id"] for job in jobs]
            jobs = jobs[ids.index(query["after"][0]) + 1:]
        limit = int(query.get("limit", ["20"])[0])
        return {"object": "list", "data": [FineTuningJob.model_validate(job).model_dump(mode="json") for job in jobs[:limit]],
                "has_more": len(jobs) > limit}

    def cancel(self, job_id: str) -> dict:
        job = self.jobs[job_id]["job"]
        if job["status"] not in ("succeeded", "failed", "cancelled"):
            job.update(status="cancelled", finished_at=self.tick())
            self.event(job_id, "Fine-tuning job cancelled")
        return FineTuningJob.model_validate(job).model_dump(mode="json")

    def event(self, job_id: str, message: str, level: str = "info", data: dict | None = None) -> None:
        event = {"id": f"ftevent-{job_id}-{len(self.events[job_id]) + 1}", "object": "fine_tuning.job.event", "created_at": self.tick(),
                 "level": level, "message": message, "type": "metrics" if data else "message", "data": data or {}}
        FineTuningJobEvent.model_validate(event)
        self.events[job_id].append(event)

    def advance(self, job_id: str) -> dict:
        """Each look at a job moves it one state on: validating_files -> running (2 steps) -> succeeded | failed."""
        entry = self.jobs[job_id]
        job = entry["job"]
        entry["polls"] += 1
        if job["status"] in ("succeeded", "failed", "cancelled"):
            pass
        elif job["status"] == "validating_files":
            job["status"] = "running"
            self.event(job_id, "Fine-tuning job started")
        elif job["status"] == "running" and entry["polls"] <= 3:
            self.event(job_id, f"Step {entry['polls'] - 1}/2: training loss={1.0 / entry['polls']:.2f}", data={"step": entry["polls"] - 1})
        elif job["status"] == "running" and self.fail_jobs:
            job.update(status="failed", finished_at=self.tick(),
                       error={"code": "invalid_training_file", "message": "The job failed: training file line 3 has too many tokens.", "param": "training_file"})
            self.event(job_id, "The job failed", level="error")
        elif job["status"] == "running":
            name = f"ft:{job['model']}:tunelab:{entry['suffix'] or 'x'}:{job_id[-4:]}"
            self.tuned[name] = entry["pairs"]
            tokens = sum(len(_words(a)) + len(_words(q)) for q, a in entry["pairs"]) * job["hyperparameters"]["n_epochs"]
            job.update(status="succeeded", fine_tuned_model=name, finished_at=self.tick(), trained_tokens=tokens)
            self.event(job_id, f"New fine-tuned model created: {name}")
            self.event(job_id, "The job has successfully completed")
        return FineTuningJob.model_validate(job).model_dump(mode="json")

    def list_events(self, job_id: str, query: dict) -> dict:
        # Newest first; `after` pages toward older events (as the API documents).
        events = list(reversed(self.events[job_id]))
        if "after" in query:
            ids = [e["id"] for e in events]
            events = events[ids.index(query["after"][0]) + 1:]
        limit = int(query.get("limit", ["20"])[0])
        return {"object": "list", "data": events[:limit], "has_more": len(events) > limit}

    def model(self, name: str) -> dict:
        if name not in self.base_models and name not in self.tuned:
            raise KeyError(name)
        return Model.model_validate({"id": name, "object": "model", "created": self.clock, "owned_by": "tunelab-test"}).model_dump(mode="json")

    def chat(self, body: dict) -> dict:
        name = body["model"]
        self.model(name)
        question = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
        answer = self.base_answer(question) if self.base_answer is not None else BASE_ANSWER
        if name in self.tuned:
            words = _words(question)
            answer = max(self.tuned[name], key=lambda pair: len(words & _words(pair[0])))[1]
        prompt_tokens, completion_tokens = sum(len(_words(m["content"])) for m in body["messages"]), len(_words(answer))
        completion = {
            "id": f"chatcmpl-{self.tick()}", "object": "chat.completion", "created": self.clock, "model": name,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": answer}, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
        }
        return ChatCompletion.model_validate(completion).model_dump(mode="json")

    def count(self, method: str, path_start: str, status: int | None = None) -> int:
        return sum(1 for m, p, s in self.requests if m == method and p.startswith(path_start) and (status is None or s == status))
