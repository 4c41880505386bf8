"""Completed runs per second: one allowed tool call and a final answer per run.

Prints one JSON line: runs/s and p50/p99 run latency (send -> terminal result) with the
deterministic provider and the durable tape, sequentially and with 50 concurrent
callers; beside it, in the same process, the floor: a bare apsw loop writing the same
number of tape rows per run (one transaction per run), and the ratio. The sequential
pass is repeated with usage governance disabled, for governance's share of the latency.
"""

from __future__ import annotations

import tempfile
import time

from _common import RUN_CONFIG, RUN_TEXT, emit, floor_runs_per_s, pct, timed_callers

import palyra


def measure(rt: palyra.Runtime, runs: int, callers: int) -> dict:
    per_caller = runs // callers

    def caller(n: int) -> list[float]:
        mine = []
        for i in range(per_caller):
            t0 = time.perf_counter()
            result = rt.send(RUN_TEXT, session_key=f"bench-{n}-{i % 20}").wait(30)
            mine.append(time.perf_counter() - t0)
            assert result.state == "done", result
        return mine

    latencies, elapsed = timed_callers(callers, caller)
    return {
        "runs": len(latencies),
        "runs_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(pct(latencies, 50) * 1000, 3),
        "p99_ms": round(pct(latencies, 99) * 1000, 3),
    }


def main() -> None:
    figures: dict = {"bench": "runs", "workload": "1 allowed tool call + final answer"}
    with tempfile.TemporaryDirectory() as d, palyra.Runtime.start(d, RUN_CONFIG) as rt:
        rt.send(RUN_TEXT, session_key="warmup").wait(30)
        figures["sequential"] = measure(rt, 1500, 1)
        figures["concurrent_50"] = measure(rt, 2000, 50)
        sample = rt.runs(limit=1)[0]
        rows = len(rt.tape(sample.run_id))
        assert rt.verify_journal().ok
    with tempfile.TemporaryDirectory() as d, palyra.Runtime.start(
        d, {**RUN_CONFIG, "governance": {"enabled": False}}
    ) as rt:
        rt.send(RUN_TEXT, session_key="warmup").wait(30)
        figures["sequential_governance_disabled"] = measure(rt, 1500, 1)
    figures["governance_overhead_p50_ratio"] = round(
        figures["sequential"]["p50_ms"] / figures["sequential_governance_disabled"]["p50_ms"], 3)
    figures["tape_rows_per_run"] = rows
    floor_rate = floor_runs_per_s(2000, rows)
    figures["floor_bare_apsw_runs_per_s"] = round(floor_rate, 1)
    figures["ratio_sequential_to_floor"] = round(figures["sequential"]["runs_per_s"] / floor_rate, 4)
    figures["ratio_concurrent_to_floor"] = round(figures["concurrent_50"]["runs_per_s"] / floor_rate, 4)
    figures["target"] = "sequential >= 1500 runs/s"
    emit(figures)


if __name__ == "__main__":
    main()
