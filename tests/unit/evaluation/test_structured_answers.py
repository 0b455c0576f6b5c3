"""sft answers that are data: the JSON and tool-call metrics against hand computations, absent on plain text, and
eval.metric choosing the metric the verdict, `tunelab compare` and a sweep's ranking are on."""

import json
from types import SimpleNamespace

import pytest

from tunelab.config import VERDICT_METRICS, parse_config
from tunelab.data.records import SFTRecord
from tunelab.errors import ConfigError, DataError
from tunelab.evaluation.compare import compare_evaluations, compare_with_baselines
from tunelab.evaluation.evaluate import check_verdict_metric, score_sft
from tunelab.evaluation.metrics import (
    OUT_OF_SCOPE_METRICS,
    STRUCTURED_SPECS,
    TASK_METRICS,
    answer_kind,
    json_scores,
    parse_json,
    primary_metric,
    sft_example_scores,
    tool_call_scores,
)
from tunelab.evaluation.result import EvalResult
from tunelab.tasks import sweep

ORDER = {"customer": {"name": "Ann", "id": 7}, "items": [{"sku": "A1", "qty": 2}, {"sku": "B2", "qty": 1}]}


def test_json_metrics_match_a_hand_computation():
    reference = json.dumps(ORDER)
    # Six leaves: customer.name, customer.id, items.0.sku, items.0.qty, items.1.sku, items.1.qty.
    reordered = '{"items": [{"qty": 2, "sku": "A1"}, {"qty": 1, "sku": "B2"}], "customer": {"id": 7, "name": "Ann"}}'
    assert json_scores(reordered, reference) == {"json_valid": 1.0, "json_exact": 1.0, "json_f1": 1.0}  # key order is no error
    # Fenced, one quantity wrong (20 for 2): 5 of 6 leaves on each side match, F1 = 2*5 / (6+6).
    fenced = "```json\n" + json.dumps({**ORDER, "items": [{"sku": "A1", "qty": 20}, ORDER["items"][1]]}, indent=2) + "\n```"
    assert json_scores(fenced, reference) == pytest.approx({"json_valid": 1.0, "json_exact": 0.0, "json_f1": 10 / 12})
    # An extra field: precision 1/2, recall 1, F1 = 2*1 / (2+1).
    assert json_scores('{"qty": 2, "note": "x"}', '{"qty": 2}')["json_f1"] == pytest.approx(2 / 3)
    # The items of an array match by position.
    assert json_scores('[{"qty": 1}, {"qty": 2}]', '[{"qty": 2}, {"qty": 1}]')["json_f1"] == 0.0
    assert json_scores("Sure! {qty: 2", reference) == {"json_valid": 0.0, "json_exact": 0.0, "json_f1": 0.0}
    assert json_scores("2", "[2]")["json_valid"] == 0.0  # a bare number is no record of fields


def test_two_and_twenty_differ_where_rouge_barely_tells_them_apart():
    assert json_scores('{"qty": 20}', '{"qty": 2}') == {"json_valid": 1.0, "json_exact": 0.0, "json_f1": 0.0}
    assert json_scores('{"qty": 2.0}', '{"qty": 2}')["json_exact"] == 1.0  # the same number
    assert json_scores('{"paid": 1}', '{"paid": true}')["json_exact"] == 0.0  # true is not 1
    assert json_scores('{"items": {}}', '{"items": []}')["json_exact"] == 0.0


def test_the_fence_rule():
    assert parse_json("```\n[1, 2]\n```") == (True, [1, 2])
    assert parse_json('  ```json\n{"a": 1}```  ') == (True, {"a": 1})
    assert parse_json('Here it is: ```json\n{"a": 1}\n```')[0] is False  # only a fence around the whole answer


def _records(references):
    return [SFTRecord(({"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": ref})) for i, ref in enumerate(references)]


