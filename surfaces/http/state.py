"""Per-app state of the HTTP surface and what a handler receives."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import orjson
from quart import Response

from palyra.access.tokens import ApiToken
from palyra.config import Config
from palyra.diagnostics import palyra_version as version
from palyra.errors import InvalidInput, RuntimeStopped
from palyra.ids import is_ulid
from surfaces import bridge
from surfaces.http.bundle_jobs import BundleJobs
from surfaces.http.metrics import Metrics
from surfaces.http.ratelimit import Clock, RateLimiter, RateLimits
from surfaces.http.streams import BlockingPool, StreamRegistry

ADMIN_PRINCIPAL = "admin"
PRINCIPAL_HEADER = "X-Palyra-Principal"


class Surface:
    """What the app knows: the runtime (started by it or handed to it), the admin
    token, the blocking-call pool, the open event streams, the rate limiter, the
    metrics registry and the support-bundle jobs."""

    def __init__(self, runtime: Any, state_dir: Path, config: Config | dict[str, Any] | None,
                 *, pool_size: int = 4, sse_keepalive: float = 15.0,
                 rate_limits: RateLimits | RateLimiter | None = None,
                 clock: Clock | None = None) -> None:
        self.rt = runtime
        self.owns_runtime = runtime is None
        self.state_dir = state_dir
        self.config = config
        self.token = ""
        self.pool = BlockingPool(pool_size)
        self.streams = StreamRegistry()
        self.sse_keepalive = sse_keepalive
        self.started_monotonic = time.monotonic()
        self.started_unix = int(time.time())
        self.version = version()
        self.probe = JournalProbe()
        self.draining = False  # shutdown began: answer with Connection: close
        self.metrics = Metrics(self)
        self.bundle_jobs = BundleJobs()
        if isinstance(rate_limits, RateLimiter):
            self.limiter = rate_limits
        else:
            limits = RateLimits.from_env() if rate_limits is None else rate_limits
            self.limiter = (RateLimiter(limits) if clock is None
                            else RateLimiter(limits, clock=clock))
        if self.limiter.on_limited is None:
            self.limiter.on_limited = lambda scope: self.metrics.rate_limited.labels(scope).inc()

    @property
    def runtime(self) -> Any:
        rt = self.rt
        if rt is None or rt.stopped.is_set():
            raise RuntimeStopped("the runtime is not running")
        return rt

    def uptime(self) -> float:
        return round(time.monotonic() - self.started_monotonic, 3)

    async def ask(self, name: str, message: Any, timeout: float | None = 30.0) -> Any:
        """A request to an actor through the bridge (no thread, no blocking)."""
        rt = self.runtime
        return await bridge.request(rt.services.names, name, message, timeout=timeout,
                                    retry_for=rt.config.supervision.address_retry_for)


class JournalProbe:
    """Readiness proof that the journal takes writes, at most one write per ``every``
    seconds (a probe polled every second must not grow the journal by 86k rows a day)
    and never more than one in flight (a hung journal must not eat the pool)."""

    def __init__(self, every: float = 5.0) -> None:
        self.every = every
        self.last_ok_at: float | None = None
        self.last_error: str | None = None
        self.in_flight = False


@dataclasses.dataclass
class Call:
    surface: Surface
    path: dict[str, str]
    query: dict[str, Any]
    headers: dict[str, Any]
    body: dict[str, Any]
    raw_headers: Any
    api_token: ApiToken | None = None  # None: the caller used the admin token

    @property
    def rt(self) -> Any:
        return self.surface.runtime

    @property
    def pool(self) -> BlockingPool:
        return self.surface.pool

    def actor_principal(self) -> str:
        """Who an admin write is attributed to: ``X-Palyra-Principal`` or ``admin``."""
        value = (self.raw_headers.get(PRINCIPAL_HEADER) or "").strip()
        if len(value) > 256 or any(ord(c) < 32 for c in value):
            raise InvalidInput(f"{PRINCIPAL_HEADER} is malformed",
                               details={"field": PRINCIPAL_HEADER})
        return value or ADMIN_PRINCIPAL

    def ulid(self, name: str) -> str:
        value = self.path[name]
        if not is_ulid(value):
            raise InvalidInput(f"{name}: must be a canonical ULID", details={"field": name})
        return value


def _default(value: Any) -> Any:
    for attr in ("to_record", "to_dict"):
        method = getattr(value, attr, None)
        if callable(method):
            return method()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(data: Any) -> bytes:
    return orjson.dumps(data, default=_default)


def respond(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(data), status=status, headers=headers,
                    content_type="application/json")
