"""The README renders (every table a table, every command in a code block), and every command in it is run or skipped with a reason.

Running the commands themselves takes minutes to an hour: ``python tests/readme/run_readme.py`` does it
in a fresh clone (see its docstring); here only what is instant runs.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from markdown_it import MarkdownIt
from run_readme import PLAN, PYTHON_PLAN, README, Run, Skip, readme_blocks

TEXT = README.read_text(encoding="utf-8")
# What a line of prose never starts with, and a command or code line does.
CODE_LINE = re.compile(
    r"^(tunelab (run|sweep|serve|train|eval|export|data|estimate|runs|show|compare|ui|review|distill|monitor|retrain|promote"
    r"|feedback|generate|predict|delete|models|config|env|report|aliases|rollback)\b|vllm serve|python |pip install|from tunelab|import \w|curl |ollama |make \w)"
)


def _tokens():
    return MarkdownIt("commonmark").enable("table").parse(TEXT)


def test_every_table_renders_as_a_table():
    tokens = _tokens()
    broken = []
    for index, token in enumerate(tokens):
        if token.type == "inline" and tokens[index - 1].type == "paragraph_open":
            for offset, line in enumerate(token.content.split("\n")):
                if line.lstrip().startswith("|"):
                    broken.append(f"README.md:{token.map[0] + offset + 1}: {line[:60]}")
    assert not broken, "table rows that render as text (a missing |---| line, or a blank line inside):\n" + "\n".join(broken)
    # Every header separator line outside code is a table that rendered.
    separators = [block for block in re.split(r"^```.*?^```", TEXT, flags=re.S | re.M)]
    count = sum(len(re.findall(r"^\|(?: *:?-+:? *\|)+ *$", part, re.M)) for part in separators)
    assert sum(token.type == "table_open" for token in tokens) == count >= 9


def test_no_table_lists_a_row_twice():
    tokens = _tokens()
    repeated, seen, in_body, cell_row = [], set(), False, []
    for token in tokens:
        if token.type == "table_open":
            seen = set()
        elif token.type == "tbody_open":
            in_body = True
        elif token.type == "tbody_close":
            in_body = False
        elif token.type == "tr_open":
            cell_row = []
        elif token.type == "inline" and in_body:
            cell_row.append(token.content)
        elif token.type == "tr_close" and in_body:
            key = tuple(cell_row)
            if cell_row and cell_row[0] in {row[0] for row in seen}:
                repeated.append(f"README.md:{token.map[0] + 1 if token.map else '?'}: {cell_row[0]}")
            seen.add(key)
    assert not repeated, "rows listed twice in one table:\n" + "\n".join(repeated)


def test_commands_and_code_are_in_code_blocks():
    tokens = _tokens()
    loose = []
    for index, token in enumerate(tokens):
        if token.type == "inline" and tokens[index - 1].type == "paragraph_open":
            for offset, line in enumerate(token.content.split("\n")):
                if CODE_LINE.match(line):
                    loose.append(f"README.md:{token.map[0] + offset + 1}: {line[:70]}")
    assert not loose, "commands or code outside a fenced block:\n" + "\n".join(loose)


def test_every_readme_command_is_run_or_skipped_with_a_reason():
    blocks = readme_blocks(TEXT)
    commands = [command for block in blocks if block.language == "bash" for command in block.commands]
    unplanned = [command for command in commands if command not in PLAN]
    assert not unplanned, "README commands with no entry in tests/readme/run_readme.py PLAN:\n" + "\n".join(unplanned)
    stale = [command for command in PLAN if command not in commands]
    assert not stale, "PLAN entries the README no longer has:\n" + "\n".join(stale)
    python = [block.text.strip().split("\n")[0] for block in blocks if block.language == "python"]
    assert sorted(python) == sorted(PYTHON_PLAN)
    assert all(isinstance(entry, Run) or entry.reason for entry in [*PLAN.values(), *PYTHON_PLAN.values()])
    # Everything that needs no model, no GPU and no network runs in the repository: nothing is only skipped.
    ran = [command for command, entry in PLAN.items() if isinstance(entry, Run)]
    assert len(ran) >= 20 and all(isinstance(entry, Skip) for command, entry in PLAN.items() if command.startswith(("ollama", "vllm", "curl")))


@pytest.mark.parametrize("command", [["--version"], ["--help"], ["config", "train"], ["data", "check", "examples/support-routing/train.jsonl", "--task", "classify", "--no-tokens"]])
def test_instant_commands_run(command):
    done = subprocess.run([sys.executable, "-m", "tunelab.cli.main", *command], cwd=README.parent, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_the_python_blocks_import_what_they_call():
    """Each name a README Python block imports and calls is callable, whichever tunelab modules were imported before.

    (A lazy package ``__init__`` once let ``from tunelab.evaluation import evaluate`` return the submodule of that
    name once the submodule had been imported elsewhere; the evaluation block then failed with "'module' object is
    not callable".)
    """
    script = [
        "import importlib, re, sys",
        "import tunelab.evaluation.baselines, tunelab.tasks.pipeline  # modules that import submodules first",
        f"blocks = {[block.text for block in readme_blocks(TEXT) if block.language == 'python']!r}",
        "bad = []",
        "for text in blocks:",
        "    for module, names in re.findall(r'^from (\\S+) import (.+)$', text, re.M):",
        "        for name in [n.strip() for n in names.split(',')]:",
        "            value = getattr(importlib.import_module(module), name)",
        "            if re.search(r'\\b' + name + r'\\(', text) and not callable(value):",
        "                bad.append(f'{module}.{name} is {type(value).__name__}')",
        "print(bad); sys.exit(1 if bad else 0)",
    ]
    done = subprocess.run([sys.executable, "-c", "\n".join(script)], cwd=README.parent, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
