"""The monitor's chart (monitor/plots.plot_traffic): written whole or not at all."""

import os
import subprocess
import sys
from pathlib import Path

import tunelab

# plot_traffic in a process killed halfway through writing the PNG (its savefig writes half the image, then SIGKILL).
KILLED_WHILE_PLOTTING = """
import io, os, signal, sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
import matplotlib.figure
import numpy as np
from tunelab.monitor.plots import plot_traffic

traffic = SimpleNamespace(model="support", run_id="r1", texts=["where is my order", "refund please"], sampled=False,
                          predicted=Counter(shipping=1, refund=1), top_probabilities=np.array([0.9, 0.4]),
                          per_day={"2026-12-01": 2}, requests=2, since="2026-12-01T00:00", until="2026-12-02T00:00")
reference = SimpleNamespace(train_texts=["my parcel is late", "money back"], train_labels=Counter(shipping=1, refund=1),
                            test_confidence=0.8, oos_threshold=None, oos_on_probability=False)
if sys.argv[2] == "die":
    original = matplotlib.figure.Figure.savefig
    def dying(self, fname, *args, **kwargs):
        buffer = io.BytesIO()
        original(self, buffer, *args, **kwargs)
        half = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        if isinstance(fname, (str, os.PathLike)):
            with open(fname, "wb") as handle:
                handle.write(half)
        else:
            fname.write(half)
        os.kill(os.getpid(), signal.SIGKILL)
    matplotlib.figure.Figure.savefig = dying
print(plot_traffic(traffic, reference, Path(sys.argv[1]))[0])
"""


def _plot(folder: Path, how: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(tunelab.__file__).parents[1])}
    return subprocess.run([sys.executable, "-c", KILLED_WHILE_PLOTTING, str(folder), how], env=env, check=False,
                          capture_output=True, text=True)


def test_a_monitor_chart_killed_midway_leaves_the_previous_png_whole(tmp_path):
    # The monitor's report links its chart: a kill while a later check redrew it left a truncated PNG under that name.
    first = _plot(tmp_path, "live")
    assert first.returncode == 0, first.stderr
    chart = Path(first.stdout.strip())
    before = chart.read_bytes()
    assert before.startswith(b"\x89PNG") and before.endswith(b"IEND\xaeB`\x82")
    assert _plot(tmp_path, "die").returncode == -9
    assert chart.read_bytes() == before  # the complete previous image
    # The killed writer's temporary is gone once the next check draws the chart again.
    assert _plot(tmp_path, "live").returncode == 0
    assert [p.name for p in tmp_path.iterdir()] == [chart.name]
