"""Palyra: a self-hosted agent daemon and embeddable runtime.

The public surface is what this module exports; everything else is internal.
"""

from palyra.config import Config, SupervisionConfig
from palyra.errors import (
    ActorUnavailable,
    AlreadyExists,
    ApprovalRequired,
    BudgetExceeded,
    ChainBroken,
    Conflict,
    IdentityMismatch,
    InvalidInput,
    InvalidTransition,
    JournalError,
    NotFound,
    PalyraError,
    PayloadTooLarge,
    PermissionDenied,
    ProviderError,
    RateLimited,
    ResourceExhausted,
    RuntimeStopped,
    Timeout,
    Unauthenticated,
)
from palyra.journal.store import AppendResult, ChainReport, JournalSettings
from palyra.runtime import Runtime, StopReport

__all__ = [
    "ActorUnavailable", "AlreadyExists", "AppendResult", "ApprovalRequired", "BudgetExceeded",
    "ChainBroken", "ChainReport", "Config", "Conflict", "IdentityMismatch", "InvalidInput",
    "InvalidTransition", "JournalError", "JournalSettings", "NotFound", "PalyraError",
    "PayloadTooLarge", "PermissionDenied", "ProviderError", "RateLimited", "ResourceExhausted",
    "Runtime", "RuntimeStopped", "StopReport", "SupervisionConfig", "Timeout", "Unauthenticated",
]
