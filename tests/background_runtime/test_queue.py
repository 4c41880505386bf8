"""The background queue through the runtime: tasks become real runs and survive restarts."""

from __future__ import annotations

import pytest

import palyra
from tests.support.wait import until

FAST = {"supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0}}


def settled(rt: palyra.Runtime, task_id: str, states=("succeeded", "failed", "expired", "cancelled"),
            timeout: float = 10.0):
    return until(lambda: (task := rt.tasks.get(task_id)).state in states and task, timeout=timeout,
                 what=f"task {task_id} to reach {states}")


def test_created_task_runs_at_once_as_a_background_run(tmp_path):
    # a 60 s poll interval: only the wake-up on create can make this finish in time
    with palyra.Runtime.start(tmp_path, {**FAST, "background": {"poll_interval_ms": 60_000}}) as rt:
        task = rt.tasks.create(text="summarise the day", session_key="bg")
        assert task.state == "queued"
        done = settled(rt, task.task_id, timeout=5)
        assert done.state == "succeeded" and done.attempt_count == 1
        run = rt.run(done.target_run_id)
        assert (run.state, run.origin_kind, run.reply_text) == ("done", "background", "summarise the day")


def test_failed_runs_are_retried_until_attempts_run_out(tmp_path):
    with palyra.Runtime.start(tmp_path, {**FAST, "background": {"poll_interval_ms": 20}}) as rt:
        task = rt.tasks.create(text="flaky\n@fail transient_network", session_key="bg", max_attempts=2)
        done = settled(rt, task.task_id)
        assert done.state == "failed" and done.attempt_count == 2
        assert rt.run(done.target_run_id).termination_reason == "provider_error"


def test_expired_task_never_runs(tmp_path):
    with palyra.Runtime.start(tmp_path, {**FAST, "background": {"poll_interval_ms": 20}}) as rt:
        now = rt.clock.now_ms()
        task = rt.tasks.create(text="too late", session_key="bg", not_before_unix_ms=now + 150,
                               expires_at_unix_ms=now + 300)
        rt.tasks.pause(task.task_id)  # held past its expiry
        until(lambda: rt.clock.now_ms() > now + 300, what="the task's expiry")
        rt.tasks.resume(task.task_id)
        done = settled(rt, task.task_id)
        assert done.state == "expired" and done.target_run_id is None


def test_controls_and_their_guards(tmp_path):
    with palyra.Runtime.start(tmp_path, FAST) as rt:
        later = rt.clock.now_ms() + 60_000
        task = rt.tasks.create(text="later", session_key="bg", not_before_unix_ms=later)
        assert rt.tasks.pause(task.task_id).state == "paused"
        assert rt.tasks.resume(task.task_id).state == "queued"
        assert rt.tasks.cancel(task.task_id).state == "cancelled"
        with pytest.raises(palyra.InvalidTransition):
            rt.tasks.cancel(task.task_id)  # no cancelling a terminal task (upstream allowed it)
        with pytest.raises(palyra.NotFound):
            rt.tasks.get("01J0000000000000000000NONE")
        with pytest.raises(palyra.InvalidInput, match="priority|nope"):
            rt.tasks.create(text="x", session_key="bg", nope=1)


def test_tasks_survive_a_runtime_restart(tmp_path):
    config = {**FAST, "background": {"poll_interval_ms": 20}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        task = rt.tasks.create(text="after the restart", session_key="bg",
                               not_before_unix_ms=rt.clock.now_ms() + 400)
        assert rt.tasks.get(task.task_id).state == "queued"
    with palyra.Runtime.start(tmp_path, config) as again:
        done = settled(again, task.task_id)
        assert done.state == "succeeded"
        assert again.run(done.target_run_id).reply_text == "after the restart"
        assert again.verify_journal().ok


def test_cancelling_the_parent_run_cancels_the_task_and_its_run(tmp_path):
    with palyra.Runtime.start(tmp_path, {**FAST, "background": {"poll_interval_ms": 20}}) as rt:
        parent = rt.send("parent\n@sleep 30", session_key="bg")
        task = rt.tasks.create(text="child work\n@sleep 30", session_key="bg", kind="delegation_prompt",
                               delegation={"child_timeout_ms": 60_000}, parent_run_id=parent.id)
        running = settled(rt, task.task_id, states=("running",))
        child_run = running.target_run_id
        # the task is marked running (with its run id) before the run is admitted
        until(lambda: [r for r in rt.runs(state="in_progress") if r.run_id == child_run],
              what=f"the task's run {child_run} in progress")
        rt.cancel(parent.id, "user gave up")
        done = settled(rt, task.task_id)
        assert done.state == "cancelled"
        assert rt.handle(child_run).wait(5).state == "cancelled"  # its run was stopped too
