"""Crash recovery of a run left ``in_progress`` by a process that died (spec 12 gap).

:func:`recovery_plan` reads the run's tape and decides:

* ``finalize`` — the tape already holds a terminal status: copy it to the run row;
* ``fail`` (with an incident observation) — a tool execution was in flight (a
  ``tool_decision`` allow for a proposal with no ``tool_result``: it may or may not have
  had its effect, so it must not be repeated blindly), the resume budget (3, counted from
  ``run.resumed`` tape events) is spent, or there is no user message to resume from;
* ``resume`` — rebuild the provider messages from the recorded steps (user
  ``message.received``, assistant turns from ``provider_turn_output``, tool results from
  ``tool_result``) and carry on; ``pending_tool_calls`` are the last turn's calls that
  still need a decision, and the caller tapes ``run.resumed {attempt}`` first.

Session history of earlier runs is not on the tape: the caller prepends it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

import orjson

from palyra.healing import incidents as inc
from palyra.healing.incidents import IncidentObservation
from palyra.providers.base import Message, ToolCall

RESUME = "resume"
FAIL = "fail"
FINALIZE = "finalize"
RESUMED_EVENT = "run.resumed"
MAX_RESUME_ATTEMPTS = 3
_TERMINAL = ("done", "failed", "cancelled")

TOOL_IN_FLIGHT_REASON = "a tool execution was in flight when the process stopped"
RESUME_EXHAUSTED_REASON = "run was resumed {n} times after crashes; giving up"
NO_INPUT_REASON = "the run's tape holds no user message to resume from"


@dataclasses.dataclass(frozen=True, slots=True)
class RecoveryPlan:
    action: str  # resume | fail | finalize
    reason: str
    messages: tuple[Message, ...] = ()
    pending_tool_calls: tuple[ToolCall, ...] = ()
    in_flight_proposals: tuple[str, ...] = ()
    resume_attempt: int = 0  # the attempt a resume would be (1-based); resumes so far + 1
    resumes_so_far: int = 0
    turns_used: int = 0
    tool_calls_used: int = 0
    terminal_state: str | None = None
    observation: IncidentObservation | None = None


def _parts(event: Any) -> tuple[int, str, Mapping[str, Any]]:
    if isinstance(event, Mapping):
        seq, kind, payload = event.get("seq", 0), event["event_type"], event.get("payload")
    else:
        seq, kind, payload = event.seq, event.event_type, event.payload
    return int(seq or 0), str(kind), payload if isinstance(payload, Mapping) else {}


def _tool_calls(payload: Mapping[str, Any]) -> list[ToolCall]:
    calls = []
    for part in payload.get("content_parts") or ():
        if isinstance(part, Mapping) and part.get("kind") == "tool_call":
            args = part.get("arguments")
            calls.append(ToolCall(str(part.get("id") or ""), str(part.get("name") or ""),
                                  dict(args) if isinstance(args, Mapping) else {}))
    return calls


def _tool_message(payload: Mapping[str, Any], call_id: str) -> Message:
    content = orjson.dumps({
        "success": payload.get("success"), "tool_name": payload.get("tool_name"),
        "error": payload.get("error"), "output": payload.get("output_json"),
    }).decode()
    return Message("tool", content, tool_call_id=call_id)


def recovery_plan(run_tape_events: Iterable[Any], *, run_id: str | None = None,
                  max_resume_attempts: int = MAX_RESUME_ATTEMPTS) -> RecoveryPlan:
    """Decide how to recover a crashed run from its tape (``TapeEvent`` s or mappings
    with ``seq``, ``event_type`` and ``payload``)."""
    events = sorted((_parts(e) for e in run_tape_events), key=lambda e: e[0])
    messages: list[Message] = []
    resumes = turns = 0
    terminal: str | None = None
    unassigned: list[ToolCall] = []  # calls of the latest turn not yet proposed
    open_calls: dict[str, ToolCall] = {}  # call id -> call, awaiting a tool_result
    proposal_call: dict[str, ToolCall] = {}
    allowed: list[str] = []
    results: set[str] = set()
    for _seq, kind, payload in events:
        if kind == "status" and payload.get("kind") in _TERMINAL:
            terminal = str(payload["kind"])
        elif kind == RESUMED_EVENT:
            resumes += 1
        elif kind == "message.received":
            messages.append(Message("user", str(payload.get("text") or "")))
        elif kind == "provider_turn_output":
            turns += 1
            calls = _tool_calls(payload)
            messages.append(Message("assistant", str(payload.get("full_text") or ""),
                                    tool_calls=tuple(calls)))
            unassigned = list(calls)
            open_calls = {call.id: call for call in calls}
        elif kind == "tool_proposal":
            pid = str(payload.get("proposal_id"))
            wanted = payload.get("call_id")
            call = next((x for x in unassigned if x.id == wanted), None) if wanted else None
            if call is None and unassigned:
                call = unassigned[0]  # proposals follow the turn's calls in order
            if call is not None:
                unassigned.remove(call)
                proposal_call[pid] = call
        elif kind == "tool_decision" and payload.get("kind") == "allow":
            allowed.append(str(payload.get("proposal_id")))
        elif kind == "tool_result":
            pid = str(payload.get("proposal_id"))
            results.add(pid)
            call = proposal_call.get(pid)
            messages.append(_tool_message(payload, call.id if call else pid))
            if call is not None:
                open_calls.pop(call.id, None)

    common = {"resumes_so_far": resumes, "turns_used": turns, "tool_calls_used": len(allowed)}
    if terminal is not None:
        return RecoveryPlan(FINALIZE, f"tape already ended as {terminal}",
                            terminal_state=terminal, **common)
    in_flight = tuple(pid for pid in allowed if pid not in results)
    subject = run_id or "unknown"
    if in_flight:
        return RecoveryPlan(
            FAIL, TOOL_IN_FLIGHT_REASON, in_flight_proposals=in_flight, **common,
            observation=IncidentObservation(
                domain=inc.WATCHDOG, dedupe_key=f"crash_recovery:{subject}", severity="high",
                summary=f"run {subject} failed after a crash: {TOOL_IN_FLIGHT_REASON}",
                kind=inc.CRASH_TOOL_IN_FLIGHT, subject_kind="run", subject_id=run_id,
                facts={"in_flight_proposals": list(in_flight),
                       "tools": [proposal_call[p].name for p in in_flight if p in proposal_call]},
            ),
        )
    if resumes >= max_resume_attempts:
        reason = RESUME_EXHAUSTED_REASON.format(n=resumes)
        return RecoveryPlan(
            FAIL, reason, **common,
            observation=IncidentObservation(
                domain=inc.WATCHDOG, dedupe_key=f"crash_recovery:{subject}", severity="high",
                summary=f"run {subject} failed: {reason}", kind=inc.CRASH_RESUME_EXHAUSTED,
                subject_kind="run", subject_id=run_id, facts={"resumes": resumes},
            ),
        )
    if not any(m.role == "user" for m in messages):
        return RecoveryPlan(FAIL, NO_INPUT_REASON, **common)
    return RecoveryPlan(RESUME, f"resume attempt {resumes + 1} of {max_resume_attempts}",
                        messages=tuple(messages), pending_tool_calls=tuple(open_calls.values()),
                        resume_attempt=resumes + 1, **common)
