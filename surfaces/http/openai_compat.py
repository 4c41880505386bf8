"""The OpenAI-compatible surface: ``/v1/models`` and ``/v1/chat/completions``.

Each completion is one run through the gateway, in a fresh session of its principal:
with an API token, always the token's principal (``user`` is accepted, as OpenAI
clients send it, but cannot move the run to another principal: a token acts as exactly
one identity); with the admin token, ``user`` (or ``openai:default``). Only the last
user message is sent, because the
request carries the conversation and the session would otherwise replay its own
history on top. Streaming relays the run's live ``model_token`` events.
"""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any

import trio
from quart import Response

from palyra.errors import InvalidInput, NotFound, Timeout
from palyra.handles import result_from_status
from palyra.ids import new_ulid
from palyra.records import Run, RunResult
from surfaces.bridge import TerminalSink, TrioSink
from surfaces.http.errors import RunNotCompleted
from surfaces.http.schema import SSE, Body, Field, obj
from surfaces.http.state import Call, respond
from surfaces.http.streams import SSE_HEADERS, SSE_KEEPALIVE, follow_run, sse

DEFAULT_PRINCIPAL = "openai:default"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")

CHAT_COMPLETION = Body("ChatCompletionRequest", (
    Field("model", "string", required=True, description="see GET /v1/models"),
    Field("messages", "array", required=True, items="object"),
    Field("stream", "boolean"),
    Field("user", "string", max_length=256,
          description="the principal of the run (admin token only; with an API token the "
                      "run is the token's principal's)"),
    # Accepted for client compatibility and ignored: the daemon's routing and governance
    # decide how the model is called.
    Field("temperature", "number"),
    Field("top_p", "number"),
    Field("max_tokens", "integer"),
    Field("max_completion_tokens", "integer"),
    Field("stop", "string|array"),
    Field("presence_penalty", "number"),
    Field("frequency_penalty", "number"),
    Field("seed", "integer"),
    Field("n", "integer", enum=(1,)),
    Field("stream_options", "object"),
    Field("metadata", "object"),
), description="Fields not listed are rejected (tools, functions, n>1 are not supported).")


def _model(call: Call) -> tuple[str, str]:
    snapshot = call.rt.services.provider.status_snapshot()
    return snapshot.get("model_id") or "default", snapshot.get("provider_id") or "palyra"


async def list_models(call: Call) -> Any:
    model, owner = _model(call)
    return respond({"object": "list", "data": [
        {"id": model, "object": "model", "created": call.surface.started_unix, "owned_by": owner},
    ]})


def _last_user_text(messages: list[Any]) -> str:
    text = None
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidInput(f"{field} must be an object", details={"field": field})
        role = message.get("role")
        if role not in ROLES:
            raise InvalidInput(f"{field}.role must be one of {', '.join(ROLES)}",
                               details={"field": f"{field}.role"})
        if role == "user":
            text = _content_text(message.get("content"), f"{field}.content")
    if text is None:
        raise InvalidInput("messages must contain a user message", details={"field": "messages"})
    if not text.strip():
        raise InvalidInput("the last user message is empty", details={"field": "messages"})
    return text


