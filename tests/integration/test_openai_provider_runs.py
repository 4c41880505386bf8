"""Real runs through the Runtime against a local OpenAI-compatible server (no mocks).

Each test starts the scripted server from ``tests/support/openai_server.py`` and a
runtime whose provider is ``openai_compatible`` pointed at it, sends runs with
``rt.send`` and checks the run results, the tapes and what the server received.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

import palyra
from palyra.journal.store import db_path
from tests.support.openai_server import OpenAIServer
from tests.support.wait import until

API_KEY = "sk-test-SECRET123"
SECRET_FRAGMENTS = (API_KEY.encode(), b"SECRET123")


def provider_config(server: OpenAIServer) -> dict:
    return {
        "provider": {
            "kind": "openai_compatible",
            "base_url": server.base_url,
            "api_key": API_KEY,
            "model": "gpt-test",
            "allow_private_base_url": True,
            "max_retries": 2,
            "retry_backoff_ms": 10,
        },
        "tools": {"allowed": ["palyra.echo"]},
        "supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0},
    }


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as srv:
        yield srv


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def rt(server: OpenAIServer, state_dir: Path) -> Iterator[palyra.Runtime]:
    runtime = palyra.Runtime.start(state_dir, provider_config(server))
    yield runtime
    runtime.stop()


def tape_of(rt: palyra.Runtime, run_id: str, event_type: str) -> list[dict]:
    return [e.payload for e in rt.tape(run_id) if e.event_type == event_type]


def error_body(message: str) -> dict:
    return {"error": {"message": message, "type": "server_error"}}


# -- answers ------------------------------------------------------------------------------


def test_plain_text_answer_uses_the_servers_usage(rt, server):
    server.enqueue_text("hi there", usage={"prompt_tokens": 7, "completion_tokens": 2})
    run = rt.send("hello", session_key="k")
    result = run.wait(10)

    assert result.state == "done"
    assert result.reply_text == "hi there"
    assert result.termination_reason == "final_answer"
    assert result.last_error is None
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (7, 2, 9)

    stored = rt.run(run.id)
    assert stored.state == "done" and stored.reply_text == "hi there"
    assert (stored.usage.prompt_tokens, stored.usage.completion_tokens) == (7, 2)
    assert stored.provider_id == "openai-primary" and stored.model_id == "gpt-test"

    [output] = tape_of(rt, run.id, "provider_turn_output")
    assert output["full_text"] == "hi there"
    assert output["finish_reason"] == "stop"
    assert output["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9,
                               "source": "provider"}
    assert output["retry_count"] == 0
    assert tape_of(rt, run.id, "message.replied") == [{"reply_text": "hi there"}]

    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json["model"] == "gpt-test"
    assert request.messages == [{"role": "user", "content": "hello"}]


def test_tool_call_round_trip_feeds_the_result_back(rt, server):
    server.enqueue_tool_call("palyra.echo", {"text": "ping"}, call_id="call_abc",
                             usage={"prompt_tokens": 5, "completion_tokens": 3})
    server.enqueue_text("the tool said ping", usage={"prompt_tokens": 11, "completion_tokens": 4})
    run = rt.send("please echo ping", session_key="k")
    result = run.wait(10)

    assert result.state == "done", result
    assert result.reply_text == "the tool said ping"
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (16, 7, 23)

    [proposal] = tape_of(rt, run.id, "tool_proposal")
    assert proposal["tool_name"] == "palyra.echo" and proposal["input_json"] == {"text": "ping"}
    [decision] = tape_of(rt, run.id, "tool_decision")
    assert decision["kind"] == "allow"
    [tool_result] = tape_of(rt, run.id, "tool_result")
    assert tool_result["success"] is True and tool_result["output_json"] == {"echo": "ping"}
    assert len(tape_of(rt, run.id, "tool_attestation")) == 1

    assert len(server.requests) == 2
    first, second = server.requests
    for request in (first, second):
        specs = {t["function"]["name"]: t for t in request.json["tools"]}
        echo = specs["palyra.echo"]
        assert echo["type"] == "function"
        assert echo["function"]["parameters"]["required"] == ["text"]
        assert echo["function"]["parameters"]["properties"] == {"text": {"type": "string"}}
    messages = second.messages
    assert messages[0] == {"role": "user", "content": "please echo ping"}
    assistant = messages[1]
    assert assistant["role"] == "assistant"
    [call] = assistant["tool_calls"]
    assert call["id"] == "call_abc"
    assert call["function"]["name"] == "palyra.echo"
    assert json.loads(call["function"]["arguments"]) == {"text": "ping"}
    tool_message = messages[2]
    assert tool_message["role"] == "tool"
    assert tool_message["tool_call_id"] == "call_abc"
    content = json.loads(tool_message["content"])
    assert content["success"] is True
    assert content["tool_name"] == "palyra.echo"
    assert content["output"] == {"echo": "ping"}
    assert len(messages) == 3


# -- failures, retries and the circuit ---------------------------------------------------


def test_429_then_success_is_retried_once(rt, server):
    server.enqueue_status(429, error_body("slow down"))
    server.enqueue_text("made it")
    run = rt.send("hello", session_key="k")
    result = run.wait(10)

    assert result.state == "done", result
    assert result.reply_text == "made it"
    [output] = tape_of(rt, run.id, "provider_turn_output")
    assert output["retry_count"] == 1
    assert len(server.requests) == 2


def test_repeated_500s_fail_the_run_without_leaking_the_key(rt, server):
    for _ in range(3):  # the first try and max_retries=2
        server.enqueue_status(500, error_body(f"upstream exploded; your key {API_KEY} is fine"))
    run = rt.send("hello", session_key="k")
    result = run.wait(10)

    assert result.state == "failed"
    assert result.termination_reason == "provider_error"
    assert result.last_error and "500" in result.last_error
    assert API_KEY not in result.last_error and "SECRET123" not in result.last_error
    assert len(server.requests) == 3
    assert tape_of(rt, run.id, "agent_loop.terminated") == [{"reason": "provider_error"}]
    stored = rt.run(run.id)
    assert stored.state == "failed" and "SECRET123" not in (stored.last_error or "")


def test_circuit_opens_after_three_failed_runs_and_then_fails_fast(rt, server):
    for i in range(3):
        for _ in range(3):
            server.enqueue_status(500, error_body("boom"))
        result = rt.send(f"doomed {i}", session_key="k").wait(10)
        assert result.state == "failed" and result.termination_reason == "provider_error"
    assert len(server.requests) == 9

    server.enqueue_text("never asked for")
    started = time.monotonic()
    result = rt.send("one more", session_key="k").wait(10)
    elapsed = time.monotonic() - started

    assert result.state == "failed"
    assert result.termination_reason == "provider_error"
    assert "circuit" in (result.last_error or "").lower()
    assert len(server.requests) == 9, "an open circuit must not reach the server"
    assert elapsed < 1.0


def test_api_key_never_reaches_the_journal(server, state_dir):
    rt = palyra.Runtime.start(state_dir, provider_config(server))
    try:
        run_ids: list[str] = []
        states: list[str] = []

        def run(text: str) -> None:  # one at a time: concurrent runs would race for the script
            handle = rt.send(text, session_key="k")
            run_ids.append(handle.id)
            states.append(handle.wait(10).state)

        server.enqueue_text("plain answer")
        run("hello")
        server.enqueue_tool_call("palyra.echo", {"text": "ping"})
        server.enqueue_text("tool done")
        run("use a tool")
        server.enqueue_status(429, error_body(f"rate limited for Bearer {API_KEY}"))
        server.enqueue_text("after the retry")
        run("retry me")
        for _ in range(3):
            server.enqueue_status(500, error_body(f"bad key {API_KEY}!"))
        run("fail me")
        assert states == ["done", "done", "done", "failed"]

        for run_id in run_ids:
            for event in rt.tape(run_id):
                assert b"SECRET123" not in orjson.dumps(event.to_dict()), event
            assert "SECRET123" not in repr(rt.run(run_id))
        for event in rt.recent_events(1000):
            assert "SECRET123" not in json.dumps(event, default=str)
        assert_no_secret_on_disk(state_dir)  # database plus its WAL while running
    finally:
        rt.stop()
    assert_no_secret_on_disk(state_dir)  # and after the final checkpoint
    assert db_path(state_dir).exists()


def assert_no_secret_on_disk(state_dir: Path) -> None:
    files = [p for p in state_dir.iterdir() if p.is_file()]
    assert db_path(state_dir) in files
    for path in files:
        raw = path.read_bytes()
        for fragment in SECRET_FRAGMENTS:
            assert fragment not in raw, f"{fragment!r} found in {path.name}"


# -- cancellation ---------------------------------------------------------------------


def test_cancelling_a_slow_response_cancels_the_run_within_100ms(rt, server):
    server.enqueue_slow(10, "far too late")
    run = rt.send("take your time", session_key="k")
    assert server.wait_for_requests(1, 5), "the provider was never called"
    # the provider may see the call before the run's in_progress state is committed
    until(lambda: rt.run(run.id).state == "in_progress", what=f"{run.id} in progress")

    # Timed where the run announces its (committed) terminal state, in its own thread: a
    # waiting caller's wake-up on a loaded 2-core box is not part of "reaching the run".
    ended: list[float] = []
    announced = threading.Event()

    def on_event(ev) -> bool:
        if ev.terminal:
            ended.append(time.monotonic())
            announced.set()
        return True

    rt.services.hub.subscribe(run.id, on_event)
    started = time.monotonic()
    answer = rt.cancel(run.id, "user pressed stop")
    result = run.wait(5)
    # the waiting caller may wake before the hub reaches this subscriber
    assert announced.wait(5), "the terminal event was never published"
    elapsed = ended[0] - started

    assert answer["cancel_requested"] is True
    assert result.state == "cancelled"
    assert result.termination_reason == "cancellation"
    assert "user pressed stop" in (result.last_error or "")
    assert elapsed < 0.1, f"cancelled after {elapsed * 1000:.0f} ms"
    stored = rt.run(run.id)
    assert stored.state == "cancelled" and stored.cancel_requested
    assert tape_of(rt, run.id, "agent_loop.terminated") == [{"reason": "cancellation"}]
    time.sleep(0.1)
    assert len(server.requests) == 1, "a cancelled call must not be retried"


# -- live tokens ----------------------------------------------------------------------


def collect_events(run) -> list:
    return list(run.events(timeout=10))


def assert_live_tokens_before_final(events: list, text: str, *, at_least: int) -> None:
    tokens = [e for e in events if e.event_type == "model_token"]
    finals = [i for i, e in enumerate(tokens) if e.payload["is_final"]]
    assert len(finals) == 1, tokens
    live = tokens[: finals[0]]
    assert len(live) >= at_least, tokens
    assert all(not e.payload["is_final"] and e.seq is None for e in live), live
    assert not any(not e.payload["is_final"] for e in tokens[finals[0] + 1:])
    assert "".join(e.payload["token"] for e in live) == text
    assert tokens[finals[0]].payload["token"] == text
    assert events[-1].terminal and events[-1].payload["kind"] == "done"


def test_live_model_token_arrives_before_the_final_one(rt, server):
    # Non-streaming: the provider reports the whole text as one live token.
    server.enqueue_slow(0.3, "one two three")
    run = rt.send("talk to me", session_key="k")
    events = collect_events(run)
    assert_live_tokens_before_final(events, "one two three", at_least=1)


def test_streamed_tokens_arrive_live_before_the_final_one(state_dir):
    with OpenAIServer(token_delay_s=0.05) as server:
        rt = palyra.Runtime.start(state_dir, provider_config(server))
        try:
            server.enqueue_text("alpha beta gamma delta")
            run = rt.send("stream please", session_key="k")
            events = collect_events(run)
            if not server.requests[0].json.get("stream"):
                pytest.skip("the runtime does not request streaming: actors/run.py builds "
                            "ProviderRequest without stream=True, so the provider never streams")
            assert_live_tokens_before_final(events, "alpha beta gamma delta", at_least=2)
        finally:
            rt.stop()
