"""Feedback and alias-following on a real uvicorn server over SQLite: response ids and predictions in the
request log, POST /v1/feedback (auth, unknown ids, bad bodies), `tunelab feedback import`, the request
log's migration of an old file, and a promotion under 32 concurrent clients that loses no request and
never mixes two runs inside one answer."""

from __future__ import annotations

import json
import sqlite3
import threading
import time

import httpx
import pytest

from tunelab.errors import DataError
from tunelab.registry.store import Registry
from tunelab.serve import BackgroundServer, ServeSettings, create_app, read_requests
from tunelab.serve.adapters import load_registry
from tunelab.serve.request_log import RequestLog, import_feedback

KEY = "k-feedback"
HEADERS = {"Authorization": f"Bearer {KEY}"}


def test_old_request_log_is_migrated_in_place(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE requests (id INTEGER PRIMARY KEY, time TEXT NOT NULL, endpoint TEXT NOT NULL, model TEXT, prompt TEXT, "
        "output TEXT, prompt_tokens INTEGER, completion_tokens INTEGER, latency_ms REAL, status INTEGER NOT NULL, error TEXT, "
        "stream INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute("INSERT INTO requests (time, endpoint, status) VALUES ('2026-01-01T00:00:00.000+00:00', '/v1/classify', 200)")
    db.commit()
    db.close()
    log = RequestLog(path)
    log.record({"time": "2026-01-02T00:00:00.000+00:00", "endpoint": "/v1/classify", "status": 200, "stream": 0, "response_id": "clf-1", "run_id": "r1"})
    log.close()
    RequestLog(path).close()  # a second open applies nothing twice
    rows = read_requests(path)
    assert [row["response_id"] for row in rows] == [None, "clf-1"] and rows[1]["run_id"] == "r1"
    names = [row[0] for row in sqlite3.connect(path).execute("SELECT name FROM _migrations")]
    assert names == ["m001_requests", "m002_response_ids_and_predictions", "m003_feedback"]


def test_feedback_endpoint_and_import(registry, tmp_path):
    log_path = tmp_path / "requests.db"
    app = create_app(registry, ServeSettings(api_key=KEY, log_path=log_path))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, headers=HEADERS, timeout=60) as client:
        answer = client.post("/v1/classify", json={"model": "router", "input": "my card has not arrived"}).json()
        multi = client.post("/v1/classify", json={"model": "router", "input": ["refund please", "login fails"]}).json()
        chat = client.post("/v1/chat/completions", json={"model": "france", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}).json()
        stored = client.post("/v1/feedback", json={"id": answer["id"], "label": "billing"})
        assert stored.status_code == 200 and stored.json()["id"].startswith("fb-")
        assert client.post("/v1/feedback", json={"id": multi["id"], "index": 1, "label": "technical"}).status_code == 200
        assert client.post("/v1/feedback", json={"id": chat["id"], "thumbs": "down"}).status_code == 200
        # The same auth as every endpoint, ids the server gave, and a body that says something.
        assert httpx.post(f"{url}/v1/feedback", json={"id": answer["id"], "label": "x"}).status_code == 401
        unknown = client.post("/v1/feedback", json={"id": "clf-nope", "label": "billing"})
        assert unknown.status_code == 404 and "clf-nope" in unknown.json()["error"]["message"]
        assert client.post("/v1/feedback", json={"id": answer["id"]}).status_code == 400
        assert client.post("/v1/feedback", json={"id": answer["id"], "lable": "billing"}).status_code == 400
        # An input the response does not have: stored, monitoring and retraining would skip it without a word.
        beyond = client.post("/v1/feedback", json={"id": multi["id"], "index": 2, "label": "billing"})
        assert beyond.status_code == 400 and beyond.json()["error"]["param"] == "index"
        assert "has 2 inputs: no index 2" in beyond.json()["error"]["message"]
        assert client.post("/v1/feedback", json={"id": answer["id"], "index": 1, "label": "billing"}).status_code == 400
    rows = {row["response_id"]: row for row in read_requests(log_path) if row["response_id"]}
    single = rows[answer["id"]]
    assert single["predicted_label"] == answer["data"][0]["label"] and single["run_id"] == "router"
    assert single["top_probability"] == pytest.approx(max(answer["data"][0]["probabilities"].values()))
    assert json.loads(single["probabilities"]) == [answer["data"][0]["probabilities"]]
    assert rows[multi["id"]]["predicted_label"] is None and len(json.loads(rows[multi["id"]]["probabilities"])) == 2
    assert rows[chat["id"]]["run_id"] == "legal-fr"

    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(json.dumps({"id": answer["id"], "label": "account"}) + "\n" + json.dumps({"id": multi["id"], "index": 0, "label": "billing"}) + "\n")
    assert import_feedback(log_path, corrections)["imported"] == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": answer["id"], "label": "account"}) + "\n" + json.dumps({"id": "clf-unknown", "label": "x"}) + "\n")
    with pytest.raises(DataError, match="clf-unknown"):
        import_feedback(log_path, bad)
    past = tmp_path / "past.jsonl"
    past.write_text(json.dumps({"id": answer["id"], "label": "account"}) + "\n" + json.dumps({"id": multi["id"], "index": 5, "label": "x"}) + "\n")
    with pytest.raises(DataError, match="no index 5"):
        import_feedback(log_path, past)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"id": "x", "label": "y"}\n{oops\n')
    with pytest.raises(DataError, match="broken.jsonl:2"):
        import_feedback(log_path, broken)
    db = sqlite3.connect(log_path)
    assert db.execute("SELECT count(*) FROM feedback").fetchone()[0] == 5  # 3 from the API + 2 imported, none of the refused file


def _register(registry_db, run_dirs):
    store = Registry(registry_db)
    return store, [store.create_run(name=path.name, task="classify", status="finished", run_dir=str(path)).id for path in run_dirs]


def test_promotion_under_32_concurrent_clients_loses_nothing_and_mixes_nothing(tiny_model_dir, router_versions, tmp_path):
    store, (first, second) = _register(tmp_path / "registry.db", router_versions)
    store.set_alias("router", first)
    served = load_registry(
        str(tiny_model_dir), [("router", "alias:router"), ("v1", str(router_versions[0])), ("v2", str(router_versions[1]))],
        registry_path=tmp_path / "registry.db",
    )
    log_path = tmp_path / "requests.db"
    app = create_app(served, ServeSettings(log_path=log_path, alias_poll_s=0.05, max_batch_size=8))
    texts = [f"request number {i} about my card and billing" for i in range(32)]
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        assert {m["id"] for m in client.get("/v1/models").json()["data"]} == {served.base_name, "router", "v1", "v2"}
        # What each run answers for each text, from the same server (the fixed names of the two runs).
        expected = {
            version: {t: client.post("/v1/classify", json={"model": version, "input": t}).json()["data"][0]["probabilities"] for t in texts}
            for version in ("v1", "v2")
        }
        assert all(expected["v1"][t] != pytest.approx(expected["v2"][t], abs=1e-3) for t in texts)
        results: list[tuple[str, dict, int]] = []
        lock = threading.Lock()
        promoted = threading.Event()

        def worker(index: int) -> None:
            with httpx.Client(base_url=url, timeout=120) as own:
                for round_ in range(6):
                    if round_ == 3:
                        promoted.wait(30)
                    text = texts[(index + round_) % len(texts)]
                    response = own.post("/v1/classify", json={"model": "router", "input": text})
                    with lock:
                        results.append((text, response.json(), response.status_code))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        # Promoted once the first answer is back, where it slept 0.3 s: on a busy machine no request might have been
        # answered by then, every answer v2's, and the test's check that both runs answered would fail. The workers'
        # other requests before their gate (95 of them) are still to come or in flight.
        deadline = time.monotonic() + 60
        while not results:
            assert time.monotonic() < deadline, "no answer in 60 s"
            time.sleep(0.01)
        store.set_alias("router", second, reason="test promotion")  # while requests are in flight
        deadline = time.monotonic() + 30
        while client.get("/v1/models/router").json().get("run_id") != second and time.monotonic() < deadline:
            time.sleep(0.05)
        promoted.set()
        for thread in threads:
            thread.join()
        after = client.post("/v1/classify", json={"model": "router", "input": texts[0]}).json()
    assert len(results) == 32 * 6 and all(status == 200 for _, _, status in results)
    served_by = []
    for text, body, _ in results:
        probabilities = body["data"][0]["probabilities"]
        # Each answer is entirely one run's: equal to v1's or to v2's answer for that text, never a blend.
        matches = [v for v in ("v1", "v2") if probabilities == pytest.approx(expected[v][text], abs=1e-4)]
        assert len(matches) == 1, (text, probabilities)
        served_by.append((body["id"], matches[0]))
    assert after["data"][0]["probabilities"] == pytest.approx(expected["v2"][texts[0]], abs=1e-4)
    assert {version for _, version in served_by} == {"v1", "v2"}
    # The log names the run that answered each request: a promotion never mixes two runs' traffic.
    run_of = {row["response_id"]: row["run_id"] for row in read_requests(log_path)}
    assert all(run_of[response_id] == {"v1": first, "v2": second}[version] for response_id, version in served_by)
    assert served.alias_changes == [("router", first, second)]


def test_registry_aliases_keep_history_and_roll_back(tmp_path, router_versions):
    store, (first, second) = _register(tmp_path / "registry.db", router_versions)
    third = store.create_run(name="third", task="classify", status="finished", run_dir=str(router_versions[0])).id
    unfinished = store.create_run(name="half", task="classify", status="running").id
    store.set_alias("router", first)
    store.set_alias("router", second, reason="won")
    store.set_alias("router", third)
    assert store.rollback_alias("router").run_id == second
    assert store.rollback_alias("router").run_id == first
    with pytest.raises(Exception, match="no earlier run"):
        store.rollback_alias("router")
    with pytest.raises(Exception, match="not finished"):
        store.set_alias("router", unfinished)
    history = store.alias_history("router")
    assert [(c.action, c.previous_run_id, c.run_id) for c in history] == [
        ("promote", None, first), ("promote", first, second), ("promote", second, third), ("rollback", third, second), ("rollback", second, first),
    ]
    assert history[1].reason == "won" and store.alias("router") == first == store.resolve_alias("router").id


def test_feedback_import_reads_a_spreadsheet_s_csv_and_refuses_a_file_not_in_utf8_in_one_line(tmp_path):
    # A spreadsheet's "CSV UTF-8" export starts with a BOM: the header read "\ufeffid" and every row was refused as
    # "unknown key(s) id" (the BOM invisible); a Latin-1 file ended in a UnicodeDecodeError traceback.
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    log.record({"time": "2026-01-02T00:00:00.000+00:00", "endpoint": "/v1/classify", "model": "router", "prompt": '"refund please"',
                "status": 200, "stream": 0, "response_id": "clf-1", "run_id": "r1", "predicted_label": "billing"})
    log.close()
    exported = tmp_path / "tickets.csv"
    exported.write_bytes(b"\xef\xbb\xbfid,label\r\nclf-1,account\r\n")
    assert import_feedback(log_path, exported) == {"imported": 1, "labels": 1, "file": str(exported), "log": str(log_path)}
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"id": "clf-1", "label": "caf\xe9"}\n')
    _register_commands()
    result = CliRunner().invoke(app, ["feedback", "import", str(latin1), "--log-db", str(log_path)])
    assert isinstance(result.exception, DataError) and "latin1.jsonl:1: undecodable bytes: not UTF-8 text" in str(result.exception)
    db = sqlite3.connect(log_path)
    assert db.execute("SELECT response_id, label FROM feedback").fetchall() == [("clf-1", "account")]


