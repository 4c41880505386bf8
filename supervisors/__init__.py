"""Supervision trees on pykka: child specs, strategies, liveness, names, chaos."""

from supervisors.chaos import Chaos
from supervisors.names import Address, Names
from supervisors.services import Services
from supervisors.spec import ChildContext, ChildExit, ChildSpec, SupervisionEvent
from supervisors.supervised import Supervised
from supervisors.supervisor import (
    ChildStartFailed,
    IntensityExceeded,
    LaunchChild,
    StartChild,
    StopChild,
    Supervisor,
)
from supervisors.table import ActorTable
from supervisors.timers import Timers
from supervisors.tree import RootHandle, start_root, supervisor_spec

__all__ = [
    "ActorTable", "Address", "Chaos", "ChildContext", "ChildExit", "ChildSpec", "ChildStartFailed",
    "IntensityExceeded", "LaunchChild", "Names", "RootHandle", "Services", "StartChild", "StopChild",
    "Supervised", "SupervisionEvent", "Supervisor", "Timers", "start_root", "supervisor_spec",
]
