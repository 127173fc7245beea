"""One writer per run directory: an OS-level lock held for the run's whole life.

``<run dir>/famlab.lock`` is locked with ``fcntl.flock`` (exclusive, non-blocking; Linux NFS clients
map it onto NFS byte-range locks, so it also holds across nodes) and carries the owner's host, pid
and start time. A second process is refused before it writes anything (:class:`RunLocked`, naming
the live owner). The kernel (or the NFS server, once the client's lease expires) drops the lock of
a process that dies, however it dies, so a run killed by SIGKILL, a node failure or a preemption is
taken over by the next start (``resume=auto``), and the lock file's leftover owner line says that
the previous owner died while running. A clean exit empties the file. After a node failure an NFS
server keeps the dead client's lock until its lease expires (about 90 s): a requeued job that may
start sooner sets ``FAMLAB_LOCK_WAIT_S`` (seconds to keep retrying a held lock; default 0).

Only global rank 0 of a multi-process run takes the lock (the other ranks are the same run).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from famlab.errors import ConfigError

LOCK_NAME = "famlab.lock"
WAIT_VAR = "FAMLAB_LOCK_WAIT_S"  # seconds to wait for a held lock (NFS keeps a dead client's lock until its lease ends)
_RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
log = logging.getLogger("famlab")


class RunLocked(ConfigError):
    """Another live process holds the run directory."""


def is_rank_zero() -> bool:
    """True unless a launcher's environment says this process is not global rank 0."""
    return all(os.environ.get(v, "0") in ("", "0") for v in _RANK_VARS)


def owner_line() -> str:
    return f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()


class RunLock:
    """``with RunLock(run_dir):`` holds ``run_dir/famlab.lock``; ``previous_owner`` is the owner line a
    process that died while running left behind (empty when the last owner exited cleanly)."""

    def __init__(self, run_dir: str | Path, wait_s: float | None = None):
        self.path = Path(run_dir) / LOCK_NAME
        self.fd: int | None = None
        self.previous_owner = ""
        self.wait_s = float(os.environ.get(WAIT_VAR, 0) or 0) if wait_s is None else wait_s

    def acquire(self) -> RunLock:
        """Take the lock, retrying for ``wait_s`` seconds (``FAMLAB_LOCK_WAIT_S``, default 0) while it is held."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait_s
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno in _BUSY and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                owner = _read(fd) or "owner not yet recorded"
                os.close(fd)
                if e.errno in _BUSY:
                    raise self._refusal(owner) from None
                log.warning(
                    "%s: file locks are not supported here (%s); one writer per run directory is not enforced",
                    self.path,
                    e,
                )
                return self
        self.fd = fd
        self.previous_owner = _read(fd)
        if self.previous_owner:
            log.warning(
                "taking over run directory %s from a process that died while running (%s)",
                self.path.parent,
                self.previous_owner,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, (owner_line() + "\n").encode(), 0)
        os.fsync(fd)
        return self

    def _refusal(self, owner: str) -> RunLocked:
        return RunLocked(
            f"run directory {self.path.parent} is in use by another famlab process ({owner}); wait "
            f"for it to finish or stop it, then rerun with resume=auto (nothing was written)"
        )

    def refuse_if_held(self) -> None:
        """Raise :class:`RunLocked` if another process holds the lock (after waiting up to ``wait_s``); reads only."""
        deadline = time.monotonic() + self.wait_s
        while lock_state(self.path.parent) == "held" and time.monotonic() < deadline:
            time.sleep(1.0)
        if lock_state(self.path.parent) == "held":
            try:
                owner = self.path.read_text().strip()
            except OSError:
                owner = ""
            raise self._refusal(owner or "owner not yet recorded")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)  # a clean exit: no owner left behind
            os.fsync(self.fd)
        except OSError:
            pass
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_state(run_dir: str | Path) -> str:
    """``held`` (a live process holds the lock), ``free`` (nobody does) or ``none`` (no lock file:
    never run with locking, or the filesystem has no locks). Takes a shared lock for an instant."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return "none"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return "held" if e.errno in _BUSY else "none"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)
