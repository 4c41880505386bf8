"""The bridge between trio tasks and actors: await a reply without a thread per wait.

A :class:`~supervisors.request.Request` carries its own reply slot; its ``on_done``
hook wakes the waiting trio task with ``TrioToken.run_sync_soon`` (never
``trio.from_thread.run_sync``, which would block the actor for a trio round trip).
Sending never blocks the trio loop either: while an actor is restarting, the task
sleeps and resolves the name again.
"""

from __future__ import annotations

import math
from typing import Any

import pykka
import trio

from palyra.errors import ActorUnavailable, Timeout
from supervisors.names import Names
from supervisors.request import Request


async def request(
    names: Names, name: str, message: Request, *, timeout: float | None = 60.0, retry_for: float = 2.0
) -> Any:
    token = trio.lowlevel.current_trio_token()
    deadline = trio.current_time() + retry_for
    while True:
        done = trio.Event()

        def wake(_: Request, done: trio.Event = done) -> None:
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass  # the caller's trio.run is over; nobody is waiting

        message.on_done = wake
        ref = names.get(name)
        sent = False
        if ref is not None:
            try:
                ref.tell(message)
                sent = True
            except pykka.ActorDeadError:
                pass
        if sent:
            with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
                await done.wait()
            if scope.cancelled_caught:
                raise Timeout(f"{name} did not answer within {timeout}s", details={"actor": name})
            try:
                return message.wait(0)
            except pykka.ActorDeadError:
                message.rearm()  # never handled: safe to send again
        if trio.current_time() > deadline:
            raise ActorUnavailable(f"actor {name!r} is not available", details={"actor": name})
        await trio.sleep(0.005)


class TrioSink:
    """Feeds live events into a bounded trio channel from any thread.

    Policy for a slow consumer: when the buffer is full the subscription is dropped
    (the sink returns False) and the reader is told so; readers of run events then
    catch up from the durable tape, so nothing is lost, only re-read.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self.send, self.receive = trio.open_memory_channel[Any](capacity)
        self.token = trio.lowlevel.current_trio_token()
        self.overflowed = False

    def __call__(self, item: Any) -> bool:
        if self.overflowed:
            return False
        try:
            self.token.run_sync_soon(self._put, item)
        except trio.RunFinishedError:
            return False
        return True

    def _put(self, item: Any) -> None:
        try:
            self.send.send_nowait(item)
        except trio.WouldBlock:
            self.overflowed = True
            self.send.close()
        except trio.ClosedResourceError:
            pass


class TerminalSink(TrioSink):
    """Only a run's terminal event crosses into trio: a caller that wants the result,
    not the steps, costs one wake-up per run instead of one per step."""

    def __call__(self, item: Any) -> bool:
        if not getattr(item, "terminal", False):
            return True
        super().__call__(item)
        return False
