"""Named kill points: where a test makes the process die as a power cut or ``kill -9`` would.

The pipeline, the checkpoint writer and the registry call :func:`kill_point` at the moments between
two writes where a crash is most likely to leave state behind that does not agree with itself (a
checkpoint written but not yet known as the best one, a registry row created but its id not yet
saved in ``pipeline.json``). Normally it does nothing. With ``TUNELAB_KILL_AT=NAME`` (or
``NAME@N``: the N-th time that point is reached, counting from 1) the process sends itself SIGKILL
there: no ``finally`` block, no ``atexit``, no flush runs, exactly as after a real crash. A point
reached for many files (``atomic-write.before-rename``) is narrowed to one with ``NAME:FILE`` (``NAME:FILE@N``; FILE may be a pattern: ``base-*.json``). The
fault-injection tests (``tests/unit/faults``) kill a run at every point in :data:`KILL_POINTS`, resume it,
and compare the result with an uninterrupted run bit for bit.
"""

from __future__ import annotations

import fnmatch
import os
import signal

KILL_ENV = "TUNELAB_KILL_AT"

# Every named point, in the order a run reaches them (the tests iterate over this list).
KILL_POINTS = (
    # tasks/pipeline.py
    "pipeline.registered",  # the registry row exists, pipeline.json does not know its id yet
    "pipeline.step-started",  # a step has begun (its registry row says running)
    "pipeline.step-finished",  # a step's outcome is in pipeline.json, its "done" event not yet sent
    # train/checkpoints.py and train/loop.py
    "checkpoint.files-written",  # every file of step-N is in its temporary folder, not yet renamed
    "checkpoint.renamed",  # step-N is in place; older checkpoints not yet pruned
    "checkpoint.best-written",  # best/ holds the new best weights; step-N not written yet
    "checkpoint.pruned",  # older step checkpoints removed
    "train.weights-saved",  # adapter/ (or model/) written after the loop, the step not yet recorded
    # paths.py
    "atomic-write.before-rename",  # a file's new content is in its temporary sibling, not yet renamed over it
    # models/gguf_export.py
    "export.modelfile-written",  # an Ollama export's Modelfile is in place, its GGUF not yet renamed
    # models/generate.py
    "generate.batch-answered",  # an evaluation's answers partly generated (one batch more each time)
    # tasks/predict.py
    "predict.batch-written",  # a batch of `tunelab predict`'s answers is in its partial file, the next not yet answered
    # registry/store.py
    "registry.before-commit",  # inside a write transaction, before COMMIT
    # registry/cleanup.py (`tunelab delete`)
    "delete.folder-moved",  # a run's folder is moved aside, its row not yet removed
    "delete.row-removed",  # the row is removed, the moved folder not yet
)

_reached: dict[str, int] = {}


def kill_point(name: str, subject: str | None = None) -> None:
    """SIGKILL this process here when ``TUNELAB_KILL_AT`` names this point (and ``subject``, the file a point reached
    for many files is at; see the module docstring)."""
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition("@")
    point, _, only = point.partition(":")
    if point != name or (only and not fnmatch.fnmatchcase(subject or "", only)):
        return
    _reached[wanted] = _reached.get(wanted, 0) + 1
    if _reached[wanted] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
