"""The OpenAI chat-completions wire format, without I/O.

Request bodies, non-streaming response parsing, a byte-level Server-Sent-Events decoder
and the accumulator that folds streamed chunks (content deltas, tool-call deltas by
index, the trailing usage chunk) into one turn. The provider feeds these with bytes
from the socket; tests feed them with plain values.
"""

from __future__ import annotations

import email.utils
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from palyra.providers.base import (
    FinishReason,
    Message,
    ProviderRequest,
    ToolCall,
    Usage,
    map_finish_reason,
)
from palyra.validation import is_int


class MalformedResponse(ValueError):
    """The provider answered 2xx with something that is not a chat completion."""


# --------------------------------------------------------------------------- requests


def message_to_wire(message: Message) -> dict[str, Any]:
    wire: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "tool":
        wire["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        wire["content"] = message.content or None
        wire["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.name,
                    "arguments": orjson.dumps(call.arguments).decode(),
                },
            }
            for call in message.tool_calls
        ]
    return wire


def build_chat_body(request: ProviderRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [message_to_wire(m) for m in request.messages],
        "stream": request.stream,
    }
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": tool.name,
                    "description": tool.description,
                    "parameters": tool.parameters,
                },
            }
            for tool in request.tools
        ]
    if request.json_mode:
        body["response_format"] = {"type": "json_object"}
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    return body


# --------------------------------------------------------------------------- responses


@dataclass(frozen=True, slots=True)
class Turn:
    text: str
    tool_calls: tuple[ToolCall, ...]
    finish_reason: FinishReason
    usage: Usage | None


def _parse_arguments(name: str, raw: object) -> dict[str, Any]:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str):
        raise MalformedResponse(f"tool call {name!r}: arguments are not a string")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MalformedResponse(f"tool call {name!r}: arguments are not valid JSON") from None
    if not isinstance(value, dict):
        raise MalformedResponse(f"tool call {name!r}: arguments are not a JSON object")
    return value


def _parse_usage(raw: object) -> Usage | None:
    if not isinstance(raw, Mapping):
        return None
    prompt = raw.get("prompt_tokens")
    completion = raw.get("completion_tokens")
    if not is_int(prompt) or not is_int(completion):
        return None
    total = raw.get("total_tokens")
    return Usage(prompt, completion, total if is_int(total) else prompt + completion)


def _content_text(content: object) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, Mapping))
    raise MalformedResponse("message content is neither text nor parts")


def _finish(raw: object, tool_calls: tuple[ToolCall, ...]) -> FinishReason:
    finish = map_finish_reason(raw if isinstance(raw, str) else None)
    if finish is FinishReason.UNKNOWN and raw is None and tool_calls:
        return FinishReason.TOOL_CALLS
    return finish


