"""OpenAICompatibleProvider against the real local test server (tests/support).

Backoff waits go through an injected ``sleep`` that records the delay, so retry tests do
not wait; cancellation tests use events (server request counts, first token) to know
when to cancel, never sleeps."""

from __future__ import annotations

import threading
import time
import traceback

import pytest

from palyra.clock import ManualClock
from palyra.errors import ProviderError
from palyra.providers import (
    Message,
    OpenAICompatibleProvider,
    ProviderCancelled,
    ProviderRequest,
    ToolCall,
    ToolSpec,
    Usage,
)
from tests.support.openai_server import OpenAIServer

API_KEY = "sk-test-Q7xW2pLm9ZrT4vN8"


@pytest.fixture
def server():
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def delays():
    return []


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def make_provider(server, delays, clock):
    created = []

    def make(**kw):
        options = {
            "api_key": API_KEY,
            "allow_private_base_url": True,
            "retry_backoff_ms": 1,
            "sleep": delays.append,
            "clock": clock,
            "timeout_s": 10,
        }
        options.update(kw)
        provider = OpenAICompatibleProvider(server.base_url, **options)
        created.append(provider)
        return provider

    yield make
    for provider in created:
        provider.close()


@pytest.fixture
def provider(make_provider):
    return make_provider()


def ask(text="hello there", **kw) -> ProviderRequest:
    return ProviderRequest((Message("user", text),), **kw)