def test_feedback_import_into_a_file_that_is_not_a_request_log_is_one_line_and_writes_nothing(tmp_path):
    # `--log-db notes.txt` ended in a sqlite3.DatabaseError traceback; `--log-db runs/registry.db` (the registry, not
    # runs/requests.db) had request-log tables added to the registry before refusing the ids.
    corrections = tmp_path / "corrections.jsonl"
    corrections.write_text(json.dumps({"id": "clf-1", "label": "billing"}) + "\n")
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    with pytest.raises(DataError, match="is not a tunelab request log"):
        import_feedback(text, corrections, require_logged=False)
    assert text.read_text() == "not a database\n"
    registry_path = tmp_path / "registry.db"
    Registry(registry_path).create_run(name="router", task="classify", status="finished")
    with pytest.raises(DataError, match="is not a tunelab request log") as refused:
        import_feedback(registry_path, corrections, require_logged=False)
    assert "\n" not in refused.value.message
    tables = {row[0] for row in sqlite3.connect(registry_path).execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "requests" not in tables and "feedback" not in tables


def test_one_alias_promoted_to_a_run_that_cannot_be_served_does_not_stop_the_others_following(tiny_model_dir, router_versions, tmp_path):
    from tunelab.serve.adapters import ServeError

    store, (first, second) = _register(tmp_path / "registry.db", router_versions)
    store.set_alias("broken", first)
    store.set_alias("router", first)
    served = load_registry(str(tiny_model_dir), [("broken", "alias:broken"), ("router", "alias:router")], registry_path=tmp_path / "registry.db")
    # A finished run with no adapter (e.g. a cloud run) promoted under one alias, a good one under the other.
    folderless = store.create_run(name="elsewhere", task="classify", status="finished", run_dir=str(tmp_path / "no-such-run")).id
    store.set_alias("broken", folderless)
    store.set_alias("router", second)
    moves, failures = served.refresh_aliases()
    assert moves == [("router", first, second)]
    assert len(failures) == 1 and isinstance(failures[0], ServeError) and "'broken' (alias broken) stays on run" in failures[0].message
    # The good promotion was followed all the same; the broken name stays on the run it served.
    assert served.get("router").run_id == second and served.get("broken").run_id == first
    assert served.alias_changes == [("router", first, second)]


def test_feedback_import_reads_csv_as_the_training_data_reader_does(tmp_path):
    # A helpdesk export headed 'ID;Label' (Excel in a European locale, with its 'sep=;' line) was refused although the
    # training data reader takes such a file: the column names and the delimiter are read the same way now.
    log_path = tmp_path / "requests.db"
    log = RequestLog(log_path)
    for n in (1, 2):
        log.record({"time": "2026-01-02T00:00:00.000+00:00", "endpoint": "/v1/classify", "model": "router", "prompt": '"refund"',
                    "status": 200, "stream": 0, "response_id": f"clf-{n}", "run_id": "r1", "predicted_label": "billing"})
    log.close()
    exported = tmp_path / "tickets.csv"
    exported.write_text("sep=;\nID; Label \nclf-1;account\nclf-2;billing, refunds\n", encoding="utf-8")
    assert import_feedback(log_path, exported)["imported"] == 2
    db = sqlite3.connect(log_path)
    assert db.execute("SELECT response_id, label FROM feedback ORDER BY response_id").fetchall() == [
        ("clf-1", "account"), ("clf-2", "billing, refunds")]
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\nclf-1,account,extra\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.csv:2: "):
        import_feedback(log_path, bad)
