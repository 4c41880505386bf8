"""Crash recovery plans from a run's tape."""

from __future__ import annotations

import random
from typing import Any

import orjson

from palyra.healing import recovery
from palyra.providers.base import Message, ToolCall
from palyra.records import TapeEvent

T0 = 1_700_000_000_000
RUN = "01HZZZZZZZZZZZZZZZZZZZZZZZ"


class Tape:
    """Writes tape events the way the run actor does."""

    def __init__(self) -> None:
        self.events: list[TapeEvent] = []

    def add(self, event_type: str, payload: dict[str, Any]) -> Tape:
        self.events.append(TapeEvent(RUN, len(self.events), event_type, payload,
                                     T0 + len(self.events)))
        return self

    def started(self, text: str = "list the files") -> Tape:
        return (self.add("status", {"kind": "accepted", "message": "accepted"})
                .add("message.received", {"text": text})
                .add("status", {"kind": "in_progress", "message": "streaming"}))

    def turn(self, text: str, *calls: tuple[str, str, dict[str, Any]]) -> Tape:
        parts = [{"kind": "text", "text": text}] if text else []
        parts += [{"kind": "tool_call", "id": cid, "name": name, "arguments": args}
                  for cid, name, args in calls]
        return self.add("provider_turn_output", {
            "full_text": text, "content_parts": parts,
            "finish_reason": "tool_calls" if calls else "stop"})

    def propose(self, pid: str, name: str) -> Tape:
        return self.add("tool_proposal", {"proposal_id": pid, "tool_name": name,
                                          "input_json": {}, "approval_required": False})

    def decide(self, pid: str, kind: str = "allow") -> Tape:
        return self.add("tool_decision", {"proposal_id": pid, "kind": kind, "reason": "r"})

    def result(self, pid: str, name: str, output: Any, success: bool = True) -> Tape:
        return self.add("tool_result", {"proposal_id": pid, "tool_name": name,
                                        "success": success, "output_json": output,
                                        "error": None if success else "denied"})


def test_a_tool_in_flight_fails_the_run_with_an_incident() -> None:
    tape = (Tape().started().turn("", ("call_1", "shell.exec", {"cmd": "rm -rf build"}))
            .propose("P1", "shell.exec").decide("P1"))
    plan = recovery.recovery_plan(tape.events, run_id=RUN)
    assert plan.action == "fail" and plan.reason == recovery.TOOL_IN_FLIGHT_REASON
    assert plan.in_flight_proposals == ("P1",)
    assert plan.observation is not None
    assert (plan.observation.kind, plan.observation.severity, plan.observation.subject_id) == (
        "crash_tool_in_flight", "high", RUN)
    assert plan.observation.facts["tools"] == ["shell.exec"]
    assert plan.messages == ()


def test_resume_rebuilds_provider_messages() -> None:
    tape = (Tape().started("what is in /tmp")
            .turn("Let me look.", ("call_1", "fs.list", {"path": "/tmp"}))
            .propose("P1", "fs.list").decide("P1").result("P1", "fs.list", ["a", "b"])
            .add("tool_attestation", {"proposal_id": "P1"})
            .add("agent_loop.turn_completed", {"turn": 1}))
    plan = recovery.recovery_plan(tape.events, run_id=RUN)
    assert plan.action == "resume" and plan.resume_attempt == 1
    assert (plan.turns_used, plan.tool_calls_used, plan.pending_tool_calls) == (1, 1, ())
    content = orjson.dumps({"success": True, "tool_name": "fs.list", "error": None,
                            "output": ["a", "b"]}).decode()
    assert plan.messages == (
        Message("user", "what is in /tmp"),
        Message("assistant", "Let me look.",
                tool_calls=(ToolCall("call_1", "fs.list", {"path": "/tmp"}),)),
        Message("tool", content, tool_call_id="call_1"),
    )


def test_resume_before_any_model_turn_is_just_the_user_message() -> None:
    plan = recovery.recovery_plan(Tape().started("hello").events)
    assert plan.action == "resume"
    assert plan.messages == (Message("user", "hello"),)


def test_calls_not_yet_decided_are_pending_and_a_deny_is_not_in_flight() -> None:
    tape = (Tape().started()
            .turn("", ("c1", "fs.read", {"p": 1}), ("c2", "shell.exec", {}), ("c3", "net", {}))
            .propose("P1", "fs.read").decide("P1").result("P1", "fs.read", "data")
            .propose("P2", "shell.exec").decide("P2", "deny")
            .result("P2", "shell.exec", None, success=False)
            .propose("P3", "net")
            .add("tool_approval_request", {"proposal_id": "P3"}))
    plan = recovery.recovery_plan(tape.events, run_id=RUN)
    assert plan.action == "resume"
    assert plan.pending_tool_calls == (ToolCall("c3", "net", {}),)
    assert [m.tool_call_id for m in plan.messages if m.role == "tool"] == ["c1", "c2"]
    assert plan.tool_calls_used == 1


def test_multi_turn_runs_keep_every_turn() -> None:
    tape = (Tape().started()
            .turn("", ("c1", "fs.list", {})).propose("P1", "fs.list").decide("P1")
            .result("P1", "fs.list", ["x"])
            .turn("", ("c2", "fs.read", {"p": "x"})).propose("P2", "fs.read").decide("P2")
            .result("P2", "fs.read", "hello"))
    plan = recovery.recovery_plan(tape.events)
    assert [m.role for m in plan.messages] == ["user", "assistant", "tool", "assistant", "tool"]
    assert [m.tool_call_id for m in plan.messages if m.role == "tool"] == ["c1", "c2"]
    assert plan.turns_used == 2 and plan.tool_calls_used == 2


def test_resume_budget_is_three_attempts() -> None:
    tape = Tape().started()
    for attempt in (1, 2):
        tape.add(recovery.RESUMED_EVENT, {"attempt": attempt})
    plan = recovery.recovery_plan(tape.events, run_id=RUN)
    assert plan.action == "resume" and plan.resume_attempt == 3
    tape.add(recovery.RESUMED_EVENT, {"attempt": 3})
    plan = recovery.recovery_plan(tape.events, run_id=RUN)
    assert plan.action == "fail" and plan.resumes_so_far == 3
    assert plan.observation is not None and plan.observation.kind == "crash_resume_exhausted"
    assert recovery.recovery_plan(tape.events, max_resume_attempts=5).action == "resume"


def test_a_tape_that_already_ended_is_finalised() -> None:
    tape = Tape().started().turn("hi").add("message.replied", {"reply_text": "hi"}).add(
        "status", {"kind": "done", "message": "completed"})
    plan = recovery.recovery_plan(tape.events)
    assert (plan.action, plan.terminal_state) == ("finalize", "done")


def test_a_tape_without_user_input_cannot_resume() -> None:
    plan = recovery.recovery_plan(Tape().add("status", {"kind": "accepted"}).events)
    assert plan.action == "fail" and plan.reason == recovery.NO_INPUT_REASON


def test_events_may_come_unordered_and_as_mappings() -> None:
    tape = (Tape().started().turn("", ("c1", "fs.list", {})).propose("P1", "fs.list")
            .decide("P1").result("P1", "fs.list", []))
    ordered = recovery.recovery_plan(tape.events)
    shuffled = [{"seq": e.seq, "event_type": e.event_type, "payload": e.payload}
                for e in tape.events]
    random.Random(7).shuffle(shuffled)
    assert recovery.recovery_plan(shuffled) == ordered
