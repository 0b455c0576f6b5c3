"""The run page gives the verdict by group (data.group_field) as `tunelab show` does: one row per group with its n, the
tuned model's and the opponent's primary metric, the difference with its 95% interval, and the outcome ("too few" under
MIN_TEST_EXAMPLES), not only the lines of the groups lost."""

import html
import re

from fastapi.testclient import TestClient

from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.result import EvalResult
from tunelab.registry import Registry
from tunelab.ui import UISettings, create_app


def _classify(name, outcomes, groups):
    rows = [{"id": f"x{i}", "source": f"t:{i + 1}", "prompt": f"text {i}", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9, "probability_of_reference": 0.9 if ok else 0.1}, "group": group}
            for i, (ok, group) in enumerate(zip(outcomes, groups, strict=True))]
    return EvalResult("classify", name, len(rows), {"primary": "accuracy"}, rows, labels=["a", "b"])


def _page(tmp_path, comparison):
    registry = Registry(tmp_path / "registry.db")
    record = registry.create_run(name="grouped", task="classify", model="/models/tiny", status="finished", run_dir=str(tmp_path / "run"),
                                 comparison=comparison)
    with TestClient(create_app(UISettings(registry=registry.path)), base_url="http://127.0.0.1:7860") as client:
        return client.get(f"/runs/{record.id}").text


def test_the_run_page_has_a_row_per_group(tmp_path):
    groups = ["FR"] * 150 + ["DE <b>"] * 60 + ["IT"] * 10
    tuned = _classify("tuned", [i % 20 != 0 for i in range(150)] + [i < 20 for i in range(60)] + [True] * 10, groups)
    base = _classify("base", [i % 3 == 0 for i in range(150)] + [i < 55 for i in range(60)] + [True] * 10, groups)
    verdict = compare_with_baselines({"base": base}, tuned, samples=200)
    page = _page(tmp_path, verdict.to_dict())
    table = page.split('id="groups"', 1)[1].split("</table>", 1)[0]
    header = [html.unescape(cell) for cell in re.findall(r"<th>(.*?)</th>", table)]
    assert header == ["group", "n", "tuned", "base", "difference", "95% CI", "outcome"]
    rows = [[html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("</thead>", 1)[1], re.S)]
    fr, de, it = (next(g for g in verdict.groups if g.group == name) for name in ("FR", "DE <b>", "IT"))
    # Numbers as the page's verdict table writes them (views.number, views.signed).
    assert rows[0] == ["FR", "150", f"{fr.tuned:.4g}", f"{fr.opponent_value:.4g}", f"{fr.difference:+.3g}",
                       f"[{fr.low:+.3g}, {fr.high:+.3g}]", "better"]
    assert rows[1][0] == "DE <b>" and rows[1][-1] == "worse" and "DE <b>" not in page  # escaped
    assert rows[2] == ["IT", "10", "1", "1", "+0", "-", "too few (n=10)"]
    # Coloured as the CLI table colours it: green better, red worse, a group too small for a verdict neither.
    assert [re.search(r'<td class="outcome-([a-z-]+)">[^<]*</td>\s*$', row).group(1) for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("</thead>", 1)[1], re.S)] == ["better", "worse", "too-few"]


def test_no_group_table_without_groups(tmp_path):
    tuned = _classify("tuned", [True] * 40, [None] * 40)
    base = _classify("base", [False] * 40, [None] * 40)
    assert 'id="groups"' not in _page(tmp_path, compare_with_baselines({"base": base}, tuned, samples=100).to_dict())


def test_the_data_check_section_gives_the_records_per_group(tmp_path):
    import json

    from tunelab.runs import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.data_check.parent.mkdir(parents=True, exist_ok=True)
    folder.data_check.write_text(json.dumps({"records": 9, "files": ["d.jsonl"], "errors": [], "groups": {"FR": 6, "DE": 3}, "group_field": "country"}))
    page = _page(tmp_path, None)
    assert re.search(r'<dt>groups \(country\)</dt><dd id="data-groups">FR: 6, DE: 3</dd>', page)


def test_the_examples_that_changed_most_name_their_group(tmp_path):
    from tunelab.runs import RunFolder

    groups = ["FR"] * 40 + ["DE"] * 10
    tuned = _classify("tuned", [True] * 40 + [False] * 10, groups)
    base = _classify("base", [False] * 40 + [True] * 10, groups)
    folder = RunFolder(tmp_path / "run")
    tuned.save(folder.tuned_eval)
    base.save(folder.baseline_eval("base"))
    page = _page(tmp_path, compare_with_baselines({"base": base}, tuned, samples=100).to_dict())
    table = page.split('class="examples"', 1)[1].split("</table>", 1)[0]
    assert "<th>group</th>" in table
    assert re.search(r"<td>\+0\.8</td><td>FR</td>", table) and re.search(r"<td>-0\.8</td><td>DE</td>", table)
