"""Detection and remediation plans (spec 5, with the auto-remediation upstream lacked).

Detectors turn facts into :class:`~palyra.healing.incidents.Signal` s:

* :func:`watchdog` — stale run / background task / approval heartbeats;
* :func:`actor_restart_signal` — an actor restarting in a loop;
* :func:`circuit_signal` — a provider circuit open (resolved when it closes again).

:func:`plan` decides what to do about an incident under a mode (``disabled``,
``observe_only``, ``auto``; per domain):

* a run whose heartbeats stopped is failed (``fail_run``; ``cancel_run`` when its
  cancellation was already requested);
* a stale background task is requeued while it has attempts left (``requeue_task``),
  else failed (``fail_task``);
* restart loops and open circuits are reported (``report_*``: the incident is the report);
* ``observe_only`` only reports: the attempt is ``skipped``; ``disabled`` plans nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Collection, Iterable, Mapping, Sequence

from palyra.background import tasks as bg
from palyra.errors import InvalidInput, InvalidTransition
from palyra.healing import heartbeats as hb
from palyra.healing import incidents as inc
from palyra.healing.heartbeats import DEFAULT_THRESHOLDS, Thresholds, WorkHeartbeatRecord
from palyra.healing.incidents import (
    IncidentObservation,
    RemediationDescriptor,
    RuntimeIncidentRecord,
    Signal,
)

DISABLED = "disabled"
OBSERVE_ONLY = "observe_only"
AUTO = "auto"
MODES = (DISABLED, OBSERVE_ONLY, AUTO)

FAIL_RUN = "fail_run"
CANCEL_RUN = "cancel_run"
REQUEUE_TASK = "requeue_task"
FAIL_TASK = "fail_task"
REPORT_ACTOR_RESTART_LOOP = "report_actor_restart_loop"
REPORT_CIRCUIT_OPEN = "report_circuit_open"
ACTIONS = (FAIL_RUN, CANCEL_RUN, REQUEUE_TASK, FAIL_TASK, REPORT_ACTOR_RESTART_LOOP,
           REPORT_CIRCUIT_OPEN)
REPORT_ACTIONS = frozenset({REPORT_ACTOR_RESTART_LOOP, REPORT_CIRCUIT_OPEN})

PLANNED = "planned"
SUCCEEDED = "succeeded"
FAILED = "failed"
SKIPPED = "skipped"

DESCRIPTORS = {
    FAIL_RUN: RemediationDescriptor(
        FAIL_RUN, "Fail the stuck run", "The run stopped sending heartbeats; mark it failed.",
        "medium", "session", False, True),
    CANCEL_RUN: RemediationDescriptor(
        CANCEL_RUN, "Finish the cancelled run",
        "The run was asked to cancel but never stopped; mark it cancelled.",
        "low", "session", False, True),
    REQUEUE_TASK: RemediationDescriptor(
        REQUEUE_TASK, "Requeue the background task",
        "The task stopped making progress; queue it for another attempt.",
        "low", "session", False, True),
    FAIL_TASK: RemediationDescriptor(
        FAIL_TASK, "Fail the background task",
        "The task stopped making progress and has no attempts left; mark it failed.",
        "medium", "session", False, True),
    REPORT_ACTOR_RESTART_LOOP: RemediationDescriptor(
        REPORT_ACTOR_RESTART_LOOP, "Inspect the restarting actor",
        "An actor keeps crashing and restarting; see the supervision journal.",
        "medium", "global", True, False),
    REPORT_CIRCUIT_OPEN: RemediationDescriptor(
        REPORT_CIRCUIT_OPEN, "Check the model provider",
        "The provider circuit breaker is open; calls fail fast until it recovers.",
        "low", "global", False, False),
}
APPROVAL_REVIEW = RemediationDescriptor(
    "approval_review", "Review the pending approval",
    "An approval has waited for a decision for a long time.", "low", "session", False, False)

RESTART_LOOP_MAX_RESTARTS = 5
RESTART_LOOP_WINDOW_MS = 60_000


# --------------------------------------------------------------------------- modes


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InvalidInput(f"unknown healing mode {mode!r} (expected {', '.join(MODES)})",
                           details={"field": "mode"})
    return mode


@dataclasses.dataclass(frozen=True, slots=True)
class HealingModes:
    """Global mode (``PALYRA_HEALING_MODE``, default observe_only) with per-domain overrides."""

    default: str = OBSERVE_ONLY
    per_domain: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_mode(self.default)
        for domain, mode in self.per_domain.items():
            if domain not in inc.DOMAINS:
                raise InvalidInput(f"unknown healing domain {domain!r}",
                                   details={"field": "domain"})
            _check_mode(mode)

    def mode_for(self, domain: str) -> str:
        return self.per_domain.get(domain, self.default)


# --------------------------------------------------------------------------- detectors


def heartbeat_dedupe_key(domain: str, subject_id: str) -> str:
    if domain == hb.APPROVAL:
        return f"approval:{subject_id}"
    return f"heartbeat:{domain}:{subject_id}"


def _incident_domain(heartbeat_domain: str) -> str:
    return inc.APPROVAL if heartbeat_domain == hb.APPROVAL else inc.WATCHDOG


def stale_observation(
    heartbeat: WorkHeartbeatRecord,
    *,
    now_ms: int,
    cancel_requested: bool = False,
    task: bg.BackgroundTask | None = None,
) -> IncidentObservation:
    """The incident observation of a stale heartbeat."""
    seconds = max(0, heartbeat.age_ms(now_ms)) // 1000
    subject = heartbeat.subject_id
    facts: dict[str, object] = {"last_beat_ms": heartbeat.last_beat_ms, "silent_s": seconds}
    if heartbeat.domain == hb.RUN:
        facts["cancel_requested"] = cancel_requested
        kind, severity = inc.STALE_RUN, "high"
        summary = f"run {subject} appears stuck (no heartbeat for {seconds} s)"
        remediation = DESCRIPTORS[CANCEL_RUN if cancel_requested else FAIL_RUN]
    elif heartbeat.domain == hb.BACKGROUND_TASK:
        if task is not None:
            facts.update(attempt_count=task.attempt_count, max_attempts=task.max_attempts,
                         attempts_left=task.attempts_left, task_state=task.state,
                         target_run_id=task.target_run_id)
        kind, severity = inc.STALE_BACKGROUND_TASK, "high"
        summary = f"background task {subject} appears stuck (no heartbeat for {seconds} s)"
        remediation = DESCRIPTORS[REQUEUE_TASK if facts.get("attempts_left") else FAIL_TASK]
    else:
        kind, severity = inc.STALE_APPROVAL, "medium"
        summary = f"approval {subject} has been pending for {seconds} s"
        remediation = APPROVAL_REVIEW
    return IncidentObservation(
        domain=_incident_domain(heartbeat.domain),
        dedupe_key=heartbeat_dedupe_key(heartbeat.domain, subject),
        severity=severity, summary=summary, kind=kind, detail=heartbeat.summary,
        subject_kind=heartbeat.domain, subject_id=subject, facts=facts, remediation=remediation,
    )


@dataclasses.dataclass(frozen=True, slots=True)
class WatchdogReport:
    signals: tuple[Signal, ...]
    clear: tuple[str, ...]  # heartbeat keys whose subject is gone or terminal


def watchdog(
    heartbeats: Iterable[WorkHeartbeatRecord],
    *,
    now_ms: int,
    runs: Mapping[str, bg.RunView],
    tasks: Mapping[str, bg.BackgroundTask],
    pending_approvals: Collection[str],
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
) -> WatchdogReport:
    """One watchdog pass (spec 5 step 1, plus approvals): for each heartbeat, a subject
    that is missing or finished clears its heartbeat and resolves its incident; a stale
    one is observed; a live one resolves its incident."""
    signals: list[Signal] = []
    clear: list[str] = []
    for beat in sorted(heartbeats, key=lambda h: h.heartbeat_key):
        domain = _incident_domain(beat.domain)
        key = heartbeat_dedupe_key(beat.domain, beat.subject_id)
        run = task = None
        if beat.domain == hb.RUN:
            run = runs.get(beat.subject_id)
            gone = run is None or run.state in ("done", "failed", "cancelled")
        elif beat.domain == hb.BACKGROUND_TASK:
            task = tasks.get(beat.subject_id)
            gone = task is None or task.terminal or task.state == bg.PAUSED
        else:
            gone = beat.subject_id not in pending_approvals
        if gone:
            clear.append(beat.heartbeat_key)
            signals.append(Signal.resolved(domain, key))
        elif hb.is_stale(beat, now_ms, thresholds):
            signals.append(Signal.observe(stale_observation(
                beat, now_ms=now_ms, cancel_requested=bool(run and run.cancel_requested),
                task=task)))
        else:
            signals.append(Signal.resolved(domain, key))
    return WatchdogReport(tuple(signals), tuple(clear))


def actor_restart_signal(
    actor: str,
    restart_times_ms: Sequence[int],
    *,
    now_ms: int,
    max_restarts: int = RESTART_LOOP_MAX_RESTARTS,
    window_ms: int = RESTART_LOOP_WINDOW_MS,
) -> Signal:
    """Observe a restart loop (≥ ``max_restarts`` restarts within ``window_ms``); a quiet
    window (no restart in it) resolves it."""
    recent = [t for t in restart_times_ms if now_ms - window_ms < t <= now_ms]
    key = f"actor_restart_loop:{actor}"
    if len(recent) >= max_restarts:
        return Signal.observe(IncidentObservation(
            domain=inc.ACTOR, dedupe_key=key, severity="high",
            summary=f"actor {actor} restarted {len(recent)} times in {window_ms // 1000} s",
            kind=inc.ACTOR_RESTART_LOOP, subject_kind="actor", subject_id=actor,
            facts={"restarts": len(recent), "window_ms": window_ms},
            remediation=DESCRIPTORS[REPORT_ACTOR_RESTART_LOOP],
        ))
    if not recent:
        return Signal.resolved(inc.ACTOR, key)
    return Signal()  # restarting, but not (yet) a loop: no verdict


def circuit_signal(provider_id: str, circuit_state: str, *, consecutive_failures: int = 0,
                   retry_after_ms: int = 0) -> Signal:
    """``open`` observes an incident; ``closed`` resolves it; ``half_open`` (a trial call is
    deciding) gives no verdict."""
    key = f"circuit:{provider_id}"
    if circuit_state == "open":
        return Signal.observe(IncidentObservation(
            domain=inc.PROVIDER, dedupe_key=key, severity="high",
            summary=f"provider {provider_id} circuit open after {consecutive_failures} failures",
            kind=inc.CIRCUIT_OPEN, subject_kind="provider", subject_id=provider_id,
            facts={"consecutive_failures": consecutive_failures,
                   "retry_after_ms": retry_after_ms},
            remediation=DESCRIPTORS[REPORT_CIRCUIT_OPEN],
        ))
    if circuit_state == "closed":
        return Signal.resolved(inc.PROVIDER, key)
    if circuit_state == "half_open":
        return Signal()
    raise InvalidInput(f"unknown circuit state {circuit_state!r}", details={"field": "state"})


# --------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True, slots=True)
class RemediationAttempt:
    attempt_id: str
    incident_id: str
    action: str
    mode: str
    status: str
    detail: str
    recorded_at_unix_ms: int
    updated_at_unix_ms: int
    subject_kind: str | None = None
    subject_id: str | None = None


def action_for(incident: RuntimeIncidentRecord) -> str | None:
    """The remediation an incident calls for, or None (advisory only)."""
    if incident.kind == inc.STALE_RUN:
        return CANCEL_RUN if incident.facts.get("cancel_requested") else FAIL_RUN
    if incident.kind == inc.STALE_BACKGROUND_TASK:
        return REQUEUE_TASK if incident.facts.get("attempts_left") else FAIL_TASK
    if incident.kind == inc.ACTOR_RESTART_LOOP:
        return REPORT_ACTOR_RESTART_LOOP
    if incident.kind == inc.CIRCUIT_OPEN:
        return REPORT_CIRCUIT_OPEN
    return None


def attempt_id(incident_id: str, action: str, now_ms: int, occurrence: int) -> str:
    raw = f"remediation:{incident_id}:{action}:{now_ms}:{occurrence}"
    return "remediation_" + hashlib.sha256(raw.encode()).hexdigest()[:16]


def plan(incident: RuntimeIncidentRecord, mode: str, *, now_ms: int) -> RemediationAttempt | None:
    """What to do about ``incident`` under ``mode``; None when nothing is to be done
    (mode disabled, incident resolved or already remediating, or advisory only)."""
    _check_mode(mode)
    action = action_for(incident)
    if mode == DISABLED or incident.state != inc.OPEN or action is None:
        return None
    if mode == OBSERVE_ONLY:
        status, detail = SKIPPED, f"observe_only: would {action}"
    elif action in REPORT_ACTIONS:
        status, detail = SUCCEEDED, f"reported: {incident.summary}"
    else:
        subject = f"{incident.subject_kind} {incident.subject_id}"
        status, detail = PLANNED, f"{action} planned for {subject}"
    return RemediationAttempt(
        attempt_id=attempt_id(incident.incident_id, action, now_ms, incident.occurrences),
        incident_id=incident.incident_id, action=action, mode=mode, status=status, detail=detail,
        recorded_at_unix_ms=now_ms, updated_at_unix_ms=now_ms,
        subject_kind=incident.subject_kind, subject_id=incident.subject_id,
    )


def start(incident: RuntimeIncidentRecord, attempt: RemediationAttempt,
          *, now_ms: int) -> RuntimeIncidentRecord:
    """The incident once ``attempt`` is recorded: a planned action makes it ``remediating``."""
    if attempt.incident_id != incident.incident_id:
        raise InvalidInput("attempt belongs to another incident", details={"field": "incident_id"})
    if attempt.status == PLANNED:
        return inc.begin_remediation(incident, now_ms=now_ms)
    return incident


def complete(incident: RuntimeIncidentRecord, attempt: RemediationAttempt, *, ok: bool,
             now_ms: int, detail: str | None = None,
             ) -> tuple[RuntimeIncidentRecord, RemediationAttempt]:
    """Record a planned action's outcome: success resolves the incident (the stuck subject
    was dealt with), failure re-opens it."""
    if attempt.status != PLANNED:
        raise InvalidTransition(f"remediation {attempt.attempt_id} is {attempt.status}",
                                details={"from": attempt.status})
    if attempt.incident_id != incident.incident_id:
        raise InvalidInput("attempt belongs to another incident", details={"field": "incident_id"})
    done = dataclasses.replace(attempt, status=SUCCEEDED if ok else FAILED,
                               detail=detail or attempt.detail, updated_at_unix_ms=now_ms)
    if ok:
        return inc.resolve(incident, now_ms=now_ms, detail=detail), done
    if incident.state == inc.REMEDIATING:
        return inc.reopen(incident, now_ms=now_ms, detail=detail), done
    return incident, done


# --------------------------------------------------------------------------- executing


STALE_RUN_REASON = "run stopped sending heartbeats; failed by self-healing"
STALE_CANCEL_REASON = "run cancellation never completed; cancelled by self-healing"
STALE_TASK_REASON = "background task stopped making progress"


def run_finish(action: str) -> tuple[str, str, str]:
    """``(state, reason, termination_reason)`` for finishing a run from outside
    (``palyra.orchestrator.store.finish_run_from_outside``)."""
    if action == FAIL_RUN:
        return "failed", STALE_RUN_REASON, "stale_heartbeat"
    if action == CANCEL_RUN:
        return "cancelled", STALE_CANCEL_REASON, "cancellation"
    raise InvalidInput(f"{action} is not a run remediation", details={"field": "action"})


def task_remediation(task: bg.BackgroundTask, action: str, *, now_ms: int) -> bg.BackgroundTask:
    """The task after ``requeue_task``/``fail_task``. A requeue of a task without attempts
    left fails it instead; the caller also stops ``task.target_run_id`` if it is live."""
    if action == REQUEUE_TASK and task.state == bg.RUNNING and task.attempts_left:
        return bg.requeue(task, now_ms=now_ms, error=f"{STALE_TASK_REASON}; requeued")
    if action == REQUEUE_TASK and task.state == bg.QUEUED:
        return task  # already waiting for dispatch
    if action in (REQUEUE_TASK, FAIL_TASK):
        return bg.fail(task, now_ms=now_ms, error=f"{STALE_TASK_REASON}; failed")
    raise InvalidInput(f"{action} is not a task remediation", details={"field": "action"})
