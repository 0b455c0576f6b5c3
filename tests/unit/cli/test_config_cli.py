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


def test_cli_config_names_the_sections_when_one_is_unknown():
    import subprocess
    import sys

    # `tunelab config trian` printed an empty table with exit code 0.
    result = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "config", "trian"], capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "trian" in result.stderr and "Did you mean 'train'" in result.stderr and "preference" in result.stderr
    listed = subprocess.run([sys.executable, "-m", "tunelab.cli.main", "config", "classify", "--json"], capture_output=True, text=True)
    assert listed.returncode == 0 and listed.stdout.count('"key": "classify.') == len(
        [key for key, _, _ in field_docs() if key.startswith("classify.")]
    )


def test_cli_config_shows_one_key_asked_by_its_name():
    import json

    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app

    _register_commands()
    # `tunelab config task` said "no config section 'task'": a top-level key (or a dotted one) is asked for by name.
    for key in ("task", "registry", "train.lr"):
        result = CliRunner().invoke(app, ["config", key, "--json"])
        assert result.exit_code == 0, result.output
        assert [row["key"] for row in json.loads(result.stdout)] == [key]


def test_cli_config_suggests_a_key_for_a_misspelt_key():
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.errors import ConfigError

    _register_commands()
    result = CliRunner().invoke(app, ["config", "train.lrr"])
    assert isinstance(result.exception, ConfigError)
    assert "'train.lrr'" in result.exception.message and "Did you mean 'train.lr'" in result.exception.message


def test_cli_config_of_a_key_without_its_section_names_the_key():
    from typer.testing import CliRunner

    from tunelab.cli.main import _register_commands, app
    from tunelab.errors import ConfigError

    _register_commands()
    # `tunelab config lr` said "Did you mean 'lora'?"; `tunelab config epoch` named only the sections.
    for name, meant in (("lr", "'train.lr'"), ("epoch", "'train.epochs'"), ("seed", "'data.seed' or 'train.seed' or 'eval.seed'")):
        result = CliRunner().invoke(app, ["config", name])
        assert isinstance(result.exception, ConfigError), result.output
        assert f"Did you mean {meant}?" in result.exception.message, result.exception.message
