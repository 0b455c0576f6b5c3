"""What a finished run's page says about its verdict, against what `tunelab show` and report.md say: every baseline
scored (embedding included), every baseline skipped with its reason, the verdict's warnings, the calibration's ECE
before and after; and the data check's warnings on the start form before a run is started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ui_helpers import check_screen, write_config

from tunelab.registry import Registry


@pytest.fixture(scope="module")
def verdict_run(tmp_path_factory, tiny_model_dir):
    """One classify run by `tunelab run` on the tiny model: LoRA (so calibration.json has its ECE), default baselines,
    eval.skip_hopeless on (the tiny model at chance is skipped as unable to win), 12 test examples (too few to decide)."""
    import tunelab

    folder = tmp_path_factory.mktemp("verdict-run")
    env = {**os.environ, "TUNELAB_CACHE": str(folder / "cache"), "PYTHONPATH": str(Path(tunelab.__file__).resolve().parents[1])}
    config = write_config(folder, tiny_model_dir, "judged", method="lora", epochs=1)
    text = config.read_text().replace("skip_hopeless: false", "skip_hopeless: true")
    config.write_text(text)
    done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "run", str(config), "--no-calibrate"],
                          capture_output=True, text=True, timeout=1200, env=env, cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, folder / "runs" / "registry.db", done.stdout + done.stderr


@pytest.fixture(scope="module")
def verdict_url(verdict_run):
    from tunelab.serve.server import BackgroundServer
    from tunelab.ui import UISettings, create_app

    folder, registry, _ = verdict_run
    with BackgroundServer(create_app(UISettings(registry=registry, project=folder)), port=0) as url:
        yield url


def test_run_page_shows_every_baseline_scored_or_skipped_and_the_warnings(page, verdict_url, verdict_run):
    from tunelab.runs import RunFolder

    _, registry_path, output = verdict_run
    record = Registry(registry_path).get_run("judged")
    page.goto(f"{verdict_url}/runs/{record.id}")
    # Every baseline scored has its column, the embedding baseline included.
    header = page.inner_text(".verdict-table thead")
    for name in record.comparison["comparisons"]:
        assert name in header, header
    assert "embedding" in record.comparison["comparisons"]
    # Every baseline skipped is listed with its one-line reason, as `tunelab run` printed it.
    skipped = page.inner_text("#skipped")
    assert set(record.comparison["skipped"]) == {"base", "few_shot"}
    for name, reason in record.comparison["skipped"].items():
        assert f"{name}: {reason}" in skipped
        assert f"{name} skipped:" in output
    # The verdict says why there is none (n=12), and every warning report.md gives is on the page too.
    assert "too few test examples to decide (n=12" in page.inner_text("dl.facts")
    run = RunFolder(record.run_dir)
    report_warnings = [line.removeprefix("- warning: ") for line in run.report_md.read_text().splitlines() if line.startswith("- warning: ")]
    assert report_warnings, "the tiny run's prompts are cut at max_length: the report warns of it"
    shown = page.locator("#verdict-warnings li").all_inner_texts()
    assert shown == report_warnings, (shown, report_warnings)
    check_screen(page, "run-verdict")


def test_run_page_shows_the_calibration_ece_before_and_after(page, verdict_url, verdict_run):
    """classify.calibrate: the temperature and the validation ECE before and after, as calibration.json keeps them."""
    import json

    from tunelab.runs import RunFolder

    _, registry_path, _ = verdict_run
    record = Registry(registry_path).get_run("judged")
    page.goto(f"{verdict_url}/runs/{record.id}")
    calibration = json.loads(RunFolder(record.run_dir).calibration.read_text())
    assert calibration["applied"]
    assert page.locator("#calibration").count() == 1, "calibration.json is not shown"
    text = page.inner_text("#calibration")
    for value in (calibration["temperature"], calibration["ece_before"], calibration["ece_after"]):
        assert f"{value:.4g}" in text, text
    assert f"{calibration['queries']} validation" in text


def test_start_form_shows_the_data_checks_warnings_before_start(page, verdict_url, verdict_run):
    """The warnings `tunelab run` prints before any compute (the data check's, the split's) are on the form after
    Estimate, before the user presses Start."""
    folder, _, output = verdict_run
    page.goto(verdict_url + "/start")
    page.fill("#config-path", "judged.yaml")
    page.click("details summary:has-text('more')")
    page.fill("#overrides", "name=not-started")
    page.click("#estimate-button")
    page.wait_for_selector("#estimate-result:not(.hidden)")
    shown = page.locator("#estimate-warnings li").all_inner_texts()
    printed = [" ".join(w.split()) for w in output.split("warning ")[1:]]
    assert any(w.startswith("data: only 48 examples") for w in shown), shown
    assert any(w.startswith("split: the test split has 12 examples") for w in shown), shown
    for warning in shown:  # word for word what the command line printed
        assert any(p.startswith(" ".join(warning.split())) for p in printed), (warning, printed)
    assert not page.is_disabled("#start-button")
    assert not (folder / "runs" / "not-started").exists()
    check_screen(page, "start-warnings")
