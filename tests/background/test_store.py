"""Background task storage: write ops, optimistic updates and queries."""

from __future__ import annotations

import dataclasses

import apsw
import pytest

from palyra.background import store
from palyra.background import tasks as t
from palyra.background.store import TaskQueries
from palyra.clock import ManualClock
from palyra.errors import AlreadyExists, Conflict, InvalidInput, InvalidTransition, NotFound
from palyra.ids import new_ulid
from palyra.journal.store import JournalSettings, Txn, open_writer_connection
from palyra.learning.sampling import reflection_task
from tests.background.support import SESSION, T0, make_task
from tests.support.txn import OpTxn


def test_insert_and_read_round_trip_every_field(txn: OpTxn,
                                                conn: apsw.Connection) -> None:
    task = make_task(
        task_kind="delegation_prompt", channel="console:background", priority=-3,
        parent_run_id=new_ulid(), target_run_id=new_ulid(), queued_input_id=new_ulid(),
        delegation={"child_timeout_ms": 5000, "mode": "serial"}, not_before_unix_ms=T0 + 1,
        expires_at_unix_ms=T0 + 99, notification_target={"channel": "discord:1"},
        payload={"parameter_delta": {"temperature": 0.2}}, last_error="e",
        result={"status": "x"}, started_at_unix_ms=T0 + 2, completed_at_unix_ms=None,
        budget_tokens=12, attempt_count=1, max_attempts=4,
    )
    store.insert_task(task)(txn)
    assert TaskQueries(conn).task(task.task_id) == task
    assert TaskQueries(conn).task(new_ulid()) is None
    with pytest.raises(AlreadyExists):
        store.insert_task(task)(txn)


def test_update_is_optimistic(txn: OpTxn, conn: apsw.Connection) -> None:
    task = make_task()
    store.insert_task(task)(txn)
    running = t.dispatch(task, now_ms=T0 + 1, target_run_id=new_ulid())
    assert store.update_task(task, running)(txn) == running
    assert TaskQueries(conn).task(task.task_id) == running
    # A second writer still holding the queued version loses.
    with pytest.raises(Conflict) as err:
        store.update_task(task, t.pause(task, now_ms=T0 + 2))(txn)
    assert err.value.details["state"] == "running"
    ghost = make_task()
    with pytest.raises(NotFound):
        store.update_task(ghost, t.pause(ghost, now_ms=T0))(txn)
    with pytest.raises(InvalidInput):
        store.update_task(task, ghost)
    # only committed state changes are noted for the counters: queued, then running
    assert [(n, f["state"]) for n, f in txn.notes] == [("background.task", "queued"),
                                                       ("background.task", "running")]


def test_console_controls(txn: OpTxn, conn: apsw.Connection) -> None:
    q = TaskQueries(conn)
    task = make_task()
    store.insert_task(task)(txn)
    assert store.control_task(task.task_id, "pause", now_ms=T0 + 1)(txn).task.state == "paused"
    assert store.control_task(task.task_id, "resume", now_ms=T0 + 2)(txn).task.state == "queued"
    cancelled = store.control_task(task.task_id, "cancel", now_ms=T0 + 3)(txn)
    assert cancelled.task.state == "cancelled" and cancelled.cancel_run_id is None
    # Quirk 13.11: a second cancel of the now-terminal task is refused, row untouched.
    with pytest.raises(InvalidTransition):
        store.control_task(task.task_id, "cancel", now_ms=T0 + 4)(txn)
    stored = q.task(task.task_id)
    assert stored is not None and stored.updated_at_unix_ms == T0 + 3
    assert store.control_task(task.task_id, "retry", now_ms=T0 + 5)(txn).task.state == "queued"
    with pytest.raises(NotFound):
        store.control_task(new_ulid(), "pause", now_ms=T0)(txn)
    with pytest.raises(InvalidInput):
        store.control_task(task.task_id, "explode", now_ms=T0)


