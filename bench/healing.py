"""Self-healing and the background queue.

Prints one JSON line:
- ``remediation_ms``: from a hung run's last work heartbeat to its remediation (the
  terminal status published), p50/p99, beside the configured stale threshold + one loop
  interval (the design bound; two intervals is the issue's test bound);
- ``background``: prompt tasks through the queue (each a real run) per second, beside
  direct ``rt.send`` runs per second in the same process.
"""

from __future__ import annotations

import tempfile
import threading
import time

from _common import emit, pct

import palyra

LOOP_MS, STALE_MS = 100, 300
CONFIG = {
    "supervision": {"probe_interval": 60.0, "shutdown_timeout": 0.5},
    "healing": {"loop_interval_ms": LOOP_MS, "run_stale_ms": STALE_MS},
    "background": {"poll_interval_ms": 1000},
}


def remediation_times(rt: palyra.Runtime, trials: int = 15) -> list[float]:
    samples = []
    for i in range(trials):
        run = rt.send(f"hang me {i}\n@sleep 30", session_key=f"heal-{i}")
        while rt.run(run.id).state != "in_progress":
            time.sleep(0.002)
        done = threading.Event()
        rt.services.hub.subscribe(run.id, lambda ev, done=done: (done.set() if ev.terminal else None) or True)
        rt.chaos.hang(f"run:{run.id}", 3.0)
        last_beat = next(b["last_beat_ms"] for b in rt.heartbeats() if b["subject_id"] == run.id)
        assert done.wait(10), "not remediated"
        samples.append(rt.clock.now_ms() - last_beat)
    return samples


def tasks_per_second(rt: palyra.Runtime, n: int) -> float:
    t0 = time.perf_counter()
    ids = [rt.tasks.create(text=f"task {i}", session_key=f"bg-{i % 10}").task_id for i in range(n)]
    pending = set(ids)
    while pending:
        pending = {t for t in pending if rt.tasks.get(t).state not in ("succeeded", "failed")}
        time.sleep(0.005)
    return n / (time.perf_counter() - t0)


def sends_per_second(rt: palyra.Runtime, n: int) -> float:
    t0 = time.perf_counter()
    handles = [rt.send(f"direct {i}", session_key=f"d-{i % 10}") for i in range(n)]
    for handle in handles:
        handle.wait(30)
    return n / (time.perf_counter() - t0)


def main() -> None:
    with tempfile.TemporaryDirectory() as d, palyra.Runtime.start(d, CONFIG) as rt:
        samples = remediation_times(rt)
        tasks = tasks_per_second(rt, 300)
        direct = sends_per_second(rt, 300)
    emit({
        "bench": "healing",
        "remediation_ms": {"p50": round(pct(samples, 50), 1), "p99": round(pct(samples, 99), 1),
                           "trials": len(samples)},
        "design_bound_ms": STALE_MS + LOOP_MS,
        "test_bound_ms": STALE_MS + 2 * LOOP_MS,
        "background": {"tasks_per_s": round(tasks, 1), "direct_send_runs_per_s": round(direct, 1),
                       "ratio": round(tasks / direct, 3)},
    })


if __name__ == "__main__":
    main()
