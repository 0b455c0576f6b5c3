"""The result of one evaluation: metrics plus every example's prediction and scores, saved as JSON.

Per-example scores are kept so that two evaluations of the same test set can be compared with a
paired bootstrap later, from the files alone (``tunelab compare base.json tuned.json``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import DataError
from tunelab.paths import atomic_write_text, remove_stale_temporaries

FORMAT_VERSION = 1


def test_fingerprint(task: str, record_ids: Iterable[str]) -> str:
    """A hash of the task and the set of test record ids: equal fingerprints, same test set."""
    digest = hashlib.sha256(task.encode())
    for record_id in sorted(record_ids):
        digest.update(b"\0" + record_id.encode())
    return digest.hexdigest()[:16]


def json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinite float as None (null): JSON has no NaN/Infinity, so a file stays standard
    JSON any tool reads, and a response stays valid (a chart draws null as a gap)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


@dataclass
class EvalResult:
    """One model evaluated on one test set.

    ``baseline_name`` says which opponent of the tuned model this is (``tunelab.evaluation.baselines``).
    ``rows`` hold, per example: ``id``, ``source`` (file:line), ``prompt``, ``reference`` (and
    ``references`` for multi-reference sft; ``messages``, an sft prompt of more than one message as its messages),
    ``prediction`` and ``scores`` (the task's per-example scores, see ``tunelab.evaluation.metrics``).
    """

    task: str
    model: str
    n: int
    metrics: dict[str, Any]
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    test_fingerprint: str = ""
    baseline: bool = False
    labels: list[str] | None = None
    baseline_name: str | None = None  # which opponent (base, classical, few_shot, retrieval); None: the model itself
    warnings: list[str] = field(default_factory=list)
    # text: continuation samples (``evaluate.continuation_samples``), rows as an sft evaluation's; [] when
    # eval.text_samples was 0, None for every other task and a text evaluation written before samples were kept.
    samples: list[dict[str, Any]] | None = None
    # classify embedding baseline: the suspect labels among the rows it learned from (``suspects.SuspectReport.to_dict``,
    # every suspect), found by its own cross-validation; None for every other evaluation.
    suspect_labels: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    @property
    def ids(self) -> list[str]:
        return [row["id"] for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.samples is None:  # the other tasks' files stay as they were
            del data["samples"]
        if self.suspect_labels is None:  # as every other evaluation's file was
            del data["suspect_labels"]
        return json_safe(data)

    def save(self, path: str | Path) -> Path:
        """Write the result as JSON (atomically) and return the path."""
        path = Path(path)
        # A dead writer's temporary first: the baselines' cache (runs/baselines/) is no run folder, which its lock cleans.
        remove_stale_temporaries(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1, ensure_ascii=False))
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "evaluation") -> EvalResult:
        """Rebuild a result from its JSON form.

        Raises:
            DataError: when required keys are missing.
        """
        required = ("task", "model", "n", "metrics", "rows")
        missing = [key for key in required if key not in data]
        if missing:
            raise DataError(f"{source}: not a tunelab evaluation (missing {', '.join(missing)})", "pass a file written by `tunelab eval --out`")
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})

    @classmethod
    def load(cls, path: str | Path) -> EvalResult:
        """Read a result written by ``save``.

        Raises:
            DataError: when the file is missing, not JSON, or not an evaluation.
        """
        path = Path(path)
        if not path.is_file():
            raise DataError(f"evaluation file not found: {path}", "check the path")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise DataError(f"{path}: not a JSON evaluation file ({error})") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: not a tunelab evaluation (expected a JSON object)")
        return cls.from_dict(data, str(path))
