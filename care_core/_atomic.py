"""One atomic-write helper for every output file: write a hidden temp sibling, then rename it into place."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_path"]


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


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path` to write; on success it gets mode 0o666 & ~umask and replaces `path`.

    The parent folder is created. The temp name, `.<name>.<pid>.<random>.tmp`, is hidden and never looks
    like a finished output. If the body raises, the temp file is removed, the error re-raised, and any
    previous `path` is left untouched. The body must create the temp file (write to it by name).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
