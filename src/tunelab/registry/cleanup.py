"""How much disk each run takes, what depends on a run, and deleting runs safely: the one home of each.

A deletion is planned first (:func:`plan_deletion`: what would go, what is refused and why, the bytes freed), so a
dry run and the confirmation show exactly what :func:`delete_runs` then does. Refused, whatever the options:

* a run an alias points at now (a server following ``alias:NAME`` would lose its model);
* a run whose folder a live process holds (``paths.lock_run_folder``: a run training, resuming, evaluating);
* a run another run was trained on (its ``model.name`` is the run's folder: a preference run on its SFT run, a
  continued training), unless that run goes too; a distillation's teacher run only without ``force`` (the student's
  answers are saved in its own folder; resuming that distillation would need the teacher again);
* a folder that holds the registry file itself (a row whose ``run_dir`` is the output folder).

Crash safety: the folder is first renamed, in one step, to a hidden sibling ``.<name>.deleting-<run id>``; then the
row (and its reviews) go in one transaction; then the renamed folder is removed. Killed after the rename, the row
is still there and its folder reads as gone (the listing says "-"); the next delete of that run finds the renamed
folder by its id and finishes. Killed after the row, the renamed folder has no row: every later delete in that
output folder removes it (:attr:`DeletionPlan.leftovers`). The alias history keeps a deleted run's id (a tombstone:
``tunelab aliases NAME`` still reads); a rollback to it is refused (:meth:`Registry.rollback_target`).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tunelab.faults import kill_point
from tunelab.paths import RunFolderInUse, lock_run_folder, run_folder_holder, unlock_run_folder
from tunelab.registry.store import Registry, RegistryError, RunRecord

TRASH_MARK = ".deleting-"
_TRASH = re.compile(r"^\.(?P<name>.+)\.deleting-(?P<id>[0-9a-f]+)$")


def folder_bytes(path: str | Path) -> int | None:
    """The bytes of every file under ``path`` (links not followed), or None when it is not there.

    ``os.scandir`` reads each entry's size from the directory walk itself: a hundred run folders take well under a
    second; nothing is read or hashed."""
    root = Path(path)
    try:
        if not root.is_dir():
            return root.lstat().st_size if root.is_file() else None
    except OSError:
        return None
    total, pending = 0, [str(root)]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue  # unreadable (permissions) or removed meanwhile: counted as nothing, never an error
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return total


@dataclass(frozen=True)
class DiskUse:
    """A folder's bytes (None when it is gone) and those of each entry directly in it, largest first."""

    bytes: int | None
    parts: list[tuple[str, int]] = field(default_factory=list)


def disk_use(path: str | Path) -> DiskUse:
    """``path``'s size and its biggest parts (checkpoints, the adapter or model, exports: whatever is in it)."""
    root = Path(path)
    total = folder_bytes(root)
    if total is None or not root.is_dir():
        return DiskUse(total)
    parts = [(child.name, folder_bytes(child) or 0) for child in root.iterdir()]
    return DiskUse(total, sorted(parts, key=lambda part: (-part[1], part[0])))


