"""Runtime configuration records (the TOML loader and env overrides build these)."""

from __future__ import annotations

import dataclasses
from typing import Any

from palyra.errors import InvalidInput
from palyra.journal.store import JournalSettings


@dataclasses.dataclass(frozen=True)
class SupervisionConfig:
    probe_interval: float = 1.0
    probe_timeout: float | None = None  # default: half the interval
    max_restarts: int = 3
    max_seconds: float = 5.0
    shutdown_timeout: float = 5.0
    address_retry_for: float = 2.0

    def __post_init__(self) -> None:
        if self.probe_interval <= 0 or self.max_seconds <= 0 or self.shutdown_timeout <= 0:
            raise InvalidInput("supervision intervals must be positive")
        if self.max_restarts < 0:
            raise InvalidInput("supervision.max_restarts must be >= 0")


@dataclasses.dataclass(frozen=True)
class Config:
    journal: JournalSettings = JournalSettings()
    supervision: SupervisionConfig = SupervisionConfig()

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None) -> Config:
        """Build from plain dicts, naming the offending key on error."""
        data = dict(data or {})
        sections: dict[str, Any] = {}
        for name, section_type in (("journal", JournalSettings), ("supervision", SupervisionConfig)):
            raw = data.pop(name, None)
            if raw is None:
                continue
            if isinstance(raw, section_type):
                sections[name] = raw
                continue
            if not isinstance(raw, dict):
                raise InvalidInput(f"config section {name!r} must be a table", details={"key": name})
            known = {f.name for f in dataclasses.fields(section_type)}
            unknown = sorted(set(raw) - known)
            if unknown:
                raise InvalidInput(
                    f"unknown config key {name}.{unknown[0]}", details={"key": f"{name}.{unknown[0]}"}
                )
            try:
                sections[name] = section_type(**raw)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"invalid config section {name!r}: {exc}", details={"key": name}) from exc
        if data:
            key = sorted(data)[0]
            raise InvalidInput(f"unknown config key {key}", details={"key": key})
        return cls(**sections)
