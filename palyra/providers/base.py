"""The provider contract: request/response records, the ``ModelProvider`` protocol and
the failure vocabulary (spec 1.8).

Everything here is pure: plain frozen records, lookup tables and string sanitising.
Providers do I/O; this module decides what a failure *means* (its class, whether it is
worth retrying on the same provider, whether failing over could help) and how it is
reported without leaking credentials.

Error envelope (``ProviderError.details``)::

    {
      "kind": "rate_limit",              # ErrorKind
      "failure_class": "rate_limited",   # ProviderFailureClass or None
      "severity": "recoverable",         # recoverable | degraded | fatal
      "retryability": "retry_after",     # not_retryable | retry_same_provider |
                                         #   retry_after | refresh_credential
      "failover_eligible": true,
      "suggested_action": "retry",       # SuggestedAction
      "redacted_message": "HTTP 429: slow down",
      "provider_id": "openai-primary",   # or None
      "http_status": 429,                # or None
      "retry_after_ms": 1000,            # or None
    }

Providers may add ``retry_count`` and ``attempts`` next to these keys.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import orjson

from palyra.errors import InvalidInput, ProviderError

ROLES = frozenset({"system", "user", "assistant", "tool"})


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool invocation proposed by the model."""

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``tool`` messages answer the assistant's ``tool_calls`` by id."""

    role: str
    content: str
    tool_call_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidInput(f"message role must be one of {sorted(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise InvalidInput("message content must be a string")
        if not isinstance(self.tool_calls, tuple):
            object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidInput("a tool message needs tool_call_id")


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool offered to the model; ``parameters`` is a JSON Schema object."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object"})


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    model_override: str | None = None
    json_mode: bool = False
    stream: bool = False
    # The most completion tokens the caller will pay for: budgets reserve prompt +
    # max_tokens, so a provider that honours it can never overspend a reservation.
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.messages, tuple):
            object.__setattr__(self, "messages", tuple(self.messages))
        if not isinstance(self.tools, tuple):
            object.__setattr__(self, "tools", tuple(self.tools))


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> Usage:
        return cls(prompt_tokens, completion_tokens, prompt_tokens + completion_tokens)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try of a provider call, as reported in ``ProviderResponse.attempts``."""

    index: int
    outcome: str  # "ok" | "error" | "cancelled"
    duration_ms: int
    http_status: int | None = None
    error_kind: str | None = None
    backoff_ms: int = 0  # how long we waited before the next attempt

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "outcome": self.outcome,
            "duration_ms": self.duration_ms,
            "http_status": self.http_status,
            "error_kind": self.error_kind,
            "backoff_ms": self.backoff_ms,
        }


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    TOOL_CALLS = "tool_calls"
    CONTENT_FILTER = "content_filter"
    CANCELLED = "cancelled"
    ERROR = "error"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: str
    usage: Usage
    provider_id: str
    model_id: str
    retry_count: int = 0
    attempts: tuple[Attempt, ...] = ()


_FINISH_MAP = {
    # OpenAI
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
    # Anthropic
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
}


def map_finish_reason(raw: str | None) -> FinishReason:
    """Map a provider's wire finish reason (OpenAI or Anthropic) to ours."""
    if raw is None:
        return FinishReason.UNKNOWN
    return _FINISH_MAP.get(raw, FinishReason.UNKNOWN)


def estimate_tokens(text: str) -> int:
    """The token estimate used everywhere: the number of whitespace-separated words."""
    return len(text.split())


TokenCallback = Callable[[str], None]


@runtime_checkable
class ModelProvider(Protocol):
    provider_id: str
    kind: str

    def complete(
        self,
        request: ProviderRequest,
        *,
        cancel: threading.Event | None = None,
        on_token: TokenCallback | None = None,
    ) -> ProviderResponse:
        """Blocking model call. Raises ``ProviderError`` (``ProviderCancelled`` when
        ``cancel`` is set before the call finishes)."""

    def status_snapshot(self) -> dict[str, Any]:
        """Health, circuit state and counters, for status/doctor surfaces."""


# --------------------------------------------------------------------------- failures


