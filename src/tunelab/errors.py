"""Errors a user can fix.

A ``TunelabError`` is a user mistake or an environment problem (bad file, unknown key, unknown
model, unwritable folder). The CLI prints its message on one line and exits with code 2, without a
traceback. Anything else is a bug in tunelab and keeps its traceback.
"""

from __future__ import annotations


class TunelabError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(TunelabError):
    """An invalid configuration: unknown key, wrong type, impossible value."""


class DataError(TunelabError):
    """Data that cannot be read or used as given."""


class ModelError(TunelabError):
    """A model that cannot be found, read or converted."""


class BudgetExceeded(TunelabError):
    """The estimate is over the budget the user set (``budget.max_usd``, ``--max-usd``); nothing was trained or asked.

    Here, not in tasks.pipeline, because evaluation and the remote client refuse paid requests with it too."""


class Cancelled(KeyboardInterrupt):
    """The user stopped the process by a signal other than Ctrl-C (SIGTERM: ``kill``, a second Cancel in the UI, a job
    scheduler). A KeyboardInterrupt, so every place that cleans up after Ctrl-C cleans up after it the same way."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


def cancel_reason(interrupt: KeyboardInterrupt) -> str:
    """Why a cancelled run stopped, as its registry row says it: the signal when it was not Ctrl-C."""
    if isinstance(interrupt, Cancelled):
        return f"cancelled by {interrupt.signal_name}"
    return "cancelled by the user (Ctrl-C / SIGINT)"
