"""Building and running a supervision tree."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

from supervisors.spec import ChildContext, ChildExit, ChildSpec, Strategy
from supervisors.supervisor import Supervisor


def supervisor_spec(
    name: str,
    children: list[ChildSpec] | tuple[ChildSpec, ...] = (),
    *,
    strategy: Strategy = "one_for_one",
    max_restarts: int = 3,
    max_seconds: float = 5.0,
    restart: str = "permanent",
    actor: type[Supervisor] = Supervisor,
    shutdown_timeout: float = 30.0,
    **extra: Any,
) -> ChildSpec:
    """A child spec for a nested supervisor (not probed: its children are)."""
    return ChildSpec(
        name=name,
        actor=actor,
        kwargs={
            "specs": list(children),
            "strategy": strategy,
            "max_restarts": max_restarts,
            "max_seconds": max_seconds,
            **extra,
        },
        restart=restart,  # type: ignore[arg-type]
        shutdown_timeout=shutdown_timeout,
        probe_interval=None,
    )


class RootHandle:
    """The running root supervisor and how it ended."""

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref
        self.exited = threading.Event()
        self.exit: ChildExit | None = None


def start_root(
    spec: ChildSpec,
    services: Any,
    on_exit: Callable[[ChildExit], None] | None = None,
) -> RootHandle:
    """Start ``spec`` (a supervisor) as the root; ``on_exit`` hears its escalation."""
    handle: RootHandle | None = None

    def link(exit_: ChildExit) -> None:
        if handle is not None:
            handle.exit = exit_
            handle.exited.set()
        if on_exit is not None:
            on_exit(exit_)

    ctx = ChildContext(spec.name, spec.name, link, services)
    ref = spec.actor.start(ctx=ctx, **spec.kwargs)
    handle = RootHandle(ref)
    try:
        from supervisors.supervised import PING

        ref.ask(PING, timeout=spec.start_timeout)
    except pykka.ActorDeadError as exc:
        raise RuntimeError(f"root supervisor failed to start: {handle.exit}") from exc
    services.names.set(spec.name, ref)
    services.table.update(spec.name, ref=ref, incarnation=1)
    return handle
