"""The "Should I fine-tune?" page: the advice `tunelab advise` wrote beside the registry, and one started from the browser."""

import json
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from tunelab.config import parse_config
from tunelab.registry import Registry
from tunelab.tasks.advise import advise
from tunelab.ui import UISettings, create_app

HEADERS = {"X-Tunelab-UI": "1"}
WORDS = {"A": ["apple", "pear", "plum", "fruit"], "B": ["billing", "account", "card", "refund"]}


@pytest.fixture
def advice_config(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    rows = [{"text": f"{WORDS['AB'[i % 2]][i % 4]} {WORDS['AB'[i % 2]][(i // 2) % 4]} number {i}", "label": "AB"[i % 2]} for i in range(60)]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = {
        "task": "classify", "model": str(tiny_model_dir), "name": "page",
        "data": {"train": str(data), "test_size": 0.2, "validation_size": 0.2, "max_length": 64},
        "train": {"method": "full", "lr": 3e-3, "epochs": 3, "batch_size": 8, "output_dir": str(tmp_path / "runs")},
        "eval": {"bootstrap_samples": 200},
    }
    path = tmp_path / "advise.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, parse_config(raw)


def _client(tmp_path):
    registry = Registry(tmp_path / "runs" / "registry.db")
    # As `tunelab ui` started in the project folder: configs are taken from there (or the registry's folder).
    return TestClient(create_app(UISettings(registry=registry.path, project=tmp_path)), base_url="http://127.0.0.1:7860")


def test_the_page_lists_and_shows_an_advice_with_its_chart(tmp_path, advice_config):
    _, config = advice_config
    made = advise(config, budget_minutes=None, calibrate=False)
    client = _client(tmp_path)
    listing = client.get("/advise")
    assert listing.status_code == 200 and "advise-page" in listing.text and made.recommendation in listing.text
    page = client.get("/advise/advise-page")
    assert page.status_code == 200
    assert f"Recommendation: {made.recommendation}" in page.text
    assert "<svg" in page.text and 'class="band series-0"' in page.text and "your data (" in page.text
    for row in made.options:
        assert row.cost.name in page.text
    assert client.get("/advise/not-an-advice").status_code == 400
    from tunelab.errors import DataError
    from tunelab.ui.views import advice_folder

    with pytest.raises(DataError):
        advice_folder(Registry(tmp_path / "runs" / "registry.db"), "advise-x/../../etc")


def test_an_advice_started_from_the_browser_is_a_real_tunelab_advise(tmp_path, advice_config):
    path, _ = advice_config
    client = _client(tmp_path)
    assert client.post("/api/advise", json={"config": str(path)}).status_code == 403  # no UI header: not from its own page
    missing = client.post("/api/advise", json={"config": str(tmp_path / "nope.yaml")}, headers=HEADERS)
    assert missing.status_code == 400 and "config file not found" in missing.json()["error"]
    bad = client.post("/api/advise", json={"config": str(path), "budget_minutes": "soon"}, headers=HEADERS)
    assert bad.status_code == 400
    started = client.post("/api/advise", json={"config": str(path), "budget_minutes": 5, "retrain_every": "7d"}, headers=HEADERS)
    assert started.status_code == 200, started.text
    url = started.json()["url"]
    assert url == "/advise/advise-page"
    deadline = time.time() + 300
    while time.time() < deadline:
        page = client.get(url)
        if "Recommendation:" in page.text:
            break
        assert "being made" in page.text
        time.sleep(1)
    assert "Recommendation:" in page.text and "re-tuning once every 7d" in page.text
    assert (tmp_path / "runs" / "advise-page" / "advice.json").is_file()


def test_a_text_advice_on_one_validation_document_shows_windows_and_no_zero_width_interval(tmp_path):
    """FDR speeches: 1 validation document. The page showed perplexity "36.1 [36.1, 36.1]" (an interval of one row)
    and counted the curve in "training examples" where the advice counts training windows."""
    folder = tmp_path / "runs" / "advise-speeches"
    folder.mkdir(parents=True)
    option = {"seconds": 1.0, "usd": None, "retune_seconds_per_month": 0.0, "retune_usd_per_month": 0.0, "notes": []}
    data = {
        "name": "speeches", "task": "text", "metric": "perplexity", "higher_is_better": False, "train_size": 71,
        "validation_size": 1, "labelled": 8, "size_unit": "training windows of up to 256 tokens", "size_noun": "windows",
        "opponents": [{"name": "base", "score": 36.112, "low": 36.112, "high": 36.112, "learns": False, "seconds": 32.5, "model": "base"}],
        "points": [{"size": n, "score": s, "seconds": 60.0, "estimated_seconds": 50.0, "run_dir": str(folder / f"n{n}")}
                   for n, s in ((10, 35.406), (19, 35.066), (36, 34.564), (71, 33.869))],
        "curves": [], "projection": None, "crossing": None, "recommendation": "measure first: run tunelab run", "reason": "r",
        "flags": [], "retrain_every": "30d", "folder": str(folder), "seconds": 400.0, "warnings": [],
        "budget": {"minutes": 8.0, "sizes": [10, 19, 36, 71], "estimated_seconds": 320.0, "used_seconds": 400.0},
        "options": [{"key": "keep", "name": "keep base", **option, "score": 36.112, "score_low": 36.112, "score_high": 36.112,
                     "score_note": "measured on the validation rows"},
                    {"key": "here", "name": "fine-tune here", **option, "score": 33.959, "score_low": 33.959, "score_high": 33.959,
                     "score_note": "projected from the curve at 71 training windows of up to 256 tokens"}],
    }
    (folder / "advice.json").write_text(json.dumps(data))
    page = _client(tmp_path).get("/advise/advise-speeches")
    assert page.status_code == 200, page.text
    assert "71 training windows of up to 256 tokens" in page.text and "training examples" not in page.text, page.text
    assert "[36.1, 36.1]" not in page.text and "[34, 34]" not in page.text, page.text  # 3 significant digits
