"""Work heartbeats (spec 5): the last sign of life of a run, background task or approval.

Runs beat on accept and every inbound message, tasks on every queue poll; approvals beat
once when requested (their "age" is how long they have been pending). A heartbeat is
cleared when its subject reaches a terminal state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from palyra.errors import InvalidInput
from palyra.validation import non_empty_text

RUN = "run"
BACKGROUND_TASK = "background_task"
APPROVAL = "approval"
DOMAINS = (RUN, BACKGROUND_TASK, APPROVAL)

HEALING_LOOP_INTERVAL_MS = 15_000
STALE_AFTER_MS = 120_000
APPROVAL_STALE_AFTER_MS = 600_000


def heartbeat_key(domain: str, subject_id: str) -> str:
    return f"{domain}:{subject_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class WorkHeartbeatRecord:
    domain: str
    subject_id: str
    last_beat_ms: int
    first_beat_ms: int
    summary: str = ""
    session_id: str | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise InvalidInput(f"unknown heartbeat domain {self.domain!r}",
                               details={"field": "domain"})
        non_empty_text(self.subject_id, "subject_id")

    @property
    def heartbeat_key(self) -> str:
        return heartbeat_key(self.domain, self.subject_id)

    def age_ms(self, now_ms: int) -> int:
        return now_ms - self.last_beat_ms


def beat(
    domain: str,
    subject_id: str,
    *,
    now_ms: int,
    summary: str = "",
    session_id: str | None = None,
    existing: WorkHeartbeatRecord | None = None,
) -> WorkHeartbeatRecord:
    """Record a sign of life (an upsert: ``first_beat_ms`` survives, time never runs back)."""
    if existing is not None and existing.heartbeat_key != heartbeat_key(domain, subject_id):
        raise InvalidInput("existing heartbeat belongs to another subject",
                           details={"field": "subject_id"})
    if existing is None:
        return WorkHeartbeatRecord(domain, subject_id, now_ms, now_ms, summary, session_id)
    return WorkHeartbeatRecord(
        domain, subject_id, max(now_ms, existing.last_beat_ms), existing.first_beat_ms,
        summary or existing.summary, session_id or existing.session_id,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class Thresholds:
    loop_interval_ms: int = HEALING_LOOP_INTERVAL_MS
    run_ms: int = STALE_AFTER_MS
    background_task_ms: int = STALE_AFTER_MS
    approval_ms: int = APPROVAL_STALE_AFTER_MS

    def for_domain(self, domain: str) -> int:
        return {RUN: self.run_ms, BACKGROUND_TASK: self.background_task_ms,
                APPROVAL: self.approval_ms}[domain]


DEFAULT_THRESHOLDS = Thresholds()


def is_stale(heartbeat: WorkHeartbeatRecord, now_ms: int,
             thresholds: Thresholds = DEFAULT_THRESHOLDS) -> bool:
    """Silent for strictly longer than its domain's threshold."""
    return heartbeat.age_ms(now_ms) > thresholds.for_domain(heartbeat.domain)


def stale(heartbeats: Iterable[WorkHeartbeatRecord], now_ms: int,
          thresholds: Thresholds = DEFAULT_THRESHOLDS) -> list[WorkHeartbeatRecord]:
    """The stale heartbeats, longest-silent first."""
    found = [h for h in heartbeats if is_stale(h, now_ms, thresholds)]
    return sorted(found, key=lambda h: (h.last_beat_ms, h.heartbeat_key))