def parse_completion(payload: object) -> Turn:
    """Parse a non-streaming ``chat.completion`` body (already JSON-decoded)."""
    if not isinstance(payload, Mapping):
        raise MalformedResponse("completion is not a JSON object")
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise MalformedResponse("completion has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise MalformedResponse("completion choice has no message")
    calls = []
    for i, raw_call in enumerate(message.get("tool_calls") or ()):
        if not isinstance(raw_call, Mapping) or not isinstance(raw_call.get("function"), Mapping):
            raise MalformedResponse("tool call is not an object with a function")
        function = raw_call["function"]
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise MalformedResponse("tool call has no function name")
        call_id = raw_call.get("id")
        calls.append(
            ToolCall(
                call_id if isinstance(call_id, str) and call_id else f"call_{i}",
                name,
                _parse_arguments(name, function.get("arguments")),
            )
        )
    tool_calls = tuple(calls)
    return Turn(
        text=_content_text(message.get("content")),
        tool_calls=tool_calls,
        finish_reason=_finish(choice.get("finish_reason"), tool_calls),
        usage=_parse_usage(payload.get("usage")),
    )


# --------------------------------------------------------------------------- SSE


@dataclass(frozen=True, slots=True)
class SSEEvent:
    data: str
    event: str = "message"


class SSEDecoder:
    """Incremental ``text/event-stream`` decoder over raw bytes.

    Lines end with LF, CRLF or CR; ``data:`` lines of one event are joined with LF and
    the event is dispatched at a blank line; comments (``:``) and ``id``/``retry`` are
    ignored. Chunk boundaries may fall anywhere, even inside a UTF-8 sequence.
    """

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self._event = ""
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                break
            end, skip = cut
            if end + skip == len(self._buffer) and self._buffer[end : end + 1] == b"\r":
                self._pending_cr = True  # might be the CR of a CRLF; drop an LF that follows
            line = self._buffer[:end].decode("utf-8", "replace")
            self._buffer = self._buffer[end + skip :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a last unterminated line and event are dispatched."""
        events: list[SSEEvent] = []
        if self._buffer:
            event = self._line(self._buffer.decode("utf-8", "replace"))
            self._buffer = b""
            if event is not None:
                events.append(event)
        event = self._line("")
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SSEEvent("\n".join(self._data), self._event or "message")
            self._data = []
            self._event = ""
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        return None


def _line_end(buffer: bytes) -> tuple[int, int] | None:
    lf = buffer.find(b"\n")
    cr = buffer.find(b"\r")
    if cr == -1 and lf == -1:
        return None
    if cr == -1 or (lf != -1 and lf < cr):
        return lf, 1
    if cr + 1 < len(buffer) and buffer[cr + 1 : cr + 2] == b"\n":
        return cr, 2
    return cr, 1


# --------------------------------------------------------------------------- chunks


@dataclass(slots=True)
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


class StreamAccumulator:
    """Folds ``chat.completion.chunk`` objects into one :class:`Turn`."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: dict[int, _PartialCall] = {}
        self._finish: object = None
        self._usage: Usage | None = None

    def add(self, chunk: object) -> str:
        """Take one chunk; return its content delta ("" when none)."""
        if not isinstance(chunk, Mapping):
            raise MalformedResponse("stream chunk is not a JSON object")
        usage = _parse_usage(chunk.get("usage"))
        if usage is not None:
            self._usage = usage
        choices = chunk.get("choices")
        if choices is None:
            choices = []
        if not isinstance(choices, list):
            raise MalformedResponse("stream chunk choices is not a list")
        delta_text = ""
        for choice in choices:
            if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason") is not None:
                self._finish = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if not isinstance(delta, Mapping):
                raise MalformedResponse("stream chunk delta is not an object")
            content = delta.get("content")
            if isinstance(content, str) and content:
                self._text.append(content)
                delta_text += content
            for raw in delta.get("tool_calls") or ():
                self._add_call(raw)
        return delta_text

    def _add_call(self, raw: object) -> None:
        if not isinstance(raw, Mapping):
            raise MalformedResponse("tool call delta is not an object")
        index = raw.get("index", len(self._calls))
        if not is_int(index):
            raise MalformedResponse("tool call delta index is not an integer")
        partial = self._calls.setdefault(index, _PartialCall())
        if isinstance(raw.get("id"), str) and raw["id"]:
            partial.id = raw["id"]
        function = raw.get("function") or {}
        if not isinstance(function, Mapping):
            raise MalformedResponse("tool call delta function is not an object")
        name = function.get("name")
        if isinstance(name, str) and name and not partial.name:
            partial.name = name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            partial.arguments.append(arguments)

    def result(self) -> Turn:
        calls = []
        for position, index in enumerate(sorted(self._calls)):
            partial = self._calls[index]
            if not partial.name:
                raise MalformedResponse(f"streamed tool call {index} has no function name")
            calls.append(
                ToolCall(
                    partial.id or f"call_{position}",
                    partial.name,
                    _parse_arguments(partial.name, "".join(partial.arguments)),
                )
            )
        tool_calls = tuple(calls)
        return Turn(
            text="".join(self._text),
            tool_calls=tool_calls,
            finish_reason=_finish(self._finish, tool_calls),
            usage=self._usage,
        )


# --------------------------------------------------------------------------- headers


def parse_retry_after(headers: Mapping[str, str], now_ms: int) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ms = lowered.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000
            if value >= 0:
                return value
        except ValueError:
            pass
    raw = lowered.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        value = float(raw)
        return value if value >= 0 else None
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_ms / 1000)
