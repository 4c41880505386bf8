"""Detection and remediation planning (spec 5, auto-remediation added)."""

from __future__ import annotations

import dataclasses
import re

import pytest

from palyra.background import tasks as bg
from palyra.clock import ManualClock
from palyra.errors import InvalidInput, InvalidTransition
from palyra.healing import heartbeats as hb
from palyra.healing import incidents as inc
from palyra.healing import remediation as rm
from palyra.healing.incidents import RuntimeIncidentRecord, Signal
from palyra.ids import new_ulid
from palyra.records import Run

T0 = 1_700_000_000_000
SESSION = new_ulid(T0)


def run(state: str = "in_progress", **kw: object) -> Run:
    return dataclasses.replace(Run(new_ulid(), SESSION, state, T0, T0), **kw)


def task(**kw: object) -> bg.BackgroundTask:
    base = bg.BackgroundTask(new_ulid(), "background_prompt", SESSION, "user:ops", "dev", T0, T0,
                             state="running", attempt_count=1, target_run_id=new_ulid())
    return dataclasses.replace(base, **kw)


def incident_of(signal: Signal, now_ms: int = T0) -> RuntimeIncidentRecord:
    record = inc.apply_signal(None, signal, now_ms=now_ms)
    assert record is not None
    return record


def one_signal(report: rm.WatchdogReport) -> Signal:
    assert len(report.signals) == 1
    return report.signals[0]


# --------------------------------------------------------------------------- modes


def test_modes_default_to_observe_only_with_per_domain_overrides() -> None:
    modes = rm.HealingModes(per_domain={"watchdog": "auto", "provider": "disabled"})
    assert modes.mode_for("watchdog") == "auto"
    assert modes.mode_for("provider") == "disabled"
    assert modes.mode_for("approval") == "observe_only"
    with pytest.raises(InvalidInput):
        rm.HealingModes(default="yolo")
    with pytest.raises(InvalidInput):
        rm.HealingModes(per_domain={"weather": "auto"})


# --------------------------------------------------------------------------- watchdog


def test_watchdog_observes_a_run_whose_heartbeats_stopped() -> None:
    clock = ManualClock(T0)
    r = run()
    beat = hb.beat("run", r.run_id, now_ms=clock.now_ms(), summary="accepted")
    clock.advance(120)
    live = one_signal(rm.watchdog([beat], now_ms=clock.now_ms(), runs={r.run_id: r}, tasks={},
                                  pending_approvals=()))
    assert live.observation is None and live.resolve_key == f"heartbeat:run:{r.run_id}"
    clock.advance(1)
    report = rm.watchdog([beat], now_ms=clock.now_ms(), runs={r.run_id: r}, tasks={},
                         pending_approvals=())
    observation = one_signal(report).observation
    assert observation is not None and report.clear == ()
    assert (observation.domain, observation.kind, observation.severity) == (
        "watchdog", "stale_run", "high")
    assert observation.dedupe_key == f"heartbeat:run:{r.run_id}"
    assert observation.facts["silent_s"] == 121 and "appears stuck" in observation.summary


def test_watchdog_clears_heartbeats_of_finished_or_missing_subjects() -> None:
    r, t = run("done"), task(state="succeeded")
    beats = [hb.beat("run", r.run_id, now_ms=T0), hb.beat("run", "gone", now_ms=T0),
             hb.beat("background_task", t.task_id, now_ms=T0),
             hb.beat("approval", "A1", now_ms=T0)]
    report = rm.watchdog(beats, now_ms=T0 + 10**7, runs={r.run_id: r}, tasks={t.task_id: t},
                         pending_approvals=set())
    assert sorted(report.clear) == sorted(b.heartbeat_key for b in beats)
    assert all(s.observation is None for s in report.signals)
    assert {s.resolve_key for s in report.signals} == {
        f"heartbeat:run:{r.run_id}", "heartbeat:run:gone",
        f"heartbeat:background_task:{t.task_id}", "approval:A1"}


