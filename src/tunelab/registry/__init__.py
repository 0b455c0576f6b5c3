"""The run registry: a SQLite file of runs (config, fingerprints, estimate, metrics, timings, paths)."""

from tunelab.registry.migrations import MIGRATIONS, migrate
from tunelab.registry.store import (
    KEY_METRICS,
    REVIEW_PREFERENCES,
    STATUSES,
    TIMED_STEPS,
    AliasChange,
    BaselineKey,
    CachedBaseline,
    Registry,
    RegistryError,
    ReviewRecord,
    RunComparison,
    RunRecord,
    baseline_key,
    config_differences,
    default_registry_path,
    flatten,
    metric_values,
)

__all__ = [
    "KEY_METRICS",
    "AliasChange",
    "MIGRATIONS",
    "REVIEW_PREFERENCES",
    "STATUSES",
    "TIMED_STEPS",
    "BaselineKey",
    "CachedBaseline",
    "Registry",
    "RegistryError",
    "ReviewRecord",
    "RunComparison",
    "RunRecord",
    "baseline_key",
    "config_differences",
    "default_registry_path",
    "flatten",
    "metric_values",
    "migrate",
]
