"""Atomic, durable writes for every output: write hidden temp siblings, fsync them, rename them into place and
fsync the folder, so that after a crash or a power loss a path holds its old bytes or its new ones, never an
empty or partial file.

Also: one lock per output folder (`folder_lock`: a second run into a folder in use fails with one line), checking an output folder before the work (`check_output_dir`), refusing a write the disk cannot
hold (`check_free_space`), one clear `OutputError` line for a full disk, and removing the temp files of
runs that were killed (`remove_stale_temps`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from care_core.errors import OutputError

__all__ = ["atomic_path", "atomic_paths", "check_output_dir", "check_free_space", "folder_lock", "remove_stale_temps"]

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # temp names say which machine wrote them
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<host>[0-9a-f]{8})[0-9a-f]{8}\.tmp$")
_FULL = (errno.ENOSPC, errno.EDQUOT)
LOCK_NAME = ".care.lock"  # in an output folder while a run writes there: "<pid> <host tag>"


def _umask() -> int:
    """The process umask, read from /proc on Linux (thread-safe); elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_sibling(path: Path) -> Path:
    """`.<name>.<pid>.<host tag><random>.tmp` beside `path`: hidden, never looks finished, and says which
    process on which machine owns it (so `remove_stale_temps` can prove it dead)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{_HOST}{secrets.token_hex(4)}.tmp")


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit} ({n} bytes)"
    return f"{n} bytes"


def _is_disk_full(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and (exc.errno in _FULL or "No space left on device" in str(exc)):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _disk_full_error(folder: Path, target: Path, needed: int | None) -> OutputError:
    free = shutil.disk_usage(folder).free
    need = f"needs about {_bytes(needed)}" if needed else "needs more"
    err = OutputError(
        f"disk full: {_mount_point(folder)} has {_bytes(free)} free but writing {target} {need}; "
        "free space there or choose another output folder (nothing was left half-written)"
    )
    err.errno = errno.ENOSPC  # an enclosing atomic write restates it for its own file
    return err


def check_free_space(folder: str | os.PathLike, needed_bytes: int, target: str | os.PathLike) -> None:
    """Raise `OutputError` (naming the disk and the bytes) when `folder`'s disk has less than `needed_bytes`
    free for writing `target`: a write that cannot fit fails before the work, not after it."""
    folder = Path(folder)
    if shutil.disk_usage(folder).free < needed_bytes:
        raise _disk_full_error(folder, Path(target), needed_bytes)


def _make_dir(folder: Path) -> Path:
    blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        where = "is a file" if blocker == folder else f"sits under {blocker}, which is a file"
        raise OutputError(f"output folder {folder} {where}, not a folder; choose another output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder} ({exc.strerror or exc}); choose another output "
                          "folder") from None
    return folder


def check_output_dir(folder: str | os.PathLike) -> Path:
    """Create `folder` (with parents) and prove a file can be written there; returns it as a Path.

    Raises `OutputError` with one line when `folder` is a file, sits under a file, is read-only or
    not writable, or its disk is full, so that a run fails before it computes anything.
    """
    folder = _make_dir(Path(folder))
    try:
        probe = temp_sibling(folder / "write-test")
        with open(probe, "wb") as fh:
            fh.write(b"ok")
        probe.unlink()
    except OSError as exc:
        if _is_disk_full(exc):
            raise _disk_full_error(folder, folder, None) from None
        raise OutputError(
            f"cannot write in output folder {folder} ({exc.strerror or exc}); choose another output folder "
            "or make it writable"
        ) from None
    return folder


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # the folder itself went away or became unwritable; nothing of ours is left to remove
        pass


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first one as its handler would."""
    if threading.current_thread() is not threading.main_thread():  # Python runs handlers in the main thread only
        yield
        return
    caught: list = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    old = {s: h for s, h in old.items() if h is not None}  # None: set outside Python, left alone
    for s in old:
        signal.signal(s, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            signum, frame = caught[0]
            handler = old[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's list of names) to the disk; folders that cannot be synced (some
    network and Windows file systems) are left to the system."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if path.is_dir():
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if not (path.is_dir() and exc.errno in (errno.EINVAL, errno.EBADF, errno.ENOTSUP)):
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_paths(paths: Sequence[str | os.PathLike], *, size_hint: int | None = None) -> Iterator[list[Path]]:
    """Yield temp paths beside `paths` to write; on success each gets mode 0o666 & ~umask and replaces its
    path, the whole set renamed only after every file was written.

    Durable: each temp file is fsynced before the renames and each folder after them. The parent folders are
    created. If the body raises, every temp file is removed, the error re-raised
    (a full disk as one `OutputError` line naming the disk and `size_hint`, the bytes the set needs) and
    every previous path is left untouched. The body must create each temp file (write to it by name).
    """
    paths = [Path(p) for p in paths]
    for parent in dict.fromkeys(p.parent for p in paths):
        _make_dir(parent)
    tmps = [temp_sibling(p) for p in paths]
    try:
        yield tmps
        mode = 0o666 & ~_umask()
        for tmp in tmps:
            os.chmod(tmp, mode)
            _fsync(tmp)  # the bytes reach the disk before the name does
        with _signals_deferred():  # Ctrl-C / SIGTERM between two renames would leave part of the set
            for tmp, path in zip(tmps, paths):
                os.replace(tmp, path)
        for parent in dict.fromkeys(p.parent for p in paths):
            _fsync(parent)  # ... and the renames themselves
    except BaseException as exc:
        full = isinstance(exc, Exception) and _is_disk_full(exc)
        written = sum(t.stat().st_size for t in tmps if t.is_file()) if full else 0
        for tmp in tmps:
            _unlink_quietly(tmp)
        if full:
            raise _disk_full_error(paths[0].parent, paths[0], max(size_hint or 0, written) or None) from None
        raise


@contextmanager
def atomic_path(path: str | os.PathLike, *, size_hint: int | None = None) -> Iterator[Path]:
    """`atomic_paths` for one file: yield a temp path beside `path`; on success it replaces `path`.

    The temp name, `.<name>.<pid>.<host><random>.tmp`, is hidden and never looks like a finished output.
    If the body raises, the temp file is removed, the error re-raised and any previous `path` is left
    untouched; a full disk becomes one `OutputError` line (size_hint: bytes the file needs, for it).
    """
    with atomic_paths([path], size_hint=size_hint) as (tmp,):
        yield tmp


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, *, name: str | None = None) -> list[Path]:
    """Remove temp files in `folder` left by killed writers: only ours (`temp_sibling` names) written on this
    machine by a process that no longer exists; with `name`, only those of that output file. Returns the
    removed paths (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        m = _TEMP.match(path.name)
        if m and m["host"] == _HOST and (name is None or m["name"] == name) and not _pid_alive(int(m["pid"])) and path.is_file():
            _unlink_quietly(path)
            removed.append(path)
    return sorted(removed)


def _lock_owner(lock: Path) -> tuple[int, str] | None:
    """(pid, host tag) written in a lock file; None when it cannot be read (gone, or cut by a kill while written)."""
    try:
        pid, host = lock.read_text(encoding="ascii").split()
        return int(pid), host
    except (OSError, ValueError, UnicodeDecodeError):
        return None


@contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str = "run") -> Iterator[Path]:
    """Hold `folder`/.care.lock while the block runs: a second `what` into the same folder raises `OutputError`
    (one line naming the folder and the process that holds it) instead of mixing its files with the first one's.

    The rule of the temp files decides a stale lock: one written on this machine by a process that no longer
    exists (a SIGKILL, a crash) is taken over; a lock of another machine is only removed by hand. The folder is
    created; the lock is removed when the block ends, however it ends.
    """
    folder = _make_dir(Path(folder))
    lock = folder / LOCK_NAME
    mine = f"{os.getpid()} {_HOST}\n"
    for _ in range(3):  # a stale lock moved aside, then the fresh one created; a rival may win the race once
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None:  # a rival between creating and writing it, or a lock cut by a kill: look again
                time.sleep(0.1)
                owner = _lock_owner(lock)
            if owner is None or (owner[1] == _HOST and not _pid_alive(owner[0])):
                aside = temp_sibling(lock)
                try:  # only one process gets to move a stale lock aside
                    os.replace(lock, aside)
                except FileNotFoundError:
                    continue
                if _lock_owner(aside) == owner:
                    _unlink_quietly(aside)
                    continue
                os.replace(aside, lock)  # a live lock appeared in between: put it back
                owner = _lock_owner(lock)
            here = owner is not None and owner[1] == _HOST
            holder = f"process {owner[0]} on {'this' if here else 'another'} machine" if owner else "another process"
            gone = "" if here else f"; delete {lock} if that {what} is gone"
            raise OutputError(f"output folder {folder} is in use by another {what} ({holder}); wait for it to end or "
                              f"choose another output folder{gone}") from None
        except OSError as exc:
            raise OutputError(f"cannot lock output folder {folder} ({exc.strerror or exc}); choose another output "
                              "folder or make it writable") from None
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(mine)
        break
    else:
        raise OutputError(f"output folder {folder} is in use by another {what} ({lock.name}); choose another output folder")
    try:
        yield lock
    finally:
        try:
            if lock.read_text(encoding="ascii") == mine:
                lock.unlink()
        except OSError:
            pass
