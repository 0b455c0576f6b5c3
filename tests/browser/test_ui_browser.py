"""The UI in a real browser: runs listed, a comparison, a keyboard review that is saved and moves the win rate, a started run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from ui_helpers import shot, write_config

from tunelab.evaluation.review import load_sheet, review_sheet_path, score_registry_reviews
from tunelab.registry import Registry


def test_runs_page_lists_the_real_runs_and_a_run_page_renders(page, ui_url, ui_runs):
    _, registry_path = ui_runs
    registry = Registry(registry_path)
    page.goto(ui_url + "/")
    table = page.locator("#runs")
    assert table.locator("tbody tr").count() == 2
    assert "short" in table.inner_text() and "longer" in table.inner_text()
    short = registry.get_run("short")
    row = page.locator(f"tr[data-run='{short.id}']")
    # The verdict and the before -> after of the registry, as `tunelab runs` has them.
    assert short.verdict in row.inner_text()
    assert f"{short.tuned_metrics['accuracy']:.4g}" in row.inner_text()
    page.fill("#filter", "longer")
    assert page.locator("#runs tbody tr:visible").count() == 1
    page.fill("#filter", "")
    page.click("#runs th:has-text('after')")  # sorting keeps every row
    assert page.locator("#runs tbody tr").count() == 2
    shot(page, "runs")
    page.click(f"text={short.name}")
    page.wait_for_selector(".loss-curve polyline.train-line")
    assert "Confusion matrices" in page.content()
    assert page.locator(".verdict-table tbody tr").count() >= 3  # accuracy, macro_f1, ece
    shot(page, "run")
    data_check = page.inner_text("#data-check")
    assert "48 in 1 file" in data_check, data_check


def test_comparison_renders_side_by_side(page, ui_url):
    page.goto(ui_url + "/")
    page.check("#runs tbody tr:nth-child(1) .select-run")
    assert page.is_disabled("#compare-selected")
    page.check("#runs tbody tr:nth-child(2) .select-run")
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"/compare\?runs="))
    text = page.inner_text("main")
    assert "Differences from" in text and "train.epochs" in text
    assert page.locator("table.differences tbody tr").count() >= 3
    assert page.locator("table.side-by-side tbody tr").count() == 12  # the 12 shared test examples
    shot(page, "compare")


def test_keyboard_review_is_saved_and_changes_the_win_rate(page, ui_url, ui_runs):
    _, registry_path = ui_runs
    registry = Registry(registry_path)
    run = registry.get_run("longer")
    page.goto(f"{ui_url}/runs/{run.id}/review")
    page.fill("#reviewer-name", "ann")
    page.press("#reviewer-name", "Enter")
    page.wait_for_selector("#item:not(.hidden)")
    assert page.text_content("#score") == "no judgment yet"
    assert not page.is_visible("#score")  # the live score stays folded away from the reviewer's eyes
    sheet = load_sheet(review_sheet_path(run.run_dir))
    first = page.input_value("#example-id")
    page.keyboard.press("1")
    page.wait_for_function("document.getElementById('progress').textContent.startsWith('1 /')")
    after_one = page.text_content("#score")
    # Answer A was the tuned model's or the base model's: the win rate is 100% or 0% after one judgment.
    expected = "100.0%" if sheet.sides[first]["A"] == "tuned" else "0.0%"
    assert after_one.startswith(expected)
    for key, done in (("2", 2), ("t", 3), ("s", 3)):
        shown = page.input_value("#example-id")
        page.keyboard.press(key)
        page.wait_for_function(f"document.getElementById('example-id').value !== '{shown}'")
        assert page.inner_text("#progress").startswith(f"{done} /")
    stored = registry.list_reviews(run.id)
    assert [r.preference for r in stored] == ["A", "B", "tie", "skip"] and {r.reviewer for r in stored} == {"ann"}
    score = score_registry_reviews(registry, run.id, sheet)
    assert score.judged == 3
    assert page.text_content("#score").startswith(f"{score.win_rate * 100:.1f}%")
    # The CLI counts the same rows.
    cli = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "review", "score", "--run", run.name, "--registry", str(registry_path), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["judged"] == 3 and json.loads(cli.stdout)["win_rate"] == score.win_rate
    shot(page, "review")
    # A second reviewer on the same first rows: agreement appears.
    page.goto(f"{ui_url}/runs/{run.id}/review?reviewer=bob")
    page.wait_for_selector("#item:not(.hidden)")
    for key in ("1", "2"):
        before = page.input_value("#example-id")
        page.keyboard.press(key)
        page.wait_for_function(f"document.getElementById('example-id').value !== '{before}'")
    page.wait_for_selector("#agreement tbody tr")
    assert "ann · bob" in page.inner_text("#agreement")
    page.click("#export-pairs")
    page.wait_for_selector("#pairs-result a")
    assert "pairs" in page.inner_text("#pairs-result")
    page.click("#score-box summary")
    assert page.is_visible("#score")
    shot(page, "review-two-reviewers")


def test_started_run_shows_progress_and_cancels(page, ui_url, ui_runs, tiny_model_dir):
    folder, registry_path = ui_runs
    # Long enough to be cancelled while it trains (the tiny model runs a few hundred steps a second).
    config = write_config(folder, tiny_model_dir, "started", epochs=400)
    page.goto(ui_url + "/start")
    page.fill("#config-path", str(config))
    assert page.is_disabled("#start-button")
    page.click("#estimate-button")
    page.wait_for_selector("#estimate-result:not(.hidden)")
    assert "training tokens" in page.inner_text("#estimate-table") and "optimizer steps" in page.inner_text("#estimate-table")
    shot(page, "start-estimate")
    page.click("#start-button")
    page.wait_for_url(re.compile(r"/jobs/"))
    page.wait_for_selector("#steps li:has-text('baseline')", timeout=120_000)
    page.wait_for_selector(".loss-curve polyline.train-line", timeout=120_000)
    assert page.inner_text("#job-status") == "running"
    shot(page, "started-run")
    page.click("#cancel-button")
    page.wait_for_function("document.getElementById('job-status').textContent === 'cancelled'", timeout=60_000)
    assert Registry(registry_path).get_run("started").status == "interrupted"
    shot(page, "started-run-cancelled")
