"""Every --help text shows what it was written to show.

The CLI renders help through rich markup, so a literal ``[word]`` in a help string (``'tunelab[ray]'``) is read
as a style tag and vanishes: `tunelab sweep --help` told users to ``pip install 'tunelab'``, without the extra.
"""

from __future__ import annotations

import re

import typer
from rich.text import Text

from tunelab.cli import main


def _help_texts(command, path: str):
    if command.help:
        yield path, command.help
    for param in command.params:
        text = getattr(param, "help", None)
        if text:
            yield f"{path} {param.name}", text
    # typer's groups (its own click) have .commands; a plain command has none.
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from _help_texts(sub, f"{path} {name}")


def test_no_help_text_loses_brackets_to_markup():
    main._register_commands()
    root = typer.main.get_command(main.app)
    lost = []
    for where, text in _help_texts(root, "tunelab"):
        # What the author meant the reader to see: the text with rich's escapes (\[) read as brackets.
        meant = re.sub(r"\\\[", "[", text)
        if Text.from_markup(text).plain != meant:
            lost.append(f"{where}: {text!r} shows as {Text.from_markup(text).plain!r}")
    assert len(list(_help_texts(root, "tunelab"))) > 100  # the walk reached every command's options
    assert lost == []