def test_a_json_test_set_gets_the_json_metrics_and_plain_text_gets_none():
    references = ['{"qty": 2}', '```json\n{"qty": 3, "sku": "B"}\n```', "[1, 2]"]
    answers = ['{"qty": 2}', '{"sku": "B", "qty": 30}', "no idea"]
    _, metrics = score_sft(_records(references), answers, [[r] for r in references])
    assert metrics["json_valid"] == pytest.approx(2 / 3)
    assert metrics["json_exact"] == pytest.approx(1 / 3)
    assert metrics["json_f1"] == pytest.approx((1 + 0.5 + 0) / 3)
    for plain in (["an answer", '{"qty": 2}'], ["one", "two"]):  # one reference not JSON: none of them, never a 0
        _, metrics = score_sft(_records(plain), plain, [[r] for r in plain])
        assert not {"json_valid", "json_exact", "json_f1", "tool_name_accuracy", "tool_call_exact"} & set(metrics)
        assert answer_kind([[r] for r in plain]) is None
    # The best over several references.
    assert sft_example_scores('{"qty": 3}', ['{"qty": 2}', '{"qty": 3}'], "json")["json_exact"] == 1.0


def _call(name, arguments):
    return {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}]}


def test_tool_call_metrics_read_the_rendered_calls():
    record = SFTRecord(({"role": "user", "content": "weather in Oslo, in C"}, _call("get_weather", {"city": "Oslo", "unit": "C"})))
    reference = record.completion  # records.message_text renders the call as a <tool_call> block
    right = '<tool_call>\n{"name": "get_weather", "arguments": {"unit": "C", "city": "Oslo"}}\n</tool_call>'
    as_string = '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\", \\"unit\\": \\"C\\"}"}</tool_call>'
    wrong_args = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen", "unit": "C"}}\n</tool_call>'
    wrong_name = '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo", "unit": "C"}}\n</tool_call>'
    assert tool_call_scores(right, reference) == {"tool_name_accuracy": 1.0, "tool_call_exact": 1.0}
    assert tool_call_scores(as_string, reference) == {"tool_name_accuracy": 1.0, "tool_call_exact": 1.0}
    assert tool_call_scores(wrong_args, reference) == {"tool_name_accuracy": 1.0, "tool_call_exact": 0.0}
    assert tool_call_scores(wrong_name, reference) == {"tool_name_accuracy": 0.0, "tool_call_exact": 0.0}
    assert tool_call_scores("It is sunny in Oslo.", reference) == {"tool_name_accuracy": 0.0, "tool_call_exact": 0.0}
    records = [record] * 4
    _, metrics = score_sft(records, [right, wrong_args, wrong_name, "<tool_call>{broken</tool_call>"], [[reference]] * 4)
    assert metrics["tool_name_accuracy"] == 0.5 and metrics["tool_call_exact"] == 0.25
    assert "json_f1" not in metrics


def _evaluation(name, answers, references, primary=None, baseline=False):
    rows, metrics = score_sft(_records(references), answers, [[r] for r in references])
    metrics = {"primary": primary_metric("sft", metrics, primary), **metrics}
    return EvalResult("sft", name, len(rows), metrics, rows, baseline=baseline, baseline_name=name if baseline else None)


def _orders(n=40):
    # The tuned model writes every field right in another key order (ROUGE-L low); the baseline keeps the order and
    # gets one quantity wrong (ROUGE-L high, json_f1 lower).
    references, tuned, retrieval = [], [], []
    for i in range(n):
        order = {"a": i, "b": i + 1, "c": i + 2, "d": i + 3}
        references.append(json.dumps(order))
        tuned.append(json.dumps(dict(reversed(order.items()))))
        retrieval.append(json.dumps({**order, "d": 1000 + i}))
    return references, tuned, retrieval


