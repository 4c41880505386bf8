"""Worker threads for blocking work (provider calls, tool executions).

Actors must stay responsive (liveness probes, cancellation), so anything that blocks
runs here and reports back by message. Daemon threads: a tool stuck forever must not
keep the process alive (``concurrent.futures`` joins its threads at exit).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("palyra.workers")


class WorkerPool:
    def __init__(self, size: int, name: str = "palyra-worker") -> None:
        self.size = size
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._outstanding = 0  # submitted and not yet finished
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("worker pool is closed")
            self._outstanding += 1
            if self._outstanding > len(self._threads) and len(self._threads) < self.size:
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{len(self._threads)}", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job()
            except Exception:
                log.exception("worker job failed")
            with self._lock:
                self._outstanding -= 1

    def close(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)
        for thread in threads:
            thread.join(timeout / max(1, len(threads)))
