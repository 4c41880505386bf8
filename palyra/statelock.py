"""One runtime per state directory.

Two runtimes on one journal would be two writers. An advisory ``flock`` on
``runtime.lock`` is held for the runtime's life; the kernel drops it when the
process dies (even by ``kill -9``), so a stale file never blocks a restart.
A clean release empties the file, so a file that still names a pid nobody holds the
lock for was left by a process that died: ``palyra doctor`` reports it as stale.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from palyra.errors import Conflict

LOCK_NAME = "runtime.lock"
PROBE_GRACE_S = 0.2


class StateLock:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            self._lock_exclusive(fd)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise Conflict(
                f"state directory {self.path.parent} is in use by pid {holder}; "
                "stop that runtime first (one runtime per state directory)",
                details={"state_dir": str(self.path.parent), "holder_pid": holder},
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    @staticmethod
    def _lock_exclusive(fd: int) -> None:
        # holder_pid() probes (``palyra doctor``) hold a shared lock for microseconds:
        # a start that lands on one tries again briefly instead of failing.
        deadline = time.monotonic() + PROBE_GRACE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # still locked: nobody can read a half-written pid
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def holder_pid(self) -> int | None:
        """The pid written by the current holder, or None if the lock is free."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                text = os.read(fd, 64).decode(errors="replace").strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def recorded_pid(self) -> int | None:
        """The pid written in the file, without touching the lock (None: no file or no pid).

        Whether that process still holds the lock is :meth:`holder_pid`'s question."""
        try:
            text = self.path.read_text(errors="replace").strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None
