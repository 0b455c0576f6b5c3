"""``tunelab serve``: a public bind without an API key is refused before anything loads."""

import subprocess
import sys


def test_cli_refuses_public_bind_without_key():
    result = subprocess.run(
        [sys.executable, "-m", "tunelab.cli.main", "serve", "--host", "0.0.0.0", "--model", "no-such-model"],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "TUNELAB_API_KEY": ""},
    )
    assert result.returncode == 2, result.stderr
    assert "without an API key" in result.stderr and "Traceback" not in result.stderr
