"""The services every actor of a runtime shares (passed down the tree in its context)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from palyra.config import Config
from palyra.observability import RuntimeCounters
from palyra.orchestrator.approvals import ApprovalCache
from supervisors.services import Services


@dataclasses.dataclass
class RuntimeServices(Services):
    state_dir: Path = Path(".")
    config: Config = dataclasses.field(default_factory=Config)
    journal: Any = None  # actors.journal.JournalClient
    hub: Any = None  # actors.hub.EventHub
    workers: Any = None  # actors.workers.WorkerPool
    provider: Any = None  # palyra.providers.ModelProvider
    tools: Any = None  # palyra.tools.ToolRegistry
    policy: Any = None  # actors.policy.PolicyHolder
    governance: Any = None  # actors.budget.GovernanceHolder
    readers: Any = None  # actors.readers.ThreadReaders
    counters: RuntimeCounters = dataclasses.field(default_factory=RuntimeCounters)
    approval_cache: ApprovalCache = dataclasses.field(default_factory=ApprovalCache)
    # subject id -> (domain, last beat ms, first beat ms, session id): runs and background
    # tasks beat here; self-healing persists and judges them
    heartbeats: dict[str, tuple[str, int, int, str | None]] = dataclasses.field(default_factory=dict)
