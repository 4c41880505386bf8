"""Child specifications and the messages supervisors exchange."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from supervisors.supervised import Supervised

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
ExitReason = Literal["normal", "crash", "killed", "hung", "init_failed"]


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """How a supervisor starts, probes, restarts and stops one child.

    ``probe_interval=None`` disables liveness probing (supervisors of supervisors
    rely on their children's own probes). ``heartbeat_timeout`` is the limit for
    the child's *work units* (runs, tasks), read by self-healing, not by the
    supervisor.
    """

    name: str
    actor: type[Supervised]
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    restart: Restart = "permanent"
    shutdown_timeout: float = 5.0
    start_timeout: float = 10.0
    probe_interval: float | None = 1.0
    probe_timeout: float | None = None  # default: half the interval
    heartbeat_timeout: float | None = None

    @property
    def effective_probe_timeout(self) -> float | None:
        if self.probe_interval is None:
            return None
        return self.probe_timeout if self.probe_timeout is not None else self.probe_interval / 2


@dataclasses.dataclass(frozen=True)
class ChildExit:
    """An incarnation reports how it ended (sent to its supervisor by tell)."""

    name: str
    urn: str
    reason: ExitReason
    error: BaseException | None = None


@dataclasses.dataclass(frozen=True)
class ChildContext:
    """What a supervised actor learns about its place in the tree."""

    name: str
    path: str
    link: Callable[[ChildExit], None] | None
    services: Any = None  # the runtime's shared services (names, clock, config, ...)


@dataclasses.dataclass(frozen=True)
class SupervisionEvent:
    """A restart, escalation, hung incarnation or leaked thread, for the journal."""

    kind: str  # actor.restarted | actor.escalated | actor.hung | actor.leaked | actor.exited
    actor: str
    path: str
    reason: str
    incarnation: int
    restarts: int
    at_ms: int
