"""``decide_tool_call``: budget, posture, Cedar and approval in one pure function (spec 1.6
step 5).

Order: budget exhausted -> posture disabled -> Cedar (action ``tool.execute``, resource
``tool:<name>``, ``allow_sensitive_tools`` = approval granted or posture ``always_allow``)
-> runtime support -> approval outcome. Only an allow consumes budget.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from palyra.errors import InvalidInput
from palyra.policy.engine import PolicyEngine, PolicyRequest

__all__ = [
    "POSTURES",
    "REASON_APPROVAL_CHANNEL_UNAVAILABLE",
    "REASON_BUDGET_EXHAUSTED",
    "REASON_POSTURE_DISABLED",
    "REASON_UNSUPPORTED",
    "ToolCall",
    "ToolDecision",
    "decide_tool_call",
]

Posture = Literal["always_allow", "ask_each_time", "disabled"]
POSTURES = frozenset({"always_allow", "ask_each_time", "disabled"})

REASON_BUDGET_EXHAUSTED = "tool execution budget exhausted for run"
REASON_POSTURE_DISABLED = "tool execution disabled by tool posture"
REASON_UNSUPPORTED = "tool is allowlisted but unsupported by runtime executor"
REASON_APPROVAL_CHANNEL_UNAVAILABLE = (
    "approval required but no interactive approval channel is available for this run"
)
REASON_APPROVAL_DENIED = "tool execution denied by explicit client approval response"
REASON_APPROVAL_GRANTED = "explicit approval granted"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """Who asks to run which tool, from where."""

    principal: str
    tool_name: str
    device_id: str = ""
    channel: str | None = None
    session_id: str | None = None
    run_id: str | None = None
    skill_id: str | None = None
    capabilities: Iterable[str] = frozenset()


@dataclass(frozen=True, slots=True)
class ToolDecision:
    kind: Literal["allow", "deny"]
    reason: str
    approval_required: bool
    policy_enforced: bool
    consumes_budget: bool
    matched_policy_ids: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.kind == "allow"


def _deny(
    reason: str, approval_required: bool, policy_enforced: bool, matched: tuple[str, ...] = ()
) -> ToolDecision:
    return ToolDecision("deny", reason, approval_required, policy_enforced, False, matched)


def decide_tool_call(
    engine: PolicyEngine,
    call: ToolCall,
    *,
    remaining_budget: int,
    posture: Posture = "ask_each_time",
    approval_required: bool,
    approval_outcome: bool | None = None,
    tool_supported: bool = True,
) -> ToolDecision:
    """Decide one tool call.

    ``approval_outcome`` is None when no approval response was obtained (not needed, or
    no interactive channel), else whether the client approved. ``tool_supported`` is
    False when the runtime has no executor for an otherwise allowed tool.
    """
    if posture not in POSTURES:
        raise InvalidInput(f"unknown tool posture {posture!r}; expected one of {sorted(POSTURES)}")
    if remaining_budget <= 0:
        return _deny(REASON_BUDGET_EXHAUSTED, approval_required, False)
    if posture == "disabled":
        return _deny(REASON_POSTURE_DISABLED, approval_required, False)

    always_allow = posture == "always_allow"
    request = PolicyRequest(
        principal=call.principal,
        action="tool.execute",
        resource=f"tool:{call.tool_name}",
        device_id=call.device_id,
        channel=call.channel,
        session_id=call.session_id,
        run_id=call.run_id,
        skill_id=call.skill_id,
        capabilities=call.capabilities,
        allow_sensitive_tools=always_allow or approval_outcome is True,
    )
    policy = engine.evaluate(request)
    matched = policy.matched_policy_ids
    if not policy.allowed:
        ids = ", ".join(matched) if matched else "none"
        return _deny(
            f"policy denied tool execution: {policy.reason} (matched policies: {ids})",
            approval_required,
            True,
            matched,
        )
    if not tool_supported:
        return _deny(REASON_UNSUPPORTED, approval_required, True, matched)

    if always_allow:
        approval_required = False
    if approval_required:
        if approval_outcome is None:
            return _deny(REASON_APPROVAL_CHANNEL_UNAVAILABLE, True, True, matched)
        if approval_outcome is False:
            return _deny(f"{REASON_APPROVAL_DENIED}; {policy.reason}", True, True, matched)
        reason = f"{REASON_APPROVAL_GRANTED}; {policy.reason}"
    else:
        reason = policy.reason
    return ToolDecision("allow", reason, approval_required, True, True, matched)
