"""What `tunelab retrain` prints of its decision."""

from __future__ import annotations

from tunelab.cli import monitor as monitor_cli
from tunelab.tasks.retrain import PROMOTED, RetrainOutcome


def _outcome(**fields) -> dict:
    comparison = {"summary": "challenger vs champion: better"}
    return RetrainOutcome(
        decision=PROMOTED, reasons=["non-inferior on accuracy and better on the recent slice"],
        champion={"id": "c1", "name": "router-v1", "run_dir": "runs/router-v1"},
        challenger={"id": "c2", "name": "router-v1-retrain", "run_dir": "runs/router-v1-retrain"},
        primary="accuracy", margin=0.02, overall=comparison, recent=comparison,
        sizes={"old_train": 10, "new_train": 10, "new_validation": 2, "recent_test": 30, "test": 40}, new_labels=[], **fields,
    ).as_dict()


def test_a_winning_challenger_that_moved_no_alias_is_not_said_to_be_promoted(capsys, monkeypatch):
    # `tunelab retrain router-v1 --data new.jsonl` (no alias) and `--no-promote` printed "promoted" while the alias, and
    # so the server, stayed on the champion.
    monkeypatch.setattr(monitor_cli.console, "width", 200)
    monitor_cli._print_retrain(_outcome())
    printed = capsys.readouterr().out
    assert "promoted" not in printed.splitlines()[0] and "wins" in printed
    assert "tunelab promote ALIAS router-v1-retrain" in printed
    monitor_cli._print_retrain(_outcome(alias="router"))
    printed = capsys.readouterr().out
    assert "promoted" not in printed.splitlines()[0] and "alias router still serves router-v1" in printed
    moved = {"name": "router", "previous_run_id": "c1", "run_id": "c2"}
    monitor_cli._print_retrain(_outcome(alias="router", alias_change=moved))
    printed = capsys.readouterr().out
    assert "promoted" in printed.splitlines()[0] and "alias router: c1 -> c2" in printed


def test_a_challenger_promoted_into_an_alias_that_did_not_exist_says_no_server_followed_it(capsys, monkeypatch):
    # `tunelab monitor --every 6h --retrain-on drift` beside a server that serves a fixed run (`--adapter router=RUN`):
    # the alias defaults to the served name, was created by the promotion, and "promoted" said the server moved.
    monkeypatch.setattr(monitor_cli.console, "width", 200)
    created = {"name": "router", "previous_run_id": None, "run_id": "c2"}
    monitor_cli._print_retrain(_outcome(alias="router", alias_change=created))
    printed = capsys.readouterr().out
    assert "alias router: (new) -> c2" in printed
    assert "no server followed alias router before" in printed and "--adapter NAME=alias:router" in printed
