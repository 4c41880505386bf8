"""Token-bucket rate limits per client address and per API token (spec section 0).

Every request but ``/healthz`` takes one token from the bucket of its client address
(checked before authentication, so a flood of wrong tokens is limited too), and an
authenticated request also takes one from the bucket of its bearer token: the admin
token's at the configured per-token rate, an API token's (keyed by its id) at the
token's own ``rate_limit_per_minute``. An empty
bucket is a ``429`` with ``Retry-After`` (whole seconds, rounded up) and the error
envelope (code ``rate_limited``, ``details.scope`` ``ip`` or ``token``,
``details.retry_after_ms``).

Defaults: 30 requests/s per address, 120/s for loopback clients (and for a local
socket without an address), 120/s per token; each bucket holds one second's worth
(the burst). At most 4096 address buckets are kept: past that the least recently used
is dropped (a dropped bucket is a full one when the address comes back, so eviction
can only ever be generous). The address is the TCP peer: ``X-Forwarded-For`` is not
trusted, so behind a reverse proxy every client shares the proxy's bucket.

Configuration: :class:`RateLimits` handed to ``create_app(rate_limits=...)``, or the
environment (``PALYRA_RATE_LIMIT_PER_S``, ``PALYRA_RATE_LIMIT_BURST``,
``PALYRA_RATE_LIMIT_LOOPBACK_PER_S``, ``PALYRA_RATE_LIMIT_LOOPBACK_BURST``,
``PALYRA_RATE_LIMIT_TOKEN_PER_S``, ``PALYRA_RATE_LIMIT_TOKEN_BURST``). A rate of 0
turns that kind of bucket off. The clock is injectable: tests advance it instead of
sleeping. Everything here runs on the trio thread; nothing needs a lock.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from palyra.errors import InvalidInput, RateLimited

Clock = Callable[[], float]

ENV_PREFIX = "PALYRA_RATE_LIMIT_"


class RateLimitExceeded(RateLimited):
    """A 429; ``retry_after`` (seconds) becomes the ``Retry-After`` header."""

    def __init__(self, message: str, *, scope: str, retry_after: float) -> None:
        super().__init__(message, details={"scope": scope,
                                           "retry_after_ms": math.ceil(retry_after * 1000)})
        self.retry_after = retry_after

    @property
    def retry_after_header(self) -> str:
        return str(max(1, math.ceil(self.retry_after)))


@dataclasses.dataclass(frozen=True)
class RateLimits:
    """Rates in requests per second; a ``None`` burst means one second's worth."""

    per_s: float = 30.0
    burst: float | None = None
    loopback_per_s: float = 120.0
    loopback_burst: float | None = None
    token_per_s: float = 120.0
    token_burst: float | None = None
    max_ip_buckets: int = 4096
    max_token_buckets: int = 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidInput(f"rate limit {field.name} must be a finite number >= 0",
                                   details={"field": field.name})
        if self.max_ip_buckets < 1 or self.max_token_buckets < 1:
            raise InvalidInput("rate limit bucket counts must be >= 1",
                               details={"field": "max_ip_buckets"})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RateLimits:
        env = os.environ if env is None else env
        values: dict[str, float] = {}
        for field in dataclasses.fields(cls):
            if field.name.startswith("max_"):
                continue
            name = ENV_PREFIX + field.name.upper()
            text = env.get(name)
            if text is None or not text.strip():
                continue
            try:
                values[field.name] = float(text)
            except ValueError:
                raise InvalidInput(f"{name} must be a number, got {text!r}",
                                   details={"field": name}) from None
        return cls(**values)

    @classmethod
    def unlimited(cls) -> RateLimits:
        return cls(per_s=0, loopback_per_s=0, token_per_s=0)

    def ip(self, loopback: bool) -> tuple[float, float]:
        rate = self.loopback_per_s if loopback else self.per_s
        burst = self.loopback_burst if loopback else self.burst
        return rate, rate if burst is None else burst

    def token(self) -> tuple[float, float]:
        return self.token_per_s, self.token_per_s if self.token_burst is None else self.token_burst


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity
        self.updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when granted, else the seconds until one is there."""
        if now > self.updated:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class BucketTable:
    """At most ``limit`` buckets, least recently used dropped first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def take(self, key: str, rate: float, capacity: float, now: float) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.limit:
                self._buckets.popitem(last=False)
                self.evicted += 1
            bucket = self._buckets[key] = TokenBucket(rate, capacity, now)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)


def is_loopback(address: str | None) -> bool:
    """Loopback peers, and peers without an address (a local socket) count as local."""
    if not address:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class RateLimiter:
    def __init__(self, limits: RateLimits | None = None, *, clock: Clock = time.monotonic,
                 on_limited: Callable[[str], None] | None = None) -> None:
        self.limits = limits or RateLimits()
        self.clock = clock
        self.ips = BucketTable(self.limits.max_ip_buckets)
        self.tokens = BucketTable(self.limits.max_token_buckets)
        self.on_limited = on_limited

    def check_ip(self, address: str | None) -> None:
        loopback = is_loopback(address)
        rate, burst = self.limits.ip(loopback)
        if rate <= 0:
            return
        key = address or "local"
        wait = self.ips.take(key, rate, burst, self.clock())
        if wait:
            self._limited("ip", f"too many requests from {key} (limit {rate:g}/s)", wait)

    def check_token(self, token: str) -> None:
        """The admin token's bucket (the configured per-token rate)."""
        rate, burst = self.limits.token()
        if rate <= 0:
            return
        # keyed by a digest: the table must not hold bearer secrets
        key = hashlib.sha256(token.encode("utf-8")).hexdigest()[:32]
        self._take_token(key, rate, burst, f"{rate:g}/s")

    def check_api_token(self, token_id: str, per_minute: int) -> None:
        """An API token's bucket, keyed by its id, at its own ``rate_limit_per_minute``
        (a bucket holds one minute's worth; the configured per-token rate does not apply)."""
        self._take_token(f"api:{token_id}", per_minute / 60.0, float(per_minute),
                         f"{per_minute}/min")

    def _take_token(self, key: str, rate: float, burst: float, limit: str) -> None:
        wait = self.tokens.take(key, rate, burst, self.clock())
        if wait:
            self._limited("token", f"too many requests with this token (limit {limit})", wait)

    def _limited(self, scope: str, message: str, wait: float) -> None:
        if self.on_limited is not None:
            self.on_limited(scope)
        raise RateLimitExceeded(message, scope=scope, retry_after=wait)
