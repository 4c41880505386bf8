"""Tool dispatch, policy decisions, approvals and attestation (spec 1.6, 1.9)."""

from __future__ import annotations

import re

import orjson
import pytest

import palyra
from palyra.ids import new_ulid
from palyra.tools.attestation import execution_sha256
from tests.orchestrator.support import TOOLS, pending_approval, step, steps, tool_text

HEX64 = re.compile(r"^[0-9a-f]{64}$")
ECHO = tool_text("palyra.echo", '{"text": "hey"}')


@pytest.fixture
def rt(start_runtime):
    return start_runtime(TOOLS)


def test_allowed_tool_runs_and_is_attested(rt):
    run = rt.send(tool_text("palyra.sleep", '{"ms": 5}'))
    result = run.wait(10)
    assert result.state == "done"
    assert 'tool palyra.sleep: {"success":true' in result.reply_text
    proposal = step(rt, run.id, "tool_proposal")
    assert proposal.payload["tool_name"] == "palyra.sleep"
    assert proposal.payload["approval_required"] is False
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "allow" and decision["policy_enforced"] is True
    tool_result = step(rt, run.id, "tool_result").payload
    assert tool_result["success"] is True and tool_result["output_json"] == {"slept_ms": 5}
    attestation = step(rt, run.id, "tool_attestation")
    assert attestation.seq == step(rt, run.id, "tool_result").seq + 1
    att = attestation.payload
    assert HEX64.match(att["execution_sha256"])
    assert att["timed_out"] is False and att["executor"] == "palyra.inprocess"
    assert att["proposal_id"] == proposal.payload["proposal_id"] == decision["proposal_id"]
    assert not rt.approvals.list(run_id=run.id)


def test_attestation_hash_binds_the_taped_input_and_output(rt):
    run = rt.send(tool_text("palyra.sleep", '{"ms": 1}'))
    run.wait(10)
    proposal = step(rt, run.id, "tool_proposal").payload
    result = step(rt, run.id, "tool_result").payload
    att = step(rt, run.id, "tool_attestation").payload
    expected = execution_sha256(
        proposal["proposal_id"], "palyra.sleep",
        orjson.dumps(proposal["input_json"], option=orjson.OPT_SORT_KEYS), result["success"],
        orjson.dumps(result["output_json"], option=orjson.OPT_SORT_KEYS), result["error"] or "",
        att["timed_out"], att["executor"], "none", att["executed_at_unix_ms"],
    )
    assert att["execution_sha256"] == expected


def test_tool_not_allowlisted_is_denied_by_the_baseline_without_attestation(rt):
    run = rt.send(tool_text("palyra.memory.search", '{"query": "q"}'))
    assert run.wait(10).state == "done"
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "deny" and decision["policy_enforced"] is True
    # spec 1.6.1: no permit matched, so the deny-by-default baseline applies; the reason
    # names the most specific cause ("tool is not allowlisted") and no matched policy.
    assert "not allowlisted" in decision["reason"]
    assert "matched policies: none" in decision["reason"]
    result = step(rt, run.id, "tool_result").payload
    assert result["success"] is False and result["error"] == decision["reason"]
    assert not steps(rt, run.id, "tool_attestation")
    assert not steps(rt, run.id, "tool.intake_rejected")


def test_nothing_is_allowed_when_the_allowlist_is_empty(start_runtime):
    rt = start_runtime()
    run = rt.send(tool_text("palyra.sleep", '{"ms": 1}'))
    run.wait(10)
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "deny" and "not allowlisted" in decision["reason"]
    assert not steps(rt, run.id, "tool_attestation")


def test_unknown_tool_is_rejected_at_intake(rt):
    run = rt.send(tool_text("nope.tool", "{}"))
    assert run.wait(10).state == "done"
    rejected = step(rt, run.id, "tool.intake_rejected").payload
    assert rejected["tool_name"] == "nope.tool"
    assert rejected["reason"].startswith("not_found:")
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "deny" and decision["reason"] == rejected["reason"]
    assert step(rt, run.id, "tool_result").payload["success"] is False
    assert HEX64.match(step(rt, run.id, "tool_attestation").payload["execution_sha256"])
    assert not rt.approvals.list(run_id=run.id)


def test_intake_rejected_proposal_is_not_marked_approval_required(rt):
    run = rt.send(tool_text("nope.tool", "{}"))
    run.wait(10)
    assert step(rt, run.id, "tool.intake_rejected")
    assert step(rt, run.id, "tool_proposal").payload["approval_required"] is False


def test_invalid_arguments_are_rejected_at_intake(rt):
    run = rt.send(tool_text("palyra.sleep", '{"ms": "soon"}'))
    assert run.wait(10).state == "done"
    rejected = step(rt, run.id, "tool.intake_rejected").payload
    assert rejected["reason"].startswith("invalid_argument:")
    assert "$.ms" in rejected["reason"]
    assert step(rt, run.id, "tool_decision").payload["kind"] == "deny"
    result = step(rt, run.id, "tool_result").payload
    assert result["success"] is False and result["error"] == rejected["reason"]


