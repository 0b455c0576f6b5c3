"""The UI in a real browser over runs made by `tunelab run`: the runs list against the strongest baseline, zoomable curves
with hover, sortable confusion matrices, overlaid curves in compare, a keyboard review, the playground, and a run started
from the form's pickers with its estimate first and live progress. Every page is also checked at 1400x1000."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from ui_helpers import check_screen, shot, write_config

from tunelab.evaluation.review import load_sheet, review_sheet_path, score_registry_reviews
from tunelab.registry import Registry


def _chart_value(page, chart: str, expression: str):
    return page.evaluate(f"(() => {{ const u = document.querySelector('[data-chart={chart}]').uplot; return {expression}; }})()")


def test_runs_page_shows_each_run_against_its_strongest_baseline(page, ui_url, ui_runs):
    _, registry_path = ui_runs
    registry = Registry(registry_path)
    page.goto(ui_url + "/")
    table = page.locator("#runs")
    assert table.locator("tbody tr").count() == 2
    for name in ("short", "longer"):
        record = registry.get_run(name)
        row = page.locator(f"tr[data-run='{record.id}']")
        text = row.inner_text()
        strongest = record.comparison["strongest"]
        metric = next(m for m in record.comparison["comparisons"][strongest]["metrics"] if m["name"] == "accuracy")
        # The verdict's own opponent and numbers, coloured by what the verdict says.
        assert record.verdict in text and f"{strongest} {metric['before']:.4g}" in text and f"{metric['after']:.4g}" in text
        # 12 test examples: under the verdict's minimum of 30 every run says so, in its own neutral colour (not "lost").
        kind = {"fine-tuning paid off": "paid-off", "no significant difference": "no-difference",
                "too few test examples to decide": "too-few"}.get(record.verdict, "lost")
        assert record.verdict == "too few test examples to decide"
        assert row.locator(f".verdict.verdict-{kind}").count() == 1
        assert "< $0.0001" not in text
    page.fill("#filter", "longer")
    assert page.locator("#runs tbody tr:visible").count() == 1
    page.fill("#filter", "")
    page.click("#runs th:has-text('tuned')")  # sorting keeps every row
    assert page.locator("#runs tbody tr").count() == 2
    check_screen(page, "runs")


def test_run_page_curves_zoom_and_hover_and_confusions_sort(page, ui_url, ui_runs):
    _, registry_path = ui_runs
    record = Registry(registry_path).get_run("longer")
    page.goto(f"{ui_url}/runs/{record.id}")
    for chart in ("train_loss", "validation_loss", "validation_score", "lr"):
        page.wait_for_selector(f"[data-chart={chart}] canvas")
    assert "validation accuracy" in page.inner_text("[data-chart=validation_score]")
    # Hover: the legend shows the values under the cursor.
    box = page.locator("[data-chart=train_loss] .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    legend = page.locator("[data-chart=train_loss] .u-legend .u-value").nth(2).inner_text()
    assert re.match(r"^\d", legend), legend
    # Zoom: a drag across the chart narrows the step axis; a double-click resets it.
    full = _chart_value(page, "train_loss", "[u.scales.x.min, u.scales.x.max]")
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + 20)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + 20, steps=5)
    page.mouse.up()
    zoomed = _chart_value(page, "train_loss", "[u.scales.x.min, u.scales.x.max]")
    assert full[0] < zoomed[0] < zoomed[1] < full[1], (full, zoomed)
    page.mouse.dblclick(box["x"] + box["width"] * 0.5, box["y"] + 20)
    assert _chart_value(page, "train_loss", "[u.scales.x.min, u.scales.x.max]") == full
    page.check("[data-log]")
    assert _chart_value(page, "train_loss", "u.scales.y.distr") == 3 and _chart_value(page, "lr", "u.scales.y.distr") == 1
    page.uncheck("[data-log]")
    # Confusion matrices: the tuned model's first; sort its classes by recall (worst first), or keep only those with errors.
    tuned = page.locator("[data-confusion][data-name='tuned']")
    assert page.locator("[data-confusion]").first.get_attribute("data-name") == "tuned"
    tuned.locator("[data-sort]").select_option("recall")
    recalls = [float(r) for r in tuned.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.recall)")]
    assert recalls == sorted(recalls)
    header = tuned.locator("thead th[data-col]").evaluate_all("cells => cells.map(c => c.dataset.col)")
    rows = tuned.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.index)")
    assert header == rows  # columns follow the rows: the diagonal stays the diagonal
    assert page.locator(".verdict-table tbody tr").count() >= 3  # accuracy, macro_f1, ece
    # 12 test examples: no verdict, and no cell claims a significant difference either way.
    assert page.locator("#verdict.verdict-too-few").count() == 1
    assert page.locator(".verdict-table td.outcome-better, .verdict-table td.outcome-worse").count() == 0
    assert "48 in 1 file" in page.inner_text("#data-check")
    check_screen(page, "run")


def test_compare_overlays_the_runs_curves(page, ui_url):
    page.goto(ui_url + "/")
    page.check("#runs tbody tr:nth-child(1) .select-run")
    assert page.is_disabled("#compare-selected")
    page.check("#runs tbody tr:nth-child(2) .select-run")
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"/compare\?runs="))
    page.wait_for_selector("[data-chart=train_loss] canvas")
    labels = page.locator("[data-chart=train_loss] .u-legend .u-label").all_inner_texts()
    assert {"short", "longer"} <= set(labels), labels
    assert _chart_value(page, "validation_loss", "u.series.length") == 3  # the step axis and one line per run
    text = page.inner_text("main")
    assert "Differences from" in text and "train.epochs" in text and "different tasks" not in text
    assert page.locator("table.side-by-side tbody tr").count() == 12  # the 12 shared test examples
    # The runs' paired difference on 12 examples decides nothing, and says so in the neutral colour.
    assert page.locator("table.differences caption .verdict.verdict-too-few").count() == 1
    assert page.locator("table.differences tr.outcome-better, table.differences tr.outcome-worse").count() == 0
    check_screen(page, "compare")


def test_keyboard_review_is_saved_and_changes_the_win_rate(page, ui_url, ui_runs):
    _, registry_path = ui_runs
    registry = Registry(registry_path)
    run = registry.get_run("longer")
    page.goto(f"{ui_url}/runs/{run.id}/review")
    assert "no reviews yet" in page.inner_text("#reviewers") and "no reviews yet" in page.inner_text("#agreement-empty")
    page.fill("#reviewer-name", "ann")
    page.press("#reviewer-name", "Enter")
    page.wait_for_selector("#item:not(.hidden)")
    page.click("#reference-box summary")
    assert page.inner_text("#reference") in ("A", "B")  # the test example's own label
    assert page.text_content("#score") == "no judgment yet"
    assert not page.is_visible("#score")  # the live score stays folded away from the reviewer's eyes
    sheet = load_sheet(review_sheet_path(run.run_dir))
    first = page.input_value("#example-id")
    page.keyboard.press("1")
    page.wait_for_function("document.getElementById('progress').textContent.startsWith('1 /')")
    expected = "100.0%" if sheet.sides[first]["A"] == "tuned" else "0.0%"
    assert page.text_content("#score").startswith(expected)
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
    cli = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "review", "score", "--run", run.name, "--registry", str(registry_path), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["judged"] == 3 and json.loads(cli.stdout)["win_rate"] == score.win_rate
    check_screen(page, "review")
    page.goto(f"{ui_url}/runs/{run.id}/review?reviewer=bob")
    page.wait_for_selector("#item:not(.hidden)")
    for key in ("1", "2"):
        before = page.input_value("#example-id")
        page.keyboard.press(key)
        page.wait_for_function(f"document.getElementById('example-id').value !== '{before}'")
    page.wait_for_selector("#agreement tbody tr")
    assert "ann · bob" in page.inner_text("#agreement") and not page.is_visible("#agreement-empty")
    page.click("#export-pairs")
    page.wait_for_selector("#pairs-result a")
    page.click("#score-box summary")
    assert page.is_visible("#score")
    shot(page, "review-two-reviewers")


def test_playground_answers_two_runs_side_by_side_as_served(page, ui_url, ui_runs):
    folder, registry_path = ui_runs
    registry = Registry(registry_path)
    short, longer = registry.get_run("short"), registry.get_run("longer")
    page.goto(f"{ui_url}/playground?runs={short.id}&runs={longer.id}")
    page.fill("#playground-prompt", "apple pear number 7")
    page.click("#playground-ask")
    page.wait_for_selector("#playground-answers .answer >> nth=1")
    answers = page.locator("#playground-answers .answer")
    assert answers.count() == 2
    for index, record in enumerate((short, longer)):
        text = answers.nth(index).inner_text()
        assert record.run_dir.endswith(answers.nth(index).get_attribute("data-run"))
        label = answers.nth(index).locator(".label strong").inner_text()
        assert label in ("A", "B") and answers.nth(index).locator("table.probabilities tr").count() == 2, text
        # The same answer as the command line's `tunelab generate` (which answers as `tunelab serve` does).
        cli = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "generate", "--model", record.run_dir, "apple pear number 7"],
                             capture_output=True, text=True, timeout=300, cwd=folder)
        assert cli.returncode == 0, cli.stderr
        assert cli.stdout.strip().splitlines()[-1].startswith(label), cli.stdout
    check_screen(page, "playground")


def test_start_form_pickers_estimate_first_then_live_progress_and_cancel(page, ui_url, ui_runs, tiny_model_dir):
    folder, registry_path = ui_runs
    write_config(folder, tiny_model_dir, "unused")  # writes folder/train.jsonl
    page.goto(ui_url + "/start")
    page.fill("#config-path", "")
    page.select_option("#field-task", "classify")
    page.fill("#field-name", "started")
    page.fill("#field-model", str(tiny_model_dir))
    page.fill("#field-train", str(folder / "train.jsonl"))
    page.select_option("#field-method", "full")
    # Long enough to watch and cancel while it trains (the tiny model runs a few hundred steps a second).
    page.fill("#field-epochs", "400")
    page.fill("#field-lr", "3e-3")
    page.fill("#field-batch_size", "8")
    page.fill("#field-max_length", "64")
    page.click("details summary:has-text('more')")
    # A split of its own (data.seed=1): the fixture runs scored the base model on theirs, and a cached baseline
    # evaluation is reused before eval.skip_hopeless is asked, so on their split the base model would not be skipped.
    page.fill("#overrides", f"data.test_size=0.25\ndata.validation_size=0.1\ndata.seed=1\neval.bootstrap_samples=200\n"
                            f"train.output_dir={folder / 'runs'}")
    assert page.is_disabled("#start-button")
    page.click("#estimate-button")
    page.wait_for_selector("#estimate-result:not(.hidden)")
    estimate = page.inner_text("#estimate-table")
    assert "training tokens" in estimate and "optimizer steps" in estimate and "full" in estimate
    assert "train.epochs=400" in page.inner_text("#estimate-command")
    check_screen(page, "start")
    page.click("#start-button")
    page.wait_for_url(re.compile(r"/jobs/"))
    # Live: the step of the total, the time left, the speed, and the baselines already evaluated.
    page.wait_for_function("/ of \\d+/.test(document.getElementById('live-step').textContent)", timeout=180_000)
    assert re.search(r"\d+ real tokens/s", page.inner_text("#live-rate"))
    assert re.search(r"\d+ s", page.inner_text("#live-eta"))
    # Every default baseline is there, scored or skipped with its reason (the tiny model is at chance on the
    # validation rows, so base and few_shot cannot win and are skipped): none silently missing.
    baselines = page.inner_text("#live-baselines")
    for name in ("base", "classical", "embedding", "few_shot"):
        assert re.search(rf"^{name}: (accuracy \d|skipped \(.+\))", baselines, re.M), baselines
    assert re.search(r"^base: skipped \(.*cannot win", baselines, re.M), baselines
    page.wait_for_selector("[data-chart=train_loss] canvas")
    assert page.inner_text("#job-status") == "running"
    check_screen(page, "started-run")
    page.click("#cancel-button")
    page.wait_for_function("document.getElementById('job-status').textContent === 'cancelled'", timeout=60_000)
    assert Registry(registry_path).get_run("started").status == "cancelled"
    shot(page, "started-run-cancelled")
    # Resume from the run's page: the same run folder goes on to its verdict, as `tunelab run --resume RUN` would.
    page.click("#run-link")
    page.wait_for_selector("#resume-button")
    page.click("#resume-button")
    page.wait_for_url(re.compile(r"/jobs/"))
    assert "--resume" in page.inner_text("#job")
    page.wait_for_function("document.getElementById('job-status').textContent === 'finished'", timeout=600_000)
    resumed = Registry(registry_path).get_run("started")
    assert resumed.status == "finished" and page.inner_text("#job-verdict") == resumed.verdict
    shot(page, "started-run-resumed")


def test_a_key_link_opened_from_another_site_lets_the_user_in(page, ui_runs):
    """`tunelab ui --api-key K` is opened once with ?key=K, often from a link on another site (a chat, a wiki, webmail).
    The key's cookie was SameSite=Strict: the redirect that follows the link still counts as cross-site, so the cookie
    just set was not sent and the user got the 401 page that asked for ?key=K, which they had just given."""
    from tunelab.serve.server import BackgroundServer
    from tunelab.ui import UISettings, create_app

    folder, registry_path = ui_runs
    page.context.clear_cookies()
    with BackgroundServer(create_app(UISettings(registry=registry_path, project=folder, api_key="sesame")), port=0) as url:
        port = url.rstrip("/").rsplit(":", 1)[1]
        # A page of another site: localhost and 127.0.0.1 are different sites to a browser.
        page.goto(f"http://localhost:{port}/static/ui.css")
        page.set_content(f'<a id="link" href="http://127.0.0.1:{port}/?key=sesame">the tunelab ui</a>')
        page.click("#link")
        page.wait_for_url(f"http://127.0.0.1:{port}/")
        assert "401" not in page.inner_text("body")
        assert page.locator("#runs tbody tr").count() >= 2
    page.context.clear_cookies()
