"""The monitor's chart (monitor/plots.plot_traffic): written whole or not at all."""

import os
import subprocess
import sys
from pathlib import Path

import tunelab

# plot_traffic of two requests against two training requests, into the folder sys.argv[1]; prints the chart's path.
PLOT = """
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from tunelab.monitor.plots import plot_traffic

traffic = SimpleNamespace(model="support", run_id="r1", texts=["where is my order", "refund please"], sampled=False,
                          predicted=Counter(shipping=1, refund=1), top_probabilities=np.array([0.9, 0.4]),
                          per_day={"2026-12-01": 2}, requests=2, since="2026-12-01T00:00", until="2026-12-02T00:00")
reference = SimpleNamespace(train_texts=["my parcel is late", "money back"], train_labels=Counter(shipping=1, refund=1),
                            test_confidence=0.8, oos_threshold=None, oos_on_probability=False)
print(plot_traffic(traffic, reference, Path(sys.argv[1]))[0])
"""


def _plot(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(tunelab.__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", PLOT, str(folder)], env=env, check=False, capture_output=True, text=True)


def test_a_monitor_chart_killed_midway_leaves_the_previous_png_whole(tmp_path, killed_while_saving_a_chart):
    # The monitor's report links its chart: a kill while a later check redrew it left a truncated PNG under that name.
    first = _plot(tmp_path)
    assert first.returncode == 0, first.stderr
    chart = Path(first.stdout.strip())
    before = chart.read_bytes()
    assert before.startswith(b"\x89PNG") and before.endswith(b"IEND\xaeB`\x82")
    assert killed_while_saving_a_chart(PLOT, str(tmp_path)).returncode == -9
    assert chart.read_bytes() == before  # the complete previous image
    # The killed writer's temporary is gone once the next check draws the chart again.
    assert _plot(tmp_path).returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == [chart.name]