def trash_folder(folder: str | Path, run_id: str) -> Path:
    """Where a run's folder is moved while it is being deleted: a hidden sibling naming the run's id."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}{TRASH_MARK}{run_id}")


def _run_folder(record: RunRecord) -> tuple[Path | None, Path | None]:
    """(the run's folder when it is there, the renamed folder of a delete killed midway when that is there)."""
    if not record.run_dir:
        return None, None
    folder = Path(record.run_dir)
    trash = trash_folder(folder, record.id)
    return (folder if folder.is_dir() else None), (trash if trash.is_dir() else None)


def run_bytes(record: RunRecord) -> int | None:
    """The bytes of a run's folder (None when it is gone); a folder a killed delete moved aside counts as gone."""
    folder, _ = _run_folder(record)
    return folder_bytes(folder) if folder is not None else None


@dataclass(frozen=True)
class Dependant:
    """A run that needs another: ``how`` it does, and whether ``force`` may delete what it needs anyway."""

    id: str
    name: str
    how: str
    forceable: bool


def _same_folder(value: Any, folder: str) -> bool:
    if not isinstance(value, str) or not value or value == "default":
        return False
    value = os.path.expanduser(value)
    # As written (both absolute: the pipeline stores them so), and through links (a folder named by another path).
    return (os.path.normpath(os.path.abspath(value)) == os.path.normpath(os.path.abspath(folder))
            or os.path.realpath(value) == os.path.realpath(folder))


def dependants(record: RunRecord, others: Sequence[RunRecord]) -> list[Dependant]:
    """The runs of ``others`` that need ``record``'s folder, as their stored configs say: a run whose ``model.name``
    is that folder was trained on it and loads its weights as its base; a distillation whose ``distill.teacher`` is
    that folder asked it for its answers (kept in the distillation's own folder).

    A retrain's challenger needs nothing of its champion's folder: its data was copied into its own data folder and
    its evaluation of the champion into its own ``eval/``."""
    if not record.run_dir:
        return []
    found = []
    for other in others:
        if other.id == record.id:
            continue
        config = other.config_dict
        model = (config.get("model") or {}).get("name") if isinstance(config.get("model"), dict) else None
        teacher = (config.get("distill") or {}).get("teacher") if isinstance(config.get("distill"), dict) else None
        if isinstance(teacher, dict):
            teacher = teacher.get("name")
        if _same_folder(model, record.run_dir):
            found.append(Dependant(other.id, other.name, "was trained on it (model.name)", forceable=False))
        elif _same_folder(teacher, record.run_dir):
            found.append(Dependant(other.id, other.name, "was distilled from it (distill.teacher)", forceable=True))
    return found


@dataclass
class RunDeletion:
    """One run a plan deletes or refuses: ``reason`` is why it is refused (None: it goes); ``note`` what is odd."""

    id: str
    name: str
    status: str
    run_dir: str | None
    bytes: int | None
    reason: str | None = None
    note: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "status": self.status, "run_dir": self.run_dir, "bytes": self.bytes,
                "reason": self.reason, "note": self.note}


@dataclass
class DeletionPlan:
    """What :func:`delete_runs` would do: the runs it deletes, those refused (with why), and the renamed folders of
    deletes killed after their row was removed (``leftovers``), which it removes too."""

    deletions: list[RunDeletion] = field(default_factory=list)
    refusals: list[RunDeletion] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    leftover_bytes: int = 0

    @property
    def bytes(self) -> int:
        """The bytes the deletion frees."""
        return sum(item.bytes or 0 for item in self.deletions) + self.leftover_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"deletions": [item.as_dict() for item in self.deletions], "refusals": [item.as_dict() for item in self.refusals],
                "leftovers": [str(path) for path in self.leftovers], "bytes": self.bytes}


@dataclass
class DeletionResult:
    """What :func:`delete_runs` did: the runs deleted (each with its note), those refused when it came to them (a
    process took the folder, an alias moved onto the run meanwhile), the bytes freed."""

    deleted: list[RunDeletion] = field(default_factory=list)
    refused: list[RunDeletion] = field(default_factory=list)
    leftovers: list[Path] = field(default_factory=list)
    bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"deleted": [item.as_dict() for item in self.deleted], "refused": [item.as_dict() for item in self.refused],
                "leftovers": [str(path) for path in self.leftovers], "bytes": self.bytes}


def _selected(registry: Registry, runs: Sequence[str], status: str | None, older_than: float | None,
              every_run: list[RunRecord]) -> list[RunRecord]:
    if runs and (status is not None or older_than is not None):
        raise RegistryError("give run names or --status/--older-than, not both", "`tunelab delete --status failed --dry-run` lists what a filter matches")
    if runs:
        chosen = list({record.id: record for record in map(registry.get_run, runs)}.values())
        return chosen
    if status is None and older_than is None:
        raise RegistryError("name the runs to delete, or choose them with --status and/or --older-than")
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than) if older_than is not None else None
    return [record for record in every_run
            if (status is None or record.status == status)
            and (cutoff is None or datetime.fromisoformat(record.created_at) < cutoff)]


