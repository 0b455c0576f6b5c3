"""Live traffic out of the request log (``tunelab.serve.request_log``): one window, per served model and run.

Counts, latencies, error rates, predicted labels and top probabilities are read exactly with SQL over
every row of the window. The request texts (for the length, TF-IDF and vocabulary signals) are read
for at most ``sample`` rows, chosen by a hash of the row id (seeded, spread over the whole window),
and the result says when it sampled.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from tunelab.serve.request_log import CLASSIFY, SERVING_ENDPOINTS, open_log, request_texts

_HASH = 2654435761  # Knuth's multiplicative hash: spreads consecutive ids over 2**32
_HASH_RANGE = 2**32
OVERLOADED = 429  # what ``tunelab serve`` answers when more requests wait than it takes


def iso(moment: datetime) -> str:
    """The request log's time format (UTC ISO-8601, milliseconds), which sorts as text."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def window_bounds(window_seconds: float, until: datetime | None = None) -> tuple[str, str]:
    until = until or datetime.now(UTC)
    try:
        since = iso(until - timedelta(seconds=window_seconds))
    except OverflowError:
        # A window reaching before the year 1 ("1000000d": all of it): the whole log.
        since = iso(datetime.min.replace(tzinfo=UTC))
    return since, iso(until + timedelta(milliseconds=1))


@dataclass
class Traffic:
    """What one served name answered with one run in the window."""

    model: str
    run_id: str | None
    since: str
    until: str
    requests: int
    server_errors: int  # 5xx, and the 429s below: the server failed to answer
    client_errors: int  # 4xx but 429: the client's request was wrong
    first: str | None
    last: str | None
    latency_ms: np.ndarray
    predicted: Counter = field(default_factory=Counter)  # every classify answer of the window
    top_probabilities: np.ndarray = field(default_factory=lambda: np.zeros(0))  # one-input classify answers
    texts: list[str] = field(default_factory=list)  # the inputs of the sampled requests
    text_requests: int = 0  # requests the texts came from
    sampled: bool = False
    feedback: list[tuple[str | None, str]] = field(default_factory=list)  # (predicted, correct label)
    ratings: Counter = field(default_factory=Counter)  # +1 / -1 on generated answers
    per_day: dict[str, int] = field(default_factory=dict)
    overloaded: int = 0  # refused with 429 (``serve --max-waiting``): among the server errors


def _predictions(output: str | None) -> list[str]:
    if output is None:
        return []
    try:
        value = json.loads(output)
    except json.JSONDecodeError:
        return [output]
    return [str(item) for item in value] if isinstance(value, list) else [str(value)]


# A request for a name the server does not serve: refused with 404 (``model_not_found``) before any model answered,
# so no run is logged. Reported as such, never as a served model's traffic (it read "the base model" answered it).
_UNKNOWN_NAME = "status = 404 AND run_id IS NULL"
# One served name and run's requests: a 404 for the same name (a base model no longer served, say) is not among them.
_WHERE = (
    f"time >= ? AND time < ? AND model = ? AND run_id IS ? AND endpoint IN ({', '.join('?' for _ in SERVING_ENDPOINTS)}) "
    f"AND NOT ({_UNKNOWN_NAME})"
)


# The newest label and the newest rating of an input, each on its own: a thumbs-up sent after a correction
# is the newest feedback row but says nothing about the label (and a newer label replaces an older one).
_NEWEST = "f.id = (SELECT max(g.id) FROM feedback g WHERE g.response_id = f.response_id AND g.item = f.item AND g.{} IS NOT NULL)"
_NEWEST_LABEL, _NEWEST_RATING = _NEWEST.format("label"), _NEWEST.format("rating")


def served_groups(path: Path, since: str, until: str) -> list[tuple[str, str | None, int]]:
    """(model, run id, requests) of every served name and run with traffic in the window, busiest first."""
    db = open_log(path)
    try:
        rows = db.execute(
            f"SELECT model, run_id, count(*) FROM requests WHERE time >= ? AND time < ? AND model IS NOT NULL "
            f"AND endpoint IN ({', '.join('?' for _ in SERVING_ENDPOINTS)}) AND NOT ({_UNKNOWN_NAME}) "
            "GROUP BY model, run_id ORDER BY count(*) DESC",
            (since, until, *SERVING_ENDPOINTS),
        ).fetchall()
    finally:
        db.close()
    return [(row[0], row[1], int(row[2])) for row in rows]


def unknown_names(path: Path, since: str, until: str) -> dict[str, int]:
    """The names requested in the window that the server does not serve (answered 404), and how many times, most first."""
    db = open_log(path)
    try:
        rows = db.execute(
            f"SELECT coalesce(model, ''), count(*) FROM requests WHERE time >= ? AND time < ? AND {_UNKNOWN_NAME} "
            f"AND endpoint IN ({', '.join('?' for _ in SERVING_ENDPOINTS)}) GROUP BY 1 ORDER BY count(*) DESC, 1",
            (since, until, *SERVING_ENDPOINTS),
        ).fetchall()
    finally:
        db.close()
    return {row[0]: int(row[1]) for row in rows}


