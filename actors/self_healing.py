"""The self-healing actor: watches work heartbeats, actor restarts and circuit breakers,
keeps incidents, and (in ``auto`` mode) remediates.

Every loop (15 s by default) it persists the live heartbeats, runs the pure watchdog of
:mod:`palyra.healing`, turns its signals into incidents (persisted, unlike upstream) and
plans a remediation per open incident according to the domain's mode. In ``auto`` a
run whose heartbeats stopped is failed (or cancelled, if that was asked for) with the
reason on its tape and its budget reservation released; a background task is requeued
while it has attempts left, else failed. ``observe_only`` records a ``skipped``
attempt; ``disabled`` does nothing. Everything one loop decides goes to the journal in
one write.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from actors.gateway import GATEWAY, CancelRun
from actors.run import finished_outside
from actors.writing import AsyncJournalWrites, tell, tell_by_name
from palyra.background import store as bstore
from palyra.healing import heartbeats as hb
from palyra.healing import remediation as rem
from palyra.healing import store as hstore
from palyra.healing.incidents import apply_signal
from palyra.journal.store import connect
from palyra.orchestrator import store
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.healing")

SELF_HEALING = "self_healing"


class _Loop:
    pass


_LOOP = _Loop()


class SelfHealingActor(AsyncJournalWrites, Supervised):
    def init(self) -> None:
        svc = self.services
        cfg = svc.config.healing
        self.clock = svc.clock
        self.conn = connect(svc.state_dir, svc.config.journal)
        self.q = store.Queries(self.conn)
        self.hq = hstore.HealingQueries(self.conn)
        self.tasks = bstore.TaskQueries(self.conn)
        self.modes = rem.HealingModes(cfg.mode, dict(cfg.modes))
        self.thresholds = hb.Thresholds(cfg.loop_interval_ms, cfg.run_stale_ms, cfg.task_stale_ms,
                                        cfg.approval_stale_ms)
        self._restarts: dict[str, tuple[int, list[int]]] = {}  # actor -> (count seen, times)
        self._timer: Any = None
        self._busy = False
        self.loops = 0
        self._schedule()

    def terminate(self) -> None:
        if getattr(self, "_timer", None) is not None:
            self._timer.cancel()
        self.close_reader()

    def _schedule(self) -> None:
        ref = self.actor_ref
        self._timer = self.services.timers.call_later(self.thresholds.loop_interval_ms / 1000,
                                                      lambda: tell(ref, _LOOP))

    def handlers(self) -> dict[type, Any]:
        return {_Loop: lambda _: self._loop()}

    def run_once(self) -> int:
        """One loop now (for tests and the doctor); returns the loops done so far."""
        self._loop(reschedule=False)
        return self.loops

    # -- the loop ----------------------------------------------------------------------------

    def _loop(self, reschedule: bool = True) -> None:
        if reschedule:
            self._schedule()
        if self._busy:
            return  # the previous loop's write is still in flight
        now = self.clock.now_ms()
        beats = self._heartbeats(now)
        runs = {b.subject_id: r for b in beats if b.domain == hb.RUN
                if (r := self.q.run(b.subject_id)) is not None}
        tasks = {b.subject_id: t for b in beats if b.domain == hb.BACKGROUND_TASK
                 if (t := self.tasks.task(b.subject_id)) is not None}
        pending = {b.subject_id for b in beats if b.domain == hb.APPROVAL}
        report = rem.watchdog(beats, now_ms=now, runs=runs, tasks=tasks, pending_approvals=pending,
                              thresholds=self.thresholds)
        signals = [*report.signals, *self._actor_signals(now), *self._circuit_signals()]
        ops: list[Any] = [hstore.upsert_heartbeat(b) for b in beats if b.domain != hb.APPROVAL]
        for key in report.clear:
            domain, subject = key.split(":", 1)
            self.services.heartbeats.pop(subject, None)
            ops.append(hstore.clear_heartbeat(domain, subject))
        for signal in signals:
            if signal.observation is None and signal.resolve_key is None:
                continue
            incident = apply_signal(self.hq.incident(signal.incident_id), signal, now_ms=now)
            if incident is None:
                continue
            attempt = rem.plan(incident, self.modes.mode_for(incident.domain), now_ms=now)
            if attempt is None:
                ops.append(hstore.save_incident(incident))
                continue
            incident = rem.start(incident, attempt, now_ms=now)
            ops += [hstore.save_incident(incident), hstore.insert_attempt(attempt)]
            if attempt.status == rem.PLANNED:
                action_ops, ok, detail = self._remediate(attempt, runs, tasks, now)
                incident, attempt = rem.complete(incident, attempt, ok=ok, now_ms=now, detail=detail)
                ops += [*action_ops, hstore.save_incident(incident), hstore.finish_attempt(attempt)]
        self.loops += 1
        if not ops:
            return
        self._busy = True

        def done(write: Any) -> None:
            self._busy = False
            if write.error is not None:
                log.warning("self-healing loop not recorded: %s", write.error)
                return
            for value in write.value or ():
                if isinstance(value, _RunFinished):
                    finished_outside(self.services, value.run_id, value.result)

        self.write_async([_collect(ops)], done)

    def _heartbeats(self, now: int) -> list[hb.WorkHeartbeatRecord]:
        beats = []
        for subject, (domain, last, first, session_id) in list(self.services.heartbeats.items()):
            beats.append(hb.WorkHeartbeatRecord(domain, subject, last, first, session_id=session_id))
        for approval in self.q.approvals(pending=True):
            beats.append(hb.WorkHeartbeatRecord(hb.APPROVAL, approval.approval_id,
                                                approval.requested_at_unix_ms,
                                                approval.requested_at_unix_ms,
                                                session_id=approval.session_id))
        return beats

    def _actor_signals(self, now: int) -> list[Any]:
        signals = []
        for row in self.services.table.snapshot():
            name = row["path"]
            if name.startswith("root/core/runs/"):
                continue
            seen, times = self._restarts.get(name, (0, []))
            times = times + [now] * max(0, row["restarts"] - seen)
            self._restarts[name] = (row["restarts"], times[-50:])
            signals.append(rem.actor_restart_signal(name, times, now_ms=now))
        return signals

    def _circuit_signals(self) -> list[Any]:
        provider = self.services.provider
        snapshot = provider.status_snapshot() if hasattr(provider, "status_snapshot") else {}
        circuit = snapshot.get("circuit") or {}
        state = circuit.get("state", "closed")
        return [rem.circuit_signal(provider.provider_id, state,
                                   consecutive_failures=int(circuit.get("consecutive_failures", 0)),
                                   retry_after_ms=int(circuit.get("retry_after_ms", 0)))]

    def _remediate(self, attempt: Any, runs: dict[str, Any], tasks: dict[str, Any],
                   now: int) -> tuple[list[Any], bool, str]:
        """The journal operations of one planned action, and whether it can be done."""
        if attempt.action in (rem.FAIL_RUN, rem.CANCEL_RUN):
            run = runs.get(attempt.subject_id)
            if run is None:
                return [], False, f"run {attempt.subject_id} not found"
            state, reason, termination = rem.run_finish(attempt.action)
            self.services.heartbeats.pop(run.run_id, None)
            op = store.finish_run_from_outside(
                run.run_id, run.session_id, state, reason=reason, termination_reason=termination,
                now_ms=now, max_payload_bytes=self.services.config.journal.max_payload_bytes)
            return [_tagged(run.run_id, op)], True, f"{state}: {reason}"
        if attempt.action in (rem.REQUEUE_TASK, rem.FAIL_TASK):
            task = tasks.get(attempt.subject_id)
            if task is None:
                return [], False, f"task {attempt.subject_id} not found"
            after = rem.task_remediation(task, attempt.action, now_ms=now)
            self.services.heartbeats.pop(task.task_id, None)
            if task.target_run_id:  # the stuck attempt's run must not go on beside a retry
                tell_by_name(self.services.names, GATEWAY,
                             CancelRun(task.target_run_id, "background task remediated by self-healing"))
            return [bstore.update_task(task, after)], True, f"task {after.state}"
        return [], True, attempt.detail


@dataclasses.dataclass(frozen=True, slots=True)
class _RunFinished:
    run_id: str
    result: tuple[int, dict[str, Any]] | None  # what finish_run_from_outside returned


def _tagged(run_id: str, op: Any) -> Any:
    """A finish op whose result names its run, so the loop can announce it."""

    def tagged(txn: Any) -> _RunFinished:
        return _RunFinished(run_id, op(txn))

    return tagged


def _collect(ops: list[Any]) -> Any:
    """All of a loop's operations as one, returning every result (one transaction)."""

    def collect(txn: Any) -> list[Any]:
        return [op(txn) for op in ops]

    return collect
