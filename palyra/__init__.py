"""Palyra: a self-hosted agent daemon and embeddable runtime.

The public surface is what this module exports; everything else is internal.
``Runtime`` is imported lazily: it assembles the actor layers, which themselves import
the pure core from this package, so an eager import would be circular.
"""

from typing import TYPE_CHECKING, Any

from palyra.config import Config, SupervisionConfig
from palyra.errors import (
    ActorUnavailable,
    AdminTokenRequired,
    AlreadyExists,
    ApprovalRequired,
    BudgetExceeded,
    ChainBroken,
    Conflict,
    IdentityMismatch,
    InvalidApiToken,
    InvalidInput,
    InvalidTransition,
    JournalError,
    MissingScope,
    NotFound,
    PalyraError,
    PayloadTooLarge,
    PermissionDenied,
    ProviderError,
    RateLimited,
    ResourceExhausted,
    RuntimeStopped,
    SecretLeak,
    Timeout,
    Unauthenticated,
)
from palyra.journal.store import AppendResult, ChainReport, JournalSettings

__all__ = [
    "ActorUnavailable", "AdminTokenRequired", "AlreadyExists", "AppendResult", "ApprovalRequired", "BudgetExceeded",
    "ChainBroken", "ChainReport", "Config", "Conflict", "IdentityMismatch", "InvalidApiToken", "InvalidInput",
    "InvalidTransition", "JournalError", "JournalSettings", "MissingScope", "NotFound", "PalyraError",
    "PayloadTooLarge", "PermissionDenied", "ProviderError", "RateLimited", "ResourceExhausted",
    "Runtime", "RuntimeStopped", "SecretLeak", "StopReport", "SupervisionConfig", "Timeout", "Unauthenticated",
]


if TYPE_CHECKING:
    from palyra.runtime import Runtime, StopReport


def __getattr__(name: str) -> Any:
    if name in ("Runtime", "StopReport"):
        from palyra import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'palyra' has no attribute {name!r}")