def test_eval_metric_json_f1_makes_the_verdict_and_the_sweep_use_it():
    references, tuned_answers, retrieval_answers = _orders()
    baselines = {"retrieval": _evaluation("retrieval", retrieval_answers, references, "json_f1", baseline=True)}
    by_default = compare_with_baselines(baselines, _evaluation("tuned", tuned_answers, references), samples=200)
    assert by_default.primary == "rougeL" and by_default.verdict == "use retrieval instead"
    verdict = compare_with_baselines(baselines, _evaluation("tuned", tuned_answers, references, "json_f1"), samples=200)
    assert verdict.primary == "json_f1" and verdict.paid_off and "on json_f1" in verdict.summary
    assert verdict.against("retrieval").difference == pytest.approx(0.25) and verdict.against("retrieval").full_scale == 1.0
    assert verdict.against("retrieval").non_inferior(0.02)  # a share: 0.02 is two points, as on accuracy
    # A sweep without validation rows ranks its variants on the verdict's metric.
    worse = compare_with_baselines(baselines, _evaluation("tuned", retrieval_answers, references, "json_f1"), samples=200)
    entries = [sweep.SweepEntry([f"train.lr={name}"], SimpleNamespace(
        name=name, comparison=comparison, train={}, config=SimpleNamespace(model=SimpleNamespace(name="m"), task="sft")))
        for name, comparison in (("worse", worse), ("better", verdict))]
    rows = sweep.leaderboard(entries)
    assert [row["overrides"] for row in rows] == ["train.lr=better", "train.lr=worse"]
    assert rows[0]["metric"] == "json_f1" and rows[0]["after"] == 1.0 and "test metric" in rows[0]["ranked_by"]


def test_compare_names_a_mismatch_of_primaries_and_refuses_a_metric_one_side_lacks():
    references, tuned_answers, _ = _orders(5)
    a = _evaluation("a", tuned_answers, references)
    b = _evaluation("b", tuned_answers, references, "json_exact")
    comparison = compare_evaluations(a, b, samples=100)
    assert comparison.primary == "json_exact" and any("different primary metrics" in w for w in comparison.warnings)
    plain = ["x y"] * 5
    older = EvalResult("sft", "old", 5, {"primary": "rougeL"}, _evaluation("o", plain, plain).rows)
    with pytest.raises(DataError, match="json_exact"):
        compare_evaluations(older, dataclass_copy(b, rows=_evaluation("n", plain, plain).rows), samples=100)


def dataclass_copy(result, **changes):
    import dataclasses

    return dataclasses.replace(result, **changes)


def test_a_json_metric_on_references_that_are_not_json_is_one_line_at_evaluation():
    _, metrics = score_sft(_records(["plain"]), ["plain"], [["plain"]])
    with pytest.raises(ConfigError, match="eval.metric json_f1 needs every test reference to be JSON") as info:
        primary_metric("sft", metrics, "json_f1")
    assert "\n" not in str(info.value) and "rougeL" in str(info.value)
    assert primary_metric("sft", metrics) == "rougeL"
    # The run checks the test split before training (the pipeline's split step).
    data = parse_config({"task": "sft"}).data
    with pytest.raises(ConfigError, match="eval.metric tool_call_exact needs every test reference to call a tool"):
        check_verdict_metric("sft", _records(['{"qty": 2}', "[1]"]), data, "tool_call_exact")
    with pytest.raises(ConfigError, match="one of rouge1, rouge2, rougeL, bleu, chrf, exact_match, json_valid, json_exact, json_f1$"):
        check_verdict_metric("sft", _records(['{"qty": 2}', "[1]"]), data, "tool_name_accuracy")  # names those it has
    check_verdict_metric("sft", _records(['{"qty": 2}', "[1]"]), data, "json_f1")
    # `tunelab eval --metric` is checked by the same rule as the config: an unknown name is one line naming the task's.
    with pytest.raises(ConfigError, match="eval.metric 'rogueL' is not a metric of task sft: choose from rouge1"):
        check_verdict_metric("sft", _records(["plain"]), data, "rogueL")
    with pytest.raises(ConfigError, match="not a metric of task classify: choose from accuracy, macro_f1"):
        check_verdict_metric("classify", [], data, "json_f1")