def test_watchdog_approvals_use_the_600_s_threshold() -> None:
    beat = hb.beat("approval", "A1", now_ms=T0)
    quiet = rm.watchdog([beat], now_ms=T0 + 600_000, runs={}, tasks={}, pending_approvals={"A1"})
    assert one_signal(quiet).observation is None
    report = rm.watchdog([beat], now_ms=T0 + 600_001, runs={}, tasks={}, pending_approvals={"A1"})
    observation = one_signal(report).observation
    assert observation is not None
    assert (observation.domain, observation.kind, observation.dedupe_key) == (
        "approval", "stale_approval", "approval:A1")
    # Advisory only: nothing to execute in any mode.
    assert rm.plan(incident_of(one_signal(report)), "auto", now_ms=T0) is None


# --------------------------------------------------------------------------- plans


def _stale_run_incident(**run_kw: object) -> RuntimeIncidentRecord:
    r = run(**run_kw)
    beat = hb.beat("run", r.run_id, now_ms=T0)
    report = rm.watchdog([beat], now_ms=T0 + 121_000, runs={r.run_id: r}, tasks={},
                         pending_approvals=())
    return incident_of(one_signal(report), T0 + 121_000)


def _stale_task_incident(t: bg.BackgroundTask) -> RuntimeIncidentRecord:
    beat = hb.beat("background_task", t.task_id, now_ms=T0)
    report = rm.watchdog([beat], now_ms=T0 + 121_000, runs={}, tasks={t.task_id: t},
                         pending_approvals=())
    return incident_of(one_signal(report), T0 + 121_000)


def test_a_stale_run_is_failed_in_auto_mode() -> None:
    incident = _stale_run_incident()
    attempt = rm.plan(incident, "auto", now_ms=T0 + 121_000)
    assert attempt is not None
    assert (attempt.action, attempt.status, attempt.mode) == ("fail_run", "planned", "auto")
    assert (attempt.subject_kind, attempt.subject_id) == ("run", incident.subject_id)
    assert re.fullmatch(r"remediation_[0-9a-f]{16}", attempt.attempt_id)
    assert rm.run_finish(attempt.action) == (
        "failed", rm.STALE_RUN_REASON, "stale_heartbeat")


def test_a_stale_run_whose_cancel_was_requested_is_cancelled() -> None:
    incident = _stale_run_incident(cancel_requested=True)
    attempt = rm.plan(incident, "auto", now_ms=T0)
    assert attempt is not None and attempt.action == "cancel_run"
    assert rm.run_finish("cancel_run")[0] == "cancelled"
    with pytest.raises(InvalidInput):
        rm.run_finish("requeue_task")


def test_observe_only_only_reports_and_disabled_does_nothing() -> None:
    incident = _stale_run_incident()
    skipped = rm.plan(incident, "observe_only", now_ms=T0)
    assert skipped is not None
    assert (skipped.action, skipped.status) == ("fail_run", "skipped")
    assert skipped.detail == "observe_only: would fail_run"
    assert rm.start(incident, skipped, now_ms=T0) is incident  # stays open
    assert rm.plan(incident, "disabled", now_ms=T0) is None
    with pytest.raises(InvalidInput):
        rm.plan(incident, "sometimes", now_ms=T0)


def test_plan_once_per_episode() -> None:
    incident = _stale_run_incident()
    attempt = rm.plan(incident, "auto", now_ms=T0)
    assert attempt is not None
    fixing = rm.start(incident, attempt, now_ms=T0)
    assert fixing.state == "remediating"
    assert rm.plan(fixing, "auto", now_ms=T0 + 15_000) is None  # one attempt in flight
    assert rm.plan(inc.resolve(incident, now_ms=T0), "auto", now_ms=T0) is None


def test_complete_resolves_on_success_and_reopens_on_failure() -> None:
    incident = _stale_run_incident()
    attempt = rm.plan(incident, "auto", now_ms=T0)
    assert attempt is not None
    fixing = rm.start(incident, attempt, now_ms=T0)
    ok_incident, ok_attempt = rm.complete(fixing, attempt, ok=True, now_ms=T0 + 1)
    assert (ok_incident.state, ok_attempt.status) == ("resolved", "succeeded")
    bad_incident, bad_attempt = rm.complete(fixing, attempt, ok=False, now_ms=T0 + 1,
                                            detail="journal unavailable")
    assert (bad_incident.state, bad_attempt.status, bad_attempt.detail) == (
        "open", "failed", "journal unavailable")
    with pytest.raises(InvalidTransition):
        rm.complete(ok_incident, ok_attempt, ok=True, now_ms=T0 + 2)
    other = _stale_run_incident()
    with pytest.raises(InvalidInput):
        rm.start(other, attempt, now_ms=T0)


