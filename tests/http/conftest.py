"""Fixtures for the HTTP surface: the real app over a real runtime in ``tmp_path``.

``api`` serves the app through ``app.test_app()`` (lifespan hooks run: the app starts
and stops its own runtime). Streaming responses are read through
``client.request(...)``: the plain test client buffers only 10 body chunks before the
app blocks, so an event stream would deadlock it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from palyra.ids import new_ulid
from surfaces.http import create_app
from surfaces.http.ratelimit import RateLimiter, RateLimits
from tests.support.runtime import merged as with_base

FAST: dict[str, dict[str, Any]] = {
    "supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0},
}
TOOLS: dict[str, dict[str, Any]] = {
    "tools": {"allowed": ["palyra.echo", "palyra.sleep"], "sensitive": ["palyra.echo"]},
    "runs": {"approval_timeout_ms": 30_000},
}
STEP = 10.0  # seconds any single HTTP exchange may take in a test
# Limits no test reaches by accident (the buckets still run on every request); the
# rate-limit tests pass their own limits and a fake clock.
GENEROUS = RateLimits(per_s=1e6, loopback_per_s=1e6, token_per_s=1e6)


def concrete(path: str) -> str:
    """A route path with every parameter filled with a (well-formed) ULID."""
    for name in ("run_id", "approval_id", "policy_id", "job_id", "task_id", "candidate_id",
                 "memory_id", "token_id"):
        path = path.replace("{" + name + "}", new_ulid())
    assert "{" not in path, path
    return path


def merged(config: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`FAST` merged section by section with the test's own config."""
    return with_base(FAST, config)


class Reply:
    def __init__(self, status: int, headers: Any, body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()

    @property
    def error(self) -> dict[str, Any]:
        envelope = self.json
        assert set(envelope) == {"error"}, envelope
        assert set(envelope["error"]) == {"code", "message", "details"}, envelope
        return envelope["error"]

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


class Api:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.client = app.test_client()
        self.surface = app.extensions["palyra"]

    @property
    def rt(self) -> Any:
        return self.surface.rt

    @property
    def token(self) -> str:
        return self.surface.token

    def headers(self, auth: bool | str = True, **extra: str) -> dict[str, str]:
        out = dict(extra)
        if auth is True:
            out["Authorization"] = f"Bearer {self.token}"
        elif isinstance(auth, str):
            out["Authorization"] = auth
        return out

    async def call(self, method: str, path: str, *, json: Any = None, data: bytes | None = None,
                   auth: bool | str = True, headers: dict[str, str] | None = None,
                   query: dict[str, Any] | None = None, client: str | None = None) -> Reply:
        """``client``: the peer address the app sees (the test client gives none)."""
        kwargs: dict[str, Any] = {"headers": {**self.headers(auth), **(headers or {})}}
        if client is not None:
            kwargs["scope_base"] = {"client": (client, 40000)}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        if query is not None:
            kwargs["query_string"] = query
        with trio.fail_after(STEP):
            response = await self.client.open(path, method=method, **kwargs)
            return Reply(response.status_code, response.headers, await response.get_data())

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, json: Any = None, **kw: Any) -> Reply:
        return await self.call("POST", path, json=json, **kw)

    @asynccontextmanager
    async def open_stream(self, path: str, *, method: str = "GET", body: Any = None,
                          headers: dict[str, str] | None = None) -> AsyncIterator[Any]:
        hdrs = {**self.headers(), **(headers or {})}
        raw = b""
        if body is not None:
            raw = orjson.dumps(body)
            hdrs["Content-Type"] = "application/json"
        async with self.client.request(path, method=method, headers=hdrs) as conn:
            await conn.send(raw)
            await conn.send_complete()
            yield conn

    async def stream(self, path: str, *, method: str = "GET", body: Any = None,
                     headers: dict[str, str] | None = None, timeout: float = STEP) -> Reply:
        """The whole body of a streaming response (it must end within ``timeout``)."""
        with trio.fail_after(timeout):
            async with self.open_stream(path, method=method, body=body, headers=headers) as conn:
                chunks = [chunk async for chunk in chunks_of(conn)]
        return Reply(conn.status_code, conn.headers, b"".join(chunks))

    async def send(self, text: str, **fields: Any) -> str:
        reply = await self.post("/admin/v1/runs", {"text": text, **fields})
        assert reply.status == 202, reply
        return reply.json["run_id"]

    async def events(self, run_id: str, **kw: Any) -> list[dict[str, Any]]:
        reply = await self.stream(f"/admin/v1/runs/{run_id}/events", **kw)
        assert reply.status == 200, reply
        return parse_sse(reply.text)


class Follower:
    """Reads a run's event stream in a task; ``wait_for`` an event type meanwhile.

    Run it in a nursery: the nursery ends when the stream does (quart's test connection
    cannot be left early: after a disconnect its __aexit__ waits forever)."""

    def __init__(self, api: Api, run_id: str) -> None:
        self.api, self.run_id = api, run_id
        self.events: list[dict[str, Any]] = []
        self._buffer = ""
        self._changed = trio.Event()

    async def run(self) -> None:
        async with self.api.open_stream(f"/admin/v1/runs/{self.run_id}/events") as conn:
            async for chunk in chunks_of(conn):
                self._buffer += chunk.decode()
                complete, _, _ = self._buffer.rpartition("\n\n")
                self.events = parse_sse(complete + "\n\n") if complete else []
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, event_type: str) -> dict[str, Any]:
        while True:
            for event in self.events:
                if event["event"] == event_type:
                    return event
            await self._changed.wait()


async def chunks_of(conn: Any) -> AsyncIterator[bytes]:
    while True:
        try:
            chunk = await conn.receive()
        except trio.EndOfChannel:
            return
        if chunk:
            yield chunk


def parse_sse(text: str) -> list[dict[str, Any]]:
    """SSE text -> [{"id", "event", "data"}] (data JSON-decoded unless [DONE])."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip() or block.startswith(":"):
            continue
        event: dict[str, Any] = {"id": None, "event": None}
        data = []
        for line in block.split("\n"):
            name, _, value = line.partition(": ")
            if name == "data":
                data.append(value)
            elif name in ("id", "event"):
                event[name] = value
        raw = "\n".join(data)
        event["data"] = raw if raw == "[DONE]" else orjson.loads(raw)
        events.append(event)
    return events


@asynccontextmanager
async def serving(state_dir: Path, config: dict[str, Any] | None = None, *,
                  rate_limits: RateLimits | RateLimiter = GENEROUS) -> AsyncIterator[Api]:
    app = create_app(state_dir=state_dir, config=merged(config), rate_limits=rate_limits)
    async with app.test_app():
        yield Api(app)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    async with serving(tmp_path / "state") as served:
        yield served
