"""Helpers for the orchestrator tests: approvals, tape queries and hub recorders."""

from __future__ import annotations

import threading
from typing import Any

import palyra
from palyra.records import Approval, RunEvent, TapeEvent
from tests.support.wait import until

# The config of the brief: echo needs approval, sleep is allowed without asking.
TOOLS = {
    "tools": {
        "allowed": ["palyra.echo", "palyra.sleep"],
        "sensitive": ["palyra.echo"],
        "posture": {"palyra.sleep": "always_allow"},
    },
    "runs": {"approval_timeout_ms": 300, "tool_timeout_ms": 750, "max_tool_calls": 4},
}


def pending_approval(rt: palyra.Runtime, run_id: str) -> Approval:
    [approval] = until(lambda: rt.approvals.pending(run_id), what=f"an approval for {run_id}")
    return approval


def steps(rt: palyra.Runtime, run_id: str, event_type: str) -> list[TapeEvent]:
    return [e for e in rt.tape(run_id) if e.event_type == event_type]


def step(rt: palyra.Runtime, run_id: str, event_type: str) -> TapeEvent:
    [event] = steps(rt, run_id, event_type)
    return event


def tool_text(name: str, args: str) -> str:
    return f"please\n@tool {name} {args}"


class HoldAfterPublish:
    """Pause the publishing thread right after ``run_id`` publishes tape step ``seq``.

    Installed over ``rt.services.hub.publish``; lets a test put a subscriber exactly
    between the moment a step is announced and the moment it is flushed to the tape.
    """

    def __init__(self, hub: Any, run_id: str, seq: int) -> None:
        self._publish = hub.publish
        self.run_id, self.seq = run_id, seq
        self.published = threading.Event()
        self.release = threading.Event()

    def __call__(self, event: RunEvent) -> None:
        self._publish(event)
        if event.run_id == self.run_id and event.seq == self.seq:
            self.published.set()
            self.release.wait(5)


class Recorder:
    """Every event the hub publishes for one run, subscribed before the run is sent.

    Lets a test wait for a step the run has announced (e.g. the provider call or a tool
    is under way) without depending on when that step is flushed to the tape.
    """

    def __init__(self, rt: palyra.Runtime, run_id: str) -> None:
        self.run_id = run_id
        self.events: list[RunEvent] = []
        self._changed = threading.Condition()
        rt.services.hub.subscribe(run_id, self)

    def __call__(self, event: RunEvent) -> bool:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()
        return True

    def wait_for(self, event_type: str, *, timeout: float = 5.0) -> RunEvent:
        def found() -> list[RunEvent]:
            return [e for e in self.events if e.event_type == event_type]

        with self._changed:
            if not self._changed.wait_for(found, timeout):
                raise AssertionError(f"{self.run_id} announced no {event_type} within {timeout}s")
            return found()[0]

# Rows on the tape of a plain deterministic echo run (see test_golden_tape.py).
TAPE_ROWS = 12
