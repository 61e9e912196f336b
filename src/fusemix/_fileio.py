"""Durable writes: a file or a directory is replaced whole, never left half-written.

- :func:`atomic_write` (and :func:`write_text_atomic`, :func:`write_json_atomic`)
  writes a file into a temporary sibling ``.<name>.<random>.tmp``, flushes it
  to disk and renames it over the target, then flushes the directory, so a
  reader sees the old file or the new one whatever happens to the writer. A
  failure removes the temporary file and raises an ``OSError`` whose message
  starts with the target's path. New files get the permission bits of any
  new file under the current umask.
- :func:`atomic_directory` does the same for a whole directory (renames of a
  staging sibling), and :func:`recover_directory` settles one whose writer
  was killed half way (writers call it; readers only look, with
  :func:`interrupted_write`).
- :func:`directory_lock` keeps a second process out of a directory another
  one is writing (a training run's ``out_dir``, an extraction's store).

Every file fusemix writes (latent stores, model directories, checkpoints,
logs, the command line's records) goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

try:
    import fcntl
except ImportError:  # Windows: directory_lock falls back to a lock file created with O_EXCL
    fcntl = None  # type: ignore[assignment]


def os_error(err: OSError, path: Path, doing: str) -> OSError:
    """A copy of ``err`` (same errno, so the same ``OSError`` subclass) whose message starts with ``path``.

    Example:
        >>> err = os_error(PermissionError(13, "Permission denied"), Path("/data/x.npy"), "write shard 0")
        >>> type(err).__name__, str(err)
        ('PermissionError', '[Errno 13] /data/x.npy: could not write shard 0 (Permission denied)')

    """
    reason = err.strerror or str(err) or type(err).__name__
    message = f"{path}: could not {doing} ({reason})"
    return OSError(err.errno, message) if err.errno is not None else OSError(message)


def fsync_path(path: Path) -> None:
    """Flush a file, or a directory's entries, to disk.

    Directories are flushed where the platform allows it (POSIX) and a
    filesystem that refuses to flush a directory is let be; a file that
    cannot be flushed raises.
    """
    if path.is_dir():
        if os.name == "posix":
            with contextlib.suppress(OSError):
                _fsync_descriptor(path)
        return
    _fsync_descriptor(path)


def _fsync_descriptor(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_file_mode(folder: Path) -> int:
    """Permission bits a new file in ``folder`` gets under the current umask (``tempfile.mkstemp`` makes 0600)."""
    probe = folder / f".mode-{uuid.uuid4().hex}.tmp"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def atomic_write(target: Path, write: Callable[[BinaryIO], object], doing: str = "write the file") -> None:
    """Write ``target`` through ``write(file)`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Args:
        target: The file to (re)write; its directory must exist.
        write: Writes the content into the open binary file it is given.
        doing: What the write is, for the error message (``"could not <doing>"``).

    Raises:
        OSError: If the file cannot be written; the message names ``target``
            and ``target`` is untouched (no temporary file is left).

    """
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as file:
            os.chmod(tmp, new_file_mode(target.parent))
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(err, OSError):
            raise os_error(err, target, doing) from err
        raise
    fsync_path(target.parent)


def write_text_atomic(path: str | Path, text: str, doing: str = "write the file") -> None:
    """Write ``text`` to ``path`` atomically: a temporary sibling, flushed to disk, then renamed over ``path``.

    Args:
        path: Destination file; its directory must exist.
        text: Content, written as UTF-8.
        doing: What the write is, for the error message.

    """
    payload = text.encode("utf-8")
    atomic_write(Path(path), lambda file: file.write(payload), doing)


def write_json_atomic(path: str | Path, obj: object, doing: str = "write the file") -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (NaN and Inf are refused)."""
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n", doing)


def _siblings(path: Path) -> tuple[Path, Path, Path]:
    """Staging (being written), ready (complete, not yet swapped in) and old (swapped out) directories."""
    return (
        path.with_name(f".{path.name}.new"),
        path.with_name(f".{path.name}.ready"),
        path.with_name(f".{path.name}.old"),
    )


def _swap_in(path: Path, ready: Path, old: Path) -> None:
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(ready, path)
    fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_directory(path: str | Path) -> None:
    """Finish or undo an interrupted :func:`atomic_directory` write of ``path``.

    A complete new version waiting to be swapped in is swapped in; partial
    writes and swapped-out old versions are removed.
    """
    path = Path(path)
    staging, ready, old = _siblings(path)
    if ready.is_dir():
        _swap_in(path, ready, old)
    elif not path.exists() and old.is_dir():
        os.replace(old, path)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def interrupted_write(path: str | Path) -> Path | None:
    """The version an interrupted :func:`atomic_directory` write left beside a missing ``path``, if any.

    Only reads: ``None`` when ``path`` exists or nothing of a write is left
    beside it; otherwise the sibling :func:`recover_directory` would move to
    ``path`` (a writer killed mid-swap, or one swapping right now).
    """
    path = Path(path)
    if path.exists():
        return None
    _, ready, old = _siblings(path)
    return next((sibling for sibling in (ready, old) if sibling.is_dir()), None)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Write a directory whole: yield a staging directory, then swap it in for ``path``.

    Files written into the yielded directory are flushed to disk and the
    directory replaces ``path`` by renames; if the block raises, ``path`` is
    left as it was. A writer killed at any point leaves either the old or
    the new directory, which :func:`recover_directory` settles.

    Args:
        path: The directory to (re)write; its parent is created if needed.

    Yields:
        The staging directory to fill.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "run"
        >>> with atomic_directory(target) as tmp:
        ...     _ = (tmp / "a.txt").write_text("whole or nothing")
        >>> sorted(p.name for p in target.iterdir())
        ['a.txt']

    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(path)
    staging, ready, old = _siblings(path)
    staging.mkdir()
    try:
        yield staging
        mode = new_file_mode(staging)
        for child in staging.iterdir():
            if child.is_file():
                child.chmod(mode)
            fsync_path(child)
        fsync_path(staging)
        os.replace(staging, ready)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_in(path, ready, old)


_HELD: dict[tuple[str, int], int] = {}
"""Locks this process holds: (lock file, thread) -> how many nested :func:`directory_lock` blocks hold it."""


@contextlib.contextmanager
def directory_lock(directory: str | Path, name: str, *, argument: str, activity: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` for the block, or refuse at once if another process holds it.

    The lock is the file ``directory / name``, locked with ``fcntl.flock`` (an
    advisory lock the kernel drops when its holder dies, so a killed run
    never leaves a stale lock; on a network filesystem it is as good as the
    filesystem's lock support) and removed when the block ends. It records the
    holder's pid and host for the message of the refused process. Where
    ``fcntl`` is missing (Windows) the lock file is created with ``O_EXCL``
    instead; a process killed there leaves it behind, and the message says to
    delete it once no run uses the directory. The same thread may nest blocks
    on one lock (``fusemix train`` holds its ``--out`` around
    :func:`fusemix.train.fit`, which locks it too); another thread or process
    is refused.

    Args:
        directory: The directory to hold; it must exist.
        name: File name of the lock inside ``directory``.
        argument: The argument that named ``directory``, for the message (``"out_dir"``).
        activity: What holds it, for the message (``"training run"``, ``"extraction"``).

    Yields:
        The lock file.

    Raises:
        FileExistsError: If another process (or thread) holds the lock; the
            message names ``directory`` and, when known, the holder's pid.
        OSError: If the lock file cannot be created (the message names it).

    Example:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> with directory_lock(folder, ".lock", argument="out_dir", activity="run") as lock:
        ...     lock.exists()
        True
        >>> (folder / ".lock").exists()
        False

    """
    path = Path(directory) / name
    key = (os.path.realpath(path), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    fd = _acquire(path, argument, activity) if fcntl is not None else _create_exclusive(path, argument, activity)
    _HELD[key] = 1
    try:
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        yield path
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still locked: a process waiting on this file finds it gone and makes a new one
        os.close(fd)


def _acquire(path: Path, argument: str, activity: str) -> int:
    """An open descriptor of ``path`` holding its ``flock``, after making sure ``path`` still names that file."""
    assert fcntl is not None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise os_error(err, path, "create the lock file") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FileExistsError(_in_use(path, argument, activity, holder)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            return fd
        os.close(fd)  # the holder removed this file as it finished: lock the new one


def _create_exclusive(path: Path, argument: str, activity: str) -> int:
    """A descriptor of ``path`` created with ``O_EXCL`` (platforms without ``fcntl``)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            holder = path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            holder = ""
        message = _in_use(path, argument, activity, holder)
        raise FileExistsError(f"{message}; if no process uses it any more (one was killed), delete {path}") from None
    except OSError as err:
        raise os_error(err, path, "create the lock file") from err


def _holder(fd: int) -> str:
    """What the holder of the lock file ``fd`` wrote: ``"<pid> <host>"``, or ``""`` if not yet written."""
    try:
        return os.pread(fd, 256, 0).decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def _in_use(path: Path, argument: str, activity: str, holder: str) -> str:
    pid, _, host = holder.partition(" ")
    who = f" (pid {pid}{f' on {host}' if host else ''})" if pid else ""
    return (
        f"{argument}: {path.parent} is in use by another {activity}{who}, which holds {path.name}; wait for it to "
        f"end, or use another {argument}"
    )
