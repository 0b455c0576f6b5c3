"""``tunelab config``: every config key with its default and meaning."""

from tunelab.config import field_docs


def test_cli_config_lists_every_key():
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "config", "--json"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    keys = {row["key"] for row in json.loads(result.stdout)}
    assert keys == {key for key, _, _ in field_docs()}
    assert {"train.lr", "train.log_every", "lora.target_modules", "budget.max_usd"} <= keys
