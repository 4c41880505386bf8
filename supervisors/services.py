"""The shared services a supervision tree needs; the runtime extends them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from palyra.clock import SYSTEM_CLOCK, Clock
from supervisors.names import Names
from supervisors.spec import SupervisionEvent
from supervisors.table import ActorTable
from supervisors.timers import Timers


def _discard(_: SupervisionEvent) -> None:
    return None


@dataclasses.dataclass
class Services:
    names: Names = dataclasses.field(default_factory=Names)
    table: ActorTable = dataclasses.field(default_factory=ActorTable)
    timers: Timers = dataclasses.field(default_factory=Timers)
    clock: Clock = SYSTEM_CLOCK
    emit: Callable[[SupervisionEvent], None] = _discard
