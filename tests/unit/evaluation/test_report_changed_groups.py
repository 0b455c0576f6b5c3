"""report.md/html's "examples that changed most" table names each example's group when the test set has groups
(data.group_field): a change is read against the group it belongs to, the one the verdict by group may say was lost."""

import html

from tunelab.evaluation.compare import compare_with_baselines
from tunelab.evaluation.report import write_report
from tunelab.evaluation.result import EvalResult


def _classify(name, outcomes, groups):
    rows = [{"id": f"x{i}", "source": f"t:{i + 1}", "prompt": f"text {i}", "reference": "a", "prediction": "a" if ok else "b",
             "scores": {"correct": float(ok), "confidence": 0.9, "probability_of_reference": 0.9 if ok else 0.1},
             **({"group": group} if group is not None else {})}
            for i, (ok, group) in enumerate(zip(outcomes, groups, strict=True))]
    return EvalResult("classify", name, len(rows), {}, rows, labels=["a", "b"], test_fingerprint="same")


def _report(tmp_path, groups):
    # The tuned model right where the base is wrong on the first 40 (in FR), wrong where it is right on the last 10 (in DE).
    tuned = _classify("tuned", [True] * 40 + [False] * 10, groups)
    base = _classify("base", [False] * 40 + [True] * 10, groups)
    verdict = compare_with_baselines({"base": base}, tuned, samples=100)
    files = write_report(tmp_path, {"base": base}, tuned, verdict)
    return files.markdown.read_text(), files.html.read_text()


def test_the_changed_examples_table_has_a_group_column(tmp_path):
    markdown, page = _report(tmp_path, ["FR"] * 40 + ["Côte d'Ivoire"] * 10)
    changed = markdown.split("## Examples that changed most", 1)[1]
    assert "| change | source | group | prompt |" in changed
    assert "| +0.800 | t:1 | FR | text 0 |" in changed and "| -0.800 | t:41 | Côte d'Ivoire | text 40 |" in changed
    table = page.split("Examples that changed most", 1)[1]
    assert "<th>group</th>" in table and f"<td class='text'>{html.escape(chr(67) + 'ôte d' + chr(39) + 'Ivoire')}</td>" in table


def test_no_group_column_without_groups(tmp_path):
    markdown, page = _report(tmp_path, [None] * 50)
    assert "| change | source | prompt |" in markdown.split("## Examples that changed most", 1)[1]
    assert "<th>group</th>" not in page
