"""Budget policies enforced on real runs: validation, block / warn / soft outcomes, routing
under budget pressure, scopes, the override flow, cost limits, usage accounting and
restarts. Every wait is bounded (see ``tests.support.wait.until``)."""

from __future__ import annotations

import time
from typing import Any

import pytest

import palyra
from palyra.governance import BudgetPolicy, UsageScope
from palyra.journal.store import Writer
from tests.governance_runtime.support import (
    BLOCKED_ERROR,
    PER_RUN,
    TEXT,
    pending_override,
    policy,
    step,
    steps,
    tape_usage,
)
from tests.support.wait import holds_within, until

# -- validation -----------------------------------------------------------------------------

INVALID = [
    pytest.param({"scope_kind": "planet"}, "scope_kind", id="bad-scope-kind"),
    pytest.param({"metric_kind": "watts"}, "metric_kind", id="bad-metric-kind"),
    pytest.param({"interval_kind": "fortnight"}, "interval_kind", id="bad-interval-kind"),
    pytest.param({"action": "explode"}, "action", id="bad-action"),
    pytest.param({"hard_limit_value": -1}, "hard_limit_value", id="negative-hard-limit"),
    pytest.param({"soft_limit_value": -5, "hard_limit_value": 10}, "soft_limit_value",
                 id="negative-soft-limit"),
    pytest.param({"metric_kind": "estimated_cost_usd", "hard_limit_value": -0.5}, "hard_limit_value",
                 id="negative-cost-limit"),
    pytest.param({"soft_limit_value": 11, "hard_limit_value": 10}, "soft_limit_value",
                 id="soft-above-hard"),
    pytest.param({"hard_limit_value": 10, "colour": "red"}, "colour", id="unknown-field"),
]


@pytest.mark.parametrize(("fields", "field"), INVALID)
def test_put_rejects_an_invalid_policy_naming_the_field(runtime, fields, field):
    with pytest.raises(palyra.InvalidInput) as caught:
        runtime.budgets.put(policy(**{"hard_limit_value": 10, **fields}))
    error = caught.value
    assert field in error.message
    assert error.details.get("field") == field or field in error.details.get("fields", ())
    assert runtime.budgets.list() == []  # nothing was stored


def test_put_accepts_a_plain_mapping_and_a_budget_policy(start_runtime):
    rt = start_runtime()
    from_mapping = rt.budgets.put(policy(hard_limit_value=100, soft_limit_value=50))
    assert isinstance(from_mapping, BudgetPolicy)
    assert from_mapping.policy_id  # generated
    assert (from_mapping.hard_limit, from_mapping.soft_limit) == (100, 50)
    assert from_mapping.created_by_principal == "user:local"

    from_object = rt.budgets.put(BudgetPolicy(
        policy_id="by-object", scope_kind="principal", scope_id="user:local",
        metric_kind="estimated_cost_usd", interval_kind="calendar_month", action="warn",
        hard_limit=2_000_000))
    assert from_object.policy_id == "by-object"
    assert from_object.to_record()["hard_limit_value"] == 2.0  # USD on the wire

    updated = rt.budgets.put({**from_mapping.to_record(), "hard_limit_value": 200})
    assert updated.hard_limit == 200
    assert updated.created_at_unix_ms == from_mapping.created_at_unix_ms
    listed = {p.policy_id: p for p in rt.budgets.list()}
    assert set(listed) == {from_mapping.policy_id, "by-object"}
    assert listed[from_mapping.policy_id].hard_limit == 200

    rt.stop()
    again = start_runtime()
    assert {p.policy_id: p for p in again.budgets.list()} == listed


# -- outcomes ---------------------------------------------------------------------------------


