"""Durable file writes: a temporary file in the same folder, flushed and fsynced, then renamed.

A process killed (or a machine losing power) during a write leaves the previous complete file or
the new complete one. A write that fails removes its temporary file, and a failure because the
disk is full (``ENOSPC``/``EDQUOT``, or a writer such as ``torch.save`` that reports it as a
``RuntimeError`` while the filesystem has no space left) becomes :class:`DiskFull` naming the file.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL = 64 * 1024  # bytes: below this a failed write is taken as "the disk is full"


class DiskFull(OSError):
    """A write failed because the filesystem (or quota) is full; ``filename`` is the target file."""

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, "no space left on device", str(path))


def _free_bytes(folder: str) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def is_disk_full(error: BaseException, folder: str | Path) -> bool:
    """ENOSPC/EDQUOT anywhere in the exception chain (``torch.save`` raises a RuntimeError whose
    context is the OSError), or a failed write while ``folder``'s filesystem is (nearly) full."""
    seen, e = set(), error
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno in FULL_ERRNOS:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    free = _free_bytes(str(folder))
    return isinstance(error, (OSError, RuntimeError)) and free is not None and free < NEARLY_FULL


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (where the filesystem supports it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_tmp(path: str) -> IO[bytes]:
    """Open ``path`` for writing (binary); the single place durable writes open their file."""
    return open(path, "wb")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """``write(f)`` into ``<path>.tmp``, flush, fsync, rename to ``path``. Raises DiskFull on a full disk."""
    path = str(path)
    folder = os.path.dirname(path) or "."
    tmp = f"{path}.tmp"
    try:
        with open_tmp(tmp) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        full = is_disk_full(e, folder)  # before the partial file gives its space back
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if full:
            raise DiskFull(path) from e
        raise
    fsync_dir(folder)


class Reserve:
    """A small preallocated file in the run directory: removed when the disk fills up, so the
    final ``summary.json`` (status ``failed`` with the error) can still be written."""

    def __init__(self, folder: str | Path, size: int = 1 << 20, name: str = ".famlab.reserve"):
        self.path, self.size = Path(folder) / name, size
        self.created = False  # only the process that created the file removes it

    def create(self) -> None:
        self.created = True
        try:
            with open(self.path, "wb") as f:
                f.write(b"\0" * self.size)
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            self.release()

    def release(self) -> None:
        if not self.created:
            return
        self.created = False
        try:
            self.path.unlink()
        except OSError:
            pass