class ErrorKind(StrEnum):
    AUTH = "auth"
    QUOTA = "quota"
    RATE_LIMIT = "rate_limit"
    TRANSIENT_NETWORK = "transient_network"
    MALFORMED_RESPONSE = "malformed_response"
    PROVIDER_POLICY = "provider_policy"
    TIMEOUT = "timeout"
    UNSUPPORTED_FEATURE = "unsupported_feature"
    CIRCUIT_OPEN = "circuit_open"
    MISSING_CONFIGURATION = "missing_configuration"
    INTERNAL = "internal"
    # Palyra extension: upstream cancels by dropping the call, so it has no kind for it.
    CANCELLED = "cancelled"


class ProviderFailureClass(StrEnum):
    AUTH_INVALID = "auth_invalid"
    AUTH_EXPIRED = "auth_expired"
    PERMISSION_DENIED = "permission_denied"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    TRANSIENT_UPSTREAM = "transient_upstream"
    PERMANENT_UPSTREAM = "permanent_upstream"
    CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
    CONTENT_POLICY_BLOCKED = "content_policy_blocked"
    MALFORMED_RESPONSE = "malformed_response"
    NETWORK_UNAVAILABLE = "network_unavailable"
    PROVIDER_TIMEOUT = "provider_timeout"


class SuggestedAction(StrEnum):
    RETRY = "retry"
    ROTATE_CREDENTIAL = "rotate_credential"
    PROVIDER_FAILOVER = "provider_failover"
    BUDGET_RE_EVALUATE = "budget_re_evaluate"
    USER_ACTION_REQUIRED = "user_action_required"
    FAIL_CLOSED_NO_RETRY = "fail_closed_no_retry"


@dataclass(frozen=True, slots=True)
class _Traits:
    severity: str
    retryability: str
    failover_eligible: bool
    action: SuggestedAction


_FC = ProviderFailureClass
_K = ErrorKind
_A = SuggestedAction

# failure class -> (envelope kind, traits)
_CLASS_TABLE: dict[ProviderFailureClass, tuple[ErrorKind, _Traits]] = {
    _FC.AUTH_INVALID: (_K.AUTH, _Traits("fatal", "refresh_credential", True, _A.ROTATE_CREDENTIAL)),
    _FC.AUTH_EXPIRED: (
        _K.AUTH,
        _Traits("degraded", "refresh_credential", True, _A.ROTATE_CREDENTIAL),
    ),
    _FC.PERMISSION_DENIED: (
        _K.AUTH,
        _Traits("fatal", "not_retryable", True, _A.USER_ACTION_REQUIRED),
    ),
    _FC.RATE_LIMITED: (_K.RATE_LIMIT, _Traits("recoverable", "retry_after", True, _A.RETRY)),
    _FC.QUOTA_EXCEEDED: (
        _K.QUOTA,
        _Traits("degraded", "not_retryable", True, _A.BUDGET_RE_EVALUATE),
    ),
    _FC.TRANSIENT_UPSTREAM: (
        _K.TRANSIENT_NETWORK,
        _Traits("recoverable", "retry_same_provider", True, _A.RETRY),
    ),
    _FC.PERMANENT_UPSTREAM: (
        _K.INTERNAL,
        _Traits("fatal", "not_retryable", True, _A.PROVIDER_FAILOVER),
    ),
    _FC.CONTEXT_WINDOW_EXCEEDED: (
        _K.UNSUPPORTED_FEATURE,
        _Traits("fatal", "not_retryable", True, _A.BUDGET_RE_EVALUATE),
    ),
    _FC.CONTENT_POLICY_BLOCKED: (
        _K.PROVIDER_POLICY,
        _Traits("fatal", "not_retryable", False, _A.USER_ACTION_REQUIRED),
    ),
    _FC.MALFORMED_RESPONSE: (
        _K.MALFORMED_RESPONSE,
        _Traits("degraded", "not_retryable", True, _A.PROVIDER_FAILOVER),
    ),
    _FC.NETWORK_UNAVAILABLE: (
        _K.TRANSIENT_NETWORK,
        _Traits("recoverable", "retry_same_provider", True, _A.RETRY),
    ),
    _FC.PROVIDER_TIMEOUT: (
        _K.TIMEOUT,
        _Traits("recoverable", "retry_same_provider", True, _A.RETRY),
    ),
}

