"""A reader connection per thread, for code that reads outside an actor of its own
(worker threads running tools, the embedding API's caller threads)."""

from __future__ import annotations

import threading
from pathlib import Path

import apsw

from palyra.journal.store import JournalSettings, Reader


class ThreadReaders:
    def __init__(self, state_dir: Path, settings: JournalSettings) -> None:
        self._state_dir = state_dir
        self._settings = settings
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[tuple[threading.Thread, Reader]] = []
        self._generation = 0  # bumped by close(): a thread's cached reader is then stale

    def conn(self) -> apsw.Connection:
        reader = getattr(self._local, "reader", None)
        if reader is None or self._local.generation != self._generation:
            reader = self._local.reader = Reader(self._state_dir, self._settings)
            self._local.generation = self._generation
            with self._lock:
                # apsw connections may not be shared: close those of threads that ended.
                alive = []
                for thread, other in self._open:
                    if thread.is_alive():
                        alive.append((thread, other))
                    else:
                        other.close()
                alive.append((threading.current_thread(), reader))
                self._open = alive
        return reader.conn

    def close(self) -> None:
        """Close every reader; a later ``conn()`` on any thread opens a fresh one."""
        with self._lock:
            self._generation += 1
            for _, reader in self._open:
                try:
                    reader.close()
                except Exception:
                    pass
            self._open = []