def _content_text(content: Any, field: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(
                    part.get("text"), str):
                raise InvalidInput(f"{field}[{j}] must be a text part (other kinds are not "
                                   "supported)", details={"field": f"{field}[{j}]"})
            parts.append(part["text"])
        return "".join(parts)
    raise InvalidInput(f"{field} must be a string or a list of text parts",
                       details={"field": field})


def principal_of(call: Call) -> str:
    """Whom a completion's run belongs to (see the module docstring)."""
    if call.api_token is not None:
        return call.api_token.principal
    return call.body.get("user") or DEFAULT_PRINCIPAL


async def chat_completions(call: Call) -> Any:
    s, rt, body = call.surface, call.rt, call.body
    model, _ = _model(call)
    if body["model"] != model:
        raise NotFound(f"model {body['model']!r} is not served here (GET /v1/models)",
                       details={"field": "model", "models": [model]})
    if not body["messages"]:
        raise InvalidInput("messages must not be empty", details={"field": "messages"})
    text = _last_user_text(body["messages"])
    principal = principal_of(call)
    run_id = new_ulid()
    stream = bool(body.get("stream"))
    # Subscribe before the run exists: nothing can slip past. A non-streaming answer
    # needs only the terminal event (it carries the reply and the usage).
    sink = TrioSink(1024) if stream else TerminalSink(4)
    rt.services.hub.subscribe(run_id, sink)
    try:
        handle = await rt.aio.send(text, principal=principal, run_id=run_id)
    except BaseException:
        rt.services.hub.unsubscribe(run_id, sink)
        raise
    base = {"id": f"chatcmpl-{handle.id}", "created": int(time.time()), "model": model}
    headers = {"X-Palyra-Run-Id": handle.id, "X-Palyra-Session-Id": handle.session_id}
    if stream:
        events = follow_run(rt, s.pool, s.streams, run_id, sink=sink, keepalive=s.sse_keepalive)
        response = Response(_stream(call, events, base), 200,
                            headers={**SSE_HEADERS, **headers}, content_type=SSE)
        response.timeout = None
        return response
    limit = rt.config.runs.wall_clock_ms / 1000 + 30
    terminal = None
    with trio.move_on_after(limit):
        try:
            terminal = await sink.receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            terminal = None
    rt.services.hub.unsubscribe(run_id, sink)
    if terminal is None:  # timed out (or shutting down): the database says how it ended
        run: Run = await s.pool.run(rt.run, handle.id)
        if not run.terminal:
            raise Timeout(f"run {handle.id} did not finish within {limit:.0f}s",
                          details={"run_id": handle.id})
        result = run.result()
    else:
        result = result_from_status(handle.id, handle.session_id, terminal.payload)
    _require_done(result)
    return respond({
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": result.reply_text or ""}}],
        "usage": _usage(result),
        "system_fingerprint": None,
    }, headers=headers)


def _usage(run: Run | RunResult) -> dict[str, int]:
    return {"prompt_tokens": run.usage.prompt_tokens,
            "completion_tokens": run.usage.completion_tokens,
            "total_tokens": run.usage.total_tokens}


def _require_done(run: Run | RunResult) -> None:
    if run.state != "done":
        raise RunNotCompleted(
            f"run {run.run_id} ended {run.state}: {run.last_error or run.termination_reason}",
            details={"run_id": run.run_id, "state": run.state, "last_error": run.last_error,
                     "termination_reason": run.termination_reason},
        )


async def _stream(call: Call, events: Any, base: dict[str, Any]) -> Any:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        data = {**base, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                             "logprobs": None}], **extra}
        return sse(None, data)

    yield chunk({"role": "assistant", "content": ""})
    streamed: list[str] = []
    async with aclosing(events):
        async for event in events:
            if event is None:
                yield SSE_KEEPALIVE
            elif event.event_type == "model_token" and not event.payload.get("is_final"):
                token = event.payload.get("token")
                if isinstance(token, str) and token:
                    streamed.append(token)
                    yield chunk({"content": token})
            elif event.terminal:
                break
    run: Run = await call.pool.run(call.rt.run, base["id"].removeprefix("chatcmpl-"))
    try:
        _require_done(run)
    except RunNotCompleted as exc:
        yield sse(None, exc.envelope())
        return
    # Nothing streamed (a provider that cannot stream) or the stream fell behind and
    # was caught up from the tape: send what the client has not seen yet.
    sent, reply = "".join(streamed), run.reply_text or ""
    if reply.startswith(sent) and len(reply) > len(sent):
        yield chunk({"content": reply[len(sent):]})
    yield chunk({}, "stop", usage=_usage(run))
    yield b"data: [DONE]\n\n"


def schemas() -> dict[str, Any]:
    usage = obj({"prompt_tokens": {"type": "integer"}, "completion_tokens": {"type": "integer"},
                 "total_tokens": {"type": "integer"}})
    return {
        "ModelList": obj({"object": {"const": "list"}, "data": {"type": "array", "items": obj({
            "id": {"type": "string"}, "object": {"const": "model"},
            "created": {"type": "integer"}, "owned_by": {"type": "string"}})}}),
        "ChatCompletion": obj({
            "id": {"type": "string"}, "object": {"const": "chat.completion"},
            "created": {"type": "integer"}, "model": {"type": "string"},
            "choices": {"type": "array", "items": {"type": "object"}}, "usage": usage,
        }, description="with stream=true: SSE of chat.completion.chunk objects, then [DONE]"),
    }