def test_hard_limit_with_block_fails_the_run_before_the_provider_call(runtime):
    pid = runtime.budgets.put(policy(hard_limit_value=PER_RUN)).policy_id
    first = runtime.send(TEXT, session_key="first").wait(5)
    assert first.state == "done" and first.usage.total_tokens == PER_RUN  # 8 is not above 8

    second = runtime.send(TEXT, session_key="second").wait(5)
    assert second.state == "failed"
    assert second.termination_reason == "budget_blocked"
    assert second.last_error.startswith(BLOCKED_ERROR) and pid in second.last_error
    assert second.usage.total_tokens == 0
    outcome = step(runtime, second.run_id, "budget.outcome").payload
    assert outcome["budget_outcome"] == "blocked"
    assert outcome["reason_codes"] == ["budget_blocked"]
    [evaluation] = outcome["evaluations"]
    assert (evaluation["policy_id"], evaluation["status"]) == (pid, "blocked")
    assert evaluation["consumed_value"] == PER_RUN
    assert not steps(runtime, second.run_id, "provider_turn_output")  # never called
    assert runtime.budgets.consumed(pid)["consumed_tokens"] == PER_RUN
    assert runtime.budgets.reserved()["tokens"] == 0


def test_warn_only_hard_limit_lets_runs_through_and_tapes_the_outcome(runtime):
    pid = runtime.budgets.put(policy(hard_limit_value=PER_RUN, action="warn")).policy_id
    first = runtime.send(TEXT, session_key="first").wait(5)
    assert first.state == "done"
    assert not steps(runtime, first.run_id, "budget.outcome")  # ok outcomes are not taped

    second = runtime.send(TEXT, session_key="second").wait(5)
    assert second.state == "done" and second.usage.total_tokens == PER_RUN
    outcome = step(runtime, second.run_id, "budget.outcome").payload
    assert outcome["budget_outcome"] == "hard_limit"
    assert outcome["reason_codes"] == ["budget_hard_limit"]
    decision = step(runtime, second.run_id, "usage.routing_decision").payload
    assert decision["budget_outcome"] == "hard_limit"
    assert "budget_hard_limit" in decision["reason_codes"]
    assert runtime.budgets.consumed(pid)["consumed_tokens"] == 2 * PER_RUN  # above the limit


# -- routing under a soft limit -----------------------------------------------------------------

# The deterministic default model is the cheapest tier ("low"), so nothing is cheaper to
# downgrade to. A premium candidate and a high-complexity prompt (score >= 0.75) make
# routing escalate to it; a soft limit then steers the recommendation back down to the
# cheapest candidate (the default), which only ``enforced`` mode actually uses.
PREMIUM = {"model_id": "premium-model", "provider_id": "deterministic-primary",
           "provider_kind": "deterministic", "cost_tier": "premium"}
COMPLEX = "analyze architecture investigate regression security " + " ".join(["lorem"] * 1500)


def routing_config(mode: str) -> dict[str, Any]:
    return {"governance": {"routing_mode": mode, "models": [PREMIUM]}}


def decision_of(rt: palyra.Runtime, run_id: str) -> dict[str, Any]:
    taped = step(rt, run_id, "usage.routing_decision").payload
    [stored] = rt.usage.routing_decisions(run_id=run_id)
    assert stored["decision_id"] == taped["decision_id"]
    assert stored["actual_model_id"] == taped["actual_model_id"]
    return taped


def test_soft_limit_in_enforced_mode_downgrades_the_model(start_runtime):
    rt = start_runtime(routing_config("enforced"))
    before = rt.send(COMPLEX, session_key="before").wait(10)
    assert before.state == "done"
    unpressed = decision_of(rt, before.run_id)
    assert unpressed["recommended_model_id"] == unpressed["actual_model_id"] == "premium-model"
    assert "high_complexity" in unpressed["reason_codes"]
    assert step(rt, before.run_id, "provider_turn_output").payload["model_id"] == "premium-model"

    rt.budgets.put(policy(soft_limit_value=1))
    after = rt.send(COMPLEX, session_key="after").wait(10)
    assert after.state == "done"  # a soft limit never blocks
    pressed = decision_of(rt, after.run_id)
    assert pressed["actual_model_id"] == "deterministic" != unpressed["actual_model_id"]
    assert pressed["recommended_model_id"] == "deterministic"
    assert pressed["budget_outcome"] == "soft_limit"
    assert {"budget_soft_limit_downgrade", "budget_soft_limit"} <= set(pressed["reason_codes"])
    assert "mode_publish_only" not in pressed["reason_codes"]
    # the provider really answered as the downgraded model
    assert step(rt, after.run_id, "provider_turn_output").payload["model_id"] == "deterministic"
    assert step(rt, after.run_id, "budget.outcome").payload["budget_outcome"] == "soft_limit"


