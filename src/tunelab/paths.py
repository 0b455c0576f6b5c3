"""Where tunelab keeps things: the user cache, and the layout of a run folder.

A run folder is everything needed to evaluate, serve or resume a run later::

    runs/<run-name>/
      config.yaml        the resolved config
      split.json         record ids of train/validation/test + the data fingerprint
      labels.json        classify: the label -> token mapping
      out_of_scope.json  classify with an out-of-scope label: the label and its confidence threshold
      adapter/           LoRA: a PEFT adapter folder (loads in plain peft, vLLM, ...)
      model/             full/freeze: a complete transformers model folder
      tokenizer/         the tokenizer, with its chat template
      checkpoints/       step-N/ folders for resume; best/ by validation loss
      metrics.jsonl      one JSON object per logged step / validation
      data_check.json    the data check of `tunelab run` (what `tunelab data check --json` prints)
      eval/              base.json, tuned.json, comparison.json
      report.md, report.html
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


def baseline_file_stem(name: str) -> str:
    """A baseline's name as a file-name stem: local names (base, classical) unchanged, remote ones encoded."""
    return quote(name, safe="")


def cache_dir() -> Path:
    """The user cache: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunelab"


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (see the module docstring)."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    @property
    def labels(self) -> Path:
        return self.root / "labels.json"

    @property
    def out_of_scope(self) -> Path:
        """classify with data.out_of_scope_label: the label and its confidence threshold (labels.OutOfScope)."""
        return self.root / "out_of_scope.json"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def data_check(self) -> Path:
        return self.root / "data_check.json"

    @property
    def eval_dir(self) -> Path:
        return self.root / "eval"

    def baseline_eval(self, name: str) -> Path:
        """``eval/<name>.json`` of one baseline. A remote one's name (``openai:org/model``) is
        percent-encoded: ':' is no file-name character on Windows and '/' would make a folder."""
        return self.eval_dir / f"{baseline_file_stem(name)}.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def is_run(self) -> bool:
        return self.config.is_file() and (self.adapter.is_dir() or self.model.is_dir())


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see either the old or the new content, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    On any error the temporary folder is removed, so a half-written folder is never left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
