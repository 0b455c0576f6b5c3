import sys
from pathlib import Path

import pytest

# The training helpers (tiny configs, record lists) are shared with tests/unit/train and its subprocess scripts.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    # Tokenization caches go to a per-session folder, never the user's cache.
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