def test_cancel_control_of_a_running_task_names_the_run_to_stop(txn: OpTxn) -> None:
    run_id = new_ulid()
    task = make_task(state="running", target_run_id=run_id, attempt_count=1)
    store.insert_task(task)(txn)
    outcome = store.control_task(task.task_id, "cancel", now_ms=T0 + 1)(txn)
    assert outcome.task.state == "cancel_requested"
    assert (outcome.cancel_run_id, outcome.cancel_run_reason) == (
        run_id, "background_task_cancelled_by_operator")


def test_pollable_and_due_orders(txn: OpTxn, conn: apsw.Connection) -> None:
    now = T0 + 1000
    tasks = [
        make_task(state="paused", priority=9),
        make_task(priority=1, created_at_unix_ms=T0 + 1),
        make_task(priority=1, created_at_unix_ms=T0 + 2),
        make_task(priority=5, not_before_unix_ms=now + 1),
        make_task(state="running", priority=-1),
        make_task(state="cancel_requested"),
        make_task(state="succeeded"),
        make_task(priority=3, expires_at_unix_ms=now),
        make_task(priority=7),
    ]
    for task in tasks:
        store.insert_task(task)(txn)
    q = TaskQueries(conn)
    states = [x.state for x in q.pollable()]
    assert states == ["running", "cancel_requested", "queued", "queued", "queued", "queued",
                      "queued", "paused"]
    assert len(q.pollable(limit=2)) == 2
    # as of now: the queued task not due yet (not expired) is left out, the expired one stays
    at_now = q.pollable(now_ms=now)
    assert at_now == [x for x in q.pollable() if x.not_before_unix_ms is None]
    assert len(at_now) == len(states) - 1 and any(x.expires_at_unix_ms == now for x in at_now)
    assert q.due(now) == t.next_due(tasks, now)
    assert [x.priority for x in q.due(now)] == [7, 1, 1]
    assert q.due(now)[1].created_at_unix_ms == T0 + 1
    queued = [x for x in tasks if x.state == "queued"]
    newest_first = sorted(queued, key=lambda x: (x.created_at_unix_ms, x.task_id), reverse=True)
    assert q.tasks(states=["pending"]) == newest_first
    assert len(q.tasks(session_id=SESSION, limit=3)) == 3


def test_reflection_lookups(txn: OpTxn, conn: apsw.Connection) -> None:
    q = TaskQueries(conn)
    run_id = new_ulid()
    ident = {"owner_principal": "user:ops", "device_id": "dev-1", "channel": None,
             "session_id": SESSION}
    assert q.reflection_for_run(run_id) is None and q.last_reflection_ms(**ident) is None
    failed = dataclasses.replace(
        reflection_task(run_id=new_ulid(), now_ms=T0 + 50, **ident), state="failed")
    store.insert_task(failed)(txn)
    assert q.last_reflection_ms(**ident) is None  # failed ones do not start a cooldown
    task = reflection_task(run_id=run_id, now_ms=T0 + 10, **ident)
    store.insert_task(task)(txn)
    assert q.reflection_for_run(run_id) == task
    assert q.last_reflection_ms(**ident) == T0 + 10
    assert q.last_reflection_ms(**{**ident, "channel": "discord"}) is None
    assert q.for_run(run_id) == [task]


def test_ops_run_inside_a_real_journal_transaction(tmp_path) -> None:
    clock = ManualClock(T0)
    conn = open_writer_connection(tmp_path, JournalSettings(), clock)
    task = make_task()
    with conn:
        store.insert_task(task)(Txn(conn, JournalSettings(), clock))
    with conn:
        store.control_task(task.task_id, "pause", now_ms=clock.now_ms())(
            Txn(conn, JournalSettings(), clock))
    stored = TaskQueries(conn).task(task.task_id)
    assert stored is not None and stored.state == "paused"
    conn.close()
