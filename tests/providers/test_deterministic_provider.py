"""DeterministicProvider: echo, JSON mode, ack, usage, and the @tool/@sleep/@fail
directives."""

from __future__ import annotations

import json
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.errors import ProviderError
from palyra.providers import (
    DeterministicProvider,
    Message,
    ProviderCancelled,
    ProviderRequest,
    ToolCall,
)


@pytest.fixture
def provider():
    return DeterministicProvider()


def ask(*texts_or_messages, **kw) -> ProviderRequest:
    messages = [m if isinstance(m, Message) else Message("user", m) for m in texts_or_messages]
    return ProviderRequest(tuple(messages), **kw)


class SignallingEvent(threading.Event):
    """A cancel event that tells the test when the provider starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


# ------------------------------------------------------------------ echo


def test_echoes_the_last_user_message(provider):
    request = ask(
        Message("system", "be brief"),
        Message("user", "first question"),
        Message("assistant", "first answer"),
        Message("user", "second question here"),
    )
    response = provider.complete(request)
    assert response.text == "second question here"
    assert response.finish_reason == "stop"
    assert response.tool_calls == ()
    assert response.provider_id == "deterministic-primary"
    assert response.model_id == "deterministic"
    assert response.retry_count == 0


def test_json_mode_answers_ack_object(provider):
    response = provider.complete(ask("anything at all", json_mode=True))
    assert response.text == '{"ack":"ok"}'
    assert json.loads(response.text) == {"ack": "ok"}


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_input_answers_ack(provider, text):
    assert provider.complete(ask(text)).text == "ack"


def test_request_without_user_message_answers_ack(provider):
    assert provider.complete(ask(Message("system", "hello"))).text == "ack"


def test_model_override_is_reported(provider):
    assert provider.complete(ask("hi", model_override="tiny-1")).model_id == "tiny-1"


def test_usage_is_word_counts_with_completion_at_least_one(provider):
    response = provider.complete(ask(Message("system", "two words"), Message("user", "a b c")))
    assert response.usage.prompt_tokens == 5
    assert response.usage.completion_tokens == 3
    assert response.usage.total_tokens == 8
    empty = provider.complete(ask(""))
    assert empty.usage.completion_tokens == 1


def test_tokens_are_emitted_word_by_word_in_order(provider):
    tokens: list[str] = []
    response = provider.complete(ask("  the quick\nbrown fox "), on_token=tokens.append)
    assert [t.strip() for t in tokens] == ["the", "quick", "brown", "fox"]
    assert "".join(tokens) == response.text


@given(st.text(alphabet=st.characters(blacklist_characters="@\r"), max_size=60))
def test_plain_text_round_trips_exactly(text):
    tokens: list[str] = []
    response = DeterministicProvider().complete(ask(text), on_token=tokens.append)
    expected = text if text.strip() else "ack"
    assert response.text == expected
    assert "".join(tokens) == expected


def test_status_snapshot_reports_ok_health(provider):
    provider.complete(ask("hi"))
    snapshot = provider.status_snapshot()
    assert snapshot["health"] == "ok"
    assert snapshot["circuit"]["state"] == "closed"
    assert snapshot["totals"]["successes"] == 1


# ------------------------------------------------------------------ @tool


def test_tool_directives_make_the_first_turn_propose_tool_calls(provider):
    response = provider.complete(
        ask('look things up\n@tool palyra.echo {"text": "hi"}\n@tool palyra.sleep {"ms": 5}')
    )
    assert response.finish_reason == "tool_calls"
    assert response.text == ""
    assert response.tool_calls == (
        ToolCall("call_0", "palyra.echo", {"text": "hi"}),
        ToolCall("call_1", "palyra.sleep", {"ms": 5}),
    )


def test_tool_directive_arguments_default_to_empty_object(provider):
    response = provider.complete(ask("@tool palyra.routines.query"))
    assert response.tool_calls == (ToolCall("call_0", "palyra.routines.query", {}),)


def test_tool_results_turn_into_a_final_answer(provider):
    user = Message("user", 'summarise\n@tool palyra.echo {"text": "hi"}\n@tool lookup {}')
    first = provider.complete(ask(user))
    second = provider.complete(
        ask(
            user,
            Message("assistant", "", tool_calls=first.tool_calls),
            Message("tool", '{"echo":"hi"}', tool_call_id="call_0"),
            Message("tool", "42", tool_call_id="call_1"),
        )
    )
    assert second.finish_reason == "stop"
    assert second.tool_calls == ()
    assert second.text == 'summarise\ntool palyra.echo: {"echo":"hi"}\ntool lookup: 42'


def test_tool_results_without_assistant_message_fall_back_to_directive_order(provider):
    user = Message("user", "@tool alpha {}")
    response = provider.complete(ask(user, Message("tool", "done", tool_call_id="call_0")))
    assert response.text == "tool alpha: done"


def test_malformed_tool_directive_is_a_provider_error(provider):
    with pytest.raises(ProviderError) as info:
        provider.complete(ask("@tool broken {not json"))
    assert info.value.details["kind"] == "internal"


# ------------------------------------------------------------------ @sleep / cancel


def test_sleep_directive_wakes_and_raises_within_100ms_of_cancel(provider):
    cancel = SignallingEvent()
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            provider.complete(ask("slow\n@sleep 30"), cancel=cancel)
        except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
            outcome["error"] = exc
        outcome["ended"] = time.monotonic()

    worker = threading.Thread(target=call)
    worker.start()
    assert cancel.waiting.wait(5)
    cancelled_at = time.monotonic()
    cancel.set()
    worker.join(5)
    assert not worker.is_alive()
    assert isinstance(outcome["error"], ProviderCancelled)
    assert outcome["ended"] - cancelled_at < 0.1
    assert provider.status_snapshot()["totals"]["cancelled"] == 1


def test_sleep_directive_without_cancel_answers_after_the_delay(provider):
    started = time.monotonic()
    response = provider.complete(ask("done\n@sleep 0.02"))
    assert time.monotonic() - started >= 0.02
    assert response.text == "done"


def test_already_cancelled_call_raises_at_once(provider):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(ProviderCancelled):
        provider.complete(ask("hi\n@sleep 30"), cancel=cancel)


def test_bad_sleep_value_is_a_provider_error(provider):
    with pytest.raises(ProviderError):
        provider.complete(ask("@sleep forever"))


# ------------------------------------------------------------------ @fail


def test_fail_directive_raises_provider_error_of_that_kind(provider):
    with pytest.raises(ProviderError) as info:
        provider.complete(ask("hi\n@fail transient_network"))
    details = info.value.details
    assert details["kind"] == "transient_network"
    assert details["retryability"] == "retry_same_provider"
    assert details["provider_id"] == "deterministic-primary"
    assert not isinstance(info.value, ProviderCancelled)


def test_fail_directive_accepts_failure_classes(provider):
    with pytest.raises(ProviderError) as info:
        provider.complete(ask("@fail auth_invalid"))
    assert info.value.details["kind"] == "auth"
    assert info.value.details["failure_class"] == "auth_invalid"


def test_fail_directive_with_unknown_kind_is_internal(provider):
    with pytest.raises(ProviderError) as info:
        provider.complete(ask("@fail gremlins"))
    assert info.value.details["kind"] == "internal"
    assert provider.status_snapshot()["totals"]["failures"] == 1
