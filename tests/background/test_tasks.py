"""The background task state machine, due ordering and poll decisions (spec 4)."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palyra.background import tasks as t
from palyra.clock import ManualClock
from palyra.errors import InvalidInput, InvalidTransition
from palyra.ids import new_ulid
from tests.background.support import SESSION, T0, make_run, make_task

# --------------------------------------------------------------------------- names


def test_kind_and_state_aliases_normalise() -> None:
    assert t.normalize_kind("auxiliary_summary") == "summary"
    assert t.normalize_kind("auxiliary_recall") == "recall_search"
    assert t.normalize_kind("Reflection") == "post_run_reflection"
    assert t.normalize_state("pending") == "queued"
    assert t.normalize_state("in_progress") == "running"
    assert t.normalize_state("completed") == t.normalize_state("complete") == "succeeded"
    assert t.normalize_state("canceled") == "cancelled"
    with pytest.raises(InvalidInput) as err:
        t.normalize_kind("teleport")
    assert err.value.details["field"] == "task_kind"


def test_active_and_terminal_partition_the_states() -> None:
    assert set(t.STATES) == t.ACTIVE | t.TERMINAL
    assert not t.ACTIVE & t.TERMINAL


# --------------------------------------------------------------------------- table


def test_transition_table_is_exact() -> None:
    expected = {
        ("queued", "dispatch"): "running", ("queued", "pause"): "paused",
        ("paused", "resume"): "queued", ("failed", "retry"): "queued",
        ("cancelled", "retry"): "queued", ("expired", "retry"): "queued",
        ("running", "requeue"): "queued", ("queued", "cancel"): "cancelled",
        ("paused", "cancel"): "cancelled", ("running", "cancel"): "cancel_requested",
        ("cancel_requested", "cancel"): "cancel_requested", ("queued", "expire"): "expired",
        ("running", "succeed"): "succeeded", ("cancel_requested", "succeed"): "succeeded",
        ("queued", "fail"): "failed", ("running", "fail"): "failed",
        ("cancel_requested", "fail"): "failed", ("running", "finish_cancelled"): "cancelled",
        ("cancel_requested", "finish_cancelled"): "cancelled",
    }
    assert expected == t.TRANSITIONS
    for state in t.STATES:
        for event in t.EVENTS:
            if (state, event) in expected:
                assert t.next_state(state, event) == expected[(state, event)]
            else:
                with pytest.raises(InvalidTransition):
                    t.next_state(state, event)


@given(st.sampled_from(sorted(t.TERMINAL)), st.sampled_from(t.EVENTS))
def test_a_terminal_task_only_leaves_by_operator_retry(state: str, event: str) -> None:
    task = make_task(state=state, completed_at_unix_ms=T0)
    if event == t.RETRY and state != t.SUCCEEDED:  # succeeded is final for good
        assert t.transition(task, event, now_ms=T0 + 1).state == t.QUEUED
    else:
        with pytest.raises(InvalidTransition):
            t.transition(task, event, now_ms=T0 + 1)


@given(st.lists(st.sampled_from(t.EVENTS), max_size=40))
def test_random_event_sequences_respect_the_table(events: list[str]) -> None:
    task = make_task()
    now = T0
    for event in events:
        now += 1
        before = task
        try:
            task = t.transition(task, event, now_ms=now)
        except InvalidTransition:
            assert (before.state, event) not in t.TRANSITIONS
            continue
        assert task.state in t.STATES
        if before.terminal:
            assert event == t.RETRY and task.state == t.QUEUED
            assert before.state != t.SUCCEEDED
        if task.terminal:
            assert task.completed_at_unix_ms == now


# --------------------------------------------------------------------------- controls


def test_dispatch_counts_attempts_and_needs_a_target_run_for_prompts() -> None:
    task = make_task(max_attempts=2)
    with pytest.raises(InvalidInput) as err:
        t.dispatch(task, now_ms=T0 + 1)
    assert err.value.details["field"] == "target_run_id"
    run_id = new_ulid(T0)
    running = t.dispatch(task, now_ms=T0 + 5, target_run_id=run_id)
    assert (running.state, running.attempt_count, running.target_run_id) == ("running", 1, run_id)
    assert running.started_at_unix_ms == T0 + 5
    aux = t.dispatch(make_task(task_kind="summary"), now_ms=T0 + 1)
    assert aux.state == "running" and aux.target_run_id is None
    exhausted = make_task(attempt_count=2, max_attempts=2)
    with pytest.raises(InvalidTransition):
        t.dispatch(exhausted, now_ms=T0 + 1, target_run_id=run_id)


def test_pause_resume_and_retry() -> None:
    paused = t.pause(make_task(), now_ms=T0 + 1)
    assert paused.state == "paused"
    assert t.resume(paused, now_ms=T0 + 2).state == "queued"
    with pytest.raises(InvalidTransition):
        t.pause(make_task(state="running"), now_ms=T0)
    with pytest.raises(InvalidTransition):  # a failed task is terminal: retry it instead
        t.pause(make_task(state="failed"), now_ms=T0)
    failed = make_task(state="failed", attempt_count=3, max_attempts=3, target_run_id=new_ulid(),
                       last_error="boom", result={"status": "failed"}, started_at_unix_ms=T0,
                       completed_at_unix_ms=T0 + 9)
    again = t.retry(failed, now_ms=T0 + 10)
    assert again.state == "queued" and again.attempt_count == 0
    assert (again.target_run_id, again.last_error, again.result) == (None, None, None)
    assert (again.started_at_unix_ms, again.completed_at_unix_ms) == (None, None)
    assert t.is_due(again, T0 + 10)
    with pytest.raises(InvalidTransition):
        t.retry(make_task(state="succeeded"), now_ms=T0)


def test_cancel_paths() -> None:
    queued = t.cancel(make_task(), now_ms=T0 + 1)
    assert queued.task.state == "cancelled" and queued.cancel_run_id is None
    assert queued.task.last_error == "cancelled_by_operator"
    assert queued.task.completed_at_unix_ms == T0 + 1
    assert t.cancel(make_task(state="paused"), now_ms=T0).task.state == "cancelled"
    run_id = new_ulid()
    running = t.cancel(make_task(state="running", target_run_id=run_id), now_ms=T0 + 1)
    assert running.task.state == "cancel_requested"
    assert (running.cancel_run_id, running.cancel_run_reason) == (
        run_id, "background_task_cancelled_by_operator")
    assert running.task.completed_at_unix_ms is None


@pytest.mark.parametrize("state", sorted(t.TERMINAL))
def test_cancelling_a_terminal_task_is_refused(state: str) -> None:
    """Quirk 13.11: upstream happily 'cancelled' finished tasks."""
    with pytest.raises(InvalidTransition) as err:
        t.cancel(make_task(state=state), now_ms=T0)
    assert err.value.details == {"from": state, "event": "cancel"}


# --------------------------------------------------------------------------- due ordering


def test_next_due_orders_by_priority_then_not_before_then_created() -> None:
    low = make_task(priority=-5, created_at_unix_ms=T0)
    high_late = make_task(priority=5, not_before_unix_ms=T0 + 50, created_at_unix_ms=T0)
    high_early = make_task(priority=5, not_before_unix_ms=T0 + 10, created_at_unix_ms=T0 + 20)
    mid_old = make_task(priority=0, created_at_unix_ms=T0 + 1)
    mid_new = make_task(priority=0, created_at_unix_ms=T0 + 2)
    reflection = make_task(task_kind="post_run_reflection", priority=25,
                           created_at_unix_ms=T0 + 99)
    tasks = [low, high_late, high_early, mid_new, mid_old, reflection]
    assert t.next_due(tasks, T0 + 100) == [reflection, high_early, high_late, mid_old, mid_new,
                                           low]
    assert t.next_due(tasks, T0 + 100, limit=2) == [reflection, high_early]


def test_next_due_leaves_out_what_is_not_due() -> None:
    now = T0 + 1000
    due = make_task()
    excluded = [
        make_task(state="paused"), make_task(state="running"), make_task(state="succeeded"),
        make_task(not_before_unix_ms=now + 1), make_task(expires_at_unix_ms=now),
        make_task(attempt_count=3, max_attempts=3),
    ]
    assert t.next_due([*excluded, due], now) == [due]
    assert t.next_due([make_task(not_before_unix_ms=now)], now)  # boundary: due at not_before
    assert t.next_due([make_task(attempt_count=9, max_attempts=0)], now)  # 0: unlimited


_tasks = st.lists(
    st.builds(
        lambda p, nb, created: make_task(task_id=new_ulid(), priority=p,
                                         not_before_unix_ms=nb, created_at_unix_ms=created),
        st.integers(-3, 3), st.one_of(st.none(), st.integers(T0, T0 + 5)),
        st.integers(T0, T0 + 5),
    ),
    max_size=25,
)


@given(_tasks, st.randoms(use_true_random=False))
def test_next_due_is_a_total_order(tasks: list[t.BackgroundTask], rnd: random.Random) -> None:
    now = T0 + 10
    ordered = t.next_due(tasks, now)
    shuffled = list(tasks)
    rnd.shuffle(shuffled)
    assert t.next_due(shuffled, now) == ordered  # independent of input order
    keys = [t.due_key(x) for x in ordered]
    assert all(a < b for a, b in zip(keys, keys[1:], strict=False))  # strict: no ties
    assert len(ordered) == len(tasks)
    for first, second in zip(ordered, ordered[1:], strict=False):
        assert first.priority >= second.priority


# --------------------------------------------------------------------------- finalisation


def test_finalize_from_run_maps_terminal_states() -> None:
    running = make_task(state="running", target_run_id=new_ulid(), attempt_count=1,
                        max_attempts=1)
    done = t.finalize_from_run(running, make_run("done", completed_at_unix_ms=T0 + 7),
                               now_ms=T0 + 9)
    assert done is not None and done.state == "succeeded"
    assert done.completed_at_unix_ms == T0 + 7
    assert done.result is not None and done.result["status"] == "succeeded"
    assert done.result["task_id"] == running.task_id and done.result["run"]["state"] == "done"
    cancelled = t.finalize_from_run(running, make_run("cancelled"), now_ms=T0 + 9)
    assert cancelled is not None and cancelled.state == "cancelled"
    assert cancelled.completed_at_unix_ms == T0 + 9
    failed = t.finalize_from_run(running, make_run("failed", last_error="provider error"),
                                 now_ms=T0 + 9)
    assert failed is not None and (failed.state, failed.last_error) == ("failed", "provider error")
    for live in ("pending", "accepted", "in_progress"):
        assert t.finalize_from_run(running, make_run(live), now_ms=T0) is None


def test_a_failed_run_is_retried_while_attempts_are_left() -> None:
    target = new_ulid()
    running = make_task(state="running", target_run_id=target, attempt_count=1, max_attempts=3,
                        started_at_unix_ms=T0)
    again = t.finalize_from_run(running, make_run("failed", last_error="boom"), now_ms=T0 + 5)
    assert again is not None and again.state == "queued"
    assert (again.attempt_count, again.target_run_id, again.last_error) == (1, None, "boom")
    assert again.started_at_unix_ms is None and again.completed_at_unix_ms is None
    last = dataclasses.replace(running, attempt_count=3)
    final = t.finalize_from_run(last, make_run("failed"), now_ms=T0 + 5)
    assert final is not None and final.state == "failed"


# --------------------------------------------------------------------------- poll steps


def test_poll_skips_terminal_and_paused_tasks_and_clears_their_heartbeat() -> None:
    for state in ("paused", *sorted(t.TERMINAL)):
        step = t.poll_step(make_task(state=state), now_ms=T0)
        assert (step.action, step.heartbeat) == ("skip", "clear")


def test_poll_expires_before_dispatch_and_waits_for_not_before() -> None:
    clock = ManualClock(T0)
    task = make_task(not_before_unix_ms=T0 + 5_000, expires_at_unix_ms=T0 + 10_000)
    step = t.poll_step(task, now_ms=clock.now_ms())
    assert (step.action, step.reason, step.heartbeat) == ("skip", "not_before", "record")
    clock.advance(5)
    assert t.poll_step(task, now_ms=clock.now_ms()).action == "dispatch"
    clock.advance(5)  # now == expires_at: expired
    step = t.poll_step(task, now_ms=clock.now_ms())
    assert step.action == "update" and step.task.state == "expired"
    assert step.task.last_error == "background task expired before dispatch"
    assert step.task.completed_at_unix_ms == clock.now_ms() and step.heartbeat == "clear"


def test_poll_never_expires_a_running_task_under_its_live_run() -> None:
    run = make_run("in_progress")
    task = make_task(state="running", target_run_id=run.run_id, expires_at_unix_ms=T0)
    assert t.poll_step(task, now_ms=T0 + 60_000, target=run).action == "skip"


def test_poll_fails_a_task_whose_attempts_are_exhausted() -> None:
    step = t.poll_step(make_task(attempt_count=3, max_attempts=3), now_ms=T0)
    assert step.task.state == "failed"
    assert step.task.last_error == "background task exhausted retry budget"


def test_poll_finalises_running_tasks_from_their_target_run() -> None:
    run = make_run("in_progress")
    task = make_task(state="running", target_run_id=run.run_id, attempt_count=1)
    assert t.poll_step(task, now_ms=T0, target=run).action == "skip"
    finished = t.poll_step(task, now_ms=T0, target=dataclasses.replace(run, state="done"))
    assert finished.task.state == "succeeded" and finished.heartbeat == "clear"
    lost = t.poll_step(task, now_ms=T0, target=None)
    assert lost.task.state == "queued" and "not found" in (lost.task.last_error or "")
    clock = ManualClock(T0)
    just_started = dataclasses.replace(task, started_at_unix_ms=clock.now_ms())
    clock.advance(29.999)  # the loopback run may not exist yet
    assert t.poll_step(just_started, now_ms=clock.now_ms()).action == "skip"
    clock.advance(0.001)
    assert t.poll_step(just_started, now_ms=clock.now_ms()).task.state == "queued"
    aux = make_task(task_kind="summary", state="running")
    assert t.poll_step(aux, now_ms=T0).action == "skip"


def test_parent_cancellation_cancels_a_queued_task() -> None:
    parent = make_run("in_progress", cancel_requested=True)
    step = t.poll_step(make_task(parent_run_id=parent.run_id), now_ms=T0, parent=parent)
    assert step.task.state == "cancelled"
    assert step.task.last_error == "cancelled because the parent run was cancelled"
    assert step.cancel_run is None


def test_parent_cancellation_propagates_to_a_live_child_run() -> None:
    parent = make_run("cancelled")
    child = make_run("in_progress")
    task = make_task(task_kind="delegation_prompt", state="running", parent_run_id=parent.run_id,
                     target_run_id=child.run_id, attempt_count=1, delegation={})
    step = t.poll_step(task, now_ms=T0 + 1, parent=parent, target=child)
    assert step.task.state == "cancel_requested"
    assert step.cancel_run == (child.run_id, "delegated_parent_cancelled")
    # Next poll: the child stopped, the task is finalised from it.
    stopped = dataclasses.replace(child, state="cancelled")
    final = t.poll_step(step.task, now_ms=T0 + 2, parent=parent, target=stopped)
    assert final.task.state == "cancelled" and final.heartbeat == "clear"


def test_parent_cancellation_finalises_from_an_ended_child_without_retry() -> None:
    parent = make_run("in_progress", cancel_requested=True)
    child = make_run("failed", last_error="child broke")
    task = make_task(state="running", parent_run_id=parent.run_id, target_run_id=child.run_id,
                     attempt_count=1, max_attempts=5)
    step = t.poll_step(task, now_ms=T0, parent=parent, target=child)
    assert step.task.state == "failed" and step.cancel_run is None


def test_cancel_requested_without_target_is_cancelled_before_dispatch() -> None:
    task = make_task(state="cancel_requested")
    step = t.poll_step(task, now_ms=T0)
    assert step.task.state == "cancelled"
    assert step.task.last_error == "cancelled before dispatch"
    run = make_run("in_progress")
    waiting = make_task(state="cancel_requested", target_run_id=run.run_id)
    assert t.poll_step(waiting, now_ms=T0, target=run).action == "skip"


def test_a_delegated_child_that_overruns_its_timeout_is_cancelled() -> None:
    clock = ManualClock(T0)
    child = make_run("in_progress")
    task = make_task(task_kind="delegation_prompt", state="running", target_run_id=child.run_id,
                     started_at_unix_ms=T0, delegation={"child_timeout_ms": 30_000},
                     attempt_count=1)
    clock.advance(30)
    assert t.poll_step(task, now_ms=clock.now_ms(), target=child).action == "skip"
    clock.advance(0.001)
    step = t.poll_step(task, now_ms=clock.now_ms(), target=child)
    assert step.task.state == "cancel_requested"
    assert step.cancel_run == (child.run_id, "delegated_child_timeout")


def test_a_full_lifecycle_with_a_retry() -> None:
    clock = ManualClock(T0)
    task = make_task(max_attempts=2)
    assert t.poll_step(task, now_ms=clock.now_ms()).action == "dispatch"
    first = make_run("in_progress")
    task = t.dispatch(task, now_ms=clock.now_ms(), target_run_id=first.run_id)
    clock.advance(3)
    step = t.poll_step(task, now_ms=clock.now_ms(), target=dataclasses.replace(first,
                                                                               state="failed"))
    task = step.task
    assert task.state == "queued" and task.attempt_count == 1
    second = make_run("in_progress")
    task = t.dispatch(task, now_ms=clock.now_ms(), target_run_id=second.run_id)
    clock.advance(3)
    step = t.poll_step(task, now_ms=clock.now_ms(), target=dataclasses.replace(second,
                                                                               state="failed"))
    assert step.task.state == "failed" and step.task.attempt_count == 2


# --------------------------------------------------------------------------- create requests


def _create(body: object, **kw: object) -> t.BackgroundTask:
    args: dict[str, object] = dict(session_id=SESSION, owner_principal="user:ops",
                                   device_id="dev-1", channel=None, now_ms=T0)
    args.update(kw)
    return t.validate_create(body, **args)  # type: ignore[arg-type]


def test_create_defaults_and_clamps() -> None:
    task = _create({"text": "summarise the weekly report please"})
    assert (task.task_kind, task.state, task.priority, task.max_attempts) == (
        "background_prompt", "queued", 0, 3)
    assert task.budget_tokens == 5 and task.created_at_unix_ms == T0
    assert _create({"text": "x", "priority": 99}).priority == 10
    assert _create({"text": "x", "priority": -99}).priority == -10
    assert _create({"text": "x", "max_attempts": 0}).max_attempts == 1
    assert _create({"text": "x", "max_attempts": 100}).max_attempts == 16
    aux = _create({"text": "x", "task_kind": "auxiliary_summary", "budget_tokens": 50,
                   "parameter_delta": {"temperature": 0.1}})
    assert aux.task_kind == "summary" and aux.budget_tokens == 50
    assert aux.payload == {"parameter_delta": {"temperature": 0.1}}


def test_create_delegation_needs_a_parent_run() -> None:
    parent = new_ulid()
    task = _create({"text": "x", "delegation": {"child_timeout_ms": 1000}},
                   parent_run_id=parent)
    assert task.task_kind == "delegation_prompt" and task.parent_run_id == parent
    with pytest.raises(InvalidInput) as err:
        _create({"text": "x", "delegation": {}})
    assert err.value.details["field"] == "delegation"


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({}, "text"),
    ({"text": "   "}, "text"),
    ({"text": "x" * (t.MAX_INPUT_CHARS + 1)}, "text"),
    ({"text": "x", "colour": "blue"}, "colour"),
    ({"text": "x", "task_kind": "teleport"}, "task_kind"),
    ({"text": "x", "task_kind": 7}, "task_kind"),
    ({"text": "x", "task_kind": "post_run_reflection"}, "task_kind"),
    ({"text": "x", "task_kind": "attachment_recompute"}, "task_kind"),
    ({"text": "x", "task_kind": "summary", "delegation": {}}, "task_kind"),
    ({"text": "x", "task_kind": "delegation_prompt"}, "delegation"),
    ({"text": "x", "priority": "high"}, "priority"),
    ({"text": "x", "priority": True}, "priority"),
    ({"text": "x", "max_attempts": 2.5}, "max_attempts"),
    ({"text": "x", "budget_tokens": 0}, "budget_tokens"),
    ({"text": "x", "not_before_unix_ms": -1}, "not_before_unix_ms"),
    ({"text": "x", "expires_at_unix_ms": T0}, "expires_at_unix_ms"),
    ({"text": "x", "not_before_unix_ms": T0 + 10, "expires_at_unix_ms": T0 + 5},
     "expires_at_unix_ms"),
    ({"text": "x", "notification_target": "me"}, "notification_target"),
    ({"text": "x", "parameter_delta": [1]}, "parameter_delta"),
])
def test_create_rejects_malformed_fields_by_name(body: object, field: str) -> None:
    with pytest.raises(InvalidInput) as err:
        _create(body)
    assert err.value.details["field"] == field
    assert field in err.value.message


def test_create_rejects_a_bad_session_id() -> None:
    with pytest.raises(InvalidInput) as err:
        _create({"text": "x"}, session_id="nope")
    assert err.value.details["field"] == "session_id"


def test_delegation_timeout_must_be_positive() -> None:
    with pytest.raises(InvalidInput) as err:
        _create({"text": "x", "delegation": {"child_timeout_ms": 0}}, parent_run_id=new_ulid())
    assert err.value.details["field"] == "delegation"


@settings(max_examples=300, deadline=None)
@given(state=st.sampled_from(t.STATES),
       not_before=st.one_of(st.none(), st.integers(T0 - 10, T0 + 10)),
       expires=st.one_of(st.none(), st.integers(T0 - 10, T0 + 10)),
       parent_state=st.sampled_from(["in_progress", "cancelled", "failed", "done"]),
       target_state=st.sampled_from(["in_progress", "done", "failed", "cancelled"]))
def test_a_poll_that_needs_no_runs_decides_the_same_without_them(
        state: str, not_before: int | None, expires: int | None, parent_state: str,
        target_state: str) -> None:
    task = make_task(state=state, not_before_unix_ms=not_before, expires_at_unix_ms=expires,
                     parent_run_id=new_ulid(T0), target_run_id=new_ulid(T0),
                     started_at_unix_ms=T0 - 1)
    if t.needs_runs(task, now_ms=T0):
        return
    parent = make_run(parent_state, cancel_requested=parent_state == "cancelled")
    target = make_run(target_state, completed_at_unix_ms=T0 - 1)
    assert t.poll_step(task, now_ms=T0, parent=parent, target=target) == \
        t.poll_step(task, now_ms=T0)