def read_traffic(path: Path, model: str, run_id: str | None, since: str, until: str, *, sample: int = 20000) -> Traffic:
    """Everything monitoring needs of one (served name, run) in the window [since, until).

    Raises:
        DataError: when ``path`` is not a request log.
    """
    db = open_log(path)
    arguments = (since, until, model, run_id, *SERVING_ENDPOINTS)
    # One read transaction: every query below sees the same snapshot of a log the server keeps writing (WAL), so the
    # counts, latencies, labels and texts are of the same requests.
    db.execute("BEGIN")
    try:
        # A 429 is the server's own refusal (more requests waiting than it takes), not a request the client got wrong:
        # counted with the server's errors, which are judged, and never among the client errors, which are not.
        count, server_errors, client_errors, overloaded, first, last = db.execute(
            f"SELECT count(*), coalesce(sum(status >= 500 OR status = {OVERLOADED}), 0), "
            f"coalesce(sum(status >= 400 AND status < 500 AND status != {OVERLOADED}), 0), coalesce(sum(status = {OVERLOADED}), 0), "
            f"min(time), max(time) FROM requests WHERE {_WHERE}",
            arguments,
        ).fetchone()
        latency = np.array([row[0] for row in db.execute(f"SELECT latency_ms FROM requests WHERE {_WHERE} AND latency_ms IS NOT NULL", arguments)], dtype=float)
        answered = f"{_WHERE} AND status < 400"
        predicted: Counter = Counter(
            {row[0]: int(row[1]) for row in db.execute(f"SELECT predicted_label, count(*) FROM requests WHERE {answered} AND predicted_label IS NOT NULL GROUP BY predicted_label", arguments)}
        )
        # Multi-input classify requests have no single predicted_label: their labels are the output list.
        for (output,) in db.execute(f"SELECT output FROM requests WHERE {answered} AND endpoint = '/v1/classify' AND predicted_label IS NULL", arguments):
            predicted.update(_predictions(output))
        top = np.array([row[0] for row in db.execute(f"SELECT top_probability FROM requests WHERE {answered} AND top_probability IS NOT NULL", arguments)], dtype=float)
        ok_requests = int(count) - int(server_errors) - int(client_errors)
        sampled = ok_requests > sample
        share = f" AND ((id * {_HASH}) % {_HASH_RANGE}) < {int(_HASH_RANGE * sample / max(ok_requests, 1))}" if sampled else ""
        texts: list[str] = []
        text_requests = 0
        for endpoint, prompt in db.execute(f"SELECT endpoint, prompt FROM requests WHERE {answered}{share}", arguments):
            texts.extend(request_texts(endpoint, prompt))
            text_requests += 1
        feedback, ratings = [], Counter()
        for _endpoint, predicted_label, output, item, label, rating, newest_label, newest_rating in db.execute(
            f"SELECT r.endpoint, r.predicted_label, r.output, f.item, f.label, f.rating, {_NEWEST_LABEL}, {_NEWEST_RATING} "
            "FROM feedback f JOIN requests r ON r.response_id = f.response_id "
            f"WHERE r.time >= ? AND r.time < ? AND r.model = ? AND r.run_id IS ? AND ({_NEWEST_LABEL} OR {_NEWEST_RATING})",
            (since, until, model, run_id),
        ):
            if newest_label:
                labels = [predicted_label] if predicted_label is not None else _predictions(output)
                feedback.append((labels[item] if item < len(labels) else None, str(label)))
            if newest_rating:
                ratings[int(rating)] += 1
        per_day = {row[0]: int(row[1]) for row in db.execute(f"SELECT substr(time, 1, 10), count(*) FROM requests WHERE {_WHERE} GROUP BY 1 ORDER BY 1", arguments)}
    finally:
        db.execute("ROLLBACK")  # read only: nothing to keep
        db.close()
    return Traffic(
        model=model, run_id=run_id, since=since, until=until, requests=int(count), server_errors=int(server_errors),
        client_errors=int(client_errors), first=first, last=last, latency_ms=latency, predicted=predicted,
        top_probabilities=top, texts=texts, text_requests=text_requests, sampled=sampled, feedback=feedback,
        ratings=ratings, per_day=per_day, overloaded=int(overloaded),
    )


def labelled_requests(path: Path, *, model: str | None = None, since: str | None = None) -> list[dict[str, Any]]:
    """Logged classify inputs that got a corrected label (the newest label per input), oldest first.

    Each item: ``text``, ``label`` (the feedback's), ``predicted``, ``response_id``, ``time``, ``model``,
    ``run_id``: what a retrain learns from and tests on.

    Raises:
        DataError: when ``path`` is not a request log.
    """
    db = open_log(path)
    # Classify answers only: a label stored for a chat answer (before add_feedback refused one) is no classify example.
    clauses, arguments = [_NEWEST_LABEL, "r.endpoint = ?"], [CLASSIFY]
    if model is not None:
        clauses.append("r.model = ?")
        arguments.append(model)
    if since is not None:
        clauses.append("r.time >= ?")
        arguments.append(since)
    try:
        rows = db.execute(
            "SELECT r.endpoint, r.prompt, r.predicted_label, r.output, r.response_id, r.time, r.model, r.run_id, f.item, f.label "
            "FROM feedback f JOIN requests r ON r.response_id = f.response_id "
            f"WHERE {' AND '.join(clauses)} ORDER BY r.id, f.item",
            arguments,
        ).fetchall()
    finally:
        db.close()
    items = []
    for endpoint, prompt, predicted_label, output, response_id, time, served, run_id, item, label in rows:
        texts = request_texts(endpoint, prompt)
        if item >= len(texts):
            continue
        labels = [predicted_label] if predicted_label is not None else _predictions(output)
        items.append({
            "text": texts[item], "label": str(label), "predicted": labels[item] if item < len(labels) else None,
            "response_id": response_id, "item": item, "time": time, "model": served, "run_id": run_id,
        })
    return items
