"""Supervision costs: name-addressed ask vs raw pykka ask, restart time, hang detection.

Prints one JSON line:
- ``ask_us``: median round trip of ``Address.call`` (name resolved on every send) beside a
  raw ``ref.ask(ProxyCall)`` on the same actor, measured in interleaved rounds; ratio.
- ``restart_ms``: from ``chaos.kill`` to the next successful call through the name
  (p50/p99 over many kills).
- ``hang_detect_ms``: from ``chaos.hang`` to the successor answering through the name,
  beside the probe interval (target: within two intervals).
"""

from __future__ import annotations

import time

import pykka
from _common import emit, median, pct
from pykka.messages import ProxyCall

from supervisors import Address, Chaos, ChildSpec, Services, Supervised, start_root, supervisor_spec


class Echo(Supervised):
    def ping(self, x: int) -> int:
        return x


def ask_costs(services: Services, rounds: int = 30, per_round: int = 2000) -> dict:
    addr = Address(services.names, "echo")
    ref = services.names.get("echo")
    call = ProxyCall(attr_path=("ping",), args=(1,), kwargs={})
    named, raw = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            addr.call("ping", 1)
        named.append((time.perf_counter() - t0) / per_round)
        t0 = time.perf_counter()
        for _ in range(per_round):
            ref.ask(call)
        raw.append((time.perf_counter() - t0) / per_round)
    n, r = median(named) * 1e6, median(raw) * 1e6
    return {"named_us": round(n, 2), "raw_pykka_us": round(r, 2), "ratio": round(n / r, 3)}


def restart_times(services: Services, kills: int = 300) -> dict:
    chaos = Chaos(services.names)
    addr = Address(services.names, "victim")
    samples = []
    for _ in range(kills):
        addr.call("ping", 1)
        t0 = time.perf_counter()
        chaos.kill("victim")
        addr.call("ping", 1)
        samples.append(time.perf_counter() - t0)
    return {
        "p50_ms": round(pct(samples, 50) * 1e3, 3),
        "p99_ms": round(pct(samples, 99) * 1e3, 3),
        "kills": kills,
    }


def hang_detection(services: Services, interval: float, trials: int = 15) -> dict:
    chaos = Chaos(services.names)
    addr = Address(services.names, "sleeper", retry_for=10)
    samples = []
    for _ in range(trials):
        before = services.names.get("sleeper")
        addr.call("ping", 1)
        t0 = time.perf_counter()
        chaos.hang("sleeper", 5 * interval)
        services.names.wait_for_change("sleeper", before, 10)
        addr.call("ping", 1)
        samples.append(time.perf_counter() - t0)
    return {
        "probe_interval_ms": interval * 1e3,
        "p50_ms": round(pct(samples, 50) * 1e3, 1),
        "max_ms": round(max(samples) * 1e3, 1),
        "max_in_intervals": round(max(samples) / interval, 2),
    }


def main() -> None:
    interval = 0.1
    services = Services()
    root = start_root(
        supervisor_spec(
            "root",
            [
                ChildSpec(name="echo", actor=Echo, probe_interval=None),
                ChildSpec(name="victim", actor=Echo, probe_interval=None),
                ChildSpec(name="sleeper", actor=Echo, probe_interval=interval),
            ],
            max_restarts=100_000,
            max_seconds=1.0,
        ),
        services,
    )
    try:
        figures = {
            "bench": "actors",
            "ask": ask_costs(services),
            "restart_after_kill": restart_times(services),
            "hang_detection": hang_detection(services, interval),
            "targets": "ask ratio <= 1.3; restart p99 < 5 ms; hang replaced within 2 intervals",
        }
    finally:
        root.ref.stop(timeout=10)
        services.timers.stop()
        pykka.ActorRegistry.stop_all(timeout=5)
    emit(figures)


if __name__ == "__main__":
    main()