# envelope kind -> (traits, the failure class it stands for when no class is known)
_KIND_TABLE: dict[ErrorKind, tuple[_Traits, ProviderFailureClass | None]] = {
    _K.AUTH: (_CLASS_TABLE[_FC.AUTH_INVALID][1], _FC.AUTH_INVALID),
    _K.QUOTA: (_CLASS_TABLE[_FC.QUOTA_EXCEEDED][1], _FC.QUOTA_EXCEEDED),
    _K.RATE_LIMIT: (_CLASS_TABLE[_FC.RATE_LIMITED][1], _FC.RATE_LIMITED),
    _K.TRANSIENT_NETWORK: (_CLASS_TABLE[_FC.NETWORK_UNAVAILABLE][1], _FC.NETWORK_UNAVAILABLE),
    _K.MALFORMED_RESPONSE: (_CLASS_TABLE[_FC.MALFORMED_RESPONSE][1], _FC.MALFORMED_RESPONSE),
    _K.PROVIDER_POLICY: (
        _CLASS_TABLE[_FC.CONTENT_POLICY_BLOCKED][1],
        _FC.CONTENT_POLICY_BLOCKED,
    ),
    _K.TIMEOUT: (_CLASS_TABLE[_FC.PROVIDER_TIMEOUT][1], _FC.PROVIDER_TIMEOUT),
    _K.UNSUPPORTED_FEATURE: (
        _Traits("fatal", "not_retryable", True, _A.PROVIDER_FAILOVER),
        None,
    ),
    _K.CIRCUIT_OPEN: (_Traits("degraded", "retry_after", True, _A.PROVIDER_FAILOVER), None),
    _K.MISSING_CONFIGURATION: (
        _Traits("fatal", "not_retryable", False, _A.USER_ACTION_REQUIRED),
        None,
    ),
    _K.INTERNAL: (_Traits("fatal", "not_retryable", False, _A.FAIL_CLOSED_NO_RETRY), None),
    _K.CANCELLED: (_Traits("recoverable", "not_retryable", False, _A.FAIL_CLOSED_NO_RETRY), None),
}

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})

_CONTEXT_HINTS = (
    "context_length_exceeded",
    "maximum context length",
    "context window",
    "too many tokens",
    "prompt is too long",
)
_POLICY_HINTS = ("content_policy", "content_filter", "content management policy", "safety")
_QUOTA_HINTS = ("insufficient_quota", "quota", "billing", "credit balance")
_EXPIRED_HINTS = ("expired", "token_expired")


def _body_text(body: object) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes | bytearray):
        return bytes(body).decode("utf-8", "replace")
    if isinstance(body, str):
        return body
    try:
        return orjson.dumps(body).decode()
    except TypeError:
        return str(body)


def classify_http_failure(status: int, body: object = None) -> ProviderFailureClass:
    """Classify a non-2xx HTTP answer from a provider by status code and error body."""
    text = _body_text(body).lower()
    if status == 401:
        if any(h in text for h in _EXPIRED_HINTS):
            return _FC.AUTH_EXPIRED
        return _FC.AUTH_INVALID
    if status == 403:
        if any(h in text for h in _POLICY_HINTS):
            return _FC.CONTENT_POLICY_BLOCKED
        return _FC.PERMISSION_DENIED
    if status == 402:
        return _FC.QUOTA_EXCEEDED
    if status == 429:
        if any(h in text for h in _QUOTA_HINTS):
            return _FC.QUOTA_EXCEEDED
        return _FC.RATE_LIMITED
    if status in (408, 504):
        return _FC.PROVIDER_TIMEOUT
    if status in (400, 413, 422):
        if any(h in text for h in _CONTEXT_HINTS):
            return _FC.CONTEXT_WINDOW_EXCEEDED
        if any(h in text for h in _POLICY_HINTS):
            return _FC.CONTENT_POLICY_BLOCKED
        return _FC.PERMANENT_UPSTREAM
    if status in (500, 502, 503, 529):
        return _FC.TRANSIENT_UPSTREAM
    if status >= 500 and status != 501:
        return _FC.TRANSIENT_UPSTREAM
    return _FC.PERMANENT_UPSTREAM


# --------------------------------------------------------------------------- redaction

