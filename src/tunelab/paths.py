"""Where tunelab keeps things: the user cache, atomic writes, and a name as a file-name stem; a run folder's
lock, the leftovers of killed writes, and a full disk as one line.

The layout of a run folder is ``tunelab.runs.RunFolder``: the only place its file names are spelled.
A write that is killed midway leaves a dot-named temporary beside its target (``.step-4.PID.x1y2.tmp``);
the next process that locks the folder removes them (``remove_temporaries``).
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from tunelab.errors import TunelabError
from tunelab.faults import kill_point

try:  # POSIX; elsewhere a run folder is not locked
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"  # in a run folder: held (flock) by the one process working in it; holds its pid


def baseline_file_stem(name: str) -> str:
    """A baseline's name as a file-name stem: local names (base, classical) unchanged, remote ones encoded."""
    return quote(name, safe="")


def cache_dir() -> Path:
    """The user cache: $TUNELAB_CACHE, else $XDG_CACHE_HOME/tunelab, else ~/.cache/tunelab."""
    if os.environ.get("TUNELAB_CACHE"):
        return Path(os.environ["TUNELAB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunelab"


def temporary_prefix(target: Path) -> str:
    """How a temporary sibling of ``target`` starts: ``.NAME.PID.`` (the writer's pid tells a stale one,
    left by a killed writer, from one being written now: ``remove_stale_temporaries``)."""
    return f".{target.name}.{os.getpid()}."


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file so that readers see either the old or the new content, never half of it."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` of bytes: a temporary sibling, flushed to disk, renamed over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        kill_point("atomic-write.before-rename", path.name)
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.filename is None:
            error.filename = str(path)  # a full disk's write() names no file: the one line names the one being written
        raise


def write_figure(figure: Any, path: Path, **savefig: Any) -> Path:
    """Save a matplotlib ``figure`` as ``path`` (PNG) the way every artifact is written: rendered in memory, then
    :func:`atomic_write_bytes`, so a kill never leaves half an image under a name a report links (a dead writer's
    temporary from an earlier kill is removed first: charts live outside the run folder's own clean-up)."""
    import io

    image = io.BytesIO()
    figure.savefig(image, format="png", **savefig)
    remove_stale_temporaries(path)
    atomic_write_bytes(path, image.getvalue())
    return path


def check_output_folder(target: Path) -> None:
    """Create the folder ``target`` is written into and check a file can be written there, so an export stops with
    one line before its work (merging a run takes seconds to minutes) instead of a traceback after it.

    Raises:
        TunelabError: naming the folder and why (a file in the way, no permission, a read-only disk).
    """
    folder = Path(target).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=temporary_prefix(Path(target)), suffix=".tmp"):
            pass
    except OSError as error:
        raise TunelabError(f"cannot write into {folder} ({error.strerror or type(error).__name__})",
                           "choose an output in a folder you can write to") from None


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``target`` in one rename.

    On any error the temporary folder is removed, so a half-written folder is never left behind.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temporary_prefix(target), suffix=".tmp", dir=target.parent))
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


# ------------------------------------------------------------------ leftovers of killed writes
# What atomic_write_text / atomic_directory / a sharded checkpoint name their temporaries: a dot, the
# target's name, a random part, ".tmp"; ".NAME.old-PID" while a folder is being replaced.
_TEMPORARY = re.compile(r"^\..+\.(tmp|sharded)$|^\..+\.old-\d+$")
_REPLACED = re.compile(r"^\.(.+)\.old-\d+$")


