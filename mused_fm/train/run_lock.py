"""One run directory, one run: an exclusive lock held by global rank 0 while a run writes its directory.

The lock is an flock on RUN_DIR/.lock, so the kernel releases it when the holding process ends, however
it ends (a crash or a kill leaves no stale lock). Ranks left running after their launcher was killed
still hold it, which is the point: a second run started there fails at once instead of racing them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from mused_fm.errors import InputError

__all__ = ["RunLock"]

LOCK = ".lock"


class RunLock:
    """Hold the lock of `run_dir` from construction until `release()` or the end of the process."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.path.read_text().strip() or "unknown"
            os.close(self._fd)
            raise InputError(
                f"{self.path.parent} is being written by another run ({holder}). Wait for it to finish, stop it "
                "(all of its ranks: killing only the launcher leaves them running), or set another run.out_dir."
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(
            self._fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode()
        )

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
