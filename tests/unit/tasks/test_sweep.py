"""The in-process sweep's pure parts: the grid, the variants' run names, the metric, the leaderboard."""

import pytest

from tunelab.errors import ConfigError
from tunelab.tasks.sweep import parse_grid


@pytest.mark.parametrize(
    "grid",
    [["train.lr=1e-4,3e-4,1e-4"], ["train.lr=1e-4", "train.lr=3e-4"], ["train.lr=1e-4,3e-4", "lora.r=8", "train.lr=1e-3"]],
)
def test_a_grid_that_would_run_the_same_variant_twice_is_refused(grid):
    with pytest.raises(ConfigError, match="train.lr"):
        parse_grid(grid)
