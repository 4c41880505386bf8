"""Where a run's time goes: CPU per run by thread, and the journal's SQL per run.

Prints one JSON line for the workload of bench/runs.py (one allowed tool call and a
final answer, sequential callers): wall and process CPU milliseconds per run, the CPU
of each group of threads (run actors, journal, gateway, runs supervisor, the caller,
...) read from /proc, and the journal writer's statements per run with the time
SQLite itself reports for them. Beside it, the floor of bench/runs.py (bare apsw, the
same tape rows per run) in milliseconds per run, measured in the same process.
This is the breakdown behind the runs/s figure: see docs/performance.md.
"""

from __future__ import annotations

import collections
import os
import re
import tempfile
import threading
import time

from _common import RUN_CONFIG, RUN_TEXT, emit, floor_runs_per_s

import palyra
from actors.journal import JOURNAL
from supervisors.supervised import actor_of

RUNS = 1000
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def thread_cpu() -> dict[tuple[str, int], float]:
    """CPU seconds (user + system) of each live thread, by (name, native id)."""
    found = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone, or not Linux
        found[(thread.name, thread.native_id)] = (int(fields[11]) + int(fields[12])) / _TICKS
    return found


def group(name: str) -> str:
    """``RunActor-parked-3`` and ``RunActor-7`` are one group: strip counters."""
    return re.sub(r"(-\d+)+$", "", name).removesuffix("-parked")


def main() -> None:
    statements: collections.Counter[str] = collections.Counter()
    sqlite_ns: collections.Counter[str] = collections.Counter()

    def profile(sql: str, nanoseconds: int) -> None:
        verb = sql.split(None, 1)[0].upper()
        statements[verb] += 1
        sqlite_ns[verb] += nanoseconds

    with tempfile.TemporaryDirectory() as d, palyra.Runtime.start(d, RUN_CONFIG) as rt:
        for i in range(50):
            rt.send(RUN_TEXT, session_key=f"warmup-{i % 20}").wait(30)
        writer = actor_of(rt.services.names.get(JOURNAL))
        assert writer is not None
        writer.conn.set_profile(profile)  # the writer is idle between runs here
        before, cpu0, t0 = thread_cpu(), time.process_time(), time.perf_counter()
        for i in range(RUNS):
            assert rt.send(RUN_TEXT, session_key=f"costs-{i % 20}").wait(30).state == "done"
        elapsed, cpu, after = time.perf_counter() - t0, time.process_time() - cpu0, thread_cpu()
        writer.conn.set_profile(None)
        rows = len(rt.tape(rt.runs(limit=1)[0].run_id))

    by_group: collections.Counter[str] = collections.Counter()
    for key, seconds in after.items():
        by_group[group(key[0])] += seconds - before.get(key, 0.0)
    per_run = 1000 / RUNS
    emit({
        "bench": "run_costs",
        "runs": RUNS,
        "wall_ms_per_run": round(elapsed * per_run, 3),
        "cpu_ms_per_run": round(cpu * per_run, 3),
        "thread_cpu_ms_per_run": {name: round(s * per_run, 3) for name, s in by_group.most_common() if s > 0},
        "journal_statements_per_run": {v: round(n / RUNS, 2) for v, n in statements.most_common()},
        "journal_sqlite_ms_per_run": round(sum(sqlite_ns.values()) / 1e6 / RUNS, 3),
        "tape_rows_per_run": rows,
        "floor_bare_apsw_ms_per_run": round(1000 / floor_runs_per_s(2000, rows), 3),
    })


if __name__ == "__main__":
    main()
