"""Storage of background tasks: write ops over a journal ``Txn`` and ``TaskQueries``.

Write ops are ``def op(txn)`` closures using only ``txn.conn`` (apsw); the journal actor
applies them inside its transactions. Every update is optimistic: it names the state
(and attempt count) it expects, and a task that moved meanwhile raises Conflict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import apsw
import orjson

from palyra.background import tasks as t
from palyra.background.tasks import BackgroundTask
from palyra.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from palyra.journal.filters import where
from palyra.journal.store import Txn

Op = Callable[[Txn], Any]

_COLS = (
    "task_ulid, task_kind, session_ulid, parent_run_ulid, target_run_ulid, queued_input_ulid,"
    " owner_principal, device_id, channel, state, priority, attempt_count, max_attempts,"
    " budget_tokens, delegation_json, not_before_unix_ms, expires_at_unix_ms,"
    " notification_target_json, input_text, payload_json, last_error, result_json,"
    " created_at_unix_ms, updated_at_unix_ms, started_at_unix_ms, completed_at_unix_ms"
)
_MUTABLE = (
    "target_run_ulid", "state", "priority", "attempt_count", "max_attempts", "budget_tokens",
    "not_before_unix_ms", "expires_at_unix_ms", "payload_json", "last_error", "result_json",
    "updated_at_unix_ms", "started_at_unix_ms", "completed_at_unix_ms",
)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _row(task: BackgroundTask) -> tuple[Any, ...]:
    return (
        task.task_id, task.task_kind, task.session_id, task.parent_run_id, task.target_run_id,
        task.queued_input_id, task.owner_principal, task.device_id, task.channel, task.state,
        task.priority, task.attempt_count, task.max_attempts, task.budget_tokens,
        _json(task.delegation), task.not_before_unix_ms, task.expires_at_unix_ms,
        _json(task.notification_target), task.input_text, _json(task.payload), task.last_error,
        _json(task.result), task.created_at_unix_ms, task.updated_at_unix_ms,
        task.started_at_unix_ms, task.completed_at_unix_ms,
    )


def _task(row: Sequence[Any]) -> BackgroundTask:
    (task_id, kind, session_id, parent, target, queued_input, owner, device, channel, state,
     priority, attempts, max_attempts, budget, delegation, not_before, expires, notify, text,
     payload, error, result, created, updated, started, completed) = row
    return BackgroundTask(
        task_id=task_id, task_kind=kind, session_id=session_id, owner_principal=owner,
        device_id=device, created_at_unix_ms=created, updated_at_unix_ms=updated,
        channel=channel, state=state, priority=priority, attempt_count=attempts,
        max_attempts=max_attempts, budget_tokens=budget, parent_run_id=parent,
        target_run_id=target, queued_input_id=queued_input, delegation=_load(delegation),
        not_before_unix_ms=not_before, expires_at_unix_ms=expires,
        notification_target=_load(notify), input_text=text, payload=_load(payload),
        last_error=error, result=_load(result), started_at_unix_ms=started,
        completed_at_unix_ms=completed,
    )


# --------------------------------------------------------------------------- writes


def _note(txn: Txn, task: BackgroundTask) -> None:
    txn.note("background.task", task_id=task.task_id, session_id=task.session_id, state=task.state,
             run_id=task.target_run_id, error=task.last_error)


def insert_task(task: BackgroundTask) -> Op:
    row = _row(task)

    def op(txn: Txn) -> None:
        try:
            txn.conn.execute(
                f"INSERT INTO orchestrator_background_tasks({_COLS})"
                f" VALUES ({','.join('?' * len(row))})", row,
            )
        except apsw.ConstraintError as exc:
            raise AlreadyExists(f"background task {task.task_id} already exists",
                                details={"task_id": task.task_id}) from exc
        _note(txn, task)

    return op


def _read(conn: apsw.Connection, task_id: str) -> BackgroundTask | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM orchestrator_background_tasks WHERE task_ulid = ?", (task_id,)
    ).fetchone()
    return _task(row) if row else None


def update_task(before: BackgroundTask, after: BackgroundTask) -> Op:
    """Write ``after`` if the stored task is still in ``before``'s state and attempt count.

    Raises NotFound for a missing task and Conflict when it moved meanwhile.
    """
    if before.task_id != after.task_id:
        raise InvalidInput("update_task needs two versions of the same task",
                           details={"field": "task_id"})
    values = dict(zip(_COLS.replace(" ", "").split(","), _row(after), strict=True))
    assignments = ", ".join(f"{c} = ?" for c in _MUTABLE)

    def op(txn: Txn) -> BackgroundTask:
        txn.conn.execute(
            f"UPDATE orchestrator_background_tasks SET {assignments}"
            " WHERE task_ulid = ? AND state = ? AND attempt_count = ?",
            (*(values[c] for c in _MUTABLE), before.task_id, before.state, before.attempt_count),
        )
        if txn.conn.changes() == 0:
            current = _read(txn.conn, before.task_id)
            if current is None:
                raise NotFound(f"background task {before.task_id} not found",
                               details={"task_id": before.task_id})
            raise Conflict(
                f"background task {before.task_id} moved to {current.state}"
                f" (attempt {current.attempt_count}) before this update",
                details={"task_id": before.task_id, "expected": before.state,
                         "state": current.state},
            )
        if after.state != before.state:
            _note(txn, after)
        return after

    return op


CONTROLS = ("pause", "resume", "retry", "cancel")


def control_task(task_id: str, action: str, *, now_ms: int) -> Op:
    """A console control (pause/resume/retry/cancel) read-modify-written in one transaction.

    Returns the :class:`~palyra.background.tasks.Cancellation` (``cancel_run_id`` set when
    a live target run must be asked to stop; always None for the other controls).
    """
    if action not in CONTROLS:
        raise InvalidInput(f"unknown background task control {action!r}",
                           details={"field": "action"})

    def op(txn: Txn) -> t.Cancellation:
        before = _read(txn.conn, task_id)
        if before is None:
            raise NotFound(f"background task {task_id} not found", details={"task_id": task_id})
        if action == "cancel":
            outcome = t.cancel(before, now_ms=now_ms)
        else:
            change = {"pause": t.pause, "resume": t.resume, "retry": t.retry}[action]
            outcome = t.Cancellation(change(before, now_ms=now_ms))
        update_task(before, outcome.task)(txn)
        return outcome

    return op


# --------------------------------------------------------------------------- reads

_NOT_COUNTED = (t.FAILED, t.CANCELLED, t.EXPIRED)


class TaskQueries:
    """Read queries over one connection."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def task(self, task_id: str) -> BackgroundTask | None:
        return _read(self.conn, task_id)

    def tasks(self, *, session_id: str | None = None, owner_principal: str | None = None,
              states: Sequence[str] | None = None, limit: int = 100) -> list[BackgroundTask]:
        """Newest first."""
        clause, args = where(
            {"session_ulid": session_id, "owner_principal": owner_principal},
            {"state": [t.normalize_state(s) for s in states or ()]},
        )
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM orchestrator_background_tasks {clause}"
            " ORDER BY created_at_unix_ms DESC, task_ulid DESC LIMIT ?",
            (*args, max(1, min(int(limit), 1000))),
        ).fetchall()
        return [_task(r) for r in rows]

    def pollable(self, limit: int = t.POLL_LIMIT, *, now_ms: int | None = None) -> list[BackgroundTask]:
        """Non-terminal tasks in poll order: running, cancel_requested, queued, paused;
        then priority (high first), creation, id. With ``now_ms``, queued tasks that are
        not due yet and not expired are left out: a poll would only skip them, and
        reflections wait their ``not_before`` by the hundred under load."""
        order = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(t.POLL_STATE_ORDER))
        waiting = ("" if now_ms is None else
                   " AND NOT (state = 'queued' AND coalesce(not_before_unix_ms, 0) > :now"
                   " AND (expires_at_unix_ms IS NULL OR expires_at_unix_ms > :now))")
        states = {f"s{i}": s for i, s in enumerate(t.POLL_STATE_ORDER)}
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM orchestrator_background_tasks"
            f" WHERE state IN ({','.join(':' + k for k in states)}){waiting}"
            f" ORDER BY CASE state {order} END, priority DESC, created_at_unix_ms, task_ulid"
            " LIMIT :limit",
            {**states, "now": now_ms, "limit": max(1, min(int(limit), 10_000))},
        ).fetchall()
        return [_task(r) for r in rows]

    def due(self, now_ms: int, limit: int = t.POLL_LIMIT) -> list[BackgroundTask]:
        """Queued tasks due now, in :func:`~palyra.background.tasks.next_due` order."""
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM orchestrator_background_tasks WHERE state = 'queued'"
            " AND (not_before_unix_ms IS NULL OR not_before_unix_ms <= ?)"
            " AND (expires_at_unix_ms IS NULL OR expires_at_unix_ms > ?)"
            " AND (max_attempts <= 0 OR attempt_count < max_attempts)",
            (now_ms, now_ms),
        ).fetchall()
        return t.next_due((_task(r) for r in rows), now_ms, limit)

    def for_run(self, run_id: str) -> list[BackgroundTask]:
        """Tasks whose parent or target is ``run_id`` (cancellation propagation)."""
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM orchestrator_background_tasks"
            " WHERE parent_run_ulid = ? OR target_run_ulid = ? ORDER BY created_at_unix_ms",
            (run_id, run_id),
        ).fetchall()
        return [_task(r) for r in rows]

    def reflection_for_run(self, run_id: str) -> BackgroundTask | None:
        row = self.conn.execute(
            f"SELECT {_COLS} FROM orchestrator_background_tasks"
            " WHERE task_kind = 'post_run_reflection' AND parent_run_ulid = ?"
            " ORDER BY created_at_unix_ms DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return _task(row) if row else None

    def last_reflection_ms(self, *, owner_principal: str, device_id: str, channel: str | None,
                           session_id: str) -> int | None:
        """Creation time of the newest reflection task of this identity+session that did
        not fail, get cancelled or expire (the cooldown anchor of spec 6)."""
        row = self.conn.execute(
            "SELECT max(created_at_unix_ms) FROM orchestrator_background_tasks"
            " WHERE task_kind = 'post_run_reflection' AND owner_principal = ? AND device_id = ?"
            " AND channel IS ? AND session_ulid = ? AND state NOT IN (?,?,?)",
            (owner_principal, device_id, channel, session_id, *_NOT_COUNTED),
        ).fetchone()
        return None if row is None or row[0] is None else int(row[0])
