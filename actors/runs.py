"""The supervisor of run actors: one temporary child per active run.

A run actor is never restarted blindly (it may have been inside a tool call with side
effects). When one crashes, is killed or hangs, this supervisor fails its run with
the reason on the tape, so no run is left ``in_progress`` behind a dead actor.
"""

from __future__ import annotations

import logging
from typing import Any

from actors.gateway import GATEWAY, RecoverRuns
from actors.journal import JOURNAL, Write
from actors.run import finished_outside
from actors.writing import tell_by_name
from palyra.orchestrator import store
from palyra.orchestrator.state import FAILED
from supervisors.names import Address
from supervisors.spec import ChildSpec
from supervisors.supervisor import Supervisor

log = logging.getLogger("palyra.runs")


class RunsSupervisor(Supervisor):
    def init(self) -> None:
        super().init()
        # A restart of this supervisor stopped every run actor it had: the gateway
        # finds their runs (and any admitted while it was down) and settles them.
        # (No gateway yet: a starting gateway recovers on its own.)
        tell_by_name(self.services.names, GATEWAY, RecoverRuns())

    def child_failed(self, spec: ChildSpec, reason: str) -> None:
        run_spec = spec.kwargs.get("spec")
        if run_spec is None:
            return
        services = self.services
        # The journal may be restarting: write from a worker, never from this thread.
        services.workers.submit(lambda: fail_run(services, run_spec.run_id, run_spec.session.session_id,
                                                 f"run actor failed: {reason}"))


def fail_run(services: Any, run_id: str, session_id: str, reason: str) -> bool:
    """Fail a run from outside its actor; publishes the terminal event. Retries while
    the journal is unavailable (bounded by the address's retry window, repeated)."""
    op = store.finish_run_from_outside(
        run_id, session_id, FAILED, reason=reason, termination_reason="runtime_failure",
        now_ms=services.clock.now_ms(), max_payload_bytes=services.config.journal.max_payload_bytes,
    )
    journal = Address(services.names, JOURNAL, retry_for=30.0, timeout=30.0)
    for _ in range(10):
        try:
            result = journal.request(Write((op,)))
        except Exception as exc:  # keep trying: a run must not stay in_progress
            log.warning("could not fail run %s yet: %s", run_id, exc)
            continue
        finished_outside(services, run_id, result)
        return True
    log.error("giving up failing run %s; gateway recovery will find it", run_id)
    return False
