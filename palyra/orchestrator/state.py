"""The run state machine (spec 1.2): an exact transition table, nothing implicit."""

from __future__ import annotations

from palyra.errors import InvalidTransition

PENDING, ACCEPTED, IN_PROGRESS, DONE, FAILED, CANCELLED = (
    "pending", "accepted", "in_progress", "done", "failed", "cancelled",
)
STATES = (PENDING, ACCEPTED, IN_PROGRESS, DONE, FAILED, CANCELLED)
TERMINAL = frozenset({DONE, FAILED, CANCELLED})

TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, "accept"): ACCEPTED,
    (ACCEPTED, "start"): IN_PROGRESS,
    (ACCEPTED, "cancel"): CANCELLED,
    (ACCEPTED, "fail"): FAILED,
    (IN_PROGRESS, "complete"): DONE,
    (IN_PROGRESS, "fail"): FAILED,
    (IN_PROGRESS, "cancel"): CANCELLED,
}

# Canonical phases written to run_lifecycle_events.
PHASES = {
    PENDING: "queued", ACCEPTED: "queued", IN_PROGRESS: "running",
    DONE: "completed", FAILED: "failed", CANCELLED: "aborted",
}


def transition(state: str, event: str) -> str:
    """The next state, or InvalidTransition naming the illegal move."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(
            f"invalid run state transition from {state} via {event}",
            details={"from": state, "event": event},
        ) from None


def is_terminal(state: str) -> bool:
    return state in TERMINAL
