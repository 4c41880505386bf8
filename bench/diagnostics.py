"""Diagnostics, counters and support bundles: what they cost.

Prints one JSON line:

* the diagnostics snapshot (every actor probed, every contributor asked, the journal
  read), idle and while 8 callers keep runs in flight, beside ``rt.actors()`` (the
  supervision table alone) measured in the same run;
* the snapshot while one actor is hung: it must return within its deadline;
* the counters' share of the journal's write path: a batch of 100 tape rows applied by
  the writer, with and without folding what it wrote into the counters;
* a support bundle built from the live runtime: time and size.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from _common import emit, pct

import palyra
from palyra.journal.store import JournalSettings, TapeDraft, Writer, open_writer_connection
from palyra.observability import RuntimeCounters
from palyra.support_bundle import export_bundle

SAMPLES = 200
CONFIG = {"tools": {"allowed": ["palyra.echo"]},
          "supervision": {"probe_interval": 30.0, "shutdown_timeout": 1.0}}
TEXT = 'hello\n@tool palyra.echo {"text": "hi"}'


def timed(fn, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return samples


def figures(samples: list[float]) -> dict:
    return {"p50_ms": round(pct(samples, 50) * 1000, 3), "p99_ms": round(pct(samples, 99) * 1000, 3)}


def under_load(rt: palyra.Runtime, fn, n: int) -> list[float]:
    stop = threading.Event()

    def caller(i: int) -> None:
        while not stop.is_set():
            rt.send(TEXT, session_key=f"load-{i}").wait(30)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        return timed(fn, n)
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def write_path(tape: list[tuple[str, dict]], runs_per_batch: int = 5, batches: int = 300) -> dict:
    """Writer.apply of a real run's tape rows (``runs_per_batch`` runs per batch), with and
    without folding what the batch wrote into the counters."""
    rows = len(tape) * runs_per_batch
    with tempfile.TemporaryDirectory() as d:
        conn = open_writer_connection(Path(d), JournalSettings())
        writer, counters = Writer(conn, JournalSettings()), RuntimeCounters()
        results = {}
        for label, fold in (("apply_only", False), ("apply_and_fold", True), ("apply_only_again", False)):
            spent = 0.0
            for b in range(batches):
                drafts = [TapeDraft.build(f"{label}-{b:06d}-{r}", s, event_type, payload, now_ms=0)
                          for r in range(runs_per_batch) for s, (event_type, payload) in enumerate(tape)]
                ops = [lambda txn, ds=drafts: [txn.append_tape(x) for x in ds]]
                t0 = time.perf_counter()
                writer.apply([ops])
                if fold:
                    counters.committed(writer.observed, seconds=0.0, writes=1)
                spent += time.perf_counter() - t0
            results[label] = spent / (batches * rows) * 1e6
        conn.close()
    base = (results["apply_only"] + results["apply_only_again"]) / 2
    return {"apply_us_per_row": round(base, 2), "apply_and_fold_us_per_row": round(results["apply_and_fold"], 2),
            "fold_overhead_ratio": round(results["apply_and_fold"] / base, 3)}


def main() -> None:
    out: dict = {"bench": "diagnostics"}
    with tempfile.TemporaryDirectory() as d, palyra.Runtime.start(d, CONFIG) as rt:
        for i in range(50):
            rt.send(TEXT, session_key=f"warm-{i % 5}").wait(30)
        out["actors_table_baseline"] = figures(timed(rt.actors, SAMPLES))
        out["snapshot_idle"] = figures(timed(rt.diagnostics, SAMPLES))
        out["snapshot_8_callers"] = figures(under_load(rt, rt.diagnostics, SAMPLES // 2))
        out["observability_snapshot"] = figures(timed(rt.observability, SAMPLES))
        bundle_path = Path(d) / "bundle.tar.gz"
        t0 = time.perf_counter()
        bundle = export_bundle(rt.state_dir, bundle_path, config=rt.config, diagnostics=rt.diagnostics(),
                               clock=rt.clock)
        out["support_bundle"] = {"ms": round((time.perf_counter() - t0) * 1000, 1),
                                 "bytes": bundle.size_bytes, "members": len(bundle.members)}
        assert rt.chaos.hang("learning", 3.0, wait=2.0)
        hung = timed(lambda: rt.diagnostics(deadline=0.25), 3)
        out["snapshot_with_hung_actor"] = {**figures(hung), "deadline_ms": 250}
        tape = [(e.event_type, e.payload) for e in rt.tape(rt.runs(limit=1)[0].run_id)]
    out["write_path"] = {"rows_per_run": len(tape), **write_path(tape)}
    emit(out)


if __name__ == "__main__":
    main()