def is_temporary(name: str) -> bool:
    """Whether a file name is a write's temporary (``.NAME.PID.x1y2.tmp``, ``.NAME.old-PID``): never part of what was written."""
    return bool(_TEMPORARY.match(name))


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove what writes killed midway left directly in ``folder`` (not below it); returns what was removed.

    Only for a folder no other process is writing into (the run folder's lock is held).
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for child in folder.iterdir():
        if not is_temporary(child.name):
            continue
        replaced = _REPLACED.match(child.name)
        if replaced and not (folder / replaced.group(1)).exists():
            # Killed between atomic_directory's two renames: the previous complete version goes back in place.
            os.replace(child, folder / replaced.group(1))
            continue
        _remove(child)
        removed.append(child)
    return removed


def _remove(path: Path) -> None:
    """Remove a leftover file, link or folder (a folder with what is in it)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary siblings of ``target`` (``.NAME.PID.*.tmp``) whose writer is no longer running.

    For outputs outside a locked run folder (an export): a second export writing now keeps its own.
    """
    removed: list[Path] = []
    folder = target.parent
    if not folder.is_dir():
        return removed
    pattern = re.compile(r"^" + re.escape(f".{target.name}.") + r"(\d+)\..*\.tmp$")
    for child in folder.iterdir():
        match = pattern.match(child.name)
        if match and not _pid_alive(int(match.group(1))):
            _remove(child)
            removed.append(child)
    return removed


# ------------------------------------------------------------------ one process per run folder
class RunFolderInUse(TunelabError):
    """Another process works in this run folder (training, resuming, evaluating)."""


_held: dict[Path, list[int]] = {}  # locked run folder -> [file descriptor (-1: a parent's), how many holders in this process]
# "PID:FOLDER": the processes a run's holder starts to train it (``accelerate launch``) work under its lock.
INHERITED_LOCK_ENV = "TUNELAB_RUN_FOLDER_HELD"


def lock_for_children(root: Path) -> dict[str, str]:
    """The environment that lets the processes this one starts (``tunelab run --launch``) work in ``root``
    under this process's lock; empty when this process does not hold it."""
    key = Path(root).resolve()
    held = _held.get(key)
    if held is None or held[0] < 0:
        return {}
    return {INHERITED_LOCK_ENV: f"{os.getpid()}:{key}"}


def lock_run_folder(root: Path) -> None:
    """Take ``root``'s lock for this process, so no second process trains into the same checkpoints.

    Re-entrant within a process (the pipeline and the training it starts both take it). The lock is an
    ``flock`` on ``root/.lock``: the kernel drops it when the process ends, however it ends (SIGKILL
    included), so a lock is never stale; the file keeps the holder's pid for the error message.

    Raises:
        RunFolderInUse: when another process holds it (naming its pid).
    """
    key = Path(root).resolve()
    if key in _held:
        _held[key][1] += 1
        return
    if fcntl is None:  # pragma: no cover - Windows
        return
    inherited = os.environ.get(INHERITED_LOCK_ENV, "")
    pid, _, folder = inherited.partition(":")
    if folder == str(key) and pid.isdigit() and run_folder_holder(key) == int(pid):
        _held[key] = [-1, 1]  # started by the process that holds it, to train in it (lock_for_children)
        return
    key.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_pid(fd)
        os.close(fd)
        who = f"process {holder}" if holder else "another process"
        raise RunFolderInUse(
            f"run folder {root} is in use by {who} (a `tunelab run`, `tunelab train` or a UI job)",
            "wait for it to finish, or stop it (Ctrl-C) and resume then",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = [fd, 1]


def unlock_run_folder(root: Path) -> None:
    """Give back one hold of ``root``'s lock (the last one releases it)."""
    key = Path(root).resolve()
    held = _held.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] <= 0:
        del _held[key]
        if held[0] >= 0:
            os.close(held[0])  # closing the descriptor releases the flock


def run_folder_holder(root: Path) -> int | None:
    """The pid of the process working in run folder ``root``, or None when none is (or it has no lock file).

    A run whose registry row says "running" while this is None was killed: nothing can hold the
    lock of a dead process.
    """
    key = Path(root).resolve()
    if key in _held:
        return os.getpid()
    path = key / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _read_pid(fd) or -1
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text.isdigit() else None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ a full disk
class DiskFullError(TunelabError):
    """A write failed because its file system is full (nothing half-written is left)."""


def human_bytes(size: float) -> str:
    """A size as a person reads it (decimal units, as disks are sold): ``1.5 KB``, ``3.5 MB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _free_bytes(path: Path) -> int | None:
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def is_disk_full(error: BaseException, path: Path, need_bytes: int | None = None) -> bool:
    """Whether ``error`` (raised writing at ``path``, a write of about ``need_bytes``) means its file system is full.

    ENOSPC/EDQUOT say so directly. torch (``inline_container.cc ... file write failed``) and SQLite
    (``disk I/O error``) lose the errno, so for a write error of theirs the free space decides: less
    than the write needs (at least 1 MB) is full. (The failed write's own temporaries are already gone.)
    """
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(error).lower()
    if "no space left" in text or "database or disk is full" in text:
        return True
    if isinstance(error, (OSError, RuntimeError)) or type(error).__name__ in ("OperationalError", "SafetensorError"):
        free = _free_bytes(path)
        return free is not None and free < max(1_000_000, need_bytes or 0)
    return False


def disk_full_error(path: Path, need_bytes: int | None = None) -> DiskFullError:
    """The one line a full disk gets: what was being written, about how much it needs, how much is free."""
    free = _free_bytes(path)
    need = f"need about {max(1, round(need_bytes / 1e6))} MB, " if need_bytes else ""
    have = f"{free / 1e6:.0f} MB free" if free is not None else "free space unknown"
    return DiskFullError(
        f"disk full while writing {path} ({need}{have})",
        "free some space (or point train.output_dir / --output elsewhere) and run the same command again; "
        "`tunelab run --resume RUN` continues a run where it stopped",
    )


def create_private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (0600) when it does not exist yet.

    For SQLite files that hold prompts and answers (the registry, the request log): SQLite creates a
    new database with the umask's permissions (0644: world-readable), and its -wal/-shm files take the
    database file's.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)