def test_soft_limit_in_suggest_mode_publishes_but_keeps_the_default(start_runtime):
    rt = start_runtime(routing_config("suggest"))
    before = rt.send(COMPLEX, session_key="before").wait(10)
    unpressed = decision_of(rt, before.run_id)
    assert unpressed["recommended_model_id"] == "premium-model"
    assert unpressed["actual_model_id"] == "deterministic"
    assert "mode_publish_only" in unpressed["reason_codes"]

    rt.budgets.put(policy(soft_limit_value=1))
    after = rt.send(COMPLEX, session_key="after").wait(10)
    assert after.state == "done"
    pressed = decision_of(rt, after.run_id)
    assert pressed["actual_model_id"] == pressed["default_model_id"] == "deterministic"
    assert pressed["budget_outcome"] == "soft_limit"
    assert {"mode_publish_only", "budget_soft_limit"} <= set(pressed["reason_codes"])
    assert pressed["routing_action"] == "proceed"
    assert step(rt, after.run_id, "provider_turn_output").payload["model_id"] == "deterministic"


# -- scopes ---------------------------------------------------------------------------------


def test_a_session_scoped_policy_does_not_affect_another_session(runtime):
    scoped = runtime.sessions.resolve(session_key="scoped").session.session_id
    pid = runtime.budgets.put(policy(scope_kind="session", scope_id=scoped, hard_limit_value=0)).policy_id

    blocked = runtime.send(TEXT, session_key="scoped").wait(5)
    assert blocked.session_id == scoped
    assert (blocked.state, blocked.termination_reason) == ("failed", "budget_blocked")
    other = runtime.send(TEXT, session_key="other").wait(5)
    assert other.state == "done" and other.usage.total_tokens == PER_RUN
    assert runtime.budgets.consumed(pid)["consumed_tokens"] == 0
    elsewhere = runtime.budgets.evaluate(UsageScope("user:local", other.session_id))
    assert elsewhere["evaluations"] == [] and elsewhere["budget_outcome"] == "ok"


def test_a_principal_scoped_policy_does_not_affect_another_principal(runtime):
    pid = runtime.budgets.put(
        policy(scope_kind="principal", scope_id="user:alice", hard_limit_value=0)).policy_id
    alice = runtime.send(TEXT, session_key="alice", principal="user:alice").wait(5)
    assert (alice.state, alice.termination_reason) == ("failed", "budget_blocked")
    for principal in ("user:bob", "user:local"):
        result = runtime.send(TEXT, session_key=principal, principal=principal).wait(5)
        assert result.state == "done", (principal, result)
    assert runtime.budgets.consumed(pid)["consumed_tokens"] == 0
    assert runtime.budgets.evaluate({"principal": "user:bob"})["evaluations"] == []


# -- the override flow ----------------------------------------------------------------------


def approval_policy(rt: palyra.Runtime) -> str:
    """A hard limit of one run that needs an override beyond; the first run uses it up."""
    pid = rt.budgets.put(policy(hard_limit_value=PER_RUN, action="approval_required")).policy_id
    assert rt.send(TEXT, session_key="first").wait(5).state == "done"
    return pid


def test_override_allow_once_resumes_the_waiting_run(runtime):
    pid = approval_policy(runtime)
    waiting = runtime.send(TEXT, session_key="second")
    approval = pending_override(runtime, waiting.id)
    assert approval.subject_id == f"usage-budget:{pid}"
    assert approval.subject_type == "usage_budget"
    assert approval.session_id == waiting.session_id
    requested = step(runtime, waiting.id, "budget.override_requested").payload
    assert requested["approval_id"] == approval.approval_id
    assert step(runtime, waiting.id, "budget.outcome").payload["budget_outcome"] == "approval_required"

    # idempotent while pending: the same approval, and still only one
    for reason in ("please", "again"):
        assert runtime.budgets.request_override(pid, reason).approval_id == approval.approval_id
    assert [a.approval_id for a in runtime.approvals.pending()] == [approval.approval_id]

    decided = runtime.approvals.decide(approval.approval_id, True, scope="once")
    assert decided.decision == "allow"
    result = waiting.wait(5)
    assert result.state == "done" and result.usage.total_tokens == PER_RUN
    assert step(runtime, waiting.id, "budget.override_decided").payload["approved"] is True
    outcomes = [e.payload["budget_outcome"] for e in steps(runtime, waiting.id, "budget.outcome")]
    assert outcomes == ["approval_required", "override_applied"]
    assert runtime.budgets.consumed(pid)["consumed_tokens"] == 2 * PER_RUN
    assert runtime.budgets.reserved()["tokens"] == 0
    assert runtime.approvals.pending() == []


