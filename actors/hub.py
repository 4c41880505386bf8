"""Fan-out of run events to subscribers (embedded iterators, SSE, gRPC streams).

Not an actor: a lock-protected table of sinks, so a run actor publishes without a
mailbox hop. It is a cache of *live* delivery only; the tape is the durable record,
and a subscriber that joins late replays the tape first (see RunHandle.events).
A sink returns False to be dropped (e.g. a slow client whose buffer is full).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from palyra.records import RunEvent

Sink = Callable[[RunEvent], bool]


class EventHub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sinks: dict[str, list[Sink]] = {}

    def subscribe(self, run_id: str, sink: Sink) -> None:
        with self._lock:
            self._sinks.setdefault(run_id, []).append(sink)

    def unsubscribe(self, run_id: str, sink: Sink) -> None:
        with self._lock:
            sinks = self._sinks.get(run_id)
            if sinks and sink in sinks:
                sinks.remove(sink)
                if not sinks:
                    del self._sinks[run_id]

    def publish(self, event: RunEvent) -> None:
        sinks = self._sinks.get(event.run_id)
        if not sinks:
            return
        for sink in list(sinks):
            try:
                keep = sink(event)
            except Exception:
                keep = False
            if not keep:
                self.unsubscribe(event.run_id, sink)
        if event.terminal:
            with self._lock:
                self._sinks.pop(event.run_id, None)

    def subscribers(self, run_id: str) -> int:
        with self._lock:
            return len(self._sinks.get(run_id, ()))
