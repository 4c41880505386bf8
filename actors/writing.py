"""Journal writes for actors that must never block on the journal.

A write goes out by tell; its commit comes back as a message to the actor, which then
runs the continuation. While the journal is restarting, writes are re-sent on a short
timer instead of waiting: the actor keeps answering probes and other callers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pykka

from actors.journal import JOURNAL, Write
from palyra.errors import ActorUnavailable, JournalError


@dataclasses.dataclass(frozen=True, slots=True)
class Committed:
    write: Write


@dataclasses.dataclass(frozen=True, slots=True)
class Redispatch:
    write: Write


RETRYABLE = (pykka.ActorDeadError, ActorUnavailable, JournalError)


def tell(ref: pykka.ActorRef[Any], message: Any) -> bool:
    """Deliver without blocking; False if that incarnation is gone (it finished, or was
    replaced meanwhile). Safe from timer callbacks and ``on_done`` hooks: never raises."""
    try:
        ref.tell(message)
    except pykka.ActorDeadError:
        return False
    return True


def tell_by_name(names: Any, name: str, message: Any) -> bool:
    """Deliver without blocking; False while ``name`` is between incarnations (the
    caller retries on a timer instead of waiting)."""
    ref = names.get(name)
    return ref is not None and tell(ref, message)


def replying(req: Any, apply: Callable[[], Any]) -> Callable[[Write], None]:
    """A write continuation: fail ``req`` with the write's error, else apply the change
    to memory and reply with what ``apply`` returns."""

    def done(write: Write) -> None:
        if write.error is not None:
            req.fail(write.error)
        else:
            req.reply(apply())

    return done


class AsyncJournalWrites:
    """Mixin for Supervised actors that write without blocking.

    Declare the messages an actor handles in :meth:`handlers`; the pipeline's own
    messages (``Committed``/``Redispatch``) are routed here first.
    """

    services: Any
    actor_ref: Any
    # False for an actor whose writes record decisions taken from state it rebuilds at
    # start (the budget ledger): a write its predecessor left behind (handed over as a
    # Redispatch) is dropped and its caller asked to retry here, and an incarnation
    # abandoned as hung sends nothing more. Replaying them would commit decisions the
    # successor's rebuilt state does not know.
    adopts_predecessor_writes = True
    _continuations: dict[int, tuple[Write, Callable[[Write], None]]]
    _callers: dict[int, Any]

    def write_async(self, ops: list[Any], then: Callable[[Write], None], *,
                    caller: Any = None) -> None:
        """``caller`` (a Request waiting on this write) is failed as never handled if
        this incarnation stops first, so it is re-sent to the next one."""
        write = Write(tuple(ops))
        ref = self.actor_ref
        write.on_done = lambda w: tell(ref, Committed(w))
        write.caller = caller
        self._pending()[id(write)] = (write, then)
        if caller is not None:
            self._callers[id(write)] = caller
        self._dispatch(write)

    def _pending(self) -> dict[int, tuple[Write, Callable[[Write], None]]]:
        """This incarnation's writes in flight (created on first use: the mixin has no
        ``__init__``). A commit handed over from a previous incarnation may arrive
        before this one has written anything, so every reader goes through here."""
        if not hasattr(self, "_continuations"):
            self._continuations = {}
            self._callers = {}
        return self._continuations

    def fail_waiting_callers(self) -> None:
        """Call from ``terminate``: requests whose write outcome this incarnation will
        never act on. Their retry must be idempotent (the write may have committed)."""
        for caller in getattr(self, "_callers", {}).values():
            caller.fail(pykka.ActorDeadError("actor stopped before finishing the request"))
        self._callers = {}

    def handlers(self) -> dict[type, Callable[[Any], Any]]:
        """Message type -> handler, for :meth:`on_receive` (built once per incarnation)."""
        return {}

    def on_receive(self, message: Any) -> Any:
        if self.on_write_message(message):
            return None
        table = getattr(self, "_handlers", None)
        if table is None:
            table = self._handlers = self.handlers()
        handler = table.get(type(message))
        if handler is None:
            return super().on_receive(message)  # type: ignore[misc]
        return handler(message)

    def close_reader(self) -> None:
        """Close ``self.conn`` (the actor's reader connection) if it is open."""
        conn = getattr(self, "conn", None)
        if conn is not None:
            self.conn = None
            conn.close()

    def on_write_message(self, message: Any) -> bool:
        """Handle the pipeline's own messages; False if ``message`` is something else."""
        if type(message) is Committed:
            self._committed(message.write)
            return True
        if type(message) is Redispatch:
            if not self.adopts_predecessor_writes and id(message.write) not in self._pending():
                self._disown(message.write)
                return True
            self._dispatch(message.write)
            return True
        return False

    def _disown(self, write: Write) -> None:
        """A write this incarnation will not act on: its caller asks again elsewhere."""
        if write.caller is not None:
            write.caller.fail(pykka.ActorDeadError("the incarnation that wrote this is gone"))

    def _dispatch(self, write: Write) -> None:
        if self.adopts_predecessor_writes:
            self._send(write)
        elif not self.while_current(lambda: self._send(write)):  # type: ignore[attr-defined]
            self._disown(write)  # abandoned: a successor decides afresh

    def _send(self, write: Write) -> None:
        if not tell_by_name(self.services.names, JOURNAL, write):
            self._retry_later(write)

    def _retry_later(self, write: Write) -> None:
        ref = self.actor_ref
        self.services.timers.call_later(0.005, lambda: tell(ref, Redispatch(write)))

    def _committed(self, write: Write) -> None:
        entry = self._pending().get(id(write))
        if entry is None or entry[0] is not write:
            # Started by an incarnation that is gone (this commit was handed over to us):
            # its continuation is lost, so let the waiting caller retry idempotently.
            self._disown(write)
            return
        if isinstance(write.error, RETRYABLE):
            write.rearm()  # never handled (or the batch failed as a whole): send again
            self._retry_later(write)
            return
        del self._continuations[id(write)]
        self._callers.pop(id(write), None)
        entry[1](write)
