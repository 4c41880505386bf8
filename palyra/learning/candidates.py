"""Learning candidate records, kinds and review statuses (spec 6)."""

from __future__ import annotations

import dataclasses
from typing import Any

from palyra.errors import InvalidInput
from palyra.learning.config import BPS

# --------------------------------------------------------------------------- kinds

DURABLE_FACT = "durable_fact"
PREFERENCE = "preference"
PROCEDURE = "procedure"
PATCH_SKILL = "patch_skill"
PATCH_PROCEDURE = "patch_procedure"
WRITE_SUPPORT_FILE = "write_support_file"
KINDS = (DURABLE_FACT, PREFERENCE, PROCEDURE, PATCH_SKILL, PATCH_PROCEDURE, WRITE_SUPPORT_FILE)
PATCH_KINDS = frozenset({PATCH_SKILL, PATCH_PROCEDURE, WRITE_SUPPORT_FILE})

# Preference keys (spec 6).
INTERACTION_STYLE = "interaction.style"
WORKFLOW_RULE = "workflow.rule"

# Scopes: preferences follow the principal, everything else its session's workspace.
SCOPE_PROFILE = "profile"
SCOPE_WORKSPACE = "workspace"

# Risk levels; ``sensitive``/``poisoned``/``low_confidence`` suppress a candidate.
RISK_LOW = "low"
RISK_LOW_CONFIDENCE = "low_confidence"
RISK_SENSITIVE = "sensitive"
RISK_POISONED = "poisoned"
BLOCKING_RISKS = frozenset({RISK_SENSITIVE, RISK_POISONED})

# --------------------------------------------------------------------------- statuses

QUEUED = "queued"
NEEDS_REVIEW = "needs_review"
SUPPRESSED = "suppressed"
ACCEPTED = "accepted"
REJECTED = "rejected"
APPLIED = "applied"
AUTO_APPLIED = "auto_applied"
ROLLED_BACK = "rolled_back"
CONFLICTED = "conflicted"
STATUSES = (QUEUED, NEEDS_REVIEW, SUPPRESSED, ACCEPTED, REJECTED, APPLIED, AUTO_APPLIED,
            ROLLED_BACK, CONFLICTED)
STATUS_ALIASES = {
    "proposed": QUEUED,
    "approved": ACCEPTED,
    "denied": REJECTED,
    "deployed": APPLIED,
}
# What the console shows (spec 6: lifecycle labels collapse to six).
LIFECYCLE_LABELS = {
    QUEUED: "proposed",
    NEEDS_REVIEW: "needs-review",
    SUPPRESSED: "needs-review",
    CONFLICTED: "needs-review",
    ACCEPTED: "approved",
    REJECTED: "rejected",
    APPLIED: "deployed",
    AUTO_APPLIED: "deployed",
    ROLLED_BACK: "rolled-back",
}

SYSTEM_REVIEWER = "system:reflection"


def normalize_status(status: str) -> str:
    """Canonical status for a console status (``needs-review``, ``approved``, …)."""
    text = status.strip().lower().replace("-", "_") if isinstance(status, str) else status
    if text in STATUSES:
        return text
    if text in STATUS_ALIASES:
        return STATUS_ALIASES[text]
    raise InvalidInput(f"unknown learning candidate status {status!r}",
                       details={"field": "status"})


def lifecycle_label(status: str) -> str:
    return LIFECYCLE_LABELS[normalize_status(status)]


def bps(confidence: float) -> int:
    """Confidence as integer basis points (compare thresholds without float noise)."""
    return round(confidence * BPS)


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    candidate_id: str
    candidate_kind: str
    session_id: str
    owner_principal: str
    device_id: str
    scope_kind: str
    scope_id: str
    status: str
    confidence: float
    risk_level: str
    title: str
    summary: str
    dedupe_key: str
    content: dict[str, Any]
    provenance: dict[str, Any]
    created_at_unix_ms: int
    updated_at_unix_ms: int
    run_id: str | None = None
    channel: str | None = None
    auto_applied: bool = False
    target_path: str | None = None
    source_task_id: str | None = None
    reviewed_at_unix_ms: int | None = None
    reviewed_by: str | None = None
    last_action_summary: str | None = None
    last_action_payload: dict[str, Any] | None = None

    @property
    def confidence_bps(self) -> int:
        return bps(self.confidence)

    @property
    def lifecycle(self) -> str:
        return LIFECYCLE_LABELS[self.status]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One row of ``learning_candidate_history``."""

    history_id: str
    candidate_id: str
    from_status: str | None
    to_status: str
    actor: str
    created_at_unix_ms: int
    action_summary: str | None = None
    action_payload: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Preference:
    """One row of ``learning_preferences``."""

    preference_id: str
    owner_principal: str
    scope_kind: str
    scope_id: str
    key: str
    value: str
    confidence: float
    created_at_unix_ms: int
    updated_at_unix_ms: int
    status: str = "active"
    source_candidate_id: str | None = None
