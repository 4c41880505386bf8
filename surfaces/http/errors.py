"""One error envelope and one table from error class to HTTP status.

Every error the HTTP surface returns is ``{"error": {"code", "message", "details"}}``
(``PalyraError.envelope``). The status comes from :data:`STATUS_BY_ERROR`, looked up
along the exception's MRO so a subclass inherits its parent's status unless it has its
own row. Anything not in the table (and every non-Palyra exception) becomes a 500 with
a generic message and an ``error_id`` that is also logged with the traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import current_app, has_app_context
from werkzeug.exceptions import HTTPException

from palyra.errors import (
    ActorUnavailable,
    AlreadyExists,
    ApprovalRequired,
    BudgetExceeded,
    Conflict,
    IdentityMismatch,
    InvalidInput,
    InvalidTransition,
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
from palyra.ids import new_ulid

log = logging.getLogger("palyra.http")

MAX_BODY_BYTES = 64 * 1024  # spec section 0: HTTP request bodies are capped at 64 KiB


class RunNotCompleted(PalyraError):
    """A synchronous caller (``/v1/chat/completions``) waited for a run that failed or
    was cancelled; ``details`` carries the run id, its state and its last error."""

    code = "run_not_completed"


STATUS_BY_ERROR: dict[type[PalyraError], int] = {
    InvalidInput: 400,
    PayloadTooLarge: 413,
    NotFound: 404,
    AlreadyExists: 409,
    Conflict: 409,
    IdentityMismatch: 409,
    InvalidTransition: 409,
    PermissionDenied: 403,
    ApprovalRequired: 403,
    Unauthenticated: 401,
    # 402, not 409: a spending limit is not a state conflict the client can resolve by
    # re-reading, and OpenAI-compatible clients (this surface serves /v1) retry 409 and
    # 429 automatically, which would only burn the same budget check again. 402 is never
    # retried, and the envelope's code says exactly which limit applied.
    BudgetExceeded: 402,
    RateLimited: 429,
    # The journal hit its configured max_events (or a page cannot hold one event): the
    # server is out of room, retrying does not help.
    ResourceExhausted: 507,
    ProviderError: 502,
    RunNotCompleted: 502,
    ActorUnavailable: 503,
    RuntimeStopped: 503,
    Timeout: 504,
}

# Werkzeug's own errors (routing, body size, malformed requests) get wire codes too.
CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    408: "deadline_exceeded",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def status_for(exc: PalyraError) -> int:
    for cls in type(exc).__mro__:
        status = STATUS_BY_ERROR.get(cls)  # type: ignore[arg-type]
        if status is not None:
            return status
    return 500


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def from_exception(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, envelope) for any exception; unexpected ones are logged, not exposed."""
    if isinstance(exc, PalyraError):
        status = status_for(exc)
        if status != 500:
            return status, exc.envelope()
    elif isinstance(exc, HTTPException):
        status = exc.code or 500
        if status < 500:
            code = CODE_BY_HTTP_STATUS.get(status, "invalid_argument")
            details = {"limit_bytes": _body_limit()} if status == 413 else None
            return status, envelope(code, _http_message(status, exc), details)
    error_id = new_ulid()
    log.error("internal error %s: %r", error_id, exc, exc_info=exc)
    return 500, envelope("internal", "internal error", {"error_id": error_id})


def _body_limit() -> int:
    """The app's configured body cap (``http.max_body_bytes``), else the default."""
    if not has_app_context():
        return MAX_BODY_BYTES
    return int(current_app.config.get("MAX_CONTENT_LENGTH") or MAX_BODY_BYTES)


def _http_message(status: int, exc: HTTPException) -> str:
    if status == 404:
        return "no such route"
    if status == 405:
        return "method not allowed on this route"
    if status == 413:
        return "request body too large"
    return (exc.description or exc.name or "bad request").strip()
