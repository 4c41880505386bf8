"""The OpenAI-compatible surface: /v1/models and /v1/chat/completions."""

from __future__ import annotations

import pytest

from tests.http.conftest import parse_sse

pytestmark = pytest.mark.trio

MESSAGES = [
    {"role": "system", "content": "be terse"},
    {"role": "user", "content": "an earlier question"},
    {"role": "assistant", "content": "an earlier answer"},
    {"role": "user", "content": "alpha beta gamma"},
]


async def test_models_lists_the_configured_model(api):
    reply = await api.get("/v1/models")
    assert reply.status == 200
    body = reply.json
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["deterministic"]
    assert body["data"][0]["object"] == "model"


async def test_chat_completion_runs_the_last_user_message(api):
    reply = await api.post("/v1/chat/completions", {
        "model": "deterministic", "messages": MESSAGES, "user": "user:alice", "temperature": 0,
    })
    assert reply.status == 200, reply
    body = reply.json
    assert body["object"] == "chat.completion" and body["model"] == "deterministic"
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": "alpha beta gamma"}
    assert choice["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    run_id = reply.headers["X-Palyra-Run-Id"]
    assert body["id"] == f"chatcmpl-{run_id}"
    run = (await api.get(f"/admin/v1/runs/{run_id}")).json
    assert run["identity"]["principal"] == "user:alice" and run["state"] == "done"

    default = await api.post("/v1/chat/completions", {
        "model": "deterministic", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "parts "}, {"type": "text", "text": "joined"}]}]})
    assert default.json["choices"][0]["message"]["content"] == "parts joined"
    run = (await api.get(f"/admin/v1/runs/{default.headers['X-Palyra-Run-Id']}")).json
    assert run["identity"]["principal"] == "openai:default"


async def test_streamed_chat_completion_relays_tokens_then_usage_then_done(api):
    reply = await api.stream("/v1/chat/completions", method="POST", body={
        "model": "deterministic", "messages": MESSAGES, "stream": True})
    assert reply.status == 200, reply
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(reply.text)
    assert events[-1]["data"] == "[DONE]"
    chunks = [e["data"] for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1]]
    assert len(deltas) == 3  # one live model_token per word
    assert "".join(deltas) == "alpha beta gamma"
    last = chunks[-1]
    assert last["choices"][0]["finish_reason"] == "stop"
    assert last["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


async def test_chat_completion_errors(api):
    unknown = await api.post("/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES})
    assert unknown.status == 404 and unknown.error["details"]["field"] == "model"
    no_user = await api.post("/v1/chat/completions", {
        "model": "deterministic", "messages": [{"role": "system", "content": "x"}]})
    assert no_user.status == 400 and no_user.error["details"]["field"] == "messages"
    tools = await api.post("/v1/chat/completions", {
        "model": "deterministic", "messages": MESSAGES, "tools": []})
    assert tools.status == 400 and tools.error["details"]["field"] == "tools"
    role = await api.post("/v1/chat/completions", {
        "model": "deterministic", "messages": [{"role": "robot", "content": "x"}]})
    assert role.status == 400 and role.error["details"]["field"] == "messages[0].role"
    image = await api.post("/v1/chat/completions", {"model": "deterministic", "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]})
    assert image.status == 400
    failed = await api.post("/v1/chat/completions", {
        "model": "deterministic", "messages": [{"role": "user", "content": "x\n@fail internal"}]})
    assert failed.status == 502, failed
    assert failed.error["code"] == "run_not_completed"
    assert failed.error["details"]["state"] == "failed"


async def test_a_failed_streamed_completion_ends_with_an_error_event(api):
    reply = await api.stream("/v1/chat/completions", method="POST", body={
        "model": "deterministic", "stream": True,
        "messages": [{"role": "user", "content": "x\n@fail internal"}]})
    events = parse_sse(reply.text)
    assert events[-1]["data"]["error"]["code"] == "run_not_completed"
