"""What the supervisors know about every actor, for ``rt.actors()`` and diagnostics."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any


@dataclasses.dataclass
class ActorInfo:
    name: str
    path: str
    incarnation: int = 0
    restarts: int = 0
    hung: int = 0
    last_restart_reason: str | None = None
    last_restart_ms: int | None = None
    ref: Any = None  # current pykka ActorRef, or None while down

    def snapshot(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "alive": bool(self.ref is not None and self.ref.is_alive()),
            "incarnation": self.incarnation,
            "restarts": self.restarts,
            "hung": self.hung,
            "last_restart_reason": self.last_restart_reason,
            "last_restart_ms": self.last_restart_ms,
        }


class ActorTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, ActorInfo] = {}
        self.leaked: list[str] = []

    def row(self, name: str, path: str) -> ActorInfo:
        with self._lock:
            info = self._rows.get(name)
            if info is None:
                info = self._rows[name] = ActorInfo(name=name, path=path)
            return info

    def update(self, name: str, **fields: Any) -> None:
        with self._lock:
            info = self._rows.get(name)
            if info is not None:
                for key, value in fields.items():
                    setattr(info, key, value)

    def forget(self, name: str) -> None:
        with self._lock:
            self._rows.pop(name, None)

    def get(self, name: str) -> ActorInfo | None:
        with self._lock:
            return self._rows.get(name)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [info.snapshot() for info in self._rows.values()]

    def note_leak(self, what: str) -> None:
        with self._lock:
            self.leaked.append(what)
