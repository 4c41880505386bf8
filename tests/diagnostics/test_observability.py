"""Runtime counters and the recent-failures ring: folded from committed writes only."""

from __future__ import annotations

import orjson
import pytest

import palyra
from palyra.errors import Conflict, JournalError
from palyra.journal.store import (
    EventDraft,
    JournalSettings,
    TapeDraft,
    Writer,
    open_writer_connection,
)
from palyra.observability import (
    CONFIG_FAILURE,
    PRODUCT_FAILURE,
    UPSTREAM_PROVIDER_FAILURE,
    Failure,
    RuntimeCounters,
    classify_provider_error,
    classify_run_failure,
)
from palyra.orchestrator import store
from tests.support.wait import until


def tape(event_type: str, payload: dict, seq: int = 0) -> tuple[str, TapeDraft]:
    return "tape", TapeDraft.build("run-1", seq, event_type, payload, now_ms=1)


def test_committed_batches_move_the_counters_and_the_failure_ring():
    counters = RuntimeCounters()
    counters.committed([
        tape("tool_proposal", {"proposal_id": "p1"}),
        tape("tool_decision", {"proposal_id": "p1", "kind": "allow"}),
        tape("tool_result", {"proposal_id": "p1", "success": True}),
        tape("tool_attestation", {"proposal_id": "p1", "timed_out": False}),
        tape("tool_decision", {"proposal_id": "p2", "kind": "deny"}),
        tape("tool_result", {"proposal_id": "p2", "success": False}),  # denied: nothing ran
        tape("budget.outcome", {"budget_outcome": "soft_limit"}),
        tape("status", {"kind": "failed", "token": "sk-planted-secret-value"}),
        ("event", EventDraft.build("actor.restarted", {"name": "budget"})),
        ("run.transition", {"run_id": "r1", "session_id": "s1", "to_state": "failed",
                            "reason": "provider error: api_key=hunter2 rejected",
                            "termination_reason": "provider_error",
                            "failure_class": UPSTREAM_PROVIDER_FAILURE}),
        ("run.transition", {"run_id": "r2", "session_id": "s1", "to_state": "done", "reason": "x"}),
        ("background.task", {"task_id": "t1", "session_id": "s1", "state": "failed",
                             "error": "boom", "run_id": None}),
        ("approval.resolved", {"approval_id": "a1", "decision": "timeout"}),
    ], seconds=0.002, writes=3, errors=[Conflict("moved"), JournalError("disk full")])

    snap = counters.snapshot()
    c = snap["counters"]
    assert c["tool_events"] == {"proposed": 1, "allowed": 1, "denied": 1, "executed": 1,
                                "failed": 0, "timed_out": 0, "attested": 1}
    assert c["budget_outcomes"] == {"soft_limit": 1}
    assert c["run_transitions"]["failed"] == 1 and c["run_transitions"]["completed"] == 1
    assert c["supervision"]["restarted"] == 1
    assert c["journal"]["batches"] == 1 and c["journal"]["writes"] == 3
    assert c["journal"]["write_rejections"] == 1 and c["journal"]["write_failures"] == 1
    assert c["journal"]["tape_rows"] == 8 and c["journal"]["events"] == 1
    assert c["journal"]["redacted"] == 1  # the planted token on the status row
    assert c["approvals"] == {"timeout": 1}
    assert c["background_tasks"] == {"failed": 1}
    assert c["failures"] == {PRODUCT_FAILURE: 2, CONFIG_FAILURE: 0, UPSTREAM_PROVIDER_FAILURE: 1}
    assert snap["journal_commit_seconds"]["count"] == 1

    newest_first = snap["recent_failures"]
    assert [f["operation"] for f in newest_first] == ["background.task", "run", "journal.write"]
    run = newest_first[1]
    assert run["correlation"] == {"session_id": "s1", "run_id": "r1"}
    assert "hunter2" not in run["message"] and run["failure_class"] == UPSTREAM_PROVIDER_FAILURE
    assert newest_first[0]["correlation"] == {"session_id": "s1", "task_id": "t1"}


def test_the_ring_keeps_the_last_24_and_counts_every_failure():
    counters = RuntimeCounters()
    for i in range(30):
        counters.record_failure(Failure.of("run", CONFIG_FAILURE, f"n{i}", i, run_id=f"r{i}"))
    snap = counters.snapshot()
    assert len(snap["recent_failures"]) == 24
    assert snap["recent_failures"][0]["message"] == "n29"
    assert snap["counters"]["failures"][CONFIG_FAILURE] == 30
    with pytest.raises(ValueError):
        Failure.of("run", "nobody_knows", "x", 0)