def test_override_denied_fails_the_run(runtime):
    approval_policy(runtime)
    waiting = runtime.send(TEXT, session_key="second")
    approval = pending_override(runtime, waiting.id)
    runtime.approvals.decide(approval.approval_id, False, reason="no more tokens today")
    result = waiting.wait(5)
    assert (result.state, result.termination_reason) == ("failed", "budget_blocked")
    assert result.last_error == "usage budget override was denied by an operator"
    decided = step(runtime, waiting.id, "budget.override_decided").payload
    assert decided["approved"] is False
    assert not steps(runtime, waiting.id, "provider_turn_output")
    assert runtime.budgets.reserved()["tokens"] == 0


def test_override_not_granted_in_time_fails_the_run(start_runtime):
    rt = start_runtime({"runs": {"approval_timeout_ms": 300}})
    approval_policy(rt)
    result = rt.send(TEXT, session_key="second").wait(5)
    assert (result.state, result.termination_reason) == ("failed", "budget_blocked")
    assert "none was granted within 0.3s" in result.last_error


def test_an_override_approval_that_timed_out_is_no_longer_pending(start_runtime):
    rt = start_runtime({"runs": {"approval_timeout_ms": 300}})
    approval_policy(rt)
    waiting = rt.send(TEXT, session_key="second")
    approval = pending_override(rt, waiting.id)
    assert waiting.wait(5).state == "failed"
    assert rt.approvals.pending() == [], "the timed-out override approval is still pending"
    assert rt.approvals.get(approval.approval_id).decision == "timeout"


def test_timeboxed_override_covers_runs_until_it_expires(runtime):
    pid = approval_policy(runtime)
    waiting = runtime.send(TEXT, session_key="second")
    approval = pending_override(runtime, waiting.id)
    runtime.approvals.decide(approval.approval_id, True, scope="timeboxed", ttl_ms=1500)
    assert waiting.wait(5).state == "done"

    # within the ttl another run goes through without asking
    covered = runtime.send(TEXT, session_key="third").wait(5)
    assert covered.state == "done"
    [outcome] = steps(runtime, covered.run_id, "budget.outcome")
    [evaluation] = outcome.payload["evaluations"]
    assert evaluation["status"] == "override_applied"
    assert evaluation["override_approval_id"] == approval.approval_id
    assert runtime.approvals.pending() == []

    # once it expires, over-limit runs need a new approval again
    scope = UsageScope("user:local")
    until(lambda: runtime.budgets.evaluate(scope)["budget_outcome"] == "approval_required",
          timeout=5, interval=0.05, what="the timeboxed override to expire")
    later = runtime.send(TEXT, session_key="fourth")
    fresh = pending_override(runtime, later.id)
    assert fresh.approval_id != approval.approval_id
    assert fresh.subject_id == f"usage-budget:{pid}"
    runtime.approvals.decide(fresh.approval_id, False)
    result = later.wait(5)
    assert (result.state, result.termination_reason) == ("failed", "budget_blocked")
    assert runtime.budgets.consumed(pid)["consumed_tokens"] == 3 * PER_RUN


def test_a_spent_allow_once_override_makes_the_next_run_ask_again(runtime):
    pid = approval_policy(runtime)
    second = runtime.send(TEXT, session_key="second")
    runtime.approvals.decide(pending_override(runtime, second.id).approval_id, True, scope="once")
    assert second.wait(5).state == "done"

    third = runtime.send(TEXT, session_key="third")
    try:
        asked = holds_within(lambda: runtime.approvals.pending(third.id), 3)
        assert asked, f"run {third.id} over the limit of {pid} never asked for a new override"
    finally:
        if runtime.run_state(third.id) not in ("done", "failed", "cancelled"):
            runtime.cancel(third.id)  # stop the livelock before teardown
            third.wait(5)


