"""Shared helpers for the benchmarks (each prints one JSON line)."""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import apsw
import orjson

_BENCH_DIR = Path(__file__).resolve().parent
# bench/http.py and bench/actors.py would shadow the standard library's http and the
# project's actors package: once this module is loaded, take bench/ off the path.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
sys.path.insert(0, str(_BENCH_DIR.parent))
# Restarts are logged as warnings in a daemon; in a benchmark they are the workload.
logging.getLogger("palyra").setLevel(logging.ERROR)


def pin_to_one_cpu() -> int | None:
    """Pin this process to one CPU (set PALYRA_BENCH_PIN=0 to opt out).

    On this VM kind a thread handoff between two vCPUs costs ~40 us more than on one
    (a cross-CPU wakeup), while the GIL lets only one Python thread run anyway. Every
    figure and its baseline run in the same pinned process, so ratios stay fair.
    """
    if os.environ.get("PALYRA_BENCH_PIN", "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return None
    cpu = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})
    return cpu


PINNED_CPU = pin_to_one_cpu()


# The run workload of bench/runs.py and bench/run_costs.py: one allowed tool call and a
# final answer.
RUN_TEXT = 'hello bench\n@tool palyra.echo {"text": "hi"}'
RUN_CONFIG = {"tools": {"allowed": ["palyra.echo"]}}


def floor_runs_per_s(runs: int, rows_per_run: int) -> float:
    """Bare apsw: the same tape rows per run, one transaction per run, nothing else."""
    payload = '{"kind":"status","message":"' + "x" * 120 + '"}'
    with tempfile.TemporaryDirectory() as d:
        conn = apsw.Connection(f"{d}/floor.sqlite3")
        # One statement per execute: apsw runs a multi-statement string lazily, and the
        # pragma after a row-returning one would never run (the floor used FULL sync).
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE tape(run TEXT, seq INTEGER, type TEXT, payload TEXT, at INTEGER,"
            " hash TEXT, prev TEXT, PRIMARY KEY(run, seq)) WITHOUT ROWID"
        )
        t0 = time.perf_counter()
        for r in range(runs):
            run = f"run-{r:010d}"
            with conn:
                conn.executemany(
                    "INSERT INTO tape VALUES (?,?,?,?,?,?,?)",
                    [(run, s, "status", payload, 0, "h" * 64, "p" * 64) for s in range(rows_per_run)],
                )
        elapsed = time.perf_counter() - t0
        conn.close()
    return runs / elapsed


def pct(samples: list[float], q: float) -> float:
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def median(samples: list[float]) -> float:
    return statistics.median(samples) if samples else float("nan")


def timed_callers(callers: int, work: Callable[[int], list[float]]) -> tuple[list[float], float]:
    """``work(n)`` in ``callers`` threads released together by a barrier; each returns its
    latencies. Returns them all and the seconds from the release to the last join."""
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(callers + 1)

    def caller(n: int) -> None:
        barrier.wait()
        mine = work(n)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(callers)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return latencies, time.perf_counter() - t0


def python_speed() -> float:
    """Millions of iterations per second of a fixed pure-Python loop, measured now.

    Absolute figures move with the host (VMs of one kind have differed by 3x between
    sessions); this number, printed beside them, says how fast this one was.
    """
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(1_000_000):
            total += i
        best = min(best, time.perf_counter() - t0)
    return round(1 / best, 2)


def emit(figures: dict) -> None:
    figures.setdefault("pinned_cpu", PINNED_CPU)
    figures.setdefault("python_loop_millions_per_s", python_speed())
    print(orjson.dumps(figures, option=orjson.OPT_SORT_KEYS).decode())
