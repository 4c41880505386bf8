"""Self-healing through the runtime: hung runs become incidents and, in auto, failed runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import palyra
from tests.support.wait import until

T = TypeVar("T")

# Probes are slow on purpose: the run actor's own supervisor must not notice the hang
# first; the healing loop (100 ms) and its stale threshold (300 ms) are what is tested.
CONFIG = {
    "supervision": {"probe_interval": 30.0, "shutdown_timeout": 1.0},
    "healing": {"loop_interval_ms": 100, "run_stale_ms": 300},
    "governance": {"max_completion_tokens": 4},
}


def wait_for(predicate: Callable[[], T]) -> T:
    return until(predicate, timeout=10.0)


def test_hung_run_becomes_an_incident_and_is_failed_in_auto(tmp_path):
    with palyra.Runtime.start(tmp_path, CONFIG) as rt:
        pid = rt.budgets.put({"scope_kind": "global", "metric_kind": "total_tokens",
                              "interval_kind": "rolling_24h", "hard_limit_value": 10_000,
                              "action": "block"}).policy_id
        run = rt.send("slow one\n@sleep 30", session_key="heal")
        wait_for(lambda: rt.run(run.id).state == "in_progress")
        wait_for(lambda: rt.budgets.reserved()["reservations"] == 1)
        hung_at = time.monotonic()
        rt.chaos.hang(f"run:{run.id}", 5.0)
        result = run.wait(10)
        healed_after = time.monotonic() - hung_at
        assert result.state == "failed" and result.termination_reason == "stale_heartbeat"
        # stale after 300 ms; found within two loop intervals of that
        assert healed_after < 0.3 + 2 * 0.1 + 0.3  # + slack for scheduling on a busy box
        tape = rt.tape(run.id)
        assert tape[-1].event_type == "status" and "self-healing" in tape[-1].payload["message"]
        incidents = rt.incidents.list()
        stale = [i for i in incidents if i.kind == "stale_run" and i.subject_id == run.id]
        assert stale and stale[0].state == "resolved"
        attempts = rt.incidents.attempts(stale[0].incident_id)
        assert [a.status for a in attempts] == ["succeeded"] and attempts[0].action == "fail_run"
        wait_for(lambda: rt.budgets.reserved()["reservations"] == 0)  # reservation released
        assert rt.budgets.consumed(pid)["consumed_tokens"] == 0
        assert rt.verify_journal().ok


def test_observe_only_reports_without_touching_the_run(tmp_path):
    config = {**CONFIG, "healing": {**CONFIG["healing"], "modes": {"watchdog": "observe_only"}}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        run = rt.send("slow one\n@sleep 30", session_key="heal")
        wait_for(lambda: rt.run(run.id).state == "in_progress")
        rt.chaos.hang(f"run:{run.id}", 2.0)
        incident = wait_for(lambda: [i for i in rt.incidents.list(active=True)
                                     if i.kind == "stale_run" and i.subject_id == run.id])
        assert incident[0].state == "open"
        attempts = wait_for(lambda: rt.incidents.attempts(incident[0].incident_id))
        assert attempts[0].status == "skipped" and "observe_only" in attempts[0].detail
        assert rt.run(run.id).state == "in_progress"  # reported only
        rt.cancel(run.id)


def test_a_run_waiting_legitimately_keeps_beating(tmp_path):
    with palyra.Runtime.start(tmp_path, CONFIG) as rt:
        run = rt.send("slow but alive\n@sleep 1", session_key="heal")
        result = run.wait(10)  # 1 s of waiting, far beyond the 300 ms stale threshold
        assert result.state == "done"
        assert not [i for i in rt.incidents.list() if i.subject_id == run.id]


def test_an_actor_restarting_in_a_loop_becomes_an_incident(tmp_path):
    config = {**CONFIG, "supervision": {"probe_interval": 30.0, "max_restarts": 100,
                                        "max_seconds": 60, "shutdown_timeout": 1.0}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        names = rt.services.names
        for _ in range(5):
            before = names.get("gateway")
            rt.chaos.kill("gateway")
            names.wait_for_change("gateway", before, 5)
        incident = wait_for(lambda: [i for i in rt.incidents.list(active=True)
                                     if i.kind == "actor_restart_loop"])
        assert incident[0].subject_id == "root/core/gateway"
        assert rt.send("still served", session_key="x").wait(10).state == "done"


def test_an_open_circuit_becomes_an_incident(tmp_path):
    from tests.support.openai_server import OpenAIServer

    with OpenAIServer() as server:
        for _ in range(3):
            server.enqueue_status(500, {"error": {"message": "down"}})
        config = {**CONFIG, "provider": {"kind": "openai_compatible", "base_url": server.base_url,
                                         "api_key": "sk-test", "allow_private_base_url": True,
                                         "max_retries": 0}}
        with palyra.Runtime.start(tmp_path, config) as rt:
            for i in range(3):
                assert rt.send(f"call {i}", session_key=f"c{i}").wait(10).state == "failed"
            incident = wait_for(lambda: [i for i in rt.incidents.list(active=True)
                                         if i.kind == "circuit_open"])
            assert incident[0].domain == "provider"


def test_a_stalled_background_task_is_requeued_while_it_has_attempts(tmp_path):
    config = {**CONFIG, "healing": {"loop_interval_ms": 100, "task_stale_ms": 300,
                                    "run_stale_ms": 60_000},
              "background": {"poll_interval_ms": 20}}
    with palyra.Runtime.start(tmp_path, config) as rt:
        task = rt.tasks.create(text="long job\n@sleep 30", session_key="bg", max_attempts=3)
        first = wait_for(lambda: (t := rt.tasks.get(task.task_id)).state == "running"
                         and t.target_run_id and t)
        rt.chaos.hang("background_queue", 1.5)  # the queue stops seeing (and beating) it
        incident = wait_for(lambda: [i for i in rt.incidents.list()
                                     if i.kind == "stale_background_task"])
        assert incident[0].subject_id == task.task_id
        # requeued (attempts left) and dispatched again. The stuck attempt's run was stopped,
        # or (if the queue stalled before asking for it) never started: a task never has
        # two runs going at once.
        again = wait_for(lambda: (t := rt.tasks.get(task.task_id)).attempt_count >= 2 and t)
        assert again.target_run_id != first.target_run_id

        def background_runs() -> list:
            return [r for r in rt.runs(session_id=again.session_id) if r.origin_kind == "background"]

        # once the retry's run is going, the queue has worked off what it held while stuck
        wait_for(lambda: [r for r in background_runs()
                          if r.run_id == again.target_run_id and r.state == "in_progress"])
        wait_for(lambda: all(r.terminal or r.run_id == again.target_run_id for r in background_runs()))
        rt.tasks.cancel(task.task_id)
