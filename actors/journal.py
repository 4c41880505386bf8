"""The journal actor: the only writer of the SQLite journal, with group commit.

Each ``Write`` message carries one caller's operations. When the actor picks one up,
it also takes every ``Write`` queued right behind it (up to ``max_batch``) and applies
them all in one transaction; each caller is answered only after that transaction
committed, so an acknowledged write is durable (to the configured ``synchronous``
level). A caller's failing operation rolls back only its own savepoint.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from typing import Any

import pykka
from pykka._envelope import Envelope

from palyra.clock import Clock
from palyra.errors import ActorUnavailable, Superseded
from palyra.journal.store import (
    AppendResult,
    EventDraft,
    JournalSettings,
    Operation,
    Writer,
    append_op,
    open_writer_connection,
)
from supervisors.names import Address, Names
from supervisors.request import Request
from supervisors.spec import SupervisionEvent
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.journal")

JOURNAL = "journal"


class Write(Request):
    """One caller's operations, applied atomically; replied to after the commit."""

    __slots__ = ("ops", "caller")

    def __init__(self, ops: tuple[Operation, ...]) -> None:
        super().__init__()
        self.ops = ops
        self.caller: Any = None  # a Request answered by whoever acts on this commit


def _is_write(envelope: Envelope[Any]) -> bool:
    return type(envelope.message) is Write


class JournalActor(Supervised):
    def init(self) -> None:
        svc = self.services
        self.settings: JournalSettings = svc.config.journal
        self.conn = open_writer_connection(svc.state_dir, self.settings, svc.clock)
        self.writer = Writer(self.conn, self.settings, svc.clock,
                             still_writer=lambda: not self.abandoned.is_set())
        self.batches = 0
        self.writes = 0

    def terminate(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            self.conn = None
            conn.close()

    def on_receive(self, message: Any) -> Any:
        if type(message) is not Write:
            return super().on_receive(message)
        queued = [e.message for e in self.take_queued(_is_write, self.settings.max_batch - 1)]
        batch = [message, *queued]
        started = time.perf_counter()
        outcomes = self.writer.apply([w.ops for w in batch])
        self.services.counters.committed(
            self.writer.observed, seconds=time.perf_counter() - started, writes=len(outcomes),
            errors=[o.error for o in outcomes if o.error is not None])
        self.batches += 1
        self.writes += len(outcomes)
        for write, outcome in zip(batch, outcomes, strict=True):
            if outcome.ok:
                write.reply(outcome.value)
            elif isinstance(outcome.error, Superseded):
                # abandoned as hung: never handled here, so its sender re-sends it to
                # the incarnation that took over (which writes after anything we did)
                write.fail(pykka.ActorDeadError(str(outcome.error)))
            else:
                write.fail(outcome.error)  # type: ignore[arg-type]
        return None

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "writes": self.writes}


class JournalClient:
    """How everything else writes: builds redacted drafts, sends them by name."""

    def __init__(
        self, names: Names, settings: JournalSettings, clock: Clock, *, retry_for: float = 2.0
    ) -> None:
        self.address = Address(names, JOURNAL, retry_for=retry_for)
        self.settings = settings
        self.clock = clock

    def draft(self, kind: str, payload: Any = None, **fields: Any) -> EventDraft:
        return EventDraft.build(
            kind, payload, max_payload_bytes=self.settings.max_payload_bytes, clock=self.clock, **fields
        )

    def append(self, kind: str, payload: Any = None, **fields: Any) -> AppendResult:
        """Append one event; returns once it is committed."""
        return self.address.request(Write((append_op(self.draft(kind, payload, **fields)),)))

    def write(self, *ops: Operation, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        """Apply ``ops`` atomically; returns the last one's value once committed."""
        return self.address.request(Write(tuple(ops)), timeout=timeout)

    def write_nowait(self, *ops: Operation) -> Write:
        """Queue ``ops`` without waiting; ``.wait(timeout)`` on the result once needed."""
        write = Write(tuple(ops))
        self.address.tell(write)
        return write


class SupervisionRecorder:
    """Carries supervision events to the journal without ever blocking a supervisor.

    A supervisor restarting the journal must not wait on the journal, so events go
    into a queue that one daemon thread drains; events that cannot be written while
    the journal is down wait in memory and are flushed by the runtime at stop.
    """

    def __init__(self, client: JournalClient) -> None:
        self._client = client
        self._queue: queue.SimpleQueue[SupervisionEvent | None] = queue.SimpleQueue()
        self.pending: list[SupervisionEvent] = []
        self.written = 0
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="palyra-supervision-recorder", daemon=True)
        self._thread.start()

    def __call__(self, event: SupervisionEvent) -> None:
        self._idle.clear()
        self._queue.put(event)

    def _run(self) -> None:
        while True:
            event = self._queue.get()
            if event is None:
                return
            try:
                self._client.append(event.kind, dataclasses.asdict(event), actor="system")
                self.written += 1
            except ActorUnavailable:
                self.pending.append(event)
            except Exception:
                log.exception("could not journal supervision event %s", event)
                self.pending.append(event)
            if self._queue.empty():
                self._idle.set()

    def flush(self, timeout: float = 5.0) -> bool:
        return self._idle.wait(timeout)

    def close(self) -> list[SupervisionEvent]:
        """Stop the thread; return the events that were never written."""
        self._queue.put(None)
        self._thread.join(timeout=5)
        leftover = list(self.pending)
        while True:
            try:
                event = self._queue.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                leftover.append(event)
        return leftover
