"""Fault injection for chaos tests: kill, crash and hang actors by name."""

from __future__ import annotations

from typing import Any

import pykka

from palyra.errors import NotFound
from supervisors.names import Names
from supervisors.supervised import Crash, Hang, Kill, send_first


class Chaos:
    def __init__(self, names: Names) -> None:
        self._names = names

    def _ref(self, name: str) -> pykka.ActorRef[Any]:
        ref = self._names.get(name)
        if ref is None or not ref.is_alive():
            raise NotFound(f"no running actor named {name!r}", details={"actor": name})
        return ref

    def kill(self, name: str, *, wait: float = 1.0) -> bool:
        """Abrupt stop at the next message boundary; queued tells are dropped and
        queued asks fail as never handled (so name-addressed callers retry).
        Returns True once the incarnation has stopped (within ``wait``)."""
        ref = self._ref(name)
        send_first(ref, Kill())
        return ref.actor_stopped.wait(wait)

    def crash(self, name: str) -> None:
        """Raise an exception inside the actor, in mailbox order."""
        self._ref(name).tell(Crash())

    def hang(self, name: str, seconds: float, *, wait: float = 0.0) -> bool:
        """Block the actor's thread for ``seconds`` at the next message boundary.

        With ``wait`` > 0, return once the thread is stuck (True) or ``wait`` passed (False).
        """
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        hang = Hang(seconds)
        send_first(self._ref(name), hang)
        return hang.entered.wait(wait) if wait > 0 else False
