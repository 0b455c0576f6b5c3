"""Monitoring of served models: live traffic (the request log and its feedback) against the training data.

``monitor`` only measures: it reads the request log and the run folders, never trains (a retrain
goes through ``tunelab.tasks.retrain``; an import-linter contract keeps ``train`` and ``tasks`` out).
"""

from tunelab.monitor.check import (
    EXIT_DRIFTED,
    ModelReport,
    MonitorReport,
    Reference,
    load_monitor_config,
    load_reference,
    run_monitor,
)
from tunelab.monitor.signals import DRIFTED, OK, WATCH, Signal
from tunelab.monitor.traffic import labelled_requests

__all__ = [
    "DRIFTED",
    "EXIT_DRIFTED",
    "OK",
    "WATCH",
    "ModelReport",
    "MonitorReport",
    "Reference",
    "Signal",
    "labelled_requests",
    "load_monitor_config",
    "load_reference",
    "run_monitor",
]