def plan_deletion(registry: Registry, runs: Sequence[str] = (), *, status: str | None = None, older_than: float | None = None,
                  force: bool = False) -> DeletionPlan:
    """Which runs a delete removes and which it refuses (see the module docstring), and the bytes it frees.

    ``runs``: names, ids or folders; or, instead, every run with ``status`` and/or created more than ``older_than``
    seconds ago. Nothing is changed.

    Raises:
        RegistryError: for an unknown run, for names and filters together, for neither.
    """
    every_run = registry.list_runs()
    chosen = _selected(registry, runs, status, older_than, every_run)
    served = registry.aliases_by_run()
    registry_file = registry.path.absolute()
    plan = DeletionPlan()
    reasons: dict[str, str] = {}
    needs: dict[str, list[Dependant]] = {}
    for record in chosen:
        folder, trash = _run_folder(record)
        if record.id in served:
            names = ", ".join(f"alias {alias}" for alias in served[record.id])
            reasons[record.id] = f"{names} points at it now (a server following it would lose its model): promote another run first"
        elif folder is not None and (holder := run_folder_holder(folder)) is not None:
            who = f"process {holder}" if holder > 0 else "another process"
            reasons[record.id] = f"its folder is in use by {who} (training, resuming or evaluating): wait for it, or stop it"
        elif folder is not None and registry_file.is_relative_to(folder.absolute()):
            reasons[record.id] = f"its folder {folder} holds the run registry itself: delete that folder by hand if you mean it"
        needs[record.id] = [need for need in dependants(record, every_run) if not (force and need.forceable)]
    # A run stays while a run that needs it stays: not chosen, or refused itself (which may refuse another in turn).
    chosen_ids = {record.id for record in chosen}
    changed = True
    while changed:
        changed = False
        for record in chosen:
            if record.id in reasons:
                continue
            blocking = [need for need in needs[record.id] if need.id not in chosen_ids or need.id in reasons]
            if blocking:
                said = "; ".join(f"{need.name} {need.how}" for need in blocking)
                hint = "" if any(not need.forceable for need in blocking) else " (--force deletes it anyway)"
                reasons[record.id] = f"other runs need it: {said}; delete them with it{hint}"
                changed = True
    for record in chosen:
        folder, trash = _run_folder(record)
        bytes_ = folder_bytes(folder) if folder is not None else folder_bytes(trash) if trash is not None else None
        note = None
        if folder is None:
            note = ("a delete was killed midway: its folder was moved aside already" if trash is not None
                    else "its folder is gone already: only its row is removed")
        item = RunDeletion(record.id, record.name, record.status, record.run_dir, bytes_, reasons.get(record.id), note)
        (plan.refusals if item.reason else plan.deletions).append(item)
    plan.leftovers = _leftovers(registry, every_run)
    plan.leftover_bytes = sum(folder_bytes(path) or 0 for path in plan.leftovers)
    return plan


def _leftovers(registry: Registry, every_run: list[RunRecord]) -> list[Path]:
    """Folders moved aside by a delete killed after removing their row, in the folders runs are kept in."""
    known = {record.id for record in every_run}
    places = {Path(record.run_dir).parent for record in every_run if record.run_dir} | {registry.path.parent}
    found = []
    for place in sorted(places):
        try:
            children = sorted(place.iterdir())
        except OSError:
            continue
        for child in children:
            match = _TRASH.match(child.name)
            if match and match["id"] not in known and child.is_dir() and not child.is_symlink():
                found.append(child)
    return found


def delete_runs(registry: Registry, plan: DeletionPlan) -> DeletionResult:
    """Delete the runs ``plan`` deletes (its refusals are left alone), each as the module docstring says; a run a
    process took meanwhile, or an alias moved onto meanwhile, is refused then and left as it was."""
    result = DeletionResult()
    for item in plan.deletions:
        record = registry.get_run(item.id)
        folder, trash = _run_folder(record)
        if folder is not None:
            try:
                lock_run_folder(folder)  # no process can take the folder while it is moved aside
            except RunFolderInUse as error:
                result.refused.append(RunDeletion(**{**item.as_dict(), "reason": error.message}))
                continue
            try:
                trash = trash_folder(folder, record.id)
                os.replace(folder, trash)
            finally:
                unlock_run_folder(folder)
        kill_point("delete.folder-moved")
        if not registry.remove_run_row(record.id):
            if trash is not None and folder is not None:
                os.replace(trash, folder)  # an alias moved onto it meanwhile: it stays as it was
            result.refused.append(RunDeletion(**{**item.as_dict(), "reason": "an alias was pointed at it meanwhile"}))
            continue
        kill_point("delete.row-removed")
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        result.deleted.append(item)
        result.bytes += item.bytes or 0
    for path in plan.leftovers:
        shutil.rmtree(path, ignore_errors=True)
        result.leftovers.append(path)
    result.bytes += plan.leftover_bytes
    return result
