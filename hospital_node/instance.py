"""One node process per ledger: two daemons on one config would both train and spend the same jobs.

``run`` takes an exclusive, non-blocking flock on a lock file next to the ledger and holds it for
the process lifetime (the kernel releases it when the process dies, even on kill -9, so a stale
lock file never blocks a restart). ``status`` reads the ledger without it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from .errors import NodeError


class AlreadyRunning(NodeError):
    """Another node process holds this ledger's lock."""


def lock_path(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".lock")


class InstanceLock:
    def __init__(self, ledger: Path):
        self.path = lock_path(ledger)
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise AlreadyRunning(f"another node process (pid {holder}) is running on this ledger ({self.path}); "
                                 "stop it first: two processes would train and spend the same jobs twice") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None
