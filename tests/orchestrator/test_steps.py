"""Tape step payloads are pure: same inputs, same recorded fields."""

from __future__ import annotations

from palyra.orchestrator import steps
from palyra.tools import ToolOutput
from palyra.tools.attestation import execution_sha256


def test_attestation_hashes_input_and_output_in_sorted_key_form():
    out = ToolOutput.ok({"b": 1, "a": 2})
    one = steps.tool_attestation("att", "prop", "palyra.echo", {"y": 1, "x": 2}, out, 1000, False)
    # dict order of the arguments or the output must not change the digest
    two = steps.tool_attestation("att", "prop", "palyra.echo", {"x": 2, "y": 1},
                                 ToolOutput.ok({"a": 2, "b": 1}), 1000, False)
    assert one == two
    assert one["execution_sha256"] == execution_sha256(
        "prop", "palyra.echo", b'{"x":2,"y":1}', True, b'{"a":2,"b":1}', "", False,
        steps.EXECUTOR, steps.SANDBOX, 1000)
    failed = steps.tool_attestation("att", "prop", "palyra.echo", {"x": 2, "y": 1},
                                    ToolOutput.failed("boom"), 1000, False)
    assert failed["execution_sha256"] != one["execution_sha256"]


def test_approval_response_carries_how_the_answer_came():
    by_operator = steps.approval_response("p", "a", True, "ok", decision_scope="session",
                                          decision_scope_ttl_ms=None)
    timed_out = steps.approval_response("p", "a", False, "approval timed out after 1s", decision="timeout")
    assert by_operator == {"proposal_id": "p", "approval_id": "a", "approved": True, "reason": "ok",
                           "decision_scope": "session", "decision_scope_ttl_ms": None}
    assert timed_out["decision"] == "timeout" and "decision_scope" not in timed_out
