"""The base class of every supervised actor.

Users override :meth:`Supervised.init` and :meth:`Supervised.terminate`, never
``on_start``/``on_stop``. The base class reports every way an incarnation can end to
its supervisor, including the paths pykka's hooks miss (an exception in ``on_start``
calls no hook), contains ``BaseException`` raised by a handler (pykka would stop every
actor in the process), and implements the control messages of supervision: liveness
pings, and chaos ``kill``/``crash``/``hang``.

The receive loop is pykka's own loop with three additions: it knows the envelope in
hand, it refuses to act for an incarnation that its supervisor abandoned as hung, and
``BaseException`` kills only this actor.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

import pykka
from pykka import messages
from pykka._envelope import Envelope

from palyra.errors import ActorUnavailable
from supervisors.mailbox import Mailbox
from supervisors.request import Request
from supervisors.spec import ChildContext, ChildExit, ExitReason
from supervisors.threads import PARKED

log = logging.getLogger("palyra.supervision")


class Ping:
    """Liveness probe; answered between messages, ahead of any backlog."""


class Kill:
    """Chaos: stop at the next message boundary; queued tells are dropped."""


class Crash:
    """Chaos: raise inside the actor, in mailbox order."""


class Hang:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.entered = threading.Event()  # lets chaos wait until the thread is stuck


class Killed(Exception):
    pass


class ChaosCrash(RuntimeError):
    pass


class ContainedBaseException(RuntimeError):
    """A ``BaseException`` from a handler, turned into a crash of this actor alone."""


_PING = Ping()


class Supervised(pykka.ThreadingActor):
    # Process exit must never hang on an actor thread: the runtime stops the tree in
    # a ``finally``/atexit path, and a stuck thread cannot be killed anyway.
    use_daemon_thread = True
    # Short-lived actors (a run actor per run) run on parked threads: see threads.py.
    reuse_threads = False

    def _start_actor_loop(self) -> None:
        if not self.reuse_threads:
            return super()._start_actor_loop()
        PARKED.start(self._actor_loop, f"{type(self).__name__}-parked")

    def __init__(self, *, ctx: ChildContext | None = None) -> None:
        super().__init__()
        self.ctx = ctx
        self.abandoned = threading.Event()
        self._succession = threading.Lock()  # orders an act against abandonment (while_current)
        self._hang_release = threading.Event()
        self._reported = False
        self.init_error: BaseException | None = None

    @staticmethod
    def _create_actor_inbox() -> Mailbox:  # type: ignore[override]
        return Mailbox()

    # -- hooks for subclasses -------------------------------------------------

    def init(self) -> None:
        """Acquire resources and rebuild state; runs in the actor's thread."""

    def terminate(self) -> None:
        """Release resources (ports, locks, DB handles) before the exit is reported."""

    @property
    def name(self) -> str:
        return self.ctx.name if self.ctx else type(self).__name__

    @property
    def services(self) -> Any:
        return self.ctx.services if self.ctx else None

    # -- pykka hooks ----------------------------------------------------------

    def on_start(self) -> None:
        try:
            self.init()
        except Exception as exc:
            self.init_error = exc
            self._safe_terminate()
            self._report("init_failed", exc)
            raise

    def on_stop(self) -> None:
        self._safe_terminate()
        self._report("normal")

    def on_failure(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self._safe_terminate()
        self._report("killed" if isinstance(exc, Killed) else "crash", exc)

    def _safe_terminate(self) -> None:
        try:
            self.terminate()
        except Exception:
            log.exception("terminate() of %s failed", self.name)

    def _report(self, reason: ExitReason, error: BaseException | None = None) -> None:
        if self._reported or self.ctx is None or self.ctx.link is None:
            return
        self._reported = True
        try:
            self.ctx.link(ChildExit(self.name, self.actor_urn, reason, error))
        except pykka.ActorDeadError:
            pass  # the supervisor is gone; its own supervisor handles that

    # -- batching for actors that drain their mailbox (the journal writer) -----

    def take_queued(self, accept: Any, limit: int) -> list[Envelope[Any]]:
        inbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        return inbox.take_while(accept, limit)

    # -- the receive loop -----------------------------------------------------

    def _actor_loop_running(self) -> None:
        while not self.actor_stopped.is_set():
            envelope = self.actor_inbox.get()
            if self.abandoned.is_set():
                self._hand_over(envelope)
                continue
            try:
                response = self._handle_receive(envelope.message)
            except Killed:
                if envelope.reply_to is not None:
                    envelope.reply_to.set(None)
                self._die(*sys.exc_info())
                continue
            except Exception as exc:
                if isinstance(envelope.message, Request):
                    envelope.message.fail(exc)
                elif envelope.reply_to is not None and not self.abandoned.is_set():
                    envelope.reply_to.set_exception()
                elif envelope.reply_to is not None:
                    self._reply_abandoned(envelope)
                else:
                    self._die(*sys.exc_info())
                continue
            except BaseException as exc:  # noqa: BLE001 - contain it to this actor
                contained = ContainedBaseException(f"{type(exc).__name__} in {self.name}: {exc}")
                if envelope.reply_to is not None:
                    envelope.reply_to.set_exception(
                        exc_info=(type(contained), contained, None)
                    )
                self._die(type(contained), contained, None)
                continue
            if self.abandoned.is_set():
                # Late reply of an incarnation already replaced: the message *was*
                # handled, so the caller must not retry blindly. Tell it so.
                if envelope.reply_to is not None:
                    self._reply_abandoned(envelope)
                self._retire()
            elif envelope.reply_to is not None:
                envelope.reply_to.set(response)

    def _actor_loop_teardown(self) -> None:
        # pykka fails queued asks; queued Requests are asks too.
        while not self.actor_inbox.empty():
            envelope = self.actor_inbox.get()
            if isinstance(envelope.message, Request):
                envelope.message.fail(pykka.ActorDeadError(f"{self.name} stopped before handling"))
            elif envelope.reply_to is not None:
                if isinstance(envelope.message, messages._ActorStop):
                    envelope.reply_to.set(None)
                else:
                    err = pykka.ActorDeadError(f"{self.name} stopped before handling the message")
                    envelope.reply_to.set_exception(exc_info=(type(err), err, None))

    def _die(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if not isinstance(exc, Killed | ChaosCrash):
            log.error("actor %s crashed", self.name, exc_info=(exc_type, exc, tb))
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        try:
            self.on_failure(exc_type, exc, tb)
        except Exception:
            log.exception("on_failure of %s failed", self.name)

    @staticmethod
    def _reply_abandoned(envelope: Envelope[Any]) -> None:
        err = ActorUnavailable("actor incarnation was abandoned as hung; outcome unknown")
        envelope.reply_to.set_exception(exc_info=(type(err), err, None))  # type: ignore[union-attr]

    def _hand_over(self, envelope: Envelope[Any]) -> None:
        """Forward a message that reached an abandoned incarnation to its successor."""
        if isinstance(envelope.message, Ping | Kill | Crash | Hang | messages._ActorStop):
            if envelope.reply_to is not None:
                envelope.reply_to.set(None)
            self._retire()
            return
        names = getattr(self.services, "names", None)
        successor = names.get(self.name) if names is not None else None
        if successor is not None and successor is not self.actor_ref and successor.is_alive():
            successor.actor_inbox.put(envelope)
        elif isinstance(envelope.message, Request):
            envelope.message.fail(pykka.ActorDeadError("abandoned"))
        elif envelope.reply_to is not None:
            envelope.reply_to.set_exception(
                exc_info=(pykka.ActorDeadError, pykka.ActorDeadError("abandoned"), None)
            )
        self._retire()

    def _retire(self) -> None:
        """An abandoned incarnation stops quietly once its stuck handler returns."""
        if self.actor_stopped.is_set():
            return
        pykka.ActorRegistry.unregister(self.actor_ref)
        self.actor_stopped.set()
        self._reported = True  # the supervisor already replaced us
        self._safe_terminate()

    def _handle_receive(self, message: Any) -> Any:
        if message is _PING or isinstance(message, Ping):
            return True
        if isinstance(message, Kill):
            raise Killed(f"{self.name} killed")
        if isinstance(message, Crash):
            raise ChaosCrash(f"{self.name} crashed on purpose")
        if isinstance(message, Hang):
            message.entered.set()
            self._hang_release.wait(message.seconds)
            return None
        return super()._handle_receive(message)

    # -- used by the supervisor ------------------------------------------------

    def abandon(self) -> list[Envelope[Any]]:
        """Mark this incarnation as replaced; return its queued, unhandled messages."""
        with self._succession:
            self.abandoned.set()
        inbox: Mailbox = self.actor_inbox  # type: ignore[assignment]
        return inbox.drain()

    def while_current(self, act: Callable[[], Any]) -> bool:
        """Run ``act`` unless this incarnation was abandoned; False if it was.

        Atomic with :meth:`abandon`: an act that runs here happens before the supervisor
        starts a successor, so the successor sees its effects (a write it sent reaches
        the journal ahead of anything the successor sends)."""
        with self._succession:
            if self.abandoned.is_set():
                return False
            act()
            return True

    def release_hang(self) -> None:
        self._hang_release.set()


def actor_of(ref: pykka.ActorRef[Any]) -> Supervised | None:
    actor = ref._actor_weakref()  # noqa: SLF001 - pykka keeps the object behind a weakref
    return actor if isinstance(actor, Supervised) else None


def send_first(ref: pykka.ActorRef[Any], message: Any) -> pykka.Future[Any]:
    """Deliver ``message`` ahead of the backlog; the future answers when handled."""
    future = ref.actor_class._create_future()  # noqa: SLF001
    if not ref.is_alive():
        future.set_exception(exc_info=(pykka.ActorDeadError, pykka.ActorDeadError("dead"), None))
        return future
    ref.actor_inbox.put_front(Envelope(message, reply_to=future))  # type: ignore[attr-defined]
    return future


PING = _PING
