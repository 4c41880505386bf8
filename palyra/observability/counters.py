"""Runtime counters, folded from what the journal writer committed.

Nothing in the product increments a counter by hand: the single writer hands over
what each committed batch wrote (journal events, tape rows, and facts operations
noted with ``Txn.note``), and :meth:`RuntimeCounters.committed` folds that in. So a
counter moves exactly when the work became durable, never for a write that rolled
back. :data:`GROUPS` is the one catalogue both the diagnostics snapshot and
``/metrics`` read, so the two always show the same numbers.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import orjson

from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.errors import JournalError, PalyraError
from palyra.observability.failures import (
    PRODUCT_FAILURE,
    Failure,
    FailureRing,
    classify_run_failure,
)
from palyra.redaction import redact_message


class Group:
    """One family of counters: ``palyra_<name>_total{<label>=...}`` in ``/metrics``."""

    def __init__(self, name: str, label: str, help_text: str, always: tuple[str, ...] = ()) -> None:
        self.name, self.label, self.help, self.always = name, label, help_text, always


GROUPS: tuple[Group, ...] = (
    Group("run_transitions", "outcome", "Run state transitions committed (accepted, started, completed, failed, "
          "cancelled)", ("accepted", "started", "completed", "failed", "cancelled")),
    Group("tool_events", "event", "Tool steps on run tapes: proposed, allowed, denied, executed, "
          "failed, timed_out, attested",
          ("proposed", "allowed", "denied", "executed", "failed", "timed_out", "attested")),
    Group("budget_outcomes", "outcome", "Budget evaluations recorded on run tapes, by outcome"),
    Group("approvals", "decision", "Approvals resolved, by decision (allow, deny, timeout, ...)"),
    Group("journal", "event", "Journal writer: batches, writes (callers), writes rejected (conflict, "
          "bad input) and failed, journal events, tape rows and redacted payloads",
          ("batches", "writes", "write_rejections", "write_failures", "events", "tape_rows",
           "redacted")),
    Group("supervision", "event", "Supervision events journaled (actor restarted, escalated, hung)",
          ("restarted", "escalated", "hung")),
    Group("incidents", "state", "Self-healing incident transitions, by the state entered"),
    Group("remediations", "outcome", "Self-healing remediation attempts finished, by outcome"),
    Group("background_tasks", "state", "Background task transitions, by the state entered"),
    Group("failures", "failure_class", "Failures recorded in the recent-failures ring, by class",
          ("product_failure", "config_failure", "upstream_provider_failure")),
)
GROUP_NAMES = tuple(g.name for g in GROUPS)

# Journal commit latency (one observation per batch: apply + COMMIT), seconds.
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

_MAX_DENIED = 10_000
_SUPERVISION = {"actor.restarted": "restarted", "actor.escalated": "escalated", "actor.hung": "hung"}
_RUN_STATES = {"accepted": "accepted", "in_progress": "started", "done": "completed",
               "failed": "failed", "cancelled": "cancelled"}


class RuntimeCounters:
    """Thread-safe counters and the failure ring of one runtime (process lifetime)."""

    def __init__(self, clock: Clock = SYSTEM_CLOCK) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {g.name: dict.fromkeys(g.always, 0) for g in GROUPS}
        self._buckets = [0] * (len(COMMIT_BUCKETS) + 1)
        self._commit_sum = 0.0
        self._failures = FailureRing()
        self._denied: set[Any] = set()  # denied proposals whose tool_result is still to come

    # -- feeding -------------------------------------------------------------------------

    def committed(self, observed: Iterable[tuple[str, Any]], *, seconds: float, writes: int,
                  errors: Iterable[BaseException] = ()) -> None:
        """Fold in one journal batch: what it wrote, how long it took and the errors its
        callers got (a conflict or bad input is a rejection; anything else a failure)."""
        now = self.clock.now_ms()
        with self._lock:
            journal = self._counts["journal"]
            journal["batches"] += 1
            journal["writes"] += writes
            self._buckets[bisect.bisect_left(COMMIT_BUCKETS, seconds)] += 1
            self._commit_sum += seconds
            for error in errors:
                if isinstance(error, PalyraError) and not isinstance(error, JournalError):
                    journal["write_rejections"] += 1  # the caller's own conflict or bad input
                    continue
                journal["write_failures"] += 1
                self._fail(Failure.of("journal.write", PRODUCT_FAILURE,
                                      redact_message(f"{type(error).__name__}: {error}"), now))
            for name, item in observed:
                fold = _FOLDS.get(name)
                if fold is not None:
                    fold(self, item, now)

    def record_failure(self, failure: Failure) -> None:
        """A failure seen outside the journal (e.g. a journal that would not open)."""
        with self._lock:
            self._fail(failure)

    def _fail(self, failure: Failure) -> None:
        self._failures.add(failure)
        self._counts["failures"][failure.failure_class] += 1

    def _add(self, group: str, key: str, n: int = 1) -> None:
        counts = self._counts[group]
        counts[key] = counts.get(key, 0) + n

    # -- reading -------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Counters by group, the commit-latency histogram and the recent failures."""
        with self._lock:
            counters = {group: dict(sorted(values.items())) for group, values in self._counts.items()}
            cumulative, running = [], 0
            for bound, n in zip((*COMMIT_BUCKETS, float("inf")), self._buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            return {
                "counters": counters,
                "journal_commit_seconds": {"buckets": cumulative, "sum": self._commit_sum,
                                           "count": running},
                "recent_failures": [f.as_dict() for f in reversed(self._failures.recent())],
            }


# --------------------------------------------------------------------------- folds


def _row(c: RuntimeCounters, counter: str, redacted: bool) -> None:
    c._add("journal", counter)
    if redacted:
        c._add("journal", "redacted")


def _event(c: RuntimeCounters, draft: Any, now: int) -> None:
    _row(c, "events", draft.redacted)
    if draft.kind in _SUPERVISION:
        c._add("supervision", _SUPERVISION[draft.kind])


def _payload(entry: Any) -> Mapping[str, Any]:
    value = orjson.loads(entry.payload_json)
    return value if isinstance(value, dict) else {}


def _tool_decision(c: RuntimeCounters, entry: Any) -> None:
    payload = _payload(entry)
    if payload.get("kind") == "allow":
        c._add("tool_events", "allowed")
        return
    c._add("tool_events", "denied")
    if len(c._denied) >= _MAX_DENIED:  # a result never came (a crashed run): forget them
        c._denied.clear()
    c._denied.add(payload.get("proposal_id"))


def _tool_result(c: RuntimeCounters, entry: Any) -> None:
    payload = _payload(entry)
    if payload.get("proposal_id") in c._denied:  # a denied call's result: nothing ran
        c._denied.discard(payload.get("proposal_id"))
        return
    c._add("tool_events", "executed")
    if not payload.get("success"):
        c._add("tool_events", "failed")


def _tool_attestation(c: RuntimeCounters, entry: Any) -> None:
    c._add("tool_events", "attested")
    if _payload(entry).get("timed_out"):
        c._add("tool_events", "timed_out")


def _budget_outcome(c: RuntimeCounters, entry: Any) -> None:
    c._add("budget_outcomes", str(_payload(entry).get("budget_outcome") or "unknown"))


_TAPE_FOLDS: dict[str, Callable[[RuntimeCounters, Any], None]] = {
    "tool_proposal": lambda c, _: c._add("tool_events", "proposed"),
    "tool_decision": _tool_decision,
    "tool_result": _tool_result,
    "tool_attestation": _tool_attestation,
    "budget.outcome": _budget_outcome,
}


def _tape(c: RuntimeCounters, entry: Any, now: int) -> None:
    _row(c, "tape_rows", entry.redacted)
    if entry.event_type in _TAPE_FOLDS:
        _TAPE_FOLDS[entry.event_type](c, entry)


def _run_transition(c: RuntimeCounters, fields: Mapping[str, Any], now: int) -> None:
    state = fields["to_state"]
    c._add("run_transitions", _RUN_STATES.get(state, state))
    if state == "failed":
        c._fail(Failure.of(
            "run", fields.get("failure_class") or classify_run_failure(fields.get("termination_reason")),
            redact_message(fields.get("reason") or ""), now,
            session_id=fields.get("session_id"), run_id=fields.get("run_id")))


def _background_task(c: RuntimeCounters, fields: Mapping[str, Any], now: int) -> None:
    c._add("background_tasks", fields["state"])
    if fields["state"] == "failed":
        c._fail(Failure.of("background.task", PRODUCT_FAILURE, redact_message(fields.get("error") or ""),
                           now, session_id=fields.get("session_id"), task_id=fields.get("task_id"),
                           run_id=fields.get("run_id")))


_FOLDS: dict[str, Callable[[RuntimeCounters, Any, int], None]] = {
    "event": _event,
    "tape": _tape,
    "run.transition": _run_transition,
    "background.task": _background_task,
    "approval.resolved": lambda c, f, now: c._add("approvals", f["decision"], f.get("count", 1)),
    "incident": lambda c, f, now: c._add("incidents", f["state"]),
    "remediation": lambda c, f, now: c._add("remediations", f["outcome"]),
}