REDACTED = "<redacted>"
MAX_REDACTED_MESSAGE = 512

_BEARER_RE = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=\-]+")
_SK_RE = re.compile(r"\bsk-[A-Za-z0-9_\-]{4,}")
_KV_RE = re.compile(
    r"(?i)\b(api[_-]?key|access[_-]?token|refresh[_-]?token|token|secret|password|authorization)"
    r"(\"?'?\s*[:=]\s*\"?'?)([^\s\"'&,;}]+)"
)
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]+")


def redact_message(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Sanitise remote or exception text before it goes into an error or a log.

    Removes the given secret values verbatim, anything that looks like a bearer token,
    an ``sk-`` key or a ``key=value`` credential; flattens control characters and caps
    the length at 512 characters.
    """
    out = text
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, REDACTED)
    out = _BEARER_RE.sub("Bearer " + REDACTED, out)
    out = _SK_RE.sub(REDACTED, out)
    out = _KV_RE.sub(lambda m: m.group(1) + m.group(2) + REDACTED, out)
    out = _CTRL_RE.sub(" ", out).strip()
    if len(out) > MAX_REDACTED_MESSAGE:
        out = out[: MAX_REDACTED_MESSAGE - 3] + "..."
    return out


def remote_error_message(body: object) -> str:
    """The human part of an OpenAI-style error body (``{"error": {"message": ...}}``)."""
    if isinstance(body, bytes | bytearray | str):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            return _body_text(body)
    else:
        parsed = body
    if isinstance(parsed, Mapping):
        err = parsed.get("error", parsed)
        if isinstance(err, Mapping):
            for key in ("message", "detail", "type", "code"):
                value = err.get(key)
                if isinstance(value, str) and value:
                    return value
        elif isinstance(err, str):
            return err
    return _body_text(body)


# --------------------------------------------------------------------------- envelopes


def _resolve(kind: ErrorKind | ProviderFailureClass | str) -> tuple[ErrorKind, _Traits, Any]:
    if isinstance(kind, ProviderFailureClass):
        env_kind, traits = _CLASS_TABLE[kind]
        return env_kind, traits, kind
    if isinstance(kind, ErrorKind):
        traits, fc = _KIND_TABLE[kind]
        return kind, traits, fc
    try:
        return _resolve(ProviderFailureClass(kind))
    except ValueError:
        pass
    try:
        return _resolve(ErrorKind(kind))
    except ValueError:
        raise ValueError(f"unknown provider error kind or failure class: {kind!r}") from None


def error_envelope(
    kind: ErrorKind | ProviderFailureClass | str,
    message: str = "",
    *,
    provider_id: str | None = None,
    http_status: int | None = None,
    retry_after_ms: int | None = None,
    secrets: Iterable[str | None] = (),
) -> dict[str, Any]:
    """Build a provider error envelope from an envelope kind or a failure class.

    ``message`` is sanitised with :func:`redact_message` (``secrets`` are removed
    verbatim too). Raises ``ValueError`` for a name that is neither.
    """
    env_kind, traits, failure_class = _resolve(kind)
    return {
        "kind": str(env_kind),
        "failure_class": None if failure_class is None else str(failure_class),
        "severity": traits.severity,
        "retryability": traits.retryability,
        "failover_eligible": traits.failover_eligible,
        "suggested_action": str(traits.action),
        "redacted_message": redact_message(message, secrets),
        "provider_id": provider_id,
        "http_status": http_status,
        "retry_after_ms": retry_after_ms,
    }


def provider_error(
    kind: ErrorKind | ProviderFailureClass | str,
    message: str,
    **envelope_kw: Any,
) -> ProviderError:
    """A ``ProviderError`` whose message is the envelope's redacted message."""
    details = error_envelope(kind, message, **envelope_kw)
    return ProviderError(details["redacted_message"], details=details)


class ProviderCancelled(ProviderError):
    """The call was cancelled through its ``cancel`` event before it finished."""

    code = "cancelled"

    def __init__(
        self,
        message: str = "provider call cancelled",
        *,
        provider_id: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        envelope = error_envelope(ErrorKind.CANCELLED, message, provider_id=provider_id)
        if details:
            envelope.update(details)
        super().__init__(envelope["redacted_message"], details=envelope)
