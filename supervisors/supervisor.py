"""OTP-style supervisors on pykka.

All restart logic runs in the supervisor's own thread: children report their exits
by *tell*, probes are ticks the supervisor sends itself, so a supervisor needs no
locks. Reports from incarnations that are no longer current (an old incarnation, or
a child this supervisor stopped itself) are stale and ignored; that is how
``one_for_all`` and ``rest_for_one`` avoid reacting to their own stops.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import Any

import pykka
from pykka._envelope import Envelope

from supervisors.spec import ChildContext, ChildExit, ChildSpec, Strategy, SupervisionEvent
from supervisors.supervised import (
    PING,
    Crash,
    Hang,
    Kill,
    Ping,
    Supervised,
    actor_of,
    send_first,
)

log = logging.getLogger("palyra.supervision")


class IntensityExceeded(RuntimeError):
    pass


class ChildStartFailed(RuntimeError):
    pass


@dataclasses.dataclass(frozen=True)
class StartChild:
    spec: ChildSpec


@dataclasses.dataclass(frozen=True)
class LaunchChild:
    """Start a dynamic child and hand it ``first``, answering nobody.

    For senders that must not wait on a supervisor (the gateway starting a run): a start
    that fails goes to :meth:`Supervisor.child_failed` like a crash would, and a launch
    of a name that is already a child (two recoveries racing) is dropped.
    """

    spec: ChildSpec
    first: Any = None


@dataclasses.dataclass(frozen=True)
class StopChild:
    name: str


class _Tick:
    pass


_TICK = _Tick()
_CONTROL = (Ping, Kill, Crash, Hang)


class Supervisor(Supervised):
    """Starts children in order, stops them in reverse, restarts by strategy.

    ``services`` (from the context) must offer ``names`` (:class:`Names`), ``table``
    (:class:`ActorTable`), ``timers`` (:class:`Timers`), ``emit`` (a non-blocking
    callable taking a :class:`SupervisionEvent`) and ``clock``.
    """

    def __init__(
        self,
        *,
        ctx: ChildContext,
        specs: list[ChildSpec] | tuple[ChildSpec, ...] = (),
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
    ) -> None:
        super().__init__(ctx=ctx)
        if strategy not in ("one_for_one", "one_for_all", "rest_for_one"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.specs: list[ChildSpec] = list(specs)
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.current: dict[str, pykka.ActorRef[Any]] = {}
        self._restart_times: collections.deque[float] = collections.deque()
        self._probes: dict[str, tuple[pykka.Future[Any], float]] = {}
        self._next_probe: dict[str, float] = {}
        self._tick_handle: Any = None
        self._dynamic: set[str] = set()

    @property
    def path(self) -> str:
        return self.ctx.path if self.ctx else "root"

    # -- lifecycle --------------------------------------------------------------

    def init(self) -> None:
        self.services.table.row(self.name, self.path)
        try:
            for spec in self.specs:
                self._start_child(spec)
        except BaseException:
            self.terminate()
            raise
        self._schedule_tick()

    def terminate(self) -> None:
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        for spec in reversed(self.specs):
            self._stop_child(spec)

    # -- messages ------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ChildExit):
            return self._on_child_exit(message)
        if message is _TICK:
            return self._on_tick()
        if isinstance(message, StartChild):
            return self._start_dynamic(message.spec)
        if isinstance(message, LaunchChild):
            return self._launch_dynamic(message)
        if isinstance(message, StopChild):
            return self._stop_dynamic(message.name)
        return super().on_receive(message)

    def children(self) -> list[str]:
        return [spec.name for spec in self.specs]

    # -- hooks for subclasses --------------------------------------------------------

    def child_failed(self, spec: ChildSpec, reason: str) -> None:
        """Called when a child crashed, was killed or hung, before any restart."""

    # -- starting and stopping -----------------------------------------------------

    def _start_child(self, spec: ChildSpec, handover: list[Envelope[Any]] = ()) -> None:  # type: ignore[assignment]
        path = f"{self.path}/{spec.name}"
        ctx = ChildContext(spec.name, path, self.actor_ref.tell, self.services)
        ref = spec.actor.start(ctx=ctx, **spec.kwargs)
        try:
            ref.ask(PING, timeout=spec.start_timeout)  # answered only after init()
        except pykka.ActorDeadError as exc:
            actor = actor_of(ref)
            cause = actor.init_error if actor is not None and actor.init_error else exc
            raise ChildStartFailed(f"{spec.name}: init failed: {cause!r}") from cause
        except pykka.Timeout as exc:
            actor = actor_of(ref)
            if actor is not None:
                actor.abandon()
            ref.stop(block=False)
            self.services.table.note_leak(f"{path} (init exceeded {spec.start_timeout}s)")
            raise ChildStartFailed(f"{spec.name}: init did not finish in time") from exc
        for envelope in handover:
            ref.actor_inbox.put(envelope)  # forwarded work goes first, before new senders
        self.current[spec.name] = ref
        self.services.names.set(spec.name, ref)
        info = self.services.table.row(spec.name, path)
        self.services.table.update(spec.name, incarnation=info.incarnation + 1, ref=ref)
        if spec.probe_interval is not None:
            self._next_probe[spec.name] = time.monotonic() + spec.probe_interval

    def _stop_child(self, spec: ChildSpec) -> None:
        ref = self.current.pop(spec.name, None)
        self._probes.pop(spec.name, None)
        if ref is None:
            return
        self.services.names.drop(spec.name, ref)
        self.services.table.update(spec.name, ref=None)
        try:
            ref.stop(timeout=spec.shutdown_timeout)
        except pykka.Timeout:
            actor = actor_of(ref)
            if actor is not None:
                actor.abandon()
                actor.release_hang()
            what = f"{self.path}/{spec.name}"
            self.services.table.note_leak(what)
            self._emit("actor.leaked", spec, f"did not stop within {spec.shutdown_timeout}s")

    def _start_dynamic(self, spec: ChildSpec) -> None:
        if self._spec(spec.name) is not None:
            raise ValueError(f"child {spec.name!r} already exists under {self.path}")
        self.specs.append(spec)
        self._dynamic.add(spec.name)
        try:
            self._start_child(spec)
        except Exception:  # its init failed, or constructing it did: the name is free again
            self._forget(spec)
            raise
        if spec.probe_interval is not None:
            self._schedule_tick()

    def _launch_dynamic(self, launch: LaunchChild) -> None:
        if self._spec(launch.spec.name) is not None:
            log.debug("%s: %s is already a child; launch dropped", self.path, launch.spec.name)
            return
        try:
            self._start_dynamic(launch.spec)
        except Exception as exc:  # nobody waits to hear: fail it like a crash
            self.child_failed(launch.spec, f"start failed: {exc}")
            return
        if launch.first is not None:
            try:
                self.current[launch.spec.name].tell(launch.first)
            except pykka.ActorDeadError:
                pass  # it died after its start probe: its exit report is on its way

    def _stop_dynamic(self, name: str) -> bool:
        spec = self._spec(name)
        if spec is None:
            return False
        self._stop_child(spec)
        self._forget(spec)
        return True

    def _forget(self, spec: ChildSpec) -> None:
        if spec in self.specs:
            self.specs.remove(spec)
        self._dynamic.discard(spec.name)
        self._next_probe.pop(spec.name, None)
        self.services.table.forget(spec.name)

    def _spec(self, name: str) -> ChildSpec | None:
        for spec in self.specs:
            if spec.name == name:
                return spec
        return None

    # -- exits and restarts ----------------------------------------------------------

    def _on_child_exit(self, exit_: ChildExit) -> None:
        ref = self.current.get(exit_.name)
        if ref is None or ref.actor_urn != exit_.urn:
            return  # stale: an old incarnation, or one we stopped ourselves
        spec = self._spec(exit_.name)
        assert spec is not None
        del self.current[exit_.name]
        self._probes.pop(exit_.name, None)
        self.services.names.drop(exit_.name, ref)
        self.services.table.update(exit_.name, ref=None)
        reason = exit_.reason if exit_.error is None else f"{exit_.reason}: {exit_.error}"
        if exit_.reason != "normal":
            self.child_failed(spec, reason)
        if spec.restart == "temporary" or (spec.restart == "transient" and exit_.reason == "normal"):
            if spec.restart == "temporary" or spec.name in self._dynamic:
                self._forget(spec)
            return
        self._restart(spec, reason)

    def _on_hung(self, spec: ChildSpec, ref: pykka.ActorRef[Any], waited: float) -> None:
        actor = actor_of(ref)
        queued = actor.abandon() if actor is not None else []
        handover = [e for e in queued if not isinstance(e.message, _CONTROL)]
        for envelope in queued:
            if isinstance(envelope.message, _CONTROL) and envelope.reply_to is not None:
                envelope.reply_to.set(None)
        self.current.pop(spec.name, None)
        self._probes.pop(spec.name, None)
        self.services.names.drop(spec.name, ref)
        info = self.services.table.row(spec.name, f"{self.path}/{spec.name}")
        self.services.table.update(spec.name, ref=None, hung=info.hung + 1)
        reason = f"hung: no answer to liveness probe within {waited:.3f}s"
        self._emit("actor.hung", spec, reason)
        self.child_failed(spec, reason)
        if spec.restart == "temporary":
            for envelope in handover:
                if envelope.reply_to is not None:
                    err = pykka.ActorDeadError(f"{spec.name} abandoned")
                    envelope.reply_to.set_exception(exc_info=(type(err), err, None))
            self._forget(spec)
            return
        self._restart(spec, reason, handover)

    def _restart(
        self, failed: ChildSpec, reason: str, handover: list[Envelope[Any]] | None = None
    ) -> None:
        while True:
            self._note_restart(failed, reason)
            index = self.specs.index(failed)
            if self.strategy == "one_for_one":
                affected = [failed]
            elif self.strategy == "one_for_all":
                affected = list(self.specs)
            else:
                affected = self.specs[index:]
            for spec in reversed(affected):
                self._stop_child(spec)
            for spec in affected:
                try:
                    self._start_child(spec, handover if spec is failed and handover else [])
                except ChildStartFailed as exc:
                    failed, reason, handover = spec, f"init_failed: {exc}", None
                    break
            else:
                self._emit("actor.restarted", failed, reason)
                return

    def _note_restart(self, spec: ChildSpec, reason: str) -> None:
        now = time.monotonic()
        self._restart_times.append(now)
        while self._restart_times and now - self._restart_times[0] > self.max_seconds:
            self._restart_times.popleft()
        info = self.services.table.row(spec.name, f"{self.path}/{spec.name}")
        self.services.table.update(
            spec.name,
            restarts=info.restarts + 1,
            last_restart_reason=reason,
            last_restart_ms=self.services.clock.now_ms(),
        )
        if len(self._restart_times) > self.max_restarts:
            why = (
                f"restart intensity exceeded: more than {self.max_restarts} restarts in "
                f"{self.max_seconds}s (last: {spec.name}: {reason})"
            )
            self._emit("actor.escalated", None, why)
            self.terminate()
            raise IntensityExceeded(why)  # a tell handler: kills us, reports to our parent

    # -- liveness ------------------------------------------------------------------

    def _tick_period(self) -> float | None:
        timeouts = [s.effective_probe_timeout for s in self.specs if s.probe_interval is not None]
        if not timeouts:
            return None
        return max(0.002, min(timeouts) / 4)  # type: ignore[type-var]

    def _schedule_tick(self) -> None:
        period = self._tick_period()
        if period is None or (self._tick_handle is not None and not self._tick_handle.cancelled):
            return
        ref = self.actor_ref

        def tick() -> None:
            self._tick_handle = None
            try:
                ref.tell(_TICK)
            except pykka.ActorDeadError:
                pass

        self._tick_handle = self.services.timers.call_later(period, tick)

    def _on_tick(self) -> None:
        now = time.monotonic()
        for name, ref in list(self.current.items()):
            spec = self._spec(name)
            if spec is None or spec.probe_interval is None:
                continue
            pending = self._probes.get(name)
            if pending is not None:
                future, sent_at = pending
                try:
                    future.get(timeout=0)
                except pykka.Timeout:
                    waited = now - sent_at
                    if waited > spec.effective_probe_timeout:  # type: ignore[operator]
                        self._on_hung(spec, ref, waited)
                    continue
                except Exception:
                    pass  # died meanwhile: its exit report is on the way
                self._probes.pop(name, None)
            if now >= self._next_probe.get(name, 0.0):
                self._probes[name] = (send_first(ref, PING), now)
                self._next_probe[name] = now + spec.probe_interval
        self._schedule_tick()

    # -- recording ---------------------------------------------------------------------

    def _emit(self, kind: str, spec: ChildSpec | None, reason: str) -> None:
        name = spec.name if spec is not None else self.name
        path = f"{self.path}/{name}" if spec is not None else self.path
        info = self.services.table.get(name)
        event = SupervisionEvent(
            kind=kind,
            actor=name,
            path=path,
            reason=reason,
            incarnation=info.incarnation if info else 0,
            restarts=info.restarts if info else 0,
            at_ms=self.services.clock.now_ms(),
        )
        log.warning("%s %s: %s", kind, path, reason)
        try:
            self.services.emit(event)
        except Exception:
            log.exception("could not record supervision event")