def test_an_unknown_metric_is_one_config_error_naming_the_tasks_metrics():
    with pytest.raises(ConfigError) as info:
        parse_config({"task": "sft", "eval": {"metric": "accuracy"}})
    assert "eval.metric" in str(info.value) and "json_f1" in str(info.value) and "rougeL" in str(info.value)
    with pytest.raises(ConfigError, match="out_of_scope_label"):
        parse_config({"task": "classify", "eval": {"metric": "out_of_scope_f1"}})
    assert parse_config({"task": "sft", "eval": {"metric": "json_f1"}}).eval.metric == "json_f1"
    assert parse_config({"task": "classify"}).eval.metric is None  # the default: the task's primary


def test_the_configs_metric_names_are_the_metrics_a_verdict_can_be_on():
    # config cannot import evaluation (its layer is below): its list and the MetricSpecs must agree.
    extra = {"sft": STRUCTURED_SPECS, "classify": OUT_OF_SCOPE_METRICS}
    for task, specs in TASK_METRICS.items():
        judged = [s.name for s in [*specs, *extra.get(task, [])] if s.higher_is_better is not None and not s.against_reference]
        assert sorted(VERDICT_METRICS[task]) == sorted(judged)
    assert all(spec.full_scale == 1.0 for spec in STRUCTURED_SPECS)  # shares: a margin reads as on accuracy


def test_a_runs_listing_shows_the_metric_its_verdict_is_on():
    from tunelab.registry.store import RunRecord

    record = RunRecord("r", "r", "t", "t", "finished", task="sft", baseline_metrics={"rougeL": 0.9, "json_f1": 0.5},
                       tuned_metrics={"primary": "json_f1", "rougeL": 0.4, "json_f1": 0.8})
    assert record.key_metric() == ("json_f1", 0.5, 0.8)
    record.tuned_metrics = {"primary": "rougeL", "rougeL": 0.4, "json_f1": 0.8}
    assert record.key_metric() == ("rougeL", 0.9, 0.4)


def test_the_report_bolds_the_configured_metric_and_lists_examples_by_it(tmp_path):
    from tunelab.evaluation.report import write_report

    references, tuned_answers, retrieval_answers = _orders()
    baselines = {"retrieval": _evaluation("retrieval", retrieval_answers, references, "json_f1", baseline=True)}
    tuned = _evaluation("tuned", tuned_answers, references, "json_f1")
    run = tmp_path / "run"
    run.mkdir()
    write_report(run, baselines, tuned, compare_with_baselines(baselines, tuned, samples=200))
    text = (run / "report.md").read_text()
    assert "| **json_f1** ↑ | 1 |" in text and "| json_valid ↑ | 1 |" in text and "| rougeL ↑ |" in text
    # Every tuned answer improved json_f1 (0.75 -> 1) while its ROUGE-L fell: the listed changes are json_f1's.
    assert "change = the answer's json_f1, tuned minus retrieval" in text and "+0.250" in text


def test_a_run_refuses_a_json_metric_on_plain_references_at_its_split_before_training(tmp_path, tiny_model_dir, monkeypatch):
    from tunelab.tasks import pipeline

    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {i} plus two?", "completion": f"It is {i + 2}."}) + "\n" for i in range(20)))
    config = parse_config({"task": "sft", "model": str(tiny_model_dir), "name": "js", "eval": {"metric": "json_f1"},
                           "data": {"train": str(data), "test_size": 0.25, "max_length": 64}, "train": {"output_dir": str(tmp_path / "runs")}})
    context = pipeline.open_pipeline(config, calibrate=False)
    try:
        pipeline.check_step(context)
        with pytest.raises(ConfigError, match="eval.metric json_f1 needs every test reference to be JSON"):
            pipeline.split_step(context)
    finally:
        context.close()