@pytest.mark.parametrize(("termination", "envelope", "expected"), [
    ("provider_error", {"kind": "auth", "failure_class": "auth_invalid"}, CONFIG_FAILURE),
    ("provider_error", {"kind": "missing_configuration"}, CONFIG_FAILURE),
    ("provider_error", {"kind": "rate_limit", "failure_class": "rate_limited"}, UPSTREAM_PROVIDER_FAILURE),
    ("provider_error", None, UPSTREAM_PROVIDER_FAILURE),
    ("budget_blocked", None, CONFIG_FAILURE),
    ("wall_clock", None, PRODUCT_FAILURE),
    ("runtime_failure", None, PRODUCT_FAILURE),
])
def test_failure_classes(termination, envelope, expected):
    assert classify_run_failure(termination, envelope) == expected
    if termination == "provider_error":
        assert classify_provider_error(envelope) == expected


def test_a_caller_rolled_back_to_its_savepoint_leaves_nothing_observed(tmp_path):
    conn = open_writer_connection(tmp_path, JournalSettings())
    writer = Writer(conn, JournalSettings())

    def fails(txn):
        txn.note("run.transition", run_id="ghost", to_state="failed")
        raise Conflict("no")

    ok = [lambda txn: txn.note("approval.resolved", decision="allow"),
          lambda txn: txn.append_event(EventDraft.build("x.kept", {}))]
    outcomes = writer.apply([ok, [fails]])
    assert [o.ok for o in outcomes] == [True, False]
    assert [name for name, _ in writer.observed] == ["approval.resolved", "event"]
    conn.close()


def test_a_runtime_counts_what_its_runs_did_and_diagnostics_show_the_same_numbers(tmp_path):
    rt = palyra.Runtime.start(tmp_path / "state", {"tools": {"allowed": ["palyra.echo"]}})
    try:
        rt.send('x\n@tool palyra.echo {"text": "hi"}', session_key="obs").wait(10)
        rt.send("y\n@tool palyra.sleep {}", session_key="obs").wait(10)
        failed = rt.send("z\n@fail auth_invalid", session_key="obs")
        assert failed.wait(10).state == "failed"
        upstream = rt.send("z\n@fail rate_limit", session_key="obs")
        assert upstream.wait(10).state == "failed"

        obs = rt.observability()
        c = obs["counters"]
        assert c["run_transitions"]["accepted"] == 4 and c["run_transitions"]["failed"] == 2
        assert c["tool_events"]["allowed"] == 1 and c["tool_events"]["denied"] == 1
        assert c["tool_events"]["executed"] == 1
        assert c["provider"]["calls"] >= 6
        assert c["failures"][CONFIG_FAILURE] == 1 and c["failures"][UPSTREAM_PROVIDER_FAILURE] == 1
        by_run = {f["correlation"]["run_id"]: f for f in obs["recent_failures"]}
        assert by_run[failed.id]["failure_class"] == CONFIG_FAILURE
        assert by_run[failed.id]["correlation"]["session_id"] == failed.session_id
        assert by_run[upstream.id]["failure_class"] == UPSTREAM_PROVIDER_FAILURE

        rt.chaos.crash("budget")
        rt.send("after the crash", session_key="obs").wait(10)
        # the supervisor records the restart after the new incarnation is serving: a run
        # may finish first
        until(lambda: any(e["kind"] == "actor.restarted" and e.get("actor") == "budget"
                          for e in rt.diagnostics()["supervision"]["restart_history"]),
              what="the budget restart on record")
        assert rt.verify_journal().ok
        snap = rt.diagnostics()
        history = snap["supervision"]["restart_history"]
        assert any(e["kind"] == "actor.restarted" and e.get("actor") == "budget" for e in history), history
        assert snap["journal"]["last_verify"]["ok"] is True
        assert snap["observability"]["counters"]["failures"] == c["failures"]
        assert snap["memory"]["maintenance"]["interval_ms"] > 0
        orjson.dumps(snap)
    finally:
        rt.stop()


def test_store_ops_note_their_transitions(tmp_path):
    conn = open_writer_connection(tmp_path, JournalSettings())
    writer = Writer(conn, JournalSettings())
    writer.apply([[store.lifecycle("r1", "s1", None, "accepted", now_ms=1, reason="admitted")]])
    assert writer.observed == [("run.transition", {
        "run_id": "r1", "session_id": "s1", "to_state": "accepted", "reason": "admitted",
        "termination_reason": None, "failure_class": None})]
    conn.close()
