"""The numbers of monitoring against hand-computed values and known distributions."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from tunelab.config import MonitorConfig, parse_duration
from tunelab.errors import ConfigError
from tunelab.monitor.signals import (
    CentroidModel,
    oov_share,
    psi,
    psi_noise,
    status_for,
    wilson_interval,
    worst,
)


def test_psi_matches_a_hand_computed_value_and_its_noise_level():
    expected, actual = Counter(a=50, b=50), Counter(a=80, b=20)
    e = np.array([50.5, 50.5]) / 101
    a = np.array([80.5, 20.5]) / 101
    assert psi(expected, actual) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))
    assert psi(expected, expected) == 0.0
    # Two samples of one uniform distribution: PSI averages about (k-1)(1/N+1/n).
    rng = np.random.default_rng(0)
    values = [psi(Counter(rng.integers(0, 20, 400).tolist()), Counter(rng.integers(0, 20, 400).tolist())) for _ in range(200)]
    assert np.mean(values) == pytest.approx(psi_noise(20, 400, 400), rel=0.25)


def test_wilson_interval_and_statuses():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)  # the textbook Wilson interval of 8/10
    assert math.isnan(wilson_interval(0, 0)[0])
    assert [status_for(x, (0.1, 0.2)) for x in (0.05, 0.1, 0.25, None)] == ["ok", "watch", "drifted", "ok"]
    assert worst(["ok", "drifted", "watch"]) == "drifted" and worst([]) == "ok"


def test_oov_share_and_centroid_distance():
    assert oov_share({"my", "card"}, ["My card", "crypto card"]) == pytest.approx(1 / 4)
    model = CentroidModel(["my card is lost", "my card was stolen", "refund my card"])
    assert model.distance(["my card is lost"]) < model.distance(["crypto wallet transfer"])


def test_durations_and_monitor_config_errors():
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90s") == 90 and parse_duration("6h") == 21600
    with pytest.raises(ConfigError, match="monitor.window"):
        MonitorConfig(window="soon")
    from tunelab.monitor import load_monitor_config

    with pytest.raises(ConfigError, match="Did you mean 'window'"):
        load_monitor_config(None, {"windw": "1d"})
