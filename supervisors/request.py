"""Messages that carry their own reply slot.

A pykka ask builds a future around a ``queue.Queue`` (three conditions and a deque)
per call. Hot paths (the journal's writers) instead send a :class:`Request` by tell
and wait on a bare lock inside it: the same semantics at a fraction of the cost.
The supervised receive loop treats a failing Request like a failing ask (the caller
gets the exception, the actor lives on) and fails queued Requests with
``ActorDeadError`` when an incarnation stops, exactly as pykka does for asks, so
name-addressed callers can retry them safely.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable
from typing import Any

import pykka


class Request:
    """``on_done`` (optional) runs in the replying thread once the answer is in:
    actors use it to turn a reply into a message to themselves instead of blocking."""

    __slots__ = ("_done", "_value", "_error", "_answered", "on_done")

    def __init__(self) -> None:
        self._done = _thread.allocate_lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None
        self._answered = False
        self.on_done: Callable[[Request], None] | None = None

    def reply(self, value: Any) -> None:
        self._value = value
        self._release()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._release()

    def _release(self) -> None:
        if self._answered:
            return  # answered twice (a late reply after a failure): the first answer stands
        self._answered = True
        self._done.release()
        if self.on_done is not None:
            self.on_done(self)

    @property
    def answered(self) -> bool:
        return self._answered

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def value(self) -> Any:
        return self._value

    def wait(self, timeout: float | None) -> Any:
        if not self._done.acquire(timeout=-1 if timeout is None else timeout):
            raise pykka.Timeout(f"no reply within {timeout}s")
        if self._error is not None:
            raise self._error
        return self._value

    def rearm(self) -> None:
        """Make the request sendable again after it failed as never handled."""
        self._error = None
        self._value = None
        self._done.acquire(blocking=False)
        self._answered = False
