"""Blocking calls off the trio loop, and run event streams for SSE.

:class:`BlockingPool` runs the runtime's blocking calls (SQLite reads, synchronous
asks) on a few long-lived threads. It replaces ``trio.to_thread.run_sync`` on purpose:
``Runtime`` keeps one reader connection per calling thread and never drops it, and
trio's thread cache retires idle threads after 10 s, so every retired worker would
leave an open SQLite connection behind until the runtime stops. Long-lived threads
reuse theirs, and the pool size bounds concurrency like a ``CapacityLimiter`` would.
Results come back through ``TrioToken.run_sync_soon`` (the bridge's rule: never
``trio.from_thread.run_sync``). A cancelled waiter abandons its call; the call itself
still finishes in its thread.

:func:`follow_run` is the SSE twin of ``RunHandle.aevents`` that also starts after a
given seq (``Last-Event-ID``) and never reads the tape on the trio thread.

Slow-client policy (:data:`SSE_POLICY`, also in the OpenAPI description): a slow reader
never slows a run down and never grows the daemon's memory without bound. Each stream's
live subscription is a bounded buffer (256 events; 1024 for streamed chat completions).
When it overflows, the hub drops that subscription (the run is not told and does not
wait), and the stream catches up from the durable tape after the last seq it sent, then
subscribes again, so the client still sees every committed step exactly once and in
order. What cannot be replayed is lost on overflow: streamed ``model_token`` events
carry no seq and are not on the tape (the final ``model_token``/status rows are, and a
streamed chat completion sends the part of the reply the client missed before its last
chunk). An idle stream gets a ``: keepalive`` comment every 15 s; streams end at the
run's terminal status, or at shutdown after their buffered events.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
import trio

from palyra.errors import RuntimeStopped
from palyra.records import TERMINAL_STATES, RunEvent
from surfaces.bridge import TrioSink

T = TypeVar("T")

TAPE_PAGE = 500  # rows per tape read while replaying


class BlockingPool:
    def __init__(self, size: int = 4, name: str = "palyra-http-io") -> None:
        self.size = size
        self.name = name
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self) -> None:
        for i in range(self.size):
            thread = threading.Thread(target=self._work, name=f"{self.name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self, timeout: float = 2.0) -> None:
        """Stop the threads once their current call returns; wait at most ``timeout``
        in all (a thread stuck in a call is a daemon thread and is left behind)."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self._closed or not self._threads:
            raise RuntimeStopped("the HTTP surface is not serving")
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: list[tuple[bool, Any]] = []

        def wake() -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # nobody is waiting any more

        self._jobs.put((functools.partial(fn, *args, **kwargs), box, wake))
        await done.wait()
        ok, value = box[0]
        if ok:
            return value
        raise value

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            call, box, wake = job
            try:
                box.append((True, call()))
            except BaseException as exc:  # handed to the waiting task
                box.append((False, exc))
            wake()


class StreamRegistry:
    """Live subscriptions of open streams, so shutdown can end them at once instead of
    waiting for hypercorn's graceful timeout."""

    def __init__(self) -> None:
        self.closing = False
        self._sinks: set[TrioSink] = set()

    def add(self, sink: TrioSink) -> None:
        if self.closing:
            sink.send.close()  # a stream opened during shutdown replays, then ends
        self._sinks.add(sink)

    def discard(self, sink: TrioSink) -> None:
        self._sinks.discard(sink)

    def __len__(self) -> int:
        return len(self._sinks)

    def close_all(self) -> None:
        """Called on the trio thread: every open stream ends after its buffered events."""
        self.closing = True
        for sink in list(self._sinks):
            sink.send.close()


KEEPALIVE = None  # what follow_run yields when nothing happened for `keepalive` seconds


