"""A 'label' corrects a classify answer. Sent for a chat or completion response it was stored, and `tunelab retrain
--log-db` then learnt that chat message as a classify example of the label (`labelled_requests` read every labelled
response); it is refused now in one line naming the response, and a log holding such rows from before is read
without them."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest
from tests.unit.serve.conftest import assert_openai_error

from tunelab.errors import DataError
from tunelab.monitor.traffic import labelled_requests
from tunelab.serve import BackgroundServer, ServeSettings, create_app
from tunelab.serve.request_log import Feedback, RequestLog, add_feedback

TIME = "2026-01-02T00:00:00.000+00:00"


def _log(path):
    log = RequestLog(path)
    log.record({"time": TIME, "endpoint": "/v1/classify", "model": "router", "prompt": json.dumps("refund please"), "output": "billing",
                "status": 200, "stream": 0, "response_id": "clf-1", "run_id": "r1", "predicted_label": "billing"})
    log.record({"time": TIME, "endpoint": "/v1/chat/completions", "model": "router", "prompt": json.dumps([{"role": "user", "content": "hello there"}]),
                "output": "hi", "status": 200, "stream": 0, "response_id": "chatcmpl-1", "run_id": "r1"})
    log.close()
    return path


def test_a_label_for_a_chat_answer_is_refused_and_never_learnt(tmp_path):
    log_path = _log(tmp_path / "requests.db")
    with pytest.raises(DataError, match="chatcmpl-1") as refused:
        add_feedback(log_path, [Feedback("clf-1", label="account"), Feedback("chatcmpl-1", label="billing")], source="api")
    assert "\n" not in refused.value.message
    db = sqlite3.connect(log_path)
    assert db.execute("SELECT count(*) FROM feedback").fetchone() == (0,)  # all or nothing
    add_feedback(log_path, [Feedback("chatcmpl-1", rating=-1), Feedback("clf-1", label="account")], source="api")

    # A label stored for a chat answer before this check: not a classify example.
    db.execute("INSERT INTO feedback (time, response_id, item, label, source) VALUES (?, 'chatcmpl-1', 0, 'billing', 'old')", (TIME,))
    db.commit()
    assert [(item["text"], item["label"]) for item in labelled_requests(log_path)] == [("refund please", "account")]


def test_the_api_refuses_a_label_for_a_chat_answer_as_a_bad_request(registry, tmp_path):
    app = create_app(registry, ServeSettings(log_path=tmp_path / "requests.db"))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        chat = client.post("/v1/chat/completions", json={"model": "france", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).json()
        refused = client.post("/v1/feedback", json={"id": chat["id"], "label": "billing"})
        assert_openai_error(refused, 400, param="label")
        assert "a 'label' corrects a /v1/classify answer" in refused.json()["error"]["message"]
        assert client.post("/v1/feedback", json={"id": chat["id"], "rating": 1}).status_code == 200
