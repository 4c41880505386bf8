"""Background tasks (spec 4): the record, the exact state machine and the poll decision.

Everything is a pure function of its arguments: time arrives as ``now_ms`` and nothing
is read or written. Changes return a new :class:`BackgroundTask` (records are frozen).

Decisions that differ from upstream, on purpose:

* Cancelling a terminal task is an :class:`~palyra.errors.InvalidTransition` (quirk 13.11).
* Terminal states (succeeded/failed/cancelled/expired) are left only by the operator's
  ``retry``; upstream also allowed ``pause`` from ``failed``.
* An operator ``retry`` grants a fresh attempt budget (``attempt_count`` back to 0);
  otherwise a task that failed by exhausting its budget would fail again on the next poll.
* A failed target run requeues the task while it has attempts left (upstream: failed).
* Expiry and ``not_before`` apply to tasks not yet dispatched (``queued``); a running task
  is never marked expired under its live run.
* Due tasks run FIFO within a priority (upstream listed newest first).
* A running prompt task whose target run cannot be found (after a 30 s start grace) is
  requeued while it has attempts left, else failed.
* Delegation scheduler limits (spec 4 step 9) are left to the caller of :func:`poll_step`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from palyra.errors import InvalidInput, InvalidTransition
from palyra.ids import is_ulid, new_ulid
from palyra.validation import bad, is_int, non_empty_text

# --------------------------------------------------------------------------- kinds

BACKGROUND_PROMPT = "background_prompt"
DELEGATION_PROMPT = "delegation_prompt"
SUMMARY = "summary"
RECALL_SEARCH = "recall_search"
CLASSIFICATION = "classification"
EXTRACTION = "extraction"
VISION = "vision"
ATTACHMENT_DERIVATION = "attachment_derivation"
ATTACHMENT_RECOMPUTE = "attachment_recompute"
POST_RUN_REFLECTION = "post_run_reflection"

KINDS = (
    BACKGROUND_PROMPT, DELEGATION_PROMPT, SUMMARY, RECALL_SEARCH, CLASSIFICATION, EXTRACTION,
    VISION, ATTACHMENT_DERIVATION, ATTACHMENT_RECOMPUTE, POST_RUN_REFLECTION,
)
KIND_ALIASES = {
    "auxiliary_summary": SUMMARY,
    "auxiliary_recall": RECALL_SEARCH,
    "reflection": POST_RUN_REFLECTION,
}
PROMPT_KINDS = frozenset({BACKGROUND_PROMPT, DELEGATION_PROMPT})
AUXILIARY_KINDS = frozenset({SUMMARY, RECALL_SEARCH, CLASSIFICATION, EXTRACTION, VISION})
CONSOLE_KINDS = PROMPT_KINDS | AUXILIARY_KINDS
INTERNAL_KINDS = frozenset({ATTACHMENT_DERIVATION, ATTACHMENT_RECOMPUTE, POST_RUN_REFLECTION})

# --------------------------------------------------------------------------- states

QUEUED = "queued"
RUNNING = "running"
PAUSED = "paused"
SUCCEEDED = "succeeded"
FAILED = "failed"
CANCEL_REQUESTED = "cancel_requested"
CANCELLED = "cancelled"
EXPIRED = "expired"

STATES = (QUEUED, RUNNING, PAUSED, SUCCEEDED, FAILED, CANCEL_REQUESTED, CANCELLED, EXPIRED)
STATE_ALIASES = {
    "pending": QUEUED,
    "in_progress": RUNNING,
    "complete": SUCCEEDED,
    "completed": SUCCEEDED,
    "canceled": CANCELLED,
}
ACTIVE = frozenset({QUEUED, RUNNING, PAUSED, CANCEL_REQUESTED})
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED, EXPIRED})
# Order in which a poll visits the non-terminal tasks (upstream: running first).
POLL_STATE_ORDER = (RUNNING, CANCEL_REQUESTED, QUEUED, PAUSED)

# --------------------------------------------------------------------------- events

DISPATCH = "dispatch"  # queued -> running, one more attempt
PAUSE = "pause"  # operator
RESUME = "resume"  # operator
RETRY = "retry"  # operator: the only way out of a terminal state
REQUEUE = "requeue"  # automatic retry of a running task with attempts left
CANCEL = "cancel"  # operator or parent cancellation
EXPIRE = "expire"
SUCCEED = "succeed"
FAIL = "fail"
FINISH_CANCELLED = "finish_cancelled"  # the target run stopped after a cancel

EVENTS = (DISPATCH, PAUSE, RESUME, RETRY, REQUEUE, CANCEL, EXPIRE, SUCCEED, FAIL, FINISH_CANCELLED)

TRANSITIONS: dict[tuple[str, str], str] = {
    (QUEUED, DISPATCH): RUNNING,
    (QUEUED, PAUSE): PAUSED,
    (PAUSED, RESUME): QUEUED,
    (FAILED, RETRY): QUEUED,
    (CANCELLED, RETRY): QUEUED,
    (EXPIRED, RETRY): QUEUED,
    (RUNNING, REQUEUE): QUEUED,
    (QUEUED, CANCEL): CANCELLED,
    (PAUSED, CANCEL): CANCELLED,
    (RUNNING, CANCEL): CANCEL_REQUESTED,
    (CANCEL_REQUESTED, CANCEL): CANCEL_REQUESTED,
    (QUEUED, EXPIRE): EXPIRED,
    (RUNNING, SUCCEED): SUCCEEDED,
    (CANCEL_REQUESTED, SUCCEED): SUCCEEDED,
    (QUEUED, FAIL): FAILED,
    (RUNNING, FAIL): FAILED,
    (CANCEL_REQUESTED, FAIL): FAILED,
    (RUNNING, FINISH_CANCELLED): CANCELLED,
    (CANCEL_REQUESTED, FINISH_CANCELLED): CANCELLED,
}

# --------------------------------------------------------------------------- limits & texts

DEFAULT_MAX_ATTEMPTS = 3
CONSOLE_PRIORITY_RANGE = (-10, 10)
CONSOLE_MAX_ATTEMPTS_RANGE = (1, 16)
REFLECTION_PRIORITY = 25
MAX_INPUT_CHARS = 32_768
POLL_LIMIT = 256
# A dispatched prompt task's run is created right after the task is marked running; a
# poll in between must not take the missing run for a lost one.
TARGET_START_GRACE_MS = 30_000

EXPIRED_BEFORE_DISPATCH = "background task expired before dispatch"
RETRY_BUDGET_EXHAUSTED = "background task exhausted retry budget"
PARENT_CANCELLED = "cancelled because the parent run was cancelled"
CANCELLED_BEFORE_DISPATCH = "cancelled before dispatch"
CANCELLED_BY_OPERATOR = "cancelled_by_operator"
# Reasons given to the run cancellation of a target run.
RUN_CANCEL_OPERATOR = "background_task_cancelled_by_operator"
RUN_CANCEL_PARENT = "delegated_parent_cancelled"
RUN_CANCEL_CHILD_TIMEOUT = "delegated_child_timeout"

_RUN_TERMINAL = frozenset({"done", "failed", "cancelled"})


# --------------------------------------------------------------------------- record


@dataclasses.dataclass(frozen=True, slots=True)
class BackgroundTask:
    """One row of ``orchestrator_background_tasks``."""

    task_id: str
    task_kind: str
    session_id: str
    owner_principal: str
    device_id: str
    created_at_unix_ms: int
    updated_at_unix_ms: int
    channel: str | None = None
    state: str = QUEUED
    priority: int = 0
    attempt_count: int = 0
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    budget_tokens: int = 0
    parent_run_id: str | None = None
    target_run_id: str | None = None
    queued_input_id: str | None = None
    delegation: dict[str, Any] | None = None
    not_before_unix_ms: int | None = None
    expires_at_unix_ms: int | None = None
    notification_target: dict[str, Any] | None = None
    input_text: str | None = None
    payload: dict[str, Any] | None = None
    last_error: str | None = None
    result: dict[str, Any] | None = None
    started_at_unix_ms: int | None = None
    completed_at_unix_ms: int | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    @property
    def attempts_left(self) -> bool:
        """``max_attempts <= 0`` means unlimited (internal tasks only; the console clamps)."""
        return self.max_attempts <= 0 or self.attempt_count < self.max_attempts

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class RunView(Protocol):
    """What the queue needs of a run; :class:`palyra.records.Run` fits."""

    @property
    def run_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def cancel_requested(self) -> bool: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def completed_at_unix_ms(self) -> int | None: ...


# --------------------------------------------------------------------------- names


def normalize_kind(kind: str) -> str:
    """Canonical task kind for a kind or alias; InvalidInput naming ``task_kind``."""
    text = kind.strip().lower() if isinstance(kind, str) else kind
    if text in KINDS:
        return text
    if text in KIND_ALIASES:
        return KIND_ALIASES[text]
    raise InvalidInput(f"unknown task_kind {kind!r}", details={"field": "task_kind"})


def normalize_state(state: str) -> str:
    text = state.strip().lower() if isinstance(state, str) else state
    if text in STATES:
        return text
    if text in STATE_ALIASES:
        return STATE_ALIASES[text]
    raise InvalidInput(f"unknown background task state {state!r}", details={"field": "state"})


# --------------------------------------------------------------------------- transitions


def next_state(state: str, event: str) -> str:
    """The state ``event`` leads to from ``state``, or InvalidTransition."""
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(
            f"invalid background task transition from {state} via {event}",
            details={"from": state, "event": event},
        ) from None


def transition(task: BackgroundTask, event: str, *, now_ms: int, **changes: Any) -> BackgroundTask:
    """Apply ``event`` plus field ``changes``; reaching a terminal state stamps completion."""
    state = next_state(task.state, event)
    if state in TERMINAL and "completed_at_unix_ms" not in changes:
        changes["completed_at_unix_ms"] = now_ms
    return dataclasses.replace(task, state=state, updated_at_unix_ms=now_ms, **changes)


def dispatch(task: BackgroundTask, *, now_ms: int,
             target_run_id: str | None = None) -> BackgroundTask:
    """queued -> running with one more attempt. Prompt kinds need the new target run id."""
    if not task.attempts_left:
        raise InvalidTransition(
            f"background task {task.task_id} has no attempts left",
            details={"attempt_count": task.attempt_count, "max_attempts": task.max_attempts},
        )
    if task.task_kind in PROMPT_KINDS and not is_ulid(target_run_id):
        raise InvalidInput("a prompt task needs a ULID target_run_id",
                           details={"field": "target_run_id"})
    return transition(task, DISPATCH, now_ms=now_ms, attempt_count=task.attempt_count + 1,
                      target_run_id=target_run_id, started_at_unix_ms=now_ms,
                      completed_at_unix_ms=None, last_error=None, result=None)


def pause(task: BackgroundTask, *, now_ms: int) -> BackgroundTask:
    return transition(task, PAUSE, now_ms=now_ms)


def resume(task: BackgroundTask, *, now_ms: int) -> BackgroundTask:
    return transition(task, RESUME, now_ms=now_ms)


def retry(task: BackgroundTask, *, now_ms: int) -> BackgroundTask:
    """Operator retry of a failed/cancelled/expired task: queued, fresh attempt budget."""
    return transition(task, RETRY, now_ms=now_ms, attempt_count=0, target_run_id=None,
                      last_error=None, result=None, started_at_unix_ms=None,
                      completed_at_unix_ms=None)


def requeue(task: BackgroundTask, *, now_ms: int, error: str | None = None) -> BackgroundTask:
    """Automatic retry of a running task: back to queued, attempts kept."""
    return transition(task, REQUEUE, now_ms=now_ms, target_run_id=None, started_at_unix_ms=None,
                      last_error=error, result=None)


def expire(task: BackgroundTask, *, now_ms: int) -> BackgroundTask:
    return transition(task, EXPIRE, now_ms=now_ms, last_error=EXPIRED_BEFORE_DISPATCH)


def fail(task: BackgroundTask, *, now_ms: int, error: str,
         result: dict[str, Any] | None = None) -> BackgroundTask:
    if result is None:
        result = {"status": FAILED, "task_id": task.task_id, "error": error}
    return transition(task, FAIL, now_ms=now_ms, last_error=error, result=result)


@dataclasses.dataclass(frozen=True, slots=True)
class Cancellation:
    """A cancelled task and, when its target run is live, the run cancel to request."""

    task: BackgroundTask
    cancel_run_id: str | None = None
    cancel_run_reason: str | None = None


def cancel(task: BackgroundTask, *, now_ms: int, reason: str = CANCELLED_BY_OPERATOR,
           run_cancel_reason: str = RUN_CANCEL_OPERATOR) -> Cancellation:
    """Cancel a non-terminal task. A running task goes to ``cancel_requested`` (its target
    run is asked to stop); a queued or paused one is cancelled at once. Terminal tasks
    raise InvalidTransition (upstream accepted them: quirk 13.11)."""
    after = transition(task, CANCEL, now_ms=now_ms, last_error=reason)
    if after.state == CANCEL_REQUESTED and task.state == RUNNING and task.target_run_id:
        return Cancellation(after, task.target_run_id, run_cancel_reason)
    return Cancellation(after)


# --------------------------------------------------------------------------- finalisation


def _run_summary(run: RunView) -> dict[str, Any]:
    return {"run_id": run.run_id, "state": run.state, "last_error": run.last_error,
            "completed_at_unix_ms": run.completed_at_unix_ms}


def finalize_from_run(task: BackgroundTask, run: RunView, *, now_ms: int,
                      allow_retry: bool = True) -> BackgroundTask | None:
    """The task after its target run ended, or None while the run is still live.

    done -> succeeded; cancelled -> cancelled; failed -> requeued while the task (running,
    ``allow_retry``) has attempts left, else failed. A task in ``cancel_requested`` takes
    the run's actual outcome and is never retried.
    """
    if run.state not in _RUN_TERMINAL:
        return None
    completed = run.completed_at_unix_ms or now_ms
    if run.state == "failed" and allow_retry and task.state == RUNNING and task.attempts_left:
        return requeue(task, now_ms=now_ms, error=run.last_error)
    event, status = {
        "done": (SUCCEED, SUCCEEDED),
        "cancelled": (FINISH_CANCELLED, CANCELLED),
        "failed": (FAIL, FAILED),
    }[run.state]
    result = {"status": status, "task_id": task.task_id, "run": _run_summary(run)}
    return transition(task, event, now_ms=now_ms, last_error=run.last_error, result=result,
                      completed_at_unix_ms=completed)


# --------------------------------------------------------------------------- due ordering


def is_due(task: BackgroundTask, now_ms: int) -> bool:
    """Queued, past ``not_before``, not expired and with attempts left."""
    return (
        task.state == QUEUED
        and (task.not_before_unix_ms is None or task.not_before_unix_ms <= now_ms)
        and (task.expires_at_unix_ms is None or task.expires_at_unix_ms > now_ms)
        and task.attempts_left
    )


def due_key(task: BackgroundTask) -> tuple[int, int, int, str]:
    """Sort key: priority (high first), then due time (``not_before``, else creation),
    then creation, then id: a total order over distinct tasks."""
    due_at = task.not_before_unix_ms
    if due_at is None:
        due_at = task.created_at_unix_ms
    return (-task.priority, due_at, task.created_at_unix_ms, task.task_id)


def next_due(tasks: Iterable[BackgroundTask], now_ms: int,
             limit: int | None = None) -> list[BackgroundTask]:
    """The tasks to dispatch now, first to run first."""
    due = sorted((t for t in tasks if is_due(t, now_ms)), key=due_key)
    return due if limit is None else due[: max(0, limit)]


# --------------------------------------------------------------------------- poll decision

SKIP, UPDATE, DISPATCH_NOW = "skip", "update", "dispatch"
HEARTBEAT_RECORD, HEARTBEAT_CLEAR = "record", "clear"


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    """What one poll does with one task.

    ``action``: ``skip`` (nothing to write), ``update`` (write ``task``) or ``dispatch``
    (call :func:`dispatch` and start the work). ``heartbeat``: ``record``/``clear`` the
    task's work heartbeat. ``cancel_run``: ``(run_id, reason)`` to request cancellation of.
    """

    action: str
    task: BackgroundTask
    reason: str
    heartbeat: str = HEARTBEAT_RECORD
    cancel_run: tuple[str, str] | None = None


def _update(task: BackgroundTask, reason: str, cancel_run: tuple[str, str] | None = None) -> Step:
    beat = HEARTBEAT_CLEAR if task.terminal else HEARTBEAT_RECORD
    return Step(UPDATE, task, reason, beat, cancel_run)


def _parent_cancelled(parent: RunView | None) -> bool:
    return parent is not None and (parent.cancel_requested or parent.state == "cancelled")


def needs_runs(task: BackgroundTask, *, now_ms: int) -> bool:
    """Whether :func:`poll_step` may look at the task's parent or target run: not for a
    terminal or paused task, nor for a queued one that expired or is not due yet (it
    returns before reading them). Lets a poll over many waiting tasks (reflections
    wait ``not_before``) skip two run reads per task."""
    if task.terminal or task.state == PAUSED:
        return False
    if task.state == QUEUED:
        expired = task.expires_at_unix_ms is not None and task.expires_at_unix_ms <= now_ms
        waiting = task.not_before_unix_ms is not None and task.not_before_unix_ms > now_ms
        return not (expired or waiting)
    return True


def poll_step(
    task: BackgroundTask,
    *,
    now_ms: int,
    parent: RunView | None = None,
    target: RunView | None = None,
) -> Step:
    """Spec 4 steps 1-8 for one task (delegation scheduling limits are the caller's).

    ``parent`` is the task's parent run, ``target`` its target run (None when absent or
    not found).
    """
    if task.terminal or task.state == PAUSED:
        return Step(SKIP, task, task.state, HEARTBEAT_CLEAR)
    if task.state == QUEUED:
        if task.expires_at_unix_ms is not None and task.expires_at_unix_ms <= now_ms:
            return _update(expire(task, now_ms=now_ms), "expired")
        if task.not_before_unix_ms is not None and task.not_before_unix_ms > now_ms:
            return Step(SKIP, task, "not_before")
    if task.state in (QUEUED, RUNNING) and _parent_cancelled(parent):
        if task.target_run_id and target is not None:
            done = finalize_from_run(task, target, now_ms=now_ms, allow_retry=False)
            if done is not None:
                return _update(done, "target run finished")
            after = cancel(task, now_ms=now_ms, reason=PARENT_CANCELLED,
                           run_cancel_reason=RUN_CANCEL_PARENT)
            return _update(after.task, "parent cancelled", (target.run_id, RUN_CANCEL_PARENT))
        gone = transition(task, CANCEL, now_ms=now_ms, last_error=PARENT_CANCELLED)
        if gone.state == CANCEL_REQUESTED:  # running without a (live) target run
            gone = transition(gone, FINISH_CANCELLED, now_ms=now_ms)
        return _update(gone, "parent cancelled")
    if task.state == CANCEL_REQUESTED:
        if not task.target_run_id or target is None:
            reason = task.last_error or CANCELLED_BEFORE_DISPATCH
            return _update(transition(task, FINISH_CANCELLED, now_ms=now_ms, last_error=reason),
                           "cancelled")
        done = finalize_from_run(task, target, now_ms=now_ms, allow_retry=False)
        if done is not None:
            return _update(done, "target run finished")
        return Step(SKIP, task, "waiting for the target run to stop")
    if task.state == RUNNING:
        if not task.target_run_id:
            return Step(SKIP, task, "running")  # reflection/auxiliary work in a worker
        if target is None:
            started = task.started_at_unix_ms
            if started is not None and now_ms - started < TARGET_START_GRACE_MS:
                return Step(SKIP, task, "waiting for the target run to start")
            lost = f"target run {task.target_run_id} not found"
            if task.attempts_left:
                return _update(requeue(task, now_ms=now_ms, error=lost), "target run lost")
            return _update(fail(task, now_ms=now_ms, error=lost), "target run lost")
        done = finalize_from_run(task, target, now_ms=now_ms)
        if done is not None:
            return _update(done, "target run finished")
        timeout = child_timeout_ms(task)
        started = task.started_at_unix_ms
        if timeout is not None and started is not None and now_ms - started > timeout:
            after = cancel(task, now_ms=now_ms, reason=RUN_CANCEL_CHILD_TIMEOUT,
                           run_cancel_reason=RUN_CANCEL_CHILD_TIMEOUT)
            return _update(after.task, "child timeout", (target.run_id, RUN_CANCEL_CHILD_TIMEOUT))
        return Step(SKIP, task, "running")
    # queued
    if not task.attempts_left:
        return _update(fail(task, now_ms=now_ms, error=RETRY_BUDGET_EXHAUSTED), "exhausted")
    return Step(DISPATCH_NOW, task, "due")


def child_timeout_ms(task: BackgroundTask) -> int | None:
    if task.task_kind != DELEGATION_PROMPT or not task.delegation:
        return None
    value = task.delegation.get("child_timeout_ms")
    return value if is_int(value) and value > 0 else None


# --------------------------------------------------------------------------- create requests

CREATE_FIELDS = frozenset({
    "text", "task_kind", "priority", "max_attempts", "budget_tokens", "not_before_unix_ms",
    "expires_at_unix_ms", "notification_target", "delegation", "parameter_delta",
})


def _int(body: Mapping[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if not is_int(value):
        raise bad(field, "must be an integer")
    return value


def _obj(body: Mapping[str, Any], field: str) -> dict[str, Any] | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad(field, "must be a JSON object")
    return dict(value)


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))


def validate_create(
    body: Any,
    *,
    session_id: str,
    owner_principal: str,
    device_id: str,
    channel: str | None,
    now_ms: int,
    parent_run_id: str | None = None,
    task_id: str | None = None,
) -> BackgroundTask:
    """A queued task from a console create request (``POST …/background-tasks``).

    Clamps ``priority`` to -10..10 and ``max_attempts`` to 1..16 as the console does;
    anything malformed raises InvalidInput whose ``details["field"]`` names the field.
    ``parent_run_id`` is the session's run a delegation hangs from.
    """
    if not isinstance(body, Mapping):
        raise bad("body", "must be a JSON object")
    for key in body:
        if key not in CREATE_FIELDS:
            raise bad(str(key), "is not a known field")
    if not is_ulid(session_id):
        raise bad("session_id", "must be a canonical ULID")
    text = non_empty_text(body.get("text"), "text")
    if len(text) > MAX_INPUT_CHARS:
        raise bad("text", f"must be at most {MAX_INPUT_CHARS} characters")
    delegation = _obj(body, "delegation")
    raw_kind = body.get("task_kind")
    if raw_kind is None:
        kind = DELEGATION_PROMPT if delegation is not None else BACKGROUND_PROMPT
    elif not isinstance(raw_kind, str):
        raise bad("task_kind", "must be a string")
    else:
        kind = normalize_kind(raw_kind)
    if kind in INTERNAL_KINDS:
        raise bad("task_kind", f"{kind} is internal-only")
    if delegation is not None and kind != DELEGATION_PROMPT:
        raise bad("task_kind", "must be delegation_prompt when a delegation is given")
    if kind == DELEGATION_PROMPT:
        if delegation is None:
            raise bad("delegation", "is required for delegation_prompt")
        if not is_ulid(parent_run_id):
            raise bad("delegation", "requires a parent run in the session")
        timeout = delegation.get("child_timeout_ms")
        if timeout is not None and not (is_int(timeout) and timeout > 0):
            raise bad("delegation", "child_timeout_ms must be a positive integer")
    priority = _int(body, "priority")
    max_attempts = _int(body, "max_attempts")
    budget = _int(body, "budget_tokens")
    if budget is not None and budget < 1:
        raise bad("budget_tokens", "must be at least 1")
    not_before = _int(body, "not_before_unix_ms")
    expires = _int(body, "expires_at_unix_ms")
    if not_before is not None and not_before < 0:
        raise bad("not_before_unix_ms", "must not be negative")
    if expires is not None:
        if expires <= now_ms:
            raise bad("expires_at_unix_ms", "must be in the future")
        if not_before is not None and expires <= not_before:
            raise bad("expires_at_unix_ms", "must be after not_before_unix_ms")
    notification = _obj(body, "notification_target")
    delta = _obj(body, "parameter_delta")
    return BackgroundTask(
        task_id=task_id or new_ulid(now_ms),
        task_kind=kind,
        session_id=session_id,
        owner_principal=owner_principal,
        device_id=device_id,
        channel=channel,
        created_at_unix_ms=now_ms,
        updated_at_unix_ms=now_ms,
        state=QUEUED,
        priority=_clamp(priority if priority is not None else 0, CONSOLE_PRIORITY_RANGE),
        max_attempts=_clamp(max_attempts if max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
                            CONSOLE_MAX_ATTEMPTS_RANGE),
        budget_tokens=budget if budget is not None else max(1, len(text.split())),
        parent_run_id=parent_run_id if kind == DELEGATION_PROMPT else None,
        delegation=delegation,
        not_before_unix_ms=not_before,
        expires_at_unix_ms=expires,
        notification_target=notification,
        input_text=text,
        payload={"parameter_delta": delta} if delta is not None else None,
    )
