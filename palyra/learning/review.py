"""Candidate review (spec 6) as pure functions: every change yields a history entry.

Review transitions (anything else is InvalidTransition; ``rejected`` and ``rolled_back``
are final, so a decision cannot be silently overwritten):

    queued        -> needs_review | accepted | rejected | conflicted | auto_applied (system)
    needs_review  -> accepted | rejected | conflicted
    suppressed    -> needs_review | accepted | rejected
    conflicted    -> needs_review | accepted | rejected
    accepted      -> applied | rejected | rolled_back
    applied       -> rolled_back
    auto_applied  -> rolled_back

A candidate suppressed as ``sensitive`` or ``poisoned`` cannot be accepted, applied or
auto-applied.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from palyra.errors import InvalidInput, InvalidTransition
from palyra.ids import new_ulid
from palyra.learning import candidates as c
from palyra.learning.candidates import Candidate, HistoryEntry, Preference
from palyra.learning.config import DEFAULT_CONFIG, LearningConfig
from palyra.learning.extract import injection_suspected
from palyra.validation import non_empty_text

REVIEW_TRANSITIONS: dict[str, frozenset[str]] = {
    c.QUEUED: frozenset({c.NEEDS_REVIEW, c.ACCEPTED, c.REJECTED, c.CONFLICTED, c.AUTO_APPLIED}),
    c.NEEDS_REVIEW: frozenset({c.ACCEPTED, c.REJECTED, c.CONFLICTED}),
    c.SUPPRESSED: frozenset({c.NEEDS_REVIEW, c.ACCEPTED, c.REJECTED}),
    c.CONFLICTED: frozenset({c.NEEDS_REVIEW, c.ACCEPTED, c.REJECTED}),
    c.ACCEPTED: frozenset({c.APPLIED, c.REJECTED, c.ROLLED_BACK}),
    c.APPLIED: frozenset({c.ROLLED_BACK}),
    c.AUTO_APPLIED: frozenset({c.ROLLED_BACK}),
    c.REJECTED: frozenset(),
    c.ROLLED_BACK: frozenset(),
}
_ADOPTING = frozenset({c.ACCEPTED, c.APPLIED, c.AUTO_APPLIED})
# Statuses in which an accepted preference is in force.
PREFERENCE_ACTIVE = _ADOPTING


@dataclasses.dataclass(frozen=True, slots=True)
class ReviewOutcome:
    candidate: Candidate
    history: HistoryEntry


def review(
    candidate: Candidate,
    status: str,
    *,
    reviewer: str,
    now_ms: int,
    summary: str | None = None,
    payload: dict[str, Any] | None = None,
) -> ReviewOutcome:
    """Move ``candidate`` to ``status`` (console aliases accepted) on ``reviewer``'s behalf."""
    target = c.normalize_status(status)
    non_empty_text(reviewer, "reviewer")
    if payload is not None and not isinstance(payload, dict):
        raise InvalidInput("payload must be a JSON object", details={"field": "payload"})
    if target not in REVIEW_TRANSITIONS[candidate.status]:
        raise InvalidTransition(
            f"learning candidate {candidate.candidate_id} cannot move from {candidate.status}"
            f" to {target}",
            details={"from": candidate.status, "to": target},
        )
    if target == c.AUTO_APPLIED and reviewer != c.SYSTEM_REVIEWER:
        raise InvalidTransition("only reflection auto-applies candidates",
                                details={"from": candidate.status, "to": target})
    if target in _ADOPTING and candidate.risk_level in c.BLOCKING_RISKS:
        raise InvalidTransition(
            f"learning candidate {candidate.candidate_id} was blocked as {candidate.risk_level}",
            details={"from": candidate.status, "to": target, "risk_level": candidate.risk_level},
        )
    summary = summary or f"{candidate.status} -> {target} by {reviewer}"
    after = dataclasses.replace(
        candidate, status=target, auto_applied=candidate.auto_applied or target == c.AUTO_APPLIED,
        reviewed_at_unix_ms=now_ms, reviewed_by=reviewer, last_action_summary=summary,
        last_action_payload=payload, updated_at_unix_ms=now_ms,
    )
    entry = HistoryEntry(new_ulid(now_ms), candidate.candidate_id, candidate.status, target,
                         reviewer, now_ms, summary, payload)
    return ReviewOutcome(after, entry)


def accept(candidate: Candidate, *, reviewer: str, now_ms: int,
           summary: str | None = None) -> ReviewOutcome:
    return review(candidate, c.ACCEPTED, reviewer=reviewer, now_ms=now_ms, summary=summary)


def reject(candidate: Candidate, *, reviewer: str, now_ms: int,
           summary: str | None = None) -> ReviewOutcome:
    return review(candidate, c.REJECTED, reviewer=reviewer, now_ms=now_ms, summary=summary)


def created_entry(candidate: Candidate) -> HistoryEntry:
    """The history row recording a candidate's creation."""
    return HistoryEntry(new_ulid(candidate.created_at_unix_ms), candidate.candidate_id, None,
                        candidate.status, c.SYSTEM_REVIEWER, candidate.created_at_unix_ms,
                        f"created by {candidate.provenance.get('rule', 'reflection')}", None)


# --------------------------------------------------------------------------- auto-apply


def auto_apply_eligible(candidate: Candidate, config: LearningConfig = DEFAULT_CONFIG) -> bool:
    """Spec 6: a queued durable fact at ≥ the auto-write threshold, not sensitive or
    poisoned, with a target path, whose text passes the prompt-injection scan."""
    text = str(candidate.content.get("fact", candidate.summary))
    return (
        candidate.candidate_kind == c.DURABLE_FACT
        and candidate.status == c.QUEUED
        and candidate.confidence_bps >= config.durable_fact_auto_write_threshold_bps
        and candidate.risk_level not in c.BLOCKING_RISKS
        and bool(candidate.target_path)
        and not injection_suspected(text)
    )


def auto_apply(candidate: Candidate, *, now_ms: int,
               config: LearningConfig = DEFAULT_CONFIG) -> ReviewOutcome:
    """Mark an eligible candidate ``auto_applied`` by ``system:reflection`` (the caller
    writes the managed memory block first)."""
    if not auto_apply_eligible(candidate, config):
        raise InvalidTransition(
            f"learning candidate {candidate.candidate_id} is not eligible for auto-apply",
            details={"from": candidate.status, "to": c.AUTO_APPLIED},
        )
    return review(candidate, c.AUTO_APPLIED, reviewer=c.SYSTEM_REVIEWER, now_ms=now_ms,
                  summary=f"auto-applied to {candidate.target_path}",
                  payload={"target_path": candidate.target_path})


# --------------------------------------------------------------------------- preferences


def preference_from(candidate: Candidate, *, now_ms: int) -> Preference | None:
    """The preference an adopted preference candidate puts in force, else None."""
    if candidate.candidate_kind != c.PREFERENCE or candidate.status not in PREFERENCE_ACTIVE:
        return None
    key, value = candidate.content.get("key"), candidate.content.get("value")
    if not isinstance(key, str) or not isinstance(value, str):
        return None
    return Preference(new_ulid(now_ms), candidate.owner_principal, candidate.scope_kind,
                      candidate.scope_id, key, value, candidate.confidence, now_ms, now_ms,
                      "active", candidate.candidate_id)