def test_every_run_waiting_on_a_shared_override_resumes_when_it_is_granted(start_runtime):
    rt = start_runtime({"runs": {"approval_timeout_ms": 1500}})
    approval_policy(rt)
    first = rt.send(TEXT, session_key="waiting-0")
    approval = pending_override(rt, first.id)
    second = rt.send(TEXT, session_key="waiting-1")
    until(lambda: steps(rt, second.id, "budget.override_requested"), what="the second run to wait")
    shared = step(rt, second.id, "budget.override_requested").payload["approval_id"]
    assert shared == approval.approval_id  # idempotent: the second run waits on the same one
    assert [a.approval_id for a in rt.approvals.pending()] == [approval.approval_id]
    waiting = [first, second]
    rt.approvals.decide(approval.approval_id, True, scope="timeboxed", ttl_ms=60_000)
    results = [h.wait(5) for h in waiting]
    assert [r.state for r in results] == ["done", "done"], [r.last_error for r in results]


@pytest.mark.chaos
def test_concurrent_override_requests_share_one_approval(start_runtime, monkeypatch):
    # probe_timeout 2.5 s: the budget actor pausing below must not count as hung
    rt = start_runtime({"supervision": {"probe_interval": 5.0}})
    approval_policy(rt)
    apply = Writer.apply

    def slow_approval_inserts(self: Writer, batch: Any) -> Any:
        if any(getattr(op, "__qualname__", "").startswith("insert_approval.") for ops in batch for op in ops):
            time.sleep(0.2)  # a slow commit: the write is in flight for a while
        return apply(self, batch)

    monkeypatch.setattr(Writer, "apply", slow_approval_inserts)
    rt.chaos.hang("budget", 0.3)  # both runs queue their reservation behind the pause
    waiting = [rt.send(TEXT, session_key=f"waiting-{i}") for i in range(2)]
    try:
        until(lambda: all(steps(rt, h.id, "budget.override_requested") for h in waiting),
              what="both runs to wait on an override")
        pending = rt.approvals.pending()
        assert len(pending) == 1, f"{len(pending)} override approvals for one policy"
    finally:
        for approval in rt.approvals.pending():
            rt.approvals.decide(approval.approval_id, False)
        for handle in waiting:
            handle.wait(5)


# -- cost limits ----------------------------------------------------------------------------


def test_a_cost_limit_blocks_once_the_priced_usage_would_exceed_it(runtime):
    priced = runtime.pricing.put({
        "provider_id": "deterministic-primary", "provider_kind": "deterministic",
        "model_id": "deterministic", "effective_from_unix_ms": 1,  # supersedes the free seed row
        "input_cost_per_million_usd": 1000, "output_cost_per_million_usd": 1000,
    })
    assert priced.pricing_id in {p.pricing_id for p in runtime.pricing.list()}
    # 1000 USD per million tokens = 1000 micro-USD per token: a run costs 8000 micro-USD
    pid = runtime.budgets.put(policy(metric_kind="estimated_cost_usd", hard_limit_value=0.01)).policy_id

    first = runtime.send(TEXT, session_key="first").wait(5)
    assert first.state == "done"
    terminal = [e for e in steps(runtime, first.run_id, "status") if e.payload["kind"] == "done"]
    assert terminal[0].payload["estimated_cost_micro_usd"] == 8000
    consumed = runtime.budgets.consumed(pid)
    assert (consumed["consumed_cost_micro_usd"], consumed["consumed_tokens"]) == (8000, PER_RUN)

    second = runtime.send(TEXT, session_key="second").wait(5)
    assert (second.state, second.termination_reason) == ("failed", "budget_blocked")
    assert pid in second.last_error
    assert runtime.usage.summary()["totals"]["estimated_cost_usd"] == pytest.approx(0.008)
    assert runtime.budgets.consumed(pid)["consumed_cost_micro_usd"] == 8000


# -- accounting -------------------------------------------------------------------------------

ACCOUNTING = {"tools": {"allowed": ["palyra.echo"]}}
TOOL_TEXT = 'alpha beta\n@tool palyra.echo {"text": "hi"}'


