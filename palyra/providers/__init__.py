"""Model providers (spec 1.8): the contract, the deterministic default and an
OpenAI-compatible HTTP provider, plus :func:`build_provider` for config dicts.

Providers are blocking and start no threads: the caller (a run actor) runs
``complete()`` in a worker thread and cancels it through a ``threading.Event``.
"""

from __future__ import annotations

import inspect
from typing import Any

from palyra.errors import InvalidInput
from palyra.providers.base import (
    Attempt,
    ErrorKind,
    FinishReason,
    Message,
    ModelProvider,
    ProviderCancelled,
    ProviderFailureClass,
    ProviderRequest,
    ProviderResponse,
    SuggestedAction,
    ToolCall,
    ToolSpec,
    Usage,
    classify_http_failure,
    error_envelope,
    estimate_tokens,
    map_finish_reason,
    redact_message,
)
from palyra.providers.circuit import CircuitBreaker
from palyra.providers.deterministic import DeterministicProvider
from palyra.providers.openai_compatible import OpenAICompatibleProvider

__all__ = [
    "Attempt",
    "CircuitBreaker",
    "DeterministicProvider",
    "ErrorKind",
    "FinishReason",
    "Message",
    "ModelProvider",
    "OpenAICompatibleProvider",
    "ProviderCancelled",
    "ProviderFailureClass",
    "ProviderRequest",
    "ProviderResponse",
    "SuggestedAction",
    "ToolCall",
    "ToolSpec",
    "Usage",
    "build_provider",
    "classify_http_failure",
    "error_envelope",
    "estimate_tokens",
    "map_finish_reason",
    "redact_message",
]

_KINDS: dict[str, type] = {
    "deterministic": DeterministicProvider,
    "openai_compatible": OpenAICompatibleProvider,
    "openai-compatible": OpenAICompatibleProvider,
    "openai": OpenAICompatibleProvider,
}


def build_provider(config: dict[str, Any]) -> ModelProvider:
    """Build a provider from ``{"kind": ..., **constructor_kwargs}``.

    ``kind`` is ``deterministic`` (the default when absent) or ``openai_compatible``
    (aliases ``openai-compatible``, ``openai``). Unknown kinds and keys the provider
    does not take raise ``InvalidInput``.
    """
    if not isinstance(config, dict):
        raise InvalidInput("provider config must be a mapping")
    options = dict(config)
    kind = options.pop("kind", "deterministic")
    cls = _KINDS.get(str(kind).strip().lower()) if isinstance(kind, str) else None
    if cls is None:
        raise InvalidInput(
            f"unknown provider kind {kind!r}; expected one of {sorted(_KINDS)}",
            details={"kind": str(kind)},
        )
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise InvalidInput(
            f"unknown option(s) for provider kind {kind!r}: {', '.join(unknown)}",
            details={"unknown": unknown, "accepted": sorted(accepted)},
        )
    return cls(**options)
