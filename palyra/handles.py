"""Handles on accepted runs: iterate their events, wait for their result.

Every handle replays the durable tape first, then follows live events; it dedupes by
tape seq, so a subscriber that joins at any moment sees every step exactly once.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

from palyra.errors import Timeout
from palyra.records import RunEvent, RunResult, TapeEvent, Usage


def _from_tape(event: TapeEvent) -> RunEvent:
    return RunEvent(event.run_id, event.event_type, event.payload, event.seq)


class _Unseen:
    """Dedupes by tape seq across the replay and the live feed; streamed tokens (no seq)
    always pass."""

    def __init__(self) -> None:
        self.last = -1

    def __call__(self, event: RunEvent) -> bool:
        if event.seq is None:
            return True
        if event.seq <= self.last:
            return False
        self.last = event.seq
        return True


def result_from_status(run_id: str, session_id: str, payload: dict[str, Any]) -> RunResult:
    usage = payload.get("usage") or {}
    return RunResult(
        run_id=run_id,
        session_id=session_id,
        state=payload.get("kind", "failed"),
        reply_text=payload.get("reply_text"),
        usage=Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0),
                    usage.get("total_tokens", 0)),
        last_error=payload.get("last_error"),
        termination_reason=payload.get("termination_reason"),
    )


class RunHandle:
    """What ``Runtime.send`` returns once the run is durably accepted."""

    def __init__(self, runtime: Any, run_id: str, session_id: str, session_created: bool = False) -> None:
        self._rt = runtime
        self.id = run_id
        self.session_id = session_id
        self.session_created = session_created

    def __repr__(self) -> str:
        return f"RunHandle(id={self.id!r}, session_id={self.session_id!r})"

    def status(self) -> Any:
        return self._rt.run(self.id)

    def wait(self, timeout: float | None = 30.0) -> RunResult:
        """Block until the run is terminal; returns its result (Timeout if it is not)."""
        done = threading.Event()
        box: list[RunEvent] = []

        def sink(event: RunEvent) -> bool:
            if event.terminal:
                box.append(event)
                done.set()
                return False
            return True

        hub = self._rt.services.hub
        hub.subscribe(self.id, sink)
        try:
            run = self._rt._run(self.id)
            if run.terminal:
                return run.result()
            if not done.wait(timeout):
                raise Timeout(f"run {self.id} is still {self._rt.run_state(self.id)} after {timeout}s",
                              details={"run_id": self.id})
            return result_from_status(self.id, self.session_id, box[0].payload)
        finally:
            hub.unsubscribe(self.id, sink)

    def events(self, timeout: float | None = 60.0) -> Iterator[RunEvent]:
        """Replay what already happened, then live events; ends after the terminal one.

        ``timeout`` bounds the wait for each next event (Timeout if exceeded).
        """
        live: queue.SimpleQueue[RunEvent] = queue.SimpleQueue()

        def sink(event: RunEvent) -> bool:
            live.put(event)
            return True

        hub = self._rt.services.hub
        hub.subscribe(self.id, sink)
        try:
            unseen = _Unseen()
            for event in filter(unseen, map(_from_tape, self._rt.tape(self.id))):
                yield event
                if event.terminal:
                    return
            while True:
                try:
                    event = live.get(timeout=timeout)
                except queue.Empty:
                    raise Timeout(f"no event from run {self.id} within {timeout}s") from None
                if unseen(event):
                    yield event
                    if event.terminal:
                        return
        finally:
            hub.unsubscribe(self.id, sink)

    async def aevents(self, *, capacity: int = 1024) -> AsyncIterator[RunEvent]:
        """The trio twin of :meth:`events` (no thread per waiting caller)."""
        import trio

        from surfaces.bridge import TrioSink

        hub = self._rt.services.hub
        unseen = _Unseen()
        while True:
            sink = TrioSink(capacity)
            hub.subscribe(self.id, sink)
            try:
                # the replay reads SQLite: off the trio loop, so other tasks keep running
                tape = await trio.to_thread.run_sync(self._rt.tape, self.id)
                for event in filter(unseen, map(_from_tape, tape)):
                    yield event
                    if event.terminal:
                        return
                async for event in sink.receive:
                    if unseen(event):
                        yield event
                        if event.terminal:
                            return
            finally:
                hub.unsubscribe(self.id, sink)
            # The channel closed: we fell behind. Catch up from the tape and go on.

    async def await_result(self, timeout: float | None = 30.0) -> RunResult:
        import trio

        with trio.fail_after(timeout if timeout is not None else float("inf")):
            async for event in self.aevents():
                if event.terminal:
                    return result_from_status(self.id, self.session_id, event.payload)
        return self._rt._run(self.id).result()