async def follow_run(
    rt: Any,
    pool: BlockingPool,
    registry: StreamRegistry,
    run_id: str,
    *,
    after_seq: int = -1,
    sink: TrioSink | None = None,
    capacity: int = 256,
    keepalive: float | None = None,
) -> AsyncIterator[RunEvent | None]:
    """Tape steps after ``after_seq``, then live events, until the terminal status.

    Subscribes before reading the tape and dedupes by seq, so no step is missed or
    repeated. Live events without a seq (streamed ``model_token``s) pass through.
    When the bounded buffer overflows (a slow client) the subscription is dropped and
    the stream catches up from the tape. A pre-subscribed ``sink`` (subscribed before
    the run was sent) is used for the first pass. Yields :data:`KEEPALIVE` after
    ``keepalive`` idle seconds. Ends early when ``registry`` closes (shutdown).
    """
    hub = rt.services.hub
    last = after_seq
    replay = sink is None  # a sink subscribed before the run existed misses nothing live
    while True:
        if sink is None:
            sink = TrioSink(capacity)
            hub.subscribe(run_id, sink)
        registry.add(sink)
        try:
            if replay:
                # A run already terminal now has its terminal step on the tape (it is
                # published only once durable), so replaying the tape is all there is.
                terminal_before = (await pool.run(rt.run_state, run_id)) in TERMINAL_STATES
                while steps := await _tape_after(rt, pool, run_id, last):
                    for event in steps:
                        last = event.seq  # type: ignore[assignment]
                        yield event
                        if event.terminal:
                            return
                if terminal_before:
                    return
            while True:
                item: RunEvent | None = None
                with trio.move_on_after(keepalive if keepalive else math.inf) as idle:
                    try:
                        item = await sink.receive.receive()
                    except (trio.EndOfChannel, trio.ClosedResourceError):
                        item = None
                if idle.cancelled_caught:
                    yield KEEPALIVE
                    continue
                if item is None:
                    break  # overflowed, or the registry is closing
                if item.seq is not None:
                    if item.seq <= last:
                        continue
                    while item.seq > last + 1:
                        # Steps committed before the subscription (the gateway's
                        # admission rows): fill the gap from the tape, in order.
                        steps = await _tape_after(rt, pool, run_id, last, item.seq - 1)
                        if not steps:
                            break
                        for event in steps:
                            last = event.seq  # type: ignore[assignment]
                            yield event
                    last = item.seq
                yield item
                if item.terminal:
                    return
        finally:
            hub.unsubscribe(run_id, sink)
            registry.discard(sink)
        if registry.closing:
            return
        sink, replay = None, True  # fell behind: catch up from the tape, subscribe again


async def _tape_after(rt: Any, pool: BlockingPool, run_id: str, after: int,
                      upto: int | None = None) -> list[RunEvent]:
    """The next page of committed steps after ``after`` (up to ``upto``)."""
    limit = TAPE_PAGE if upto is None else max(1, min(TAPE_PAGE, upto - after))
    page = await pool.run(rt.tape_page, run_id, after_seq=after, limit=limit)
    return [RunEvent(s.run_id, s.event_type, s.payload, s.seq) for s in page["events"]
            if upto is None or s.seq <= upto]


def sse(event: str | None, data: Any, event_id: int | None = None) -> bytes:
    """One Server-Sent Event; ``data`` is JSON-encoded (orjson emits no newlines)."""
    parts = []
    if event_id is not None:
        parts.append(b"id: %d\n" % event_id)
    if event is not None:
        parts.append(b"event: " + event.encode() + b"\n")
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    parts.append(b"data: " + payload + b"\n\n")
    return b"".join(parts)


SSE_KEEPALIVE = b": keepalive\n\n"
SSE_POLICY = (
    "Event streams (SSE) and slow clients: each stream reads a bounded buffer of live "
    "events (256; 1024 for streamed chat completions). A client too slow to keep up never "
    "stalls the run: when its buffer overflows, the live subscription is dropped and the "
    "stream catches up from the durable run tape after the last seq it sent (ids are tape "
    "seqs; Last-Event-ID resumes the same way), then follows live again. Committed steps "
    "are therefore never lost or repeated; seq-less streamed model tokens missed during the "
    "overflow are (a streamed chat completion sends the missed rest of the reply before its "
    "final chunk). Idle streams get a keepalive comment every 15 s."
)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
