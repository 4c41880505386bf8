"""decide_tool_call: budget x posture x Cedar x approval outcome."""

from __future__ import annotations

import pytest

from palyra.errors import InvalidInput
from palyra.policy import PolicyConfig, PolicyEngine
from palyra.policy.engine import REASON_SENSITIVE, REASON_TOOL
from palyra.tools import ToolCall, decide_tool_call
from palyra.tools.decision import (
    REASON_APPROVAL_CHANNEL_UNAVAILABLE,
    REASON_BUDGET_EXHAUSTED,
    REASON_POSTURE_DISABLED,
    REASON_UNSUPPORTED,
)

ALLOW_ID = "allow_allowlisted_tool_execute"
FORBID_ID = "deny_sensitive_without_approval"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine.build(
        PolicyConfig(
            allowed_tools={"palyra.echo", "palyra.http.fetch", "palyra.process.run"},
            sensitive_tools={"palyra.process.run"},
        )
    )


ECHO = ToolCall(principal="user:ops", tool_name="palyra.echo", device_id="D", run_id="R")
FETCH = ToolCall(
    principal="user:ops", tool_name="palyra.http.fetch", capabilities=("network",), run_id="R"
)
PROCESS = ToolCall(principal="user:ops", tool_name="palyra.process.run")
UNLISTED = ToolCall(principal="user:ops", tool_name="palyra.fs.apply_patch")


def decide(engine, call, **kw):
    kw.setdefault("remaining_budget", 5)
    kw.setdefault("posture", "ask_each_time")
    kw.setdefault("approval_required", False)
    return decide_tool_call(engine, call, **kw)


def test_safe_allowlisted_tool_allowed_and_consumes_budget(engine) -> None:
    d = decide(engine, ECHO)
    assert (d.kind, d.approval_required, d.policy_enforced, d.consumes_budget) == (
        "allow",
        False,
        True,
        True,
    )
    assert d.reason == f"allowed by policy: {ALLOW_ID}"
    assert d.matched_policy_ids == (ALLOW_ID,)
    assert d.allowed


@pytest.mark.parametrize("budget", [0, -1])
def test_exhausted_budget_denies_before_policy(engine, budget: int) -> None:
    d = decide(engine, ECHO, remaining_budget=budget, posture="always_allow")
    assert (d.kind, d.reason, d.policy_enforced, d.consumes_budget) == (
        "deny",
        REASON_BUDGET_EXHAUSTED,
        False,
        False,
    )


def test_disabled_posture_denies(engine) -> None:
    d = decide(engine, ECHO, posture="disabled", approval_outcome=True)
    assert (d.kind, d.reason, d.policy_enforced, d.consumes_budget) == (
        "deny",
        REASON_POSTURE_DISABLED,
        False,
        False,
    )


def test_unknown_posture_rejected(engine) -> None:
    with pytest.raises(InvalidInput):
        decide(engine, ECHO, posture="sometimes")


def test_policy_deny_carries_reason_and_ids(engine) -> None:
    d = decide(engine, UNLISTED)
    assert d.kind == "deny" and not d.consumes_budget and d.policy_enforced
    assert d.reason == f"policy denied tool execution: {REASON_TOOL} (matched policies: none)"


def test_sensitive_tool_without_approval_denied_by_cedar(engine) -> None:
    d = decide(engine, FETCH, approval_required=True)
    assert d.kind == "deny" and not d.consumes_budget
    assert d.reason == (
        f"policy denied tool execution: {REASON_SENSITIVE} (matched policies: {FORBID_ID})"
    )
    assert d.matched_policy_ids == (FORBID_ID,)
    assert d.approval_required


def test_sensitive_tool_name_without_approval_denied_by_cedar(engine) -> None:
    d = decide(engine, PROCESS, approval_required=True)
    assert d.kind == "deny"
    assert FORBID_ID in d.reason


def test_approved_sensitive_tool_allowed_with_prefix(engine) -> None:
    d = decide(engine, FETCH, approval_required=True, approval_outcome=True)
    assert (d.kind, d.approval_required, d.consumes_budget) == ("allow", True, True)
    assert d.reason == f"explicit approval granted; allowed by policy: {ALLOW_ID}"


def test_denied_approval_denies_without_budget(engine) -> None:
    d = decide(engine, ECHO, approval_required=True, approval_outcome=False)
    assert d.kind == "deny" and not d.consumes_budget and d.approval_required
    assert d.reason.startswith("tool execution denied by explicit client approval response; ")


def test_denied_approval_for_sensitive_tool_is_a_policy_deny(engine) -> None:
    # With allow_sensitive_tools false Cedar's forbid already fires.
    d = decide(engine, FETCH, approval_required=True, approval_outcome=False)
    assert d.kind == "deny" and FORBID_ID in d.reason


def test_approval_required_without_outcome_denies_channel_unavailable(engine) -> None:
    d = decide(engine, ECHO, approval_required=True, approval_outcome=None)
    assert (d.kind, d.reason, d.approval_required, d.consumes_budget) == (
        "deny",
        REASON_APPROVAL_CHANNEL_UNAVAILABLE,
        True,
        False,
    )


def test_always_allow_clears_approval_and_allows_sensitive(engine) -> None:
    d = decide(engine, FETCH, posture="always_allow", approval_required=True)
    assert (d.kind, d.approval_required, d.consumes_budget) == ("allow", False, True)
    assert d.reason == f"allowed by policy: {ALLOW_ID}"


def test_always_allow_does_not_bypass_the_allowlist(engine) -> None:
    d = decide(engine, UNLISTED, posture="always_allow")
    assert d.kind == "deny" and REASON_TOOL in d.reason


def test_unsupported_tool_denied_after_policy_allow(engine) -> None:
    d = decide(engine, ECHO, tool_supported=False)
    assert (d.kind, d.reason, d.policy_enforced, d.consumes_budget) == (
        "deny",
        REASON_UNSUPPORTED,
        True,
        False,
    )


def test_empty_allowlist_denies_everything() -> None:
    d = decide(PolicyEngine.build(), ECHO, posture="always_allow")
    assert d.kind == "deny"


@pytest.mark.parametrize("budget", [0, 1])
@pytest.mark.parametrize("posture", ["always_allow", "ask_each_time", "disabled"])
@pytest.mark.parametrize("approval_required", [False, True])
@pytest.mark.parametrize("outcome", [None, True, False])
@pytest.mark.parametrize("call", [ECHO, FETCH, UNLISTED], ids=["echo", "fetch", "unlisted"])
def test_matrix(engine, budget, posture, approval_required, outcome, call) -> None:
    d = decide(
        engine,
        call,
        remaining_budget=budget,
        posture=posture,
        approval_required=approval_required,
        approval_outcome=outcome,
    )
    sensitive = call is FETCH
    allowlisted = call is not UNLISTED
    approval_needed = approval_required and posture != "always_allow"
    expected_allow = (
        budget > 0
        and posture != "disabled"
        and allowlisted
        and (not sensitive or posture == "always_allow" or outcome is True)
        and (not approval_needed or outcome is True)
    )
    assert d.allowed == expected_allow, d.reason
    assert d.consumes_budget == expected_allow  # denials never consume budget
    assert d.policy_enforced == (budget > 0 and posture != "disabled")
    if expected_allow:
        assert d.approval_required == approval_needed
        assert d.reason.startswith("explicit approval granted") == approval_needed
