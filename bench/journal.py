"""Journal append throughput and latency vs a bare apsw loop writing the same rows.

Prints one JSON line: for 1, 10 and 100 concurrent writer threads, appends/s and
p50/p99 append latency through the journal actor (redaction, hash chain, group
commit, acknowledgement after commit); beside it, in the same run, a bare apsw loop
that writes identical rows (same columns, same payloads, same hash chain computed
inline) one transaction per row and batched 100 per transaction; the batched loop is
measured twice: with the rows prebuilt, and building them from the same payloads
(ids, redaction) inside the timed loop.
"""

from __future__ import annotations

import tempfile
import time

from _common import emit, pct, timed_callers

import palyra
from palyra.journal.store import (
    EventDraft,
    JournalSettings,
    Writer,
    append_op,
    open_writer_connection,
)

PAYLOAD = {"run_id": "01JAAAAAAAAAAAAAAAAAAAAAAA", "text": "x" * 160, "n": 1}
TOTAL = 20_000


def journal_rate(writers: int) -> dict:
    per_writer = max(1, TOTAL // writers)
    with tempfile.TemporaryDirectory() as d, palyra.Runtime.start(d) as rt:
        def work(slot: int) -> list[float]:
            mine = []
            for _ in range(per_writer):
                t0 = time.perf_counter()
                rt.journal.append("bench.append", PAYLOAD)
                mine.append(time.perf_counter() - t0)
            return mine

        flat, elapsed = timed_callers(writers, work)
        assert rt.verify_journal().ok
    return {
        "appends_per_s": round(len(flat) / elapsed),
        "p50_ms": round(pct(flat, 50) * 1000, 3),
        "p99_ms": round(pct(flat, 99) * 1000, 3),
    }


def bare_rate(batch: int, *, build_rows: bool = False) -> float:
    """Rows prebuilt (ids, redaction done before the clock starts), or built in the loop
    from the same payloads (what a writer without actors would have to do as well)."""
    rows = [] if build_rows else [EventDraft.build("bench.append", PAYLOAD) for _ in range(TOTAL)]
    with tempfile.TemporaryDirectory() as d:
        conn = open_writer_connection(d)
        writer = Writer(conn, JournalSettings())
        t0 = time.perf_counter()
        for i in range(0, TOTAL, batch):
            chunk = ([EventDraft.build("bench.append", PAYLOAD) for _ in range(batch)] if build_rows
                     else rows[i : i + batch])
            writer.apply([[append_op(r) for r in chunk]])
        elapsed = time.perf_counter() - t0
        conn.close()
    return round(TOTAL / elapsed)


def main() -> None:
    figures = {"bench": "journal", "appends": TOTAL}
    for writers in (1, 10, 100):
        figures[f"journal_{writers}_writers"] = journal_rate(writers)
    figures["bare_apsw_row_per_txn_per_s"] = bare_rate(1)
    figures["bare_apsw_batched_100_per_s"] = bare_rate(100)
    figures["bare_apsw_batched_100_building_rows_per_s"] = bare_rate(100, build_rows=True)
    rate100 = figures["journal_100_writers"]["appends_per_s"]
    figures["ratio_100_writers_to_batched"] = round(rate100 / figures["bare_apsw_batched_100_per_s"], 3)
    figures["ratio_100_writers_to_batched_building_rows"] = round(
        rate100 / figures["bare_apsw_batched_100_building_rows_per_s"], 3)
    figures["target"] = "ratio >= 0.5 and p99 < 25 ms at 100 writers"
    emit(figures)


if __name__ == "__main__":
    main()