def mixed_runs(rt: palyra.Runtime) -> list[palyra.records.RunResult]:
    """Plain, tool-using (two turns), blocked and provider-failed runs."""
    blocked_session = rt.sessions.resolve(session_key="blocked").session.session_id
    rt.budgets.put(policy(scope_kind="session", scope_id=blocked_session, hard_limit_value=0))
    texts = [(TEXT, "plain-0"), (TOOL_TEXT, "tool-0"), (TEXT + " epsilon", "plain-1"),
             (TEXT, "blocked"), ("oops\n@fail auth_invalid", "failing"), (TOOL_TEXT, "tool-1")]
    results = [rt.send(text, session_key=key).wait(5) for text, key in texts]
    states = [r.state for r in results]
    assert states == ["done", "done", "done", "failed", "failed", "done"], results
    assert results[3].termination_reason == "budget_blocked"
    assert results[4].termination_reason == "provider_error"
    return results


def test_settled_usage_equals_the_usage_on_the_tapes(start_runtime):
    rt = start_runtime(ACCOUNTING)
    total = rt.budgets.put(policy(hard_limit_value=10**9)).policy_id
    mine = rt.budgets.put(policy(scope_kind="principal", scope_id="user:local",
                                 hard_limit_value=10**9)).policy_id
    results = mixed_runs(rt)

    per_run = {r.run_id: tape_usage(rt, r.run_id) for r in rt.runs(limit=100)}
    for result in results:
        assert per_run[result.run_id] == (result.usage.prompt_tokens, result.usage.completion_tokens,
                                          result.usage.total_tokens)
    assert len(steps(rt, results[1].run_id, "provider_turn_output")) == 2  # tool call + answer
    prompt, completion, tokens = (sum(u[i] for u in per_run.values()) for i in range(3))
    assert tokens > 4 * PER_RUN

    totals = rt.usage.summary()["totals"]
    assert (totals["prompt_tokens"], totals["completion_tokens"], totals["total_tokens"]) == (
        prompt, completion, tokens)
    assert totals["runs"] == len(results)
    for pid in (total, mine):
        assert rt.budgets.consumed(pid) == {"consumed_tokens": tokens, "consumed_cost_micro_usd": 0,
                                            "reserved_tokens": 0, "reserved_cost_micro_usd": 0}
    assert rt.budgets.reserved() == {"reservations": 0, "tokens": 0, "cost_micro_usd": 0}


def test_consumed_survives_a_runtime_restart_exactly(start_runtime):
    rt = start_runtime(ACCOUNTING)
    pids = [
        rt.budgets.put(policy(hard_limit_value=10**9)).policy_id,
        rt.budgets.put(policy(interval_kind="calendar_month", metric_kind="estimated_cost_usd",
                              hard_limit_value=1.0)).policy_id,
        rt.budgets.put(policy(scope_kind="principal", scope_id="user:local", interval_kind="rolling_30d",
                              hard_limit_value=10**9)).policy_id,
    ]
    results = mixed_runs(rt)
    pids.append(rt.budgets.put(policy(scope_kind="session", scope_id=results[0].session_id,
                                      hard_limit_value=10**9)).policy_id)  # created afterwards
    before = {pid: rt.budgets.consumed(pid) for pid in pids}
    assert before[pids[0]]["consumed_tokens"] == sum(r.usage.total_tokens for r in results)
    assert before[pids[3]]["consumed_tokens"] == results[0].usage.total_tokens
    assert rt.budgets.reserved()["tokens"] == 0
    rt.stop()

    again = start_runtime(ACCOUNTING)
    assert {pid: again.budgets.consumed(pid) for pid in pids} == before
    assert again.budgets.reserved() == {"reservations": 0, "tokens": 0, "cost_micro_usd": 0}


def test_usage_breaks_down_by_session_and_principal(tmp_path):
    with palyra.Runtime.start(tmp_path) as rt:
        for i in range(3):
            rt.send("a b c", session_key=f"s{i}", principal=f"user:{i % 2}").wait(10)
        by_principal = {row["principal"]: row for row in rt.usage.principals()["items"]}
        assert by_principal["user:0"]["runs"] == 2 and by_principal["user:1"]["runs"] == 1
        sessions = rt.usage.sessions()["items"]
        assert len(sessions) == 3 and all(row["total_tokens"] == 6 for row in sessions)
