"""Failure classes and the ring of recent failures (spec section 11).

Every failure an operator sees is one of three classes, so triage starts with "whose
move is it": ``config_failure`` (fix the configuration or credentials),
``upstream_provider_failure`` (the model provider misbehaved; retry, wait or fail
over) and ``product_failure`` (Palyra itself; report it).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping
from typing import Any

PRODUCT_FAILURE = "product_failure"
CONFIG_FAILURE = "config_failure"
UPSTREAM_PROVIDER_FAILURE = "upstream_provider_failure"
FAILURE_CLASSES = (PRODUCT_FAILURE, CONFIG_FAILURE, UPSTREAM_PROVIDER_FAILURE)

RECENT_FAILURES = 24
CORRELATION_KEYS = ("session_id", "run_id", "approval_id", "task_id", "incident_id")
MAX_MESSAGE_CHARS = 512

# Provider error kinds and failure classes an operator fixes in configuration.
_CONFIG_KINDS = frozenset({"auth", "missing_configuration", "unsupported_feature"})
_CONFIG_PROVIDER_CLASSES = frozenset({"auth_invalid", "auth_expired", "permission_denied",
                                      "quota_exceeded", "context_window_exceeded"})
# Run termination reasons that stop on the operator's own limits.
_CONFIG_TERMINATIONS = frozenset({"budget_blocked"})


def classify_provider_error(envelope: Mapping[str, Any] | None) -> str:
    """The failure class of a provider error envelope (``ProviderError.details``)."""
    envelope = envelope or {}
    if (envelope.get("kind") in _CONFIG_KINDS
            or envelope.get("failure_class") in _CONFIG_PROVIDER_CLASSES):
        return CONFIG_FAILURE
    return UPSTREAM_PROVIDER_FAILURE


def classify_run_failure(termination_reason: str | None,
                         provider_envelope: Mapping[str, Any] | None = None) -> str:
    """The failure class of a failed run, from how it terminated."""
    if termination_reason == "provider_error":
        return classify_provider_error(provider_envelope)
    if termination_reason in _CONFIG_TERMINATIONS:
        return CONFIG_FAILURE
    return PRODUCT_FAILURE


@dataclasses.dataclass(frozen=True, slots=True)
class Failure:
    operation: str  # what failed: run, journal.write, background.task, ...
    failure_class: str
    message: str
    observed_at_unix_ms: int
    correlation: Mapping[str, str]

    @classmethod
    def of(cls, operation: str, failure_class: str, message: str | None, now_ms: int,
           **correlation: str | None) -> Failure:
        if failure_class not in FAILURE_CLASSES:
            raise ValueError(f"unknown failure class {failure_class!r}")
        return cls(operation, failure_class, (message or "")[:MAX_MESSAGE_CHARS], now_ms,
                   {k: v for k, v in correlation.items() if k in CORRELATION_KEYS and v})

    def as_dict(self) -> dict[str, Any]:
        return {"operation": self.operation, "failure_class": self.failure_class,
                "message": self.message, "observed_at_unix_ms": self.observed_at_unix_ms,
                "correlation": dict(self.correlation)}


class FailureRing:
    """The last ``size`` failures, newest last, with a total count per class."""

    def __init__(self, size: int = RECENT_FAILURES) -> None:
        self._ring: collections.deque[Failure] = collections.deque(maxlen=size)
        self.by_class = dict.fromkeys(FAILURE_CLASSES, 0)

    def add(self, failure: Failure) -> None:
        self._ring.append(failure)
        self.by_class[failure.failure_class] += 1

    def recent(self) -> list[Failure]:
        return list(self._ring)
