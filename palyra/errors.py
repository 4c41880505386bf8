"""The one exception hierarchy of Palyra.

Every error a caller can act on is a subclass of :class:`PalyraError`. Each class
carries a stable ``code`` (the wire name used in the HTTP/gRPC error envelope) so the
surfaces map exceptions to status codes in one table each.
"""

from __future__ import annotations

from typing import Any


class PalyraError(Exception):
    """Root of every error raised by Palyra on purpose."""

    code = "internal"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}

    def envelope(self) -> dict[str, Any]:
        """The JSON error envelope shared by every surface."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class InvalidInput(PalyraError):
    """The caller sent something malformed: bad field, bad type, out of range."""

    code = "invalid_argument"


class PayloadTooLarge(InvalidInput):
    code = "payload_too_large"


class NotFound(PalyraError):
    code = "not_found"


class AlreadyExists(PalyraError):
    code = "already_exists"


class Conflict(PalyraError):
    """The request is well-formed but contradicts current state (e.g. double decision)."""

    code = "failed_precondition"


class IdentityMismatch(Conflict):
    """A session is immutable per (principal, device, channel); the caller's differs."""

    code = "session_identity_mismatch"


class InvalidTransition(Conflict):
    code = "invalid_state_transition"


class PermissionDenied(PalyraError):
    code = "permission_denied"


class Unauthenticated(PalyraError):
    code = "unauthenticated"


class InvalidApiToken(Unauthenticated):
    """An API token that is unknown, revoked or expired (spec 11). One code for all
    three: the caller learns nothing about which tokens exist or existed."""

    code = "invalid_api_token"


class MissingScope(PermissionDenied):
    """A valid API token without the scope the request needs; ``details.scope`` names it."""

    code = "missing_scope"


class AdminTokenRequired(PermissionDenied):
    """A valid API token on a route only the admin token may use."""

    code = "admin_token_required"


class BudgetExceeded(PalyraError):
    code = "budget_exceeded"


class ApprovalRequired(PalyraError):
    code = "approval_required"


class RateLimited(PalyraError):
    code = "rate_limited"


class ResourceExhausted(PalyraError):
    code = "resource_exhausted"


class ActorUnavailable(PalyraError):
    """An actor could not be reached through its name within the retry window."""

    code = "unavailable"


class Timeout(PalyraError):
    code = "deadline_exceeded"


class JournalError(PalyraError):
    code = "journal_error"


class Superseded(JournalError):
    """A journal writer that was replaced refused a batch: nothing of it was written."""

    code = "journal_superseded"


class ChainBroken(JournalError):
    code = "chain_broken"


class ProviderError(PalyraError):
    """A model provider call failed; ``details`` holds the provider error envelope."""

    code = "provider_error"


class RuntimeStopped(PalyraError):
    code = "runtime_stopped"


class SecretLeak(PalyraError):
    """An export (a support bundle) still held a known secret after redaction, so it
    was not written. The message and ``details`` name the member, never the secret."""

    code = "secret_leak"