def run_in_thread(fn):
    """Run ``fn`` in a worker; returns (thread, outcome dict with result/error/ended)."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


# ------------------------------------------------------------------ happy paths


def test_non_streaming_text_and_usage(server, provider):
    server.enqueue_text("hi from the model", usage={"prompt_tokens": 7, "completion_tokens": 4})
    response = provider.complete(ask())
    assert response.text == "hi from the model"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(7, 4, 11)
    assert response.provider_id == "openai-primary"
    assert response.model_id == "gpt-4o-mini"
    assert response.retry_count == 0
    assert [a.outcome for a in response.attempts] == ["ok"]


def test_request_carries_auth_model_and_messages(server, provider):
    provider.complete(ask("ping", model_override="gpt-x", json_mode=True))
    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json["model"] == "gpt-x"
    assert request.json["messages"] == [{"role": "user", "content": "ping"}]
    assert request.json["response_format"] == {"type": "json_object"}
    assert request.json["stream"] is False


def test_no_authorization_header_without_api_key(server, make_provider):
    provider = make_provider(api_key=None)
    provider.complete(ask())
    assert "authorization" not in server.requests[0].headers
    assert provider.status_snapshot()["health"] == "missing_auth"


def test_empty_queue_echoes_the_last_user_message(provider):
    assert provider.complete(ask("echo me please")).text == "echo me please"


def test_streaming_text_emits_tokens_in_order(server, provider):
    server.enqueue_text("one two three four", usage={"prompt_tokens": 2, "completion_tokens": 4})
    tokens: list[str] = []
    response = provider.complete(ask(stream=True), on_token=tokens.append)
    assert tokens == ["one", " two", " three", " four"]
    assert response.text == "one two three four"
    assert response.finish_reason == "stop"
    assert response.usage == Usage(2, 4, 6)
    request = server.requests[0]
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.headers["accept"] == "text/event-stream"


def test_streaming_length_finish_is_mapped(server, provider):
    server.enqueue_text("cut short", finish_reason="length")
    assert provider.complete(ask(stream=True)).finish_reason == "length"


def test_non_streaming_text_is_one_token(server, provider):
    tokens: list[str] = []
    provider.complete(ask("all at once"), on_token=tokens.append)
    assert tokens == ["all at once"]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_are_parsed(server, provider, stream):
    server.enqueue_tool_calls(
        [("palyra.echo", {"text": "hi", "n": [1, 2]}), ("lookup", {})], ids=["c_a", "c_b"]
    )
    tools = (ToolSpec("palyra.echo", "Echo", {"type": "object"}), ToolSpec("lookup", "L", {}))
    response = provider.complete(ask(stream=stream, tools=tools))
    assert response.finish_reason == "tool_calls"
    assert response.tool_calls == (
        ToolCall("c_a", "palyra.echo", {"text": "hi", "n": [1, 2]}),
        ToolCall("c_b", "lookup", {}),
    )
    sent_tools = server.requests[0].json["tools"]
    assert [t["function"]["name"] for t in sent_tools] == ["palyra.echo", "lookup"]
    assert sent_tools[0]["type"] == "function"


def test_tool_results_are_sent_back_in_openai_format(server, provider):
    call = ToolCall("c1", "palyra.echo", {"text": "hi"})
    provider.complete(
        ProviderRequest(
            (
                Message("user", "go"),
                Message("assistant", "", tool_calls=(call,)),
                Message("tool", '{"echo":"hi"}', tool_call_id="c1"),
            )
        )
    )
    messages = server.requests[0].json["messages"]
    assert messages[1]["tool_calls"][0]["function"] == {
        "name": "palyra.echo",
        "arguments": '{"text":"hi"}',
    }
    assert messages[2] == {"role": "tool", "content": '{"echo":"hi"}', "tool_call_id": "c1"}


def test_server_that_ignores_stream_flag_still_answers(server, provider):
    server.enqueue_status(
        200,
        {"choices": [{"index": 0, "message": {"content": "plain json"}, "finish_reason": "stop"}]},
    )
    tokens: list[str] = []
    response = provider.complete(ask(stream=True), on_token=tokens.append)
    assert response.text == "plain json"
    assert tokens == ["plain json"]


def test_missing_usage_falls_back_to_word_estimates(server, provider):
    server.enqueue_sse(
        [
            {"choices": [{"index": 0, "delta": {"content": "a b c"}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            "[DONE]",
        ]
    )
    response = provider.complete(ask("x y", stream=True))
    assert response.usage == Usage(2, 3, 5)


def test_concurrent_calls_share_one_provider(provider):
    results: dict[int, str] = {}

    def call(i: int) -> None:
        results[i] = provider.complete(ask(f"message {i}")).text

    threads = [threading.Thread(target=call, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {i: f"message {i}" for i in range(8)}


# ------------------------------------------------------------------ retries


def test_429_then_success_retries_once_honouring_retry_after(server, provider, delays):
    server.enqueue_status(429, {"error": {"message": "Rate limit reached"}}, {"Retry-After": "1"})
    server.enqueue_text("finally")
    response = provider.complete(ask())
    assert response.text == "finally"
    assert response.retry_count == 1
    assert delays == [1.0]
    first, second = response.attempts
    assert (first.outcome, first.http_status, first.error_kind) == ("error", 429, "rate_limit")
    assert first.backoff_ms == 1000
    assert second.outcome == "ok"
    assert len(server.requests) == 2


def test_retry_after_longer_than_the_cap_fails_without_retrying(server, provider, delays):
    server.enqueue_status(429, {"error": {"message": "later"}}, {"Retry-After": "120"})
    with pytest.raises(ProviderError) as info:
        provider.complete(ask())
    assert info.value.details["retry_after_ms"] == 120_000
    assert info.value.details["kind"] == "rate_limit"
    assert delays == []
    assert len(server.requests) == 1


def test_three_500s_exhaust_retries_with_exponential_backoff(server, make_provider, delays):
    provider = make_provider(retry_backoff_ms=100)
    for _ in range(3):
        server.enqueue_status(500)
    with pytest.raises(ProviderError) as info:
        provider.complete(ask())
    details = info.value.details
    assert details["kind"] == "transient_network"
    assert details["failure_class"] == "transient_upstream"
    assert details["http_status"] == 500
    assert details["retry_count"] == 2
    assert [a["http_status"] for a in details["attempts"]] == [500, 500, 500]
    assert delays == [0.1, 0.2]
    assert len(server.requests) == 3


def test_repeated_failures_open_the_circuit_until_cooldown(server, provider, clock):
    for _ in range(9):
        server.enqueue_status(503)
    for _ in range(3):
        with pytest.raises(ProviderError):
            provider.complete(ask())
    assert provider.status_snapshot()["circuit"]["state"] == "open"
    assert provider.status_snapshot()["health"] == "degraded"
    with pytest.raises(ProviderError) as info:
        provider.complete(ask())
    assert info.value.details["kind"] == "circuit_open"
    assert info.value.details["retry_after_ms"] == 30_000
    assert len(server.requests) == 9  # the rejected call never reached the server
    clock.advance(30)
    assert provider.complete(ask("trial")).text == "trial"
    assert provider.status_snapshot()["circuit"]["state"] == "closed"
    assert provider.status_snapshot()["health"] == "ok"


def test_client_errors_are_not_retried(server, provider):
    server.enqueue_status(400, {"error": {"message": "bad request field"}})
    with pytest.raises(ProviderError) as info:
        provider.complete(ask())
    assert info.value.details["failure_class"] == "permanent_upstream"
    assert info.value.details["retry_count"] == 0
    assert len(server.requests) == 1


def test_context_window_errors_do_not_count_against_the_circuit(server, provider):
    for _ in range(4):
        server.enqueue_status(400, {"error": {"code": "context_length_exceeded"}})
        with pytest.raises(ProviderError):
            provider.complete(ask())
    assert provider.status_snapshot()["circuit"]["consecutive_failures"] == 0


def test_malformed_json_is_a_malformed_response_and_not_retried(server, provider):
    server.enqueue_status(200, "this is not json")
    with pytest.raises(ProviderError) as info:
        provider.complete(ask())
    assert info.value.details["kind"] == "malformed_response"
    assert len(server.requests) == 1


def test_stream_cut_before_any_token_is_retried(server, provider):
    server.enqueue_sse([{"choices": [{"index": 0, "delta": {"role": "assistant"}}]}])
    response = provider.complete(ask("second time lucky", stream=True))
    assert response.text == "second time lucky"
    assert response.retry_count == 1


def test_stream_cut_after_tokens_is_not_retried(server, provider):
    server.enqueue_sse([{"choices": [{"index": 0, "delta": {"content": "partial"}}]}])
    tokens: list[str] = []
    with pytest.raises(ProviderError) as info:
        provider.complete(ask(stream=True), on_token=tokens.append)
    assert tokens == ["partial"]
    assert info.value.details["kind"] == "transient_network"
    assert len(server.requests) == 1


def test_error_event_mid_stream_is_a_provider_error(server, provider):
    server.enqueue_sse(
        [
            {"choices": [{"index": 0, "delta": {"content": "so"}}]},
            {"error": {"message": "overloaded, key sk-leaky-123456789"}},
        ]
    )
    with pytest.raises(ProviderError) as info:
        provider.complete(ask(stream=True), on_token=lambda _t: None)
    assert "overloaded" in str(info.value)
    assert "sk-leaky" not in str(info.value)


def test_connection_refused_is_a_network_failure(make_provider, delays):
    with OpenAIServer() as doomed:
        base_url = doomed.base_url
    provider = make_provider()
    dead = OpenAICompatibleProvider(
        base_url,
        api_key=API_KEY,
        allow_private_base_url=True,
        sleep=delays.append,
        retry_backoff_ms=1,
    )
    try:
        with pytest.raises(ProviderError) as info:
            dead.complete(ask())
    finally:
        dead.close()
    assert info.value.details["failure_class"] == "network_unavailable"
    assert info.value.details["retry_count"] == 2
    assert provider.complete(ask("still fine")).text == "still fine"


# ------------------------------------------------------------------ cancellation


def _cancel_when_request_arrives(server, cancel, count=1):
    assert server.wait_for_requests(count, timeout=5)
    at = time.monotonic()
    cancel.set()
    return at


def test_cancel_while_waiting_for_a_slow_response(server, provider):
    server.enqueue_slow(10, "too late")
    cancel = threading.Event()
    thread, outcome = run_in_thread(lambda: provider.complete(ask(), cancel=cancel))
    cancelled_at = _cancel_when_request_arrives(server, cancel)
    thread.join(5)
    assert isinstance(outcome.get("error"), ProviderCancelled)
    assert outcome["ended"] - cancelled_at < 0.2
    assert outcome["error"].details["attempts"][0]["outcome"] == "cancelled"


def test_cancel_mid_stream_between_slow_chunks(server, provider):
    server.enqueue_text("first second third", token_delay_s=10)
    cancel = threading.Event()
    first_token = threading.Event()
    tokens: list[str] = []

    def on_token(token: str) -> None:
        tokens.append(token)
        first_token.set()

    thread, outcome = run_in_thread(
        lambda: provider.complete(ask(stream=True), cancel=cancel, on_token=on_token)
    )
    assert first_token.wait(5)
    cancelled_at = time.monotonic()
    cancel.set()
    thread.join(5)
    assert isinstance(outcome.get("error"), ProviderCancelled)
    assert outcome["ended"] - cancelled_at < 0.2
    assert tokens == ["first"]


def test_cancel_during_retry_backoff(server, make_provider):
    provider = make_provider(sleep=None, retry_backoff_ms=10_000)
    server.enqueue_status(503)
    cancel = threading.Event()
    thread, outcome = run_in_thread(lambda: provider.complete(ask(), cancel=cancel))
    cancelled_at = _cancel_when_request_arrives(server, cancel)
    thread.join(5)
    assert isinstance(outcome.get("error"), ProviderCancelled)
    assert outcome["ended"] - cancelled_at < 0.2
    assert len(server.requests) == 1


def test_already_cancelled_call_sends_nothing(server, provider):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProviderCancelled):
        provider.complete(ask(), cancel=cancel)
    assert server.requests == []


def test_provider_is_usable_after_a_cancelled_call(server, provider):
    server.enqueue_slow(10, "abandoned")
    cancel = threading.Event()
    thread, outcome = run_in_thread(lambda: provider.complete(ask(), cancel=cancel))
    _cancel_when_request_arrives(server, cancel)
    thread.join(5)
    assert isinstance(outcome.get("error"), ProviderCancelled)
    assert provider.complete(ask("next one")).text == "next one"
    snapshot = provider.status_snapshot()
    assert snapshot["circuit"]["consecutive_failures"] == 0
    assert snapshot["totals"]["cancelled"] == 1


# ------------------------------------------------------------------ secrets


def _all_text(err: BaseException) -> str:
    return "\n".join(
        [str(err), repr(err), repr(err.details), "".join(traceback.format_exception(err))]
    )


def test_api_key_never_appears_in_raised_errors(server, provider):
    server.enqueue_status(
        401,
        {"error": {"message": f"Incorrect API key provided: {API_KEY}. Bearer {API_KEY}"}},
    )
    with pytest.raises(ProviderError) as info:
        provider.complete(ask())
    assert info.value.details["kind"] == "auth"
    assert API_KEY not in _all_text(info.value)
    assert API_KEY[3:] not in _all_text(info.value)


def test_api_key_never_appears_in_network_errors_repr_or_status(make_provider):
    with OpenAIServer() as doomed:
        base_url = doomed.base_url
    provider = OpenAICompatibleProvider(
        base_url, api_key=API_KEY, allow_private_base_url=True, max_retries=0
    )
    try:
        with pytest.raises(ProviderError) as info:
            provider.complete(ask())
        assert API_KEY not in _all_text(info.value)
        assert API_KEY not in repr(provider)
        assert API_KEY not in repr(provider.status_snapshot())
    finally:
        provider.close()
