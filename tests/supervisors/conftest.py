from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from supervisors import Services, Supervised, SupervisionEvent


class Recorder:
    """Collects supervision events; tests await them through a condition, not sleeps."""

    def __init__(self) -> None:
        self.events: list[SupervisionEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: SupervisionEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, kind: str, count: int = 1, timeout: float = 5.0) -> list[SupervisionEvent]:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: len([e for e in self.events if e.kind == kind]) >= count, timeout
            )
            assert ok, f"timed out waiting for {count} {kind}: {self.events}"
            return [e for e in self.events if e.kind == kind]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def services(recorder: Recorder) -> Iterator[Services]:
    svc = Services(emit=recorder)
    yield svc
    root = svc.names.get("root")
    if root is not None:
        root.stop(timeout=5)
    svc.timers.stop()
    pykka.ActorRegistry.stop_all(block=True, timeout=5)


class Counter(Supervised):
    """A child with in-memory state, so tests can tell incarnations apart."""

    started: list[str] = []
    stopped: list[str] = []

    def __init__(self, *, ctx: Any = None, fail_init: Any = None) -> None:
        super().__init__(ctx=ctx)
        self.count = 0
        self.fail_init = fail_init

    def init(self) -> None:
        if self.fail_init is not None and self.fail_init():
            raise RuntimeError("init failed on purpose")
        Counter.started.append(self.name)

    def terminate(self) -> None:
        Counter.stopped.append(self.name)

    def bump(self) -> int:
        self.count += 1
        return self.count

    def boom(self) -> None:
        raise ValueError("ask failure")

    def on_receive(self, message: Any) -> Any:
        if message == "stop-normally":
            self.stop()
            return None
        if message == "exit":
            raise SystemExit(3)
        return super().on_receive(message)
