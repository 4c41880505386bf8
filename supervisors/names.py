"""Addressing by name that survives restarts.

Supervisors write the current incarnation of each child into :class:`Names`; callers
hold an :class:`Address` and resolve the name on every send. A send that fails with
``ActorDeadError`` was never handled by the actor (pykka raises it only for a dead
target or for a message still queued when the actor stopped), so it is safe to retry
on the next incarnation. Only tells that sat in a crashing actor's mailbox are lost
(Erlang semantics).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pykka
from pykka.messages import ProxyCall

from palyra.errors import ActorUnavailable
from supervisors.request import Request

DEFAULT_RETRY_FOR = 2.0
DEFAULT_ASK_TIMEOUT = 60.0


class Names:
    """Thread-safe ``name -> ActorRef`` table with change notification."""

    def __init__(self) -> None:
        self._refs: dict[str, pykka.ActorRef[Any]] = {}
        self._changed = threading.Condition()

    def set(self, name: str, ref: pykka.ActorRef[Any]) -> None:
        with self._changed:
            self._refs[name] = ref
            self._changed.notify_all()

    def drop(self, name: str, ref: pykka.ActorRef[Any] | None = None) -> None:
        with self._changed:
            if ref is None or self._refs.get(name) is ref:
                self._refs.pop(name, None)

    def get(self, name: str) -> pykka.ActorRef[Any] | None:
        # A dict read is atomic under the GIL; the hot path takes no lock.
        return self._refs.get(name)

    def names(self) -> list[str]:
        with self._changed:
            return list(self._refs)

    def wait_for_change(self, name: str, stale: pykka.ActorRef[Any] | None, timeout: float) -> None:
        """Block until ``name`` resolves to something other than ``stale`` (or timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                current = self._refs.get(name)
                if current is not None and current is not stale and current.is_alive():
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(min(remaining, 0.05))


class Address:
    """A name-resolved handle to an actor; cheap to keep, valid across restarts."""

    __slots__ = ("names", "name", "retry_for", "timeout")

    def __init__(
        self,
        names: Names,
        name: str,
        *,
        retry_for: float = DEFAULT_RETRY_FOR,
        timeout: float | None = DEFAULT_ASK_TIMEOUT,
    ) -> None:
        self.names = names
        self.name = name
        self.retry_for = retry_for
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Address({self.name!r})"

    def _send(self, send: Callable[[pykka.ActorRef[Any]], Any]) -> Any:
        ref = self.names.get(self.name)
        if ref is not None:
            try:
                return send(ref)
            except pykka.ActorDeadError:
                pass
        return self._send_retrying(send, ref)

    def _send_retrying(self, send: Callable[[pykka.ActorRef[Any]], Any], stale: Any) -> Any:
        deadline = time.monotonic() + self.retry_for
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ActorUnavailable(
                    f"actor {self.name!r} is not available (restarting or stopped)",
                    details={"actor": self.name, "retried_for_s": self.retry_for},
                )
            self.names.wait_for_change(self.name, stale, remaining)
            ref = self.names.get(self.name)
            if ref is None:
                continue
            try:
                return send(ref)
            except pykka.ActorDeadError:
                stale = ref

    def tell(self, message: Any) -> None:
        self._send(lambda ref: ref.tell(message))

    def ask(self, message: Any, *, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        wait = self.timeout if timeout is ... else timeout
        try:
            return self._send(lambda ref: ref.ask(message, timeout=wait))
        except pykka.Timeout as exc:
            raise ActorUnavailable(
                f"actor {self.name!r} did not answer within {wait}s",
                details={"actor": self.name, "timeout_s": wait},
            ) from exc

    def request(self, message: Request, *, timeout: float | None = ...) -> Any:  # type: ignore[assignment]
        """Send a :class:`Request` by tell and wait for its reply.

        A request that failed as never handled (its incarnation died with it queued)
        is re-sent to the next incarnation within ``retry_for``.
        """
        wait = self.timeout if timeout is ... else timeout
        deadline = time.monotonic() + self.retry_for
        while True:
            self._send(lambda ref: ref.tell(message))
            try:
                return message.wait(wait)
            except pykka.ActorDeadError:
                if time.monotonic() > deadline:
                    raise ActorUnavailable(
                        f"actor {self.name!r} is not available (restarting or stopped)",
                        details={"actor": self.name},
                    ) from None
                message.rearm()
            except pykka.Timeout as exc:
                raise ActorUnavailable(
                    f"actor {self.name!r} did not answer within {wait}s",
                    details={"actor": self.name, "timeout_s": wait},
                ) from exc

    def ask_future(self, message: Any) -> pykka.Future[Any]:
        """Send without waiting; the future fails with ActorDeadError if never handled."""
        return self._send(lambda ref: ref.ask(message, block=False))

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Proxy-style method call without building a (95 µs) pykka proxy."""
        return self.ask(ProxyCall(attr_path=(method,), args=args, kwargs=kwargs))

    def call_future(self, method: str, *args: Any, **kwargs: Any) -> pykka.Future[Any]:
        return self.ask_future(ProxyCall(attr_path=(method,), args=args, kwargs=kwargs))
