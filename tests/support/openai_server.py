"""A scripted local OpenAI-compatible server for tests (``POST /v1/chat/completions``).

Usage::

    with OpenAIServer() as server:
        server.enqueue_status(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
        server.enqueue_text("hello there", usage={"prompt_tokens": 3, "completion_tokens": 2})
        provider = OpenAICompatibleProvider(server.base_url, api_key="sk-test",
                                            allow_private_base_url=True)
        ...
        assert server.requests[0].headers["authorization"] == "Bearer sk-test"

Each ``/chat/completions`` request consumes the next scripted response; with an empty
queue the server echoes the last user message. When the request body has
``"stream": true`` the text is sent as SSE chunks word by word (``token_delay_s``
apart), then a finish chunk, a usage chunk when ``stream_options.include_usage`` is set,
and ``data: [DONE]``. Scripted statuses are sent as-is, streaming or not.

Framing: request bodies are read by ``Content-Length`` or chunked transfer coding;
responses carry ``Content-Length`` or are chunked (streams). Every wait inside a
handler waits on the server's stop event, and :meth:`OpenAIServer.stop` shuts down the
open connections, so stopping never waits for a slow script or an idle keep-alive.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["OpenAIServer", "RecordedRequest"]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    json: Any  # None when the body is not JSON

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list((self.json or {}).get("messages", []))


@dataclass
class _Script:
    kind: str  # "text" | "tool_calls" | "status" | "sse"
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] | None = None
    finish_reason: str | None = None
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    token_delay_s: float | None = None
    events: list[str] = field(default_factory=list)


def _words(text: str) -> int:
    return len(text.split())


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, owner: OpenAIServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.add(request)
        super().process_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            return  # a client that cancelled or went away is business as usual here
        super().handle_error(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10  # idle keep-alive connections end on their own
    server: _Server

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; without this, Nagle plus the
        # client's delayed ACK adds ~40 ms to every response
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass

    # ----------------------------------------------------------------- framing

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts = []
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(1024)  # CRLF after the chunk
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send_json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _send_event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self._send_chunk(f"data: {data}\n\n".encode())

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    # ----------------------------------------------------------------- routes

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        if self.path.rstrip("/").endswith("/models"):
            self._send_json(200, {"object": "list", "data": [{"id": "test-model"}]})
        else:
            self._send_json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        owner = self.server.owner
        raw = self._read_body()
        try:
            parsed = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        owner._record(
            RecordedRequest(
                "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, raw, parsed
            )
        )
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": "not found"}})
            return
        try:
            owner._serve(self, parsed if isinstance(parsed, dict) else {})
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, OSError):
            self.close_connection = True  # the client went away (e.g. it cancelled)


class OpenAIServer:
    """Scripted OpenAI-compatible server on ``127.0.0.1:<ephemeral>`` (context manager)."""

    def __init__(self, *, token_delay_s: float = 0.0, model: str = "test-model") -> None:
        self.token_delay_s = token_delay_s
        self.model = model
        self._scripts: deque[_Script] = deque()
        self._requests: list[RecordedRequest] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> OpenAIServer:
        self._httpd = _Server(self, ("127.0.0.1", 0))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="openai-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        httpd = self._httpd
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        with httpd.sockets_lock:
            open_sockets = list(httpd.open_sockets)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ----------------------------------------------------------------- script

    def _enqueue(self, script: _Script) -> None:
        with self._cond:
            self._scripts.append(script)

    def enqueue_text(
        self,
        text: str,
        usage: dict[str, int] | None = None,
        *,
        finish_reason: str = "stop",
        token_delay_s: float | None = None,
        delay_s: float = 0.0,
    ) -> None:
        """Answer with ``text`` (``usage`` keys: prompt_tokens, completion_tokens[, total])."""
        self._enqueue(
            _Script(
                "text",
                text=text,
                usage=usage,
                finish_reason=finish_reason,
                token_delay_s=token_delay_s,
                delay_s=delay_s,
            )
        )

    def enqueue_tool_call(
        self,
        name: str,
        args: dict[str, Any],
        *,
        call_id: str = "call_0",
        text: str = "",
        usage: dict[str, int] | None = None,
    ) -> None:
        self.enqueue_tool_calls([(name, args)], ids=[call_id], text=text, usage=usage)

    def enqueue_tool_calls(
        self,
        calls: list[tuple[str, dict[str, Any]]],
        *,
        ids: list[str] | None = None,
        text: str = "",
        usage: dict[str, int] | None = None,
    ) -> None:
        ids = ids or [f"call_{i}" for i in range(len(calls))]
        tool_calls = [
            {"id": call_id, "name": name, "arguments": json.dumps(args)}
            for call_id, (name, args) in zip(ids, calls, strict=True)
        ]
        self._enqueue(
            _Script(
                "tool_calls",
                text=text,
                tool_calls=tool_calls,
                usage=usage,
                finish_reason="tool_calls",
            )
        )

    def enqueue_status(
        self,
        status: int,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer with this status; ``body`` may be a dict (JSON), str or bytes."""
        if body is None:
            body = {"error": {"message": f"scripted status {status}", "type": "server_error"}}
        if isinstance(body, str):
            raw = body.encode()
        elif isinstance(body, bytes):
            raw = body
        else:
            raw = json.dumps(body).encode()
        self._enqueue(_Script("status", status=status, body=raw, headers=dict(headers or {})))

    def enqueue_slow(self, seconds: float, text: str) -> None:
        """Wait ``seconds`` before the answer (streaming: after the headers and role chunk)."""
        self.enqueue_text(text, delay_s=seconds)

    def enqueue_sse(self, events: list[Any]) -> None:
        """Stream exactly these ``data:`` payloads (dicts as JSON), with no ``[DONE]``."""
        self._enqueue(
            _Script("sse", events=[e if isinstance(e, str) else json.dumps(e) for e in events])
        )

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._scripts)

    # ----------------------------------------------------------------- observation

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests arrived (True) or ``timeout`` (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._requests) >= count, timeout)

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    # ----------------------------------------------------------------- serving

    def _next(self, request: dict[str, Any]) -> _Script:
        with self._cond:
            if self._scripts:
                return self._scripts.popleft()
        messages = request.get("messages") or []
        user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = _content_text(user[-1].get("content")) if user else ""
        return _Script("text", text=text, finish_reason="stop")

    def _usage(self, script: _Script, request: dict[str, Any]) -> dict[str, int]:
        if script.usage is not None:
            usage = dict(script.usage)
        else:
            prompt = sum(
                _words(_content_text(m.get("content")))
                for m in request.get("messages") or []
                if isinstance(m, dict)
            )
            usage = {"prompt_tokens": prompt, "completion_tokens": max(1, _words(script.text))}
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        return usage

    def _wait(self, seconds: float) -> bool:
        """Wait unless the server stops meanwhile (False)."""
        return seconds <= 0 or not self._stop.wait(seconds)

    def _serve(self, handler: _Handler, request: dict[str, Any]) -> None:
        script = self._next(request)
        if script.kind == "status":
            if script.delay_s and not self._wait(script.delay_s):
                handler.close_connection = True
                return
            handler._send_json(script.status, script.body, script.headers)
            return
        if request.get("stream"):
            self._serve_stream(handler, request, script)
            return
        if script.delay_s and not self._wait(script.delay_s):
            handler.close_connection = True
            return
        message: dict[str, Any] = {"role": "assistant", "content": script.text}
        if script.tool_calls:
            message["content"] = script.text or None
            message["tool_calls"] = [
                {
                    "id": c["id"],
                    "type": "function",
                    "function": {"name": c["name"], "arguments": c["arguments"]},
                }
                for c in script.tool_calls
            ]
        handler._send_json(
            200,
            {
                "id": f"chatcmpl-{next(self._ids)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": request.get("model") or self.model,
                "choices": [
                    {"index": 0, "message": message, "finish_reason": script.finish_reason}
                ],
                "usage": self._usage(script, request),
            },
        )

    def _serve_stream(self, handler: _Handler, request: dict[str, Any], script: _Script) -> None:
        handler._start_stream()
        if script.kind == "sse":
            for event in script.events:
                handler._send_event(event)
            handler._end_stream()
            return
        base = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": request.get("model") or self.model,
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return {**base, "choices": [choice]}

        handler._send_event(chunk({"role": "assistant", "content": ""}))
        if script.delay_s and not self._wait(script.delay_s):
            handler.close_connection = True
            return
        delay = self.token_delay_s if script.token_delay_s is None else script.token_delay_s
        for i, piece in enumerate(re.findall(r"\s*\S+", script.text)):
            if i and delay and not self._wait(delay):
                handler.close_connection = True
                return
            handler._send_event(chunk({"content": piece}))
        for index, call in enumerate(script.tool_calls):
            head = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["name"], "arguments": ""},
            }
            handler._send_event(chunk({"tool_calls": [head]}))
            arguments = call["arguments"]
            for start in range(0, len(arguments), 4):
                piece = {"index": index, "function": {"arguments": arguments[start : start + 4]}}
                handler._send_event(chunk({"tool_calls": [piece]}))
        handler._send_event(chunk({}, script.finish_reason or "stop"))
        if (request.get("stream_options") or {}).get("include_usage"):
            handler._send_event({**base, "choices": [], "usage": self._usage(script, request)})
        handler._send_event("[DONE]")
        handler._end_stream()