def test_sensitive_tool_waits_for_approval_and_runs_when_allowed(rt):
    run = rt.send(ECHO, session_key="s")
    approval = pending_approval(rt, run.id)
    assert (approval.subject_type, approval.subject_id) == ("tool", "tool:palyra.echo")
    assert approval.prompt["title"] == "Approve palyra.echo"
    request = step(rt, run.id, "tool_approval_request").payload
    assert request["approval_id"] == approval.approval_id
    assert request["proposal_id"] == approval.proposal_id
    assert rt.run(run.id).state == "in_progress"

    decided = rt.approvals.decide(approval.approval_id, allow=True)
    assert (decided.decision, decided.decision_scope) == ("allow", "once")
    result = run.wait(10)
    assert result.state == "done" and '"echo":"hey"' in result.reply_text
    response = step(rt, run.id, "tool_approval_response").payload
    assert response["approved"] is True and response["decision_scope"] == "once"
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "allow"
    assert decision["reason"].startswith("explicit approval granted")
    assert step(rt, run.id, "tool_result").payload["output_json"] == {"echo": "hey"}
    assert step(rt, run.id, "tool_attestation")
    assert rt.approvals.get(approval.approval_id).decision == "allow"
    assert not rt.approvals.pending()


def test_denied_approval_denies_the_tool(rt):
    run = rt.send(ECHO)
    approval = pending_approval(rt, run.id)
    rt.approvals.decide(approval.approval_id, allow=False)
    assert run.wait(10).state == "done"
    assert step(rt, run.id, "tool_approval_response").payload["approved"] is False
    assert step(rt, run.id, "tool_decision").payload["kind"] == "deny"
    assert step(rt, run.id, "tool_result").payload["success"] is False
    assert not steps(rt, run.id, "tool_attestation")
    assert rt.approvals.get(approval.approval_id).decision == "deny"


def test_approval_timeout_records_timeout_and_denies(rt):
    run = rt.send(ECHO)
    approval = pending_approval(rt, run.id)
    assert run.wait(10).state == "done"  # approval_timeout_ms is 300
    timed_out = rt.approvals.get(approval.approval_id)
    assert timed_out.decision == "timeout" and timed_out.resolved_at_unix_ms is not None
    response = step(rt, run.id, "tool_approval_response").payload
    assert response["approved"] is False and response["decision"] == "timeout"
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "deny" and "timed out" in decision["reason"]
    assert not steps(rt, run.id, "tool_attestation")
    with pytest.raises(palyra.Conflict):
        rt.approvals.decide(approval.approval_id, allow=True)


def test_session_scoped_allow_is_reused_by_the_next_run_of_the_session(rt):
    first = rt.send(ECHO, session_key="s")
    approval = pending_approval(rt, first.id)
    rt.approvals.decide(approval.approval_id, allow=True, scope="session")
    assert first.wait(10).state == "done"

    second = rt.send(tool_text("palyra.echo", '{"text": "again"}'), session_key="s")
    assert second.wait(10).state == "done"
    response = step(rt, second.id, "tool_approval_response").payload
    assert response["reason"].startswith("cached_approval")
    assert response["approved"] is True and response["approval_id"] == approval.approval_id
    assert not steps(rt, second.id, "tool_approval_request")
    assert step(rt, second.id, "tool_result").payload["output_json"] == {"echo": "again"}
    assert rt.approvals.list(run_id=second.id) == []
    assert len(rt.approvals.list()) == 1


def test_session_scoped_allow_does_not_leak_to_other_sessions_or_identities(rt):
    first = rt.send(ECHO, session_key="s")
    rt.approvals.decide(pending_approval(rt, first.id).approval_id, allow=True, scope="session")
    first.wait(10)
    for run in (rt.send(ECHO, session_key="other"),
                rt.send(ECHO, session_key="s2", principal="user:someone-else")):
        approval = pending_approval(rt, run.id)
        rt.approvals.decide(approval.approval_id, allow=False)
        assert run.wait(10).state == "done"
        assert step(rt, run.id, "tool_decision").payload["kind"] == "deny"


def test_once_scoped_allow_is_not_cached(rt):
    first = rt.send(ECHO, session_key="s")
    rt.approvals.decide(pending_approval(rt, first.id).approval_id, allow=True, scope="once")
    first.wait(10)
    second = rt.send(ECHO, session_key="s")
    approval = pending_approval(rt, second.id)  # asked again
    rt.approvals.decide(approval.approval_id, allow=True)
    assert second.wait(10).state == "done"


