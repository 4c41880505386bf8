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

    def conn(self) -> apsw.Connection:
        reader = getattr(self._local, "reader", None)
        if reader is None:
            reader = self._local.reader = Reader(self._state_dir, self._settings)
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
        with self._lock:
            for _, reader in self._open:
                try:
                    reader.close()
                except Exception:
                    pass
            self._open = []
