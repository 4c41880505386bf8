"""The services every actor of a runtime shares (passed down the tree in its context)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from palyra.config import Config
from supervisors.services import Services


@dataclasses.dataclass
class RuntimeServices(Services):
    state_dir: Path = Path(".")
    config: Config = dataclasses.field(default_factory=Config)
    journal: Any = None  # actors.journal.JournalClient, set by the runtime