def test_send_with_reset_session_purges_cached_session_approvals(rt):
    first = rt.send(ECHO, session_key="s")
    rt.approvals.decide(pending_approval(rt, first.id).approval_id, allow=True, scope="session")
    first.wait(10)
    second = rt.send(ECHO, session_key="s", reset_session=True)
    assert second.wait(10).state == "done"
    assert steps(rt, second.id, "tool_approval_request"), "the reset session must ask again"


def test_resolve_with_reset_session_purges_cached_session_approvals(rt):
    first = rt.send(ECHO, session_key="s")
    rt.approvals.decide(pending_approval(rt, first.id).approval_id, allow=True, scope="session")
    first.wait(10)
    assert rt.sessions.resolve(session_key="s", reset_session=True).reset_applied
    second = rt.send(ECHO, session_key="s")
    rt.approvals.decide(pending_approval(rt, second.id).approval_id, allow=False)
    assert second.wait(10).state == "done"
    assert step(rt, second.id, "tool_decision").payload["kind"] == "deny"


def test_reset_purge_survives_a_gateway_restart(rt):
    first = rt.send(ECHO, session_key="s")
    rt.approvals.decide(pending_approval(rt, first.id).approval_id, allow=True, scope="session")
    first.wait(10)
    rt.sessions.resolve(session_key="s", reset_session=True)
    assert rt.chaos.kill("gateway")
    second = rt.send(ECHO, session_key="s")  # addressed through the name: the new gateway
    assert second.wait(10).state == "done"
    assert steps(rt, second.id, "tool_approval_request"), "the reset session must ask again"


def test_second_decision_is_a_conflict(rt):
    run = rt.send(ECHO)
    approval = pending_approval(rt, run.id)
    rt.approvals.decide(approval.approval_id, allow=True)
    with pytest.raises(palyra.Conflict):
        rt.approvals.decide(approval.approval_id, allow=False)
    run.wait(10)
    assert rt.approvals.get(approval.approval_id).decision == "allow"


def test_deciding_an_unknown_approval_is_not_found(rt):
    with pytest.raises(palyra.NotFound):
        rt.approvals.decide(new_ulid(), allow=True)
    with pytest.raises(palyra.NotFound):
        rt.approvals.decide("not-an-id", allow=True)
    with pytest.raises(palyra.NotFound):
        rt.approvals.get(new_ulid())


def test_invalid_decision_scope_is_rejected_and_the_approval_stays_pending(rt):
    run = rt.send(ECHO)
    approval = pending_approval(rt, run.id)
    with pytest.raises(palyra.InvalidInput):
        rt.approvals.decide(approval.approval_id, allow=True, scope="forever")
    with pytest.raises(palyra.InvalidInput):
        rt.approvals.decide(approval.approval_id, allow=True, scope="timeboxed")  # no ttl
    assert rt.approvals.get(approval.approval_id).pending
    rt.approvals.decide(approval.approval_id, allow=True)
    assert run.wait(10).state == "done"


def test_tool_budget_denies_calls_beyond_max_tool_calls(start_runtime):
    rt = start_runtime({"tools": {"allowed": ["palyra.sleep"]}, "runs": {"max_tool_calls": 1}})
    run = rt.send('two calls\n@tool palyra.sleep {"ms": 1}\n@tool palyra.sleep {"ms": 2}')
    assert run.wait(10).state == "done"
    first, second = (e.payload for e in steps(rt, run.id, "tool_decision"))
    assert first["kind"] == "allow"
    assert second["kind"] == "deny" and "budget exhausted" in second["reason"]
    results = [e.payload for e in steps(rt, run.id, "tool_result")]
    assert [r["success"] for r in results] == [True, False]
    assert len(steps(rt, run.id, "tool_attestation")) == 1


def test_always_allow_posture_skips_approval_for_a_sensitive_tool(start_runtime):
    rt = start_runtime({"tools": {"allowed": ["palyra.echo"], "sensitive": ["palyra.echo"],
                                  "posture": {"palyra.echo": "always_allow"}}})
    run = rt.send(ECHO)
    assert run.wait(10).state == "done"
    assert step(rt, run.id, "tool_proposal").payload["approval_required"] is False
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "allow" and decision["approval_required"] is False
    assert step(rt, run.id, "tool_result").payload["output_json"] == {"echo": "hey"}
    assert not steps(rt, run.id, "tool_approval_request")
    assert rt.approvals.list() == []


def test_disabled_posture_denies_an_allowlisted_tool(start_runtime):
    rt = start_runtime({"tools": {"allowed": ["palyra.sleep"],
                                  "posture": {"palyra.sleep": "disabled"}}})
    run = rt.send(tool_text("palyra.sleep", '{"ms": 1}'))
    run.wait(10)
    decision = step(rt, run.id, "tool_decision").payload
    assert decision["kind"] == "deny" and "disabled" in decision["reason"]