def test_a_stale_task_is_requeued_while_attempts_are_left_else_failed() -> None:
    t = task(attempt_count=1, max_attempts=3)
    incident = _stale_task_incident(t)
    assert incident.facts["attempts_left"] is True
    attempt = rm.plan(incident, "auto", now_ms=T0)
    assert attempt is not None and attempt.action == "requeue_task"
    requeued = rm.task_remediation(t, attempt.action, now_ms=T0 + 1)
    assert (requeued.state, requeued.attempt_count, requeued.target_run_id) == ("queued", 1, None)
    assert requeued.last_error is not None and "requeued" in requeued.last_error

    spent = task(attempt_count=3, max_attempts=3)
    last = rm.plan(_stale_task_incident(spent), "auto", now_ms=T0)
    assert last is not None and last.action == "fail_task"
    failed = rm.task_remediation(spent, last.action, now_ms=T0 + 1)
    assert failed.state == "failed" and failed.completed_at_unix_ms == T0 + 1
    # requeue_task on a task that meanwhile ran out of attempts fails it instead
    assert rm.task_remediation(spent, "requeue_task", now_ms=T0).state == "failed"
    queued = task(state="queued", target_run_id=None)
    assert rm.task_remediation(queued, "requeue_task", now_ms=T0) is queued
    with pytest.raises(InvalidTransition):
        rm.task_remediation(task(state="succeeded"), "fail_task", now_ms=T0)
    with pytest.raises(InvalidInput):
        rm.task_remediation(t, "fail_run", now_ms=T0)


# --------------------------------------------------------------------------- actors & circuits


def test_an_actor_restarting_in_a_loop_becomes_an_incident() -> None:
    clock = ManualClock(T0)
    restarts = [T0 + i * 5_000 for i in range(5)]
    clock.advance(25)
    signal = rm.actor_restart_signal("run:R1", restarts, now_ms=clock.now_ms())
    assert signal.observation is not None
    assert (signal.observation.domain, signal.observation.kind) == ("actor", "actor_restart_loop")
    assert signal.observation.facts == {"restarts": 5, "window_ms": 60_000}
    incident = incident_of(signal, clock.now_ms())
    auto = rm.plan(incident, "auto", now_ms=clock.now_ms())
    assert auto is not None
    assert (auto.action, auto.status) == ("report_actor_restart_loop", "succeeded")
    assert rm.start(incident, auto, now_ms=clock.now_ms()).state == "open"
    observed = rm.plan(incident, "observe_only", now_ms=clock.now_ms())
    assert observed is not None and observed.status == "skipped"
    # Four restarts is not a loop; a quiet window resolves the incident.
    assert rm.actor_restart_signal("run:R1", restarts[1:], now_ms=clock.now_ms()) == Signal()
    clock.advance(60)
    quiet = rm.actor_restart_signal("run:R1", restarts, now_ms=clock.now_ms())
    resolved = inc.apply_signal(incident, quiet, now_ms=clock.now_ms())
    assert resolved is not None and resolved.state == "resolved"


def test_an_open_circuit_is_an_incident_until_the_provider_recovers() -> None:
    clock = ManualClock(T0)
    opened = rm.circuit_signal("openai-primary", "open", consecutive_failures=3,
                               retry_after_ms=30_000)
    incident = incident_of(opened, clock.now_ms())
    assert (incident.domain, incident.kind, incident.subject_id) == (
        "provider", "circuit_open", "openai-primary")
    attempt = rm.plan(incident, "auto", now_ms=clock.now_ms())
    assert attempt is not None and attempt.action == "report_circuit_open"
    clock.advance(30)
    assert rm.circuit_signal("openai-primary", "half_open") == Signal()  # no verdict yet
    recovered = inc.apply_signal(incident, rm.circuit_signal("openai-primary", "closed"),
                                 now_ms=clock.now_ms())
    assert recovered is not None and recovered.state == "resolved"
    assert recovered.resolved_at_unix_ms == T0 + 30_000
    again = inc.apply_signal(recovered, opened, now_ms=clock.now_ms() + 1)
    assert again is not None and (again.state, again.occurrences) == ("open", 2)
    with pytest.raises(InvalidInput):
        rm.circuit_signal("p", "melted")
