"""Rate limits: token buckets per client address and per token, on a fake clock."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from palyra.errors import InvalidInput
from surfaces.http.ratelimit import RateLimiter, RateLimitExceeded, RateLimits, is_loopback
from tests.http.conftest import serving

REMOTE = "203.0.113.7"
OTHER = "198.51.100.20"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limiter(clock: FakeClock, **limits: float) -> RateLimiter:
    return RateLimiter(RateLimits(**limits), clock=clock)


@pytest.mark.trio
async def test_addresses_get_buckets_loopback_more_and_healthz_none(tmp_path):
    clock = FakeClock()
    limits = limiter(clock, per_s=3, loopback_per_s=6, token_per_s=1000)
    async with serving(tmp_path / "state", rate_limits=limits) as api:
        for _ in range(3):
            assert (await api.get("/admin/v1/runs", client=REMOTE)).status == 200
        limited = await api.get("/admin/v1/runs", client=REMOTE)
        assert limited.status == 429, limited
        error = limited.error
        assert error["code"] == "rate_limited"
        assert error["details"]["scope"] == "ip"
        assert error["details"]["retry_after_ms"] == 334  # a third of a second at 3/s
        assert limited.headers["Retry-After"] == "1"
        # other addresses have their own buckets; /healthz is never limited
        assert (await api.get("/admin/v1/runs", client=OTHER)).status == 200
        for _ in range(20):
            assert (await api.get("/healthz", auth=False, client=REMOTE)).status == 200
        # unauthenticated requests pay too (token guessing is limited)
        assert (await api.get("/admin/v1/runs", auth=False, client=REMOTE)).status == 429
        assert (await api.get("/admin/v1/runs", auth=False, client=OTHER)).status == 401
        # time refills the bucket: one request per third of a second
        clock.advance(0.34)
        assert (await api.get("/admin/v1/runs", client=REMOTE)).status == 200
        assert (await api.get("/admin/v1/runs", client=REMOTE)).status == 429
        clock.advance(10)  # never more than the burst
        assert [(await api.get("/livez", client=REMOTE)).status for _ in range(4)] == [
            200, 200, 200, 429]

        # loopback clients (and a peer without an address) get the larger budget
        for client in ("127.0.0.1", "::1", None):
            statuses = [(await api.get("/livez", client=client)).status for _ in range(7)]
            assert statuses == [200] * 6 + [429], (client, statuses)

        reply = await api.get("/metrics", client="127.0.0.2")
        [family] = [f for f in text_string_to_metric_families(reply.text)
                    if f.name == "palyra_http_rate_limited"]
        counts = {s.labels["scope"]: s.value for s in family.samples if s.name.endswith("_total")}
        assert counts == {"ip": 7, "token": 0}


@pytest.mark.trio
async def test_the_token_bucket_spans_addresses(tmp_path):
    clock = FakeClock()
    limits = limiter(clock, per_s=1000, token_per_s=2, token_burst=4)
    async with serving(tmp_path / "state", rate_limits=limits) as api:
        statuses = [(await api.get("/livez", client=f"192.0.2.{i}")).status for i in range(5)]
        assert statuses == [200] * 4 + [429]
        limited = await api.get("/livez", client="192.0.2.99")
        assert limited.error["details"]["scope"] == "token"
        assert limited.headers["Retry-After"] == "1"
        # a wrong token is refused before it reaches the token bucket
        assert (await api.get("/livez", auth="Bearer nope", client="192.0.2.1")).status == 401
        clock.advance(0.5)
        assert (await api.get("/livez", client="192.0.2.1")).status == 200


def test_the_address_table_is_bounded_and_drops_the_least_recently_used():
    clock = FakeClock()
    rl = limiter(clock, per_s=1, burst=1, max_ip_buckets=3)
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        rl.check_ip(address)
    with pytest.raises(RateLimitExceeded):
        rl.check_ip("10.0.0.1")  # touched: now the most recently used
    rl.check_ip("10.0.0.4")  # evicts 10.0.0.2
    assert len(rl.ips) == 3 and "10.0.0.2" not in rl.ips and "10.0.0.1" in rl.ips
    assert rl.ips.evicted == 1
    rl.check_ip("10.0.0.2")  # back with a fresh (full) bucket
    for i in range(1000):
        rl.check_ip(f"10.1.{i // 256}.{i % 256}")  # every address new: never limited
    assert len(rl.ips) == 3
    default = RateLimiter(RateLimits(), clock=clock)
    for i in range(5000):
        default.check_ip(f"10.2.{i // 256}.{i % 256}")
    assert len(default.ips) == 4096  # spec section 0: at most 4096 address buckets


def test_retry_after_is_whole_seconds_rounded_up():
    clock = FakeClock()
    rl = limiter(clock, per_s=0.25, burst=1)
    rl.check_ip(REMOTE)
    with pytest.raises(RateLimitExceeded) as caught:
        rl.check_ip(REMOTE)
    assert caught.value.retry_after == pytest.approx(4.0)
    assert caught.value.retry_after_header == "4"
    clock.advance(3.9)
    with pytest.raises(RateLimitExceeded) as caught:
        rl.check_ip(REMOTE)
    assert caught.value.retry_after_header == "1"  # never 0
    clock.advance(0.1)
    rl.check_ip(REMOTE)


def test_configuration_from_the_environment():
    assert RateLimits.from_env({}) == RateLimits()
    assert RateLimits().ip(loopback=False) == (30, 30)
    assert RateLimits().ip(loopback=True) == (120, 120)
    limits = RateLimits.from_env({"PALYRA_RATE_LIMIT_PER_S": "5", "PALYRA_RATE_LIMIT_BURST": "8",
                                  "PALYRA_RATE_LIMIT_LOOPBACK_PER_S": "50",
                                  "PALYRA_RATE_LIMIT_TOKEN_PER_S": "0"})
    assert limits.ip(loopback=False) == (5, 8) and limits.ip(loopback=True) == (50, 50)
    rl = RateLimiter(limits, clock=FakeClock())
    for _ in range(100):
        rl.check_token("t")  # a rate of 0 turns the bucket off
    with pytest.raises(InvalidInput):
        RateLimits.from_env({"PALYRA_RATE_LIMIT_PER_S": "fast"})
    with pytest.raises(InvalidInput):
        RateLimits(per_s=-1)
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("10.0.0.1")
    assert not is_loopback("not-an-address")
