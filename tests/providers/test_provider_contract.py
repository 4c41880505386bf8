"""The provider contract: records, failure classification, envelopes, redaction,
``build_provider`` and the package's public surface."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import palyra.providers as providers
from palyra.errors import InvalidInput, ProviderError
from palyra.providers import (
    DeterministicProvider,
    ErrorKind,
    FinishReason,
    Message,
    ModelProvider,
    OpenAICompatibleProvider,
    ProviderCancelled,
    ProviderFailureClass,
    ProviderRequest,
    ToolCall,
    build_provider,
    classify_http_failure,
    error_envelope,
    estimate_tokens,
    map_finish_reason,
    redact_message,
)

ENVELOPE_KEYS = {
    "kind",
    "failure_class",
    "severity",
    "retryability",
    "failover_eligible",
    "suggested_action",
    "redacted_message",
    "provider_id",
    "http_status",
    "retry_after_ms",
}

# ------------------------------------------------------------------ public surface


def test_public_names_are_exported_once_and_resolve():
    assert len(providers.__all__) == len(set(providers.__all__))
    assert providers.__all__ == sorted(providers.__all__)
    for name in providers.__all__:
        assert getattr(providers, name) is not None


def test_both_providers_satisfy_the_model_provider_protocol():
    det = DeterministicProvider()
    with OpenAICompatibleProvider(api_key="sk-test-abcdef") as oai:
        assert isinstance(det, ModelProvider)
        assert isinstance(oai, ModelProvider)
        assert (det.kind, oai.kind) == ("deterministic", "openai_compatible")


# ------------------------------------------------------------------ records


def test_message_rejects_unknown_role():
    with pytest.raises(InvalidInput):
        Message("robot", "hi")


def test_tool_message_requires_tool_call_id():
    with pytest.raises(InvalidInput):
        Message("tool", "result")


def test_sequences_are_coerced_to_tuples_so_records_stay_immutable():
    message = Message("assistant", "", tool_calls=[ToolCall("call_0", "echo", {})])
    request = ProviderRequest([message])
    assert isinstance(message.tool_calls, tuple)
    assert isinstance(request.messages, tuple)
    assert isinstance(request.tools, tuple)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("something_new", "unknown"),
        (None, "unknown"),
    ],
)
def test_wire_finish_reasons_map_to_ours(raw, expected):
    assert map_finish_reason(raw) == expected
    assert isinstance(map_finish_reason(raw), FinishReason)


@given(st.lists(st.text(alphabet="abc", min_size=1, max_size=5), max_size=20), st.data())
def test_token_estimate_is_whitespace_word_count(words, data):
    separators = data.draw(
        st.lists(
            st.sampled_from([" ", "  ", "\n", "\t "]), min_size=len(words), max_size=len(words)
        )
    )
    text = "".join(w + s for w, s in zip(words, separators, strict=True))
    assert estimate_tokens(text) == len(words)


# ------------------------------------------------------------------ classification


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"error": {"message": "Incorrect API key"}}, "auth_invalid"),
        (401, {"error": {"message": "token expired"}}, "auth_expired"),
        (403, "forbidden", "permission_denied"),
        (402, "", "quota_exceeded"),
        (429, {"error": {"message": "Rate limit reached"}}, "rate_limited"),
        (429, {"error": {"code": "insufficient_quota", "message": "x"}}, "quota_exceeded"),
        (400, {"error": {"code": "context_length_exceeded"}}, "context_window_exceeded"),
        (400, "This model's maximum context length is 8192", "context_window_exceeded"),
        (400, {"error": {"code": "content_filter"}}, "content_policy_blocked"),
        (400, {"error": {"message": "bad field"}}, "permanent_upstream"),
        (404, "no such model", "permanent_upstream"),
        (408, "", "provider_timeout"),
        (504, "", "provider_timeout"),
        (500, "", "transient_upstream"),
        (502, b"bad gateway", "transient_upstream"),
        (503, None, "transient_upstream"),
        (529, "overloaded", "transient_upstream"),
        (501, "", "permanent_upstream"),
    ],
)
def test_http_failures_are_classified_by_status_and_body(status, body, expected):
    assert classify_http_failure(status, body) == expected


@pytest.mark.parametrize("failure_class", list(ProviderFailureClass))
def test_every_failure_class_has_a_complete_envelope(failure_class):
    envelope = error_envelope(failure_class, "boom")
    assert set(envelope) == ENVELOPE_KEYS
    assert envelope["failure_class"] == failure_class
    assert envelope["kind"] in set(ErrorKind)
    assert envelope["severity"] in {"recoverable", "degraded", "fatal"}
    assert envelope["retryability"] in {
        "not_retryable",
        "retry_same_provider",
        "retry_after",
        "refresh_credential",
    }
    assert isinstance(envelope["failover_eligible"], bool)


@pytest.mark.parametrize("kind", list(ErrorKind))
def test_every_envelope_kind_can_be_built_by_name(kind):
    envelope = error_envelope(str(kind), "boom", provider_id="p", retry_after_ms=5)
    assert envelope["kind"] == kind
    assert envelope["provider_id"] == "p"
    assert envelope["retry_after_ms"] == 5


def test_rate_limit_is_retry_after_and_content_policy_is_not_failover_eligible():
    assert error_envelope("rate_limited")["retryability"] == "retry_after"
    assert error_envelope("content_policy_blocked")["failover_eligible"] is False
    assert error_envelope("transient_network")["retryability"] == "retry_same_provider"


def test_unknown_envelope_kind_is_a_value_error():
    with pytest.raises(ValueError):
        error_envelope("no_such_kind")


def test_provider_cancelled_is_a_provider_error_with_a_cancelled_envelope():
    err = ProviderCancelled(provider_id="p")
    assert isinstance(err, ProviderError)
    assert err.details["kind"] == "cancelled"
    assert err.details["provider_id"] == "p"


# ------------------------------------------------------------------ redaction


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi_jkl",
        "Incorrect API key provided: sk-proj-AbCdEf123456",
        "call failed api_key=hunter2hunter2&x=1",
        '{"access_token": "zzzzzzzz"}',
        "password: swordfish",
    ],
)
def test_redaction_removes_things_that_look_like_credentials(text):
    redacted = redact_message(text)
    assert "<redacted>" in redacted
    for secret in ("abc.def-ghi_jkl", "AbCdEf123456", "hunter2", "zzzzzzzz", "swordfish"):
        assert secret not in redacted


def test_redaction_removes_given_secrets_verbatim_and_caps_length():
    redacted = redact_message(
        "key is opaque-KEY-value\n" + "x" * 2000, secrets=["opaque-KEY-value"]
    )
    assert "opaque-KEY-value" not in redacted
    assert "\n" not in redacted
    assert len(redacted) <= 512


def test_envelope_message_is_redacted():
    envelope = error_envelope(
        "auth_invalid", "bad key sk-live-0123456789", secrets=["custom-token-1"]
    )
    assert "0123456789" not in envelope["redacted_message"]


# ------------------------------------------------------------------ build_provider


def test_build_provider_defaults_to_deterministic():
    provider = build_provider({})
    assert isinstance(provider, DeterministicProvider)
    assert provider.provider_id == "deterministic-primary"


@pytest.mark.parametrize("kind", ["openai_compatible", "openai-compatible", "openai", "OpenAI"])
def test_build_provider_accepts_openai_aliases(kind):
    provider = build_provider({"kind": kind, "api_key": "sk-x-123456", "model": "m1"})
    try:
        assert isinstance(provider, OpenAICompatibleProvider)
        assert provider.model == "m1"
        assert provider.base_url == "https://api.openai.com/v1"
    finally:
        provider.close()


def test_build_provider_rejects_unknown_kind():
    with pytest.raises(InvalidInput, match="unknown provider kind"):
        build_provider({"kind": "anthropic-v0"})


def test_build_provider_rejects_unknown_options():
    with pytest.raises(InvalidInput, match="flavour"):
        build_provider({"kind": "deterministic", "flavour": "vanilla"})


def test_build_provider_rejects_private_base_url_unless_allowed():
    with pytest.raises(InvalidInput, match="allow_private_base_url"):
        build_provider({"kind": "openai", "base_url": "http://127.0.0.1:9/v1"})
    provider = build_provider(
        {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "allow_private_base_url": True}
    )
    provider.close()


def test_base_url_with_credentials_is_rejected():
    with pytest.raises(InvalidInput):
        OpenAICompatibleProvider("https://user:pass@example.com/v1")
