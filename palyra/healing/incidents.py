"""Runtime incidents (spec 5): records with stable ids, open/update/resolve as pure steps.

An incident is identified by (domain, dedupe key): its id is ``incident_`` + the first 16
hex digits of SHA-256("incident:<domain>:<dedupe_key>"), so observing the same problem
again updates (or re-opens) the same incident. States: ``open`` -> ``remediating`` (an
automatic remediation is under way; upstream never entered it, quirk 13.12) ->
``resolved``; a resolved incident observed again re-opens with its ``created_at`` kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from palyra.errors import InvalidInput, InvalidTransition
from palyra.validation import non_empty_text

WATCHDOG = "watchdog"
APPROVAL = "approval"
ACTOR = "actor"
PROVIDER = "provider"
BROWSER = "browser"
ARTIFACT = "artifact"
DOMAINS = (WATCHDOG, APPROVAL, ACTOR, PROVIDER, BROWSER, ARTIFACT)

SEVERITIES = ("low", "medium", "high", "critical")

OPEN = "open"
REMEDIATING = "remediating"
RESOLVED = "resolved"
STATES = (OPEN, REMEDIATING, RESOLVED)

# What an incident is about (drives the remediation plan).
STALE_RUN = "stale_run"
STALE_BACKGROUND_TASK = "stale_background_task"
STALE_APPROVAL = "stale_approval"
ACTOR_RESTART_LOOP = "actor_restart_loop"
CIRCUIT_OPEN = "circuit_open"
CRASH_TOOL_IN_FLIGHT = "crash_tool_in_flight"
CRASH_RESUME_EXHAUSTED = "crash_resume_exhausted"


def incident_id(domain: str, dedupe_key: str) -> str:
    digest = hashlib.sha256(f"incident:{domain}:{dedupe_key}".encode()).hexdigest()
    return f"incident_{digest[:16]}"


@dataclasses.dataclass(frozen=True, slots=True)
class RemediationDescriptor:
    remediation_id: str
    label: str
    description: str
    risk_level: str  # low | medium | high
    blast_radius: str  # session | workspace | global
    requires_approval: bool
    auto_executable: bool


@dataclasses.dataclass(frozen=True, slots=True)
class IncidentObservation:
    """One sighting of a problem; ``facts`` carry what a remediation plan needs."""

    domain: str
    dedupe_key: str
    severity: str
    summary: str
    kind: str = ""
    detail: str = ""
    subject_kind: str | None = None
    subject_id: str | None = None
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    remediation: RemediationDescriptor | None = None

    def __post_init__(self) -> None:
        if self.domain not in DOMAINS:
            raise InvalidInput(f"unknown incident domain {self.domain!r}",
                               details={"field": "domain"})
        if self.severity not in SEVERITIES:
            raise InvalidInput(f"unknown incident severity {self.severity!r}",
                               details={"field": "severity"})
        non_empty_text(self.dedupe_key, "dedupe_key")

    @property
    def incident_id(self) -> str:
        return incident_id(self.domain, self.dedupe_key)


@dataclasses.dataclass(frozen=True, slots=True)
class RuntimeIncidentRecord:
    incident_id: str
    domain: str
    severity: str
    state: str
    summary: str
    dedupe_key: str
    created_at_unix_ms: int
    updated_at_unix_ms: int
    kind: str = ""
    detail: str = ""
    resolved_at_unix_ms: int | None = None
    subject_kind: str | None = None
    subject_id: str | None = None
    facts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    remediation: RemediationDescriptor | None = None
    occurrences: int = 1

    @property
    def active(self) -> bool:
        return self.state != RESOLVED

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["facts"] = dict(self.facts)
        return out


@dataclasses.dataclass(frozen=True, slots=True)
class IncidentHistoryEntry:
    incident_id: str
    domain: str
    state: str
    summary: str
    recorded_at_unix_ms: int


def history_entry(incident: RuntimeIncidentRecord) -> IncidentHistoryEntry:
    return IncidentHistoryEntry(incident.incident_id, incident.domain, incident.state,
                                incident.summary, incident.updated_at_unix_ms)


def open_or_update(existing: RuntimeIncidentRecord | None, observation: IncidentObservation,
                   *, now_ms: int) -> RuntimeIncidentRecord:
    """Open a new incident, refresh an active one (state kept), or re-open a resolved one."""
    iid = observation.incident_id
    if existing is None:
        return RuntimeIncidentRecord(
            incident_id=iid, domain=observation.domain, severity=observation.severity,
            state=OPEN, summary=observation.summary, dedupe_key=observation.dedupe_key,
            created_at_unix_ms=now_ms, updated_at_unix_ms=now_ms, kind=observation.kind,
            detail=observation.detail, subject_kind=observation.subject_kind,
            subject_id=observation.subject_id, facts=dict(observation.facts),
            remediation=observation.remediation,
        )
    if existing.incident_id != iid:
        raise InvalidInput(
            f"observation {iid} does not belong to incident {existing.incident_id}",
            details={"field": "dedupe_key"},
        )
    reopened = existing.state == RESOLVED
    return dataclasses.replace(
        existing,
        state=OPEN if reopened else existing.state,
        resolved_at_unix_ms=None,
        occurrences=existing.occurrences + 1 if reopened else existing.occurrences,
        severity=observation.severity,
        summary=observation.summary,
        detail=observation.detail,
        kind=observation.kind or existing.kind,
        subject_kind=observation.subject_kind or existing.subject_kind,
        subject_id=observation.subject_id or existing.subject_id,
        facts=dict(observation.facts),
        remediation=observation.remediation or existing.remediation,
        updated_at_unix_ms=now_ms,
    )


def resolve(incident: RuntimeIncidentRecord, *, now_ms: int,
            detail: str | None = None) -> RuntimeIncidentRecord:
    """Mark resolved; resolving a resolved incident changes nothing."""
    if incident.state == RESOLVED:
        return incident
    return dataclasses.replace(incident, state=RESOLVED, resolved_at_unix_ms=now_ms,
                               updated_at_unix_ms=now_ms,
                               detail=detail if detail is not None else incident.detail)


def begin_remediation(incident: RuntimeIncidentRecord, *, now_ms: int) -> RuntimeIncidentRecord:
    if incident.state == RESOLVED:
        raise InvalidTransition(f"incident {incident.incident_id} is resolved",
                                details={"from": incident.state, "to": REMEDIATING})
    if incident.state == REMEDIATING:
        return incident
    return dataclasses.replace(incident, state=REMEDIATING, updated_at_unix_ms=now_ms)


def reopen(incident: RuntimeIncidentRecord, *, now_ms: int,
           detail: str | None = None) -> RuntimeIncidentRecord:
    """Back to ``open`` after a failed remediation."""
    if incident.state != REMEDIATING:
        raise InvalidTransition(f"incident {incident.incident_id} is not remediating",
                                details={"from": incident.state, "to": OPEN})
    return dataclasses.replace(incident, state=OPEN, updated_at_unix_ms=now_ms,
                               detail=detail if detail is not None else incident.detail)


# --------------------------------------------------------------------------- signals


@dataclasses.dataclass(frozen=True, slots=True)
class Signal:
    """A detector's verdict: observe a problem, or resolve the incident of a dedupe key."""

    observation: IncidentObservation | None = None
    resolve_domain: str | None = None
    resolve_key: str | None = None

    @classmethod
    def observe(cls, observation: IncidentObservation) -> Signal:
        return cls(observation=observation)

    @classmethod
    def resolved(cls, domain: str, dedupe_key: str) -> Signal:
        return cls(resolve_domain=domain, resolve_key=dedupe_key)

    @property
    def incident_id(self) -> str:
        if self.observation is not None:
            return self.observation.incident_id
        assert self.resolve_domain is not None and self.resolve_key is not None
        return incident_id(self.resolve_domain, self.resolve_key)


def apply_signal(existing: RuntimeIncidentRecord | None, signal: Signal,
                 *, now_ms: int) -> RuntimeIncidentRecord | None:
    """The incident after ``signal`` (None: nothing to store)."""
    if signal.observation is not None:
        return open_or_update(existing, signal.observation, now_ms=now_ms)
    if existing is None or existing.state == RESOLVED:
        return None
    return resolve(existing, now_ms=now_ms)
