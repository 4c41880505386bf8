"""Payloads of the tape steps a run writes about its model turns and tool calls.

Pure functions: the run actor decides *when* a step happens, these say *what* it
records (section 1.4 of the reference spec names the fields). Key order is kept
stable on purpose: the stored JSON text is what the tape's hash chain covers.
"""

from __future__ import annotations

from typing import Any

import orjson

from palyra.providers import ProviderResponse
from palyra.records import Approval
from palyra.tools import ToolDecision, ToolOutput
from palyra.tools.attestation import execution_sha256

EXECUTOR = "palyra.inprocess"
SANDBOX = "none"


def provider_turn_output(response: ProviderResponse) -> dict[str, Any]:
    usage = response.usage
    return {
        "full_text": response.text,
        "content_parts": ([{"kind": "text", "text": response.text}] if response.text else [])
        + [{"kind": "tool_call", "id": c.id, "name": c.name, "arguments": c.arguments}
           for c in response.tool_calls],
        "finish_reason": str(response.finish_reason),
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                  "total_tokens": usage.total_tokens, "source": "provider"},
        "provider_id": response.provider_id,
        "model_id": response.model_id,
        "retry_count": response.retry_count,
    }


def tool_proposal(proposal_id: str, tool_name: str, arguments: Any, approval_required: bool) -> dict[str, Any]:
    return {"proposal_id": proposal_id, "tool_name": tool_name, "input_json": arguments,
            "approval_required": approval_required}


def approval_request(proposal_id: str, tool_name: str, arguments: Any, approval: Approval,
                     **extra: Any) -> dict[str, Any]:
    return {
        "proposal_id": proposal_id, "approval_id": approval.approval_id, "tool_name": tool_name,
        "input_json": arguments, "approval_required": True, "prompt": approval.prompt,
        "request_summary": approval.request_summary, **extra,
    }


def approval_response(proposal_id: str, approval_id: str, approved: bool, reason: str,
                      **extra: Any) -> dict[str, Any]:
    """``extra``: how the answer came (``decision_scope``, its TTL, or ``decision``)."""
    return {"proposal_id": proposal_id, "approval_id": approval_id, "approved": approved,
            "reason": reason, **extra}


def tool_decision(proposal_id: str, decision: ToolDecision) -> dict[str, Any]:
    return {"proposal_id": proposal_id, "kind": decision.kind, "reason": decision.reason,
            "approval_required": decision.approval_required, "policy_enforced": decision.policy_enforced}


def tool_result(proposal_id: str, tool_name: str, output: ToolOutput) -> dict[str, Any]:
    return {"proposal_id": proposal_id, "tool_name": tool_name, "success": output.success,
            "output_json": output.output, "error": output.error}


def tool_attestation(attestation_id: str, proposal_id: str, tool_name: str, arguments: Any,
                     output: ToolOutput, executed_at_ms: int, timed_out: bool) -> dict[str, Any]:
    """Section 1.6 step 7: what ran, on what input, with what outcome, hashed."""
    digest = execution_sha256(
        proposal_id, tool_name, orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS), output.success,
        orjson.dumps(output.output, option=orjson.OPT_SORT_KEYS), output.error or "", timed_out,
        EXECUTOR, SANDBOX, executed_at_ms)
    return {"proposal_id": proposal_id, "attestation_id": attestation_id, "execution_sha256": digest,
            "executed_at_unix_ms": executed_at_ms, "timed_out": timed_out, "executor": EXECUTOR}
