"""The cost of each way forward in `tunelab advise`, against hand arithmetic."""

import pytest

from tunelab.config import parse_duration
from tunelab.estimate.options import (
    gpu_option,
    here_option,
    keep_option,
    label_option,
    labels_needed,
    machine_usd,
    provider_option,
)
from tunelab.estimate.plan import CloudEstimate, GPUEstimate, times_per_month

MONTHLY = parse_duration("30d")
WEEKLY = parse_duration("7d")


def test_runs_a_month_at_a_cadence():
    assert times_per_month(MONTHLY) == 1.0
    assert times_per_month(WEEKLY) == pytest.approx(30 / 7)
    assert times_per_month(parse_duration("6h")) == 120.0


def test_fine_tuning_here_costs_the_estimated_time_and_its_price_only_when_given():
    # 300 s at 0.50 USD/h = 0.0416 USD; re-tuned weekly: 300 * 30/7 = 1285.7 s and 0.1786 USD a month.
    option = here_option(300.0, retrain_every_s=WEEKLY, local_usd_per_hour=0.5)
    assert option.seconds == 300.0 and option.usd == pytest.approx(300 / 3600 * 0.5)
    assert option.retune_seconds_per_month == pytest.approx(300 * 30 / 7)
    assert option.retune_usd_per_month == pytest.approx(300 / 3600 * 0.5 * 30 / 7)
    unpriced = here_option(300.0, retrain_every_s=MONTHLY)
    assert unpriced.usd is None and unpriced.retune_usd_per_month is None  # unknown, never 0
    assert any("your own machine" in note for note in unpriced.notes)
    assert here_option(None, retrain_every_s=MONTHLY).seconds is None
    assert machine_usd(None, 1.0) is None and machine_usd(7200, 1.5) == 3.0


def _gpu(name, seconds, usd, fits=True):
    return GPUEstimate(name=name, seconds=seconds, usd=usd, fits=fits, memory_gib=24, source=f"{name} list price")


def test_the_rented_gpu_is_the_cheapest_that_fits():
    gpus = [_gpu("A10G", 100, 0.03), _gpu("L4", 80, 0.016), _gpu("H200", 10, 0.01, fits=False), _gpu("H100-SXM", 9, 0.0075)]
    option = gpu_option(gpus, retrain_every_s=WEEKLY)
    assert option.name == "fine-tune on a rented H100-SXM" and option.usd == 0.0075 and option.seconds == 9
    assert option.retune_usd_per_month == pytest.approx(0.0075 * 30 / 7)
    assert gpu_option([_gpu("A10G", 1, 1, fits=False)], retrain_every_s=WEEKLY) is None



def test_the_rented_gpu_is_the_one_budget_gpu_names_when_it_fits():
    gpus = [_gpu("A10G", 100, 0.03), _gpu("L4", 80, 0.016), _gpu("H200", 10, 0.05), _gpu("A100-80GB", 9, 0.04, fits=False)]
    option = gpu_option(gpus, retrain_every_s=WEEKLY, named="h200")
    assert option.name == "fine-tune on a rented H200" and option.usd == 0.05 and option.seconds == 10
    assert option.retune_usd_per_month == pytest.approx(0.05 * 30 / 7)
    # A named GPU the run does not fit on: the cheapest that fits, and the advice says why.
    option = gpu_option(gpus, retrain_every_s=WEEKLY, named="A100-80GB")
    assert option.name == "fine-tune on a rented L4" and any("budget.gpu A100-80GB does not fit" in note for note in option.notes)

def _cloud(model, usd):
    return CloudEstimate(provider="OpenAI", model=model, usd=usd, usd_per_million_training_tokens=usd * 10, published="2025-06")


def test_the_provider_is_the_one_named_else_the_cheapest_and_its_time_is_unknown():
    cloud = [_cloud("gpt-4.1-nano", 0.15), _cloud("gpt-4o-mini", 0.30)]
    cheapest = provider_option(cloud, retrain_every_s=MONTHLY)
    assert "gpt-4.1-nano" in cheapest.name and cheapest.usd == 0.15 and cheapest.seconds is None
    assert cheapest.retune_usd_per_month == 0.15
    named = provider_option(cloud, retrain_every_s=MONTHLY, model="GPT-4o-mini")
    assert "gpt-4o-mini" in named.name and named.usd == 0.30
    assert provider_option([], retrain_every_s=MONTHLY) is None


def test_keeping_a_baseline_refits_only_one_that_learns():
    classical = keep_option("classical", 4.0, learns=True, retrain_every_s=WEEKLY, local_usd_per_hour=0.36)
    assert classical.retune_seconds_per_month == pytest.approx(4 * 30 / 7)
    assert classical.usd == pytest.approx(0.0004)  # 4 s at 0.36 USD/h
    prompt = keep_option("base", 2.0, learns=False, retrain_every_s=WEEKLY)
    assert prompt.retune_seconds_per_month == 0.0 and prompt.retune_usd_per_month == 0.0  # nothing done, nothing paid
    assert prompt.usd is None  # scoring it here once took 2 s of an unpriced machine


def test_labels_needed_count_only_the_share_that_lands_in_training():
    # 288 training examples of 320 labelled (share 0.9): reaching 450 needs (450 - 288) / 0.9 = 180 more.
    assert labels_needed(450, 288, 0.9) == 180
    assert labels_needed(451, 288, 0.9) == 182  # 163 / 0.9 = 181.1, rounded up
    assert labels_needed(200, 288, 0.9) == 0
    with pytest.raises(ValueError):
        labels_needed(450, 288, 0.0)


def test_labelling_then_training_here():
    # 180 examples at 0.25 USD = 45 USD, plus 600 s here at 0.6 USD/h = 0.10 USD.
    option = label_option(180, 0.25, 600.0, retrain_every_s=MONTHLY, local_usd_per_hour=0.6)
    assert option.usd == pytest.approx(45.10) and option.seconds == 600.0
    assert option.retune_seconds_per_month == 600.0 and option.retune_usd_per_month == pytest.approx(0.10)
    unknown = label_option(180, None, 600.0, retrain_every_s=MONTHLY)
    assert unknown.usd is None and any("price per labelled example" in note for note in unknown.notes)
    labelling_only = label_option(180, 0.25, 600.0, retrain_every_s=MONTHLY)
    assert labelling_only.usd == 45.0


def test_the_summary_does_not_say_a_run_will_not_fit_when_the_free_memory_is_unknown():
    """An estimate without the device's free memory (fits: None) read "does NOT fit in 0 GiB"."""
    from tunelab.estimate.summary import estimate_summary

    unknown = dict(estimate_summary({"memory": {"total": 3 * 2**30, "device": "cuda", "available": None, "fits": None}}))
    assert unknown["memory"] == "3 GiB needed on cuda (free memory not known)"
    known = dict(estimate_summary({"memory": {"total": 3 * 2**30, "device": "cpu", "available": 2 * 2**30, "fits": False}}))
    assert known["memory"] == "3 GiB needed on cpu, does NOT fit in 2 GiB"
