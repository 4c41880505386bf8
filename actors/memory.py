"""The memory actor: retention and embedding maintenance of the memory store.

Ingest, search and delete go straight to the journal and to reader connections; what
needs an owner is the periodic upkeep: expired items deleted, the retention caps
applied (entries, bytes, age), and embeddings backfilled in bounded batches, as
background work on a timer (resumable: each pass does a bounded amount).
"""

from __future__ import annotations

import logging
from typing import Any

from actors.writing import AsyncJournalWrites, replying, tell
from palyra.memory import RetentionPolicy, backfill_embeddings_op, expire_op, retention_op
from supervisors.request import Request
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.memory")

MEMORY = "memory"


class Maintain(Request):
    """Run one maintenance pass now; replies with what it did."""


class _Tick:
    pass


class MemoryActor(AsyncJournalWrites, Supervised):
    def init(self) -> None:
        cfg = self.services.config.memory
        self.clock = self.services.clock
        self.interval = cfg.maintenance_interval_ms / 1000
        self.policy = RetentionPolicy(cfg.retention_max_entries, cfg.retention_max_bytes,
                                      cfg.retention_ttl_days)
        self.passes = 0
        self.last_run_unix_ms: int | None = None
        self.last_result: Any = None  # what the last pass did, or its error
        self.next_run_unix_ms: int | None = None
        self._timer: Any = None
        self._schedule()

    def terminate(self) -> None:
        self.fail_waiting_callers()
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()

    def _schedule(self) -> None:
        ref = self.actor_ref
        self.next_run_unix_ms = self.clock.now_ms() + int(self.interval * 1000)
        self._timer = self.services.timers.call_later(
            self.interval, lambda: tell(ref, _Tick()))

    def handlers(self) -> dict[type, Any]:
        return {_Tick: self._tick, Maintain: self._maintain}

    def _tick(self, _: _Tick) -> None:
        self._schedule()
        self._maintain(None)

    def _maintain(self, req: Maintain | None) -> None:
        now = self.clock.now_ms()
        ops = [expire_op(now), retention_op(now, self.policy), backfill_embeddings_op(now)]

        def collect(txn: Any) -> dict[str, Any]:
            expired, retention, backfill = (op(txn) for op in ops)
            return {"expired": expired, "retention": repr(retention), "backfill": repr(backfill)}

        def done(write: Any) -> None:
            self.passes += 1
            self.last_run_unix_ms = now
            self.last_result = ({"error": type(write.error).__name__} if write.error is not None
                                else write.value)
            log.debug("memory maintenance: %s", self.last_result)
            if req is not None:
                replying(req, lambda: {"pass": self.passes})(write)

        self.write_async([collect], done, caller=req)

    def stats(self) -> dict[str, Any]:
        """Maintenance state for diagnostics."""
        return {"interval_ms": int(self.interval * 1000), "passes": self.passes,
                "last_run_unix_ms": self.last_run_unix_ms, "last_result": self.last_result,
                "next_run_unix_ms": self.next_run_unix_ms}
