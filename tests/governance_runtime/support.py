"""Helpers for the governance tests that drive real runs.

Token arithmetic: the deterministic provider counts the whitespace words of every
message as prompt tokens and truncates its echo to ``max_tokens`` words, which is
``governance.max_completion_tokens``. With a prompt of ``P`` words and a cap ``M <= P``
a run (in a fresh session, so no history is replayed) uses exactly ``P + M`` tokens,
which is also what it reserves.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pykka

import palyra
from palyra.records import Approval, TapeEvent
from tests.support.wait import until

T = TypeVar("T")

TEXT = "alpha beta gamma delta"  # P = 4 words
CAP = 4  # M: governance.max_completion_tokens
PER_RUN = 8  # P + M: what one run reserves and uses

BASE: dict[str, dict[str, Any]] = {
    "supervision": {"probe_interval": 0.1, "shutdown_timeout": 1.0},
    "governance": {"max_completion_tokens": CAP},
}
CHAOS_SUPERVISION: dict[str, Any] = {
    "probe_interval": 0.05,
    "max_restarts": 1000,
    "max_seconds": 1,
    "address_retry_for": 5,
    "shutdown_timeout": 1.0,
}
TERMINAL = ("done", "failed", "cancelled")
BLOCKED_ERROR = "usage budget hard limit blocked"


def policy(**fields: Any) -> dict[str, Any]:
    """A global, token, rolling-24h, blocking policy mapping, with ``fields`` on top."""
    return {"scope_kind": "global", "metric_kind": "total_tokens", "interval_kind": "rolling_24h",
            "action": "block", **fields}


def steps(rt: palyra.Runtime, run_id: str, event_type: str) -> list[TapeEvent]:
    return [e for e in rt.tape(run_id) if e.event_type == event_type]


def step(rt: palyra.Runtime, run_id: str, event_type: str) -> TapeEvent:
    found = steps(rt, run_id, event_type)
    assert len(found) == 1, f"{run_id}: expected one {event_type}, got {len(found)}"
    return found[0]


def tape_usage(rt: palyra.Runtime, run_id: str) -> tuple[int, int, int]:
    """(prompt, completion, total) tokens summed over the run's provider_turn_output steps."""
    prompt = completion = total = 0
    for event in steps(rt, run_id, "provider_turn_output"):
        usage = event.payload["usage"]
        prompt += usage["prompt_tokens"]
        completion += usage["completion_tokens"]
        total += usage["total_tokens"]
    return prompt, completion, total


def pending_override(rt: palyra.Runtime, run_id: str, timeout: float = 5.0) -> Approval:
    """The budget override approval that ``run_id`` waits on, once the run has taped its
    request too (the approval row commits first; the run's step follows the budget's reply)."""
    found = until(lambda: rt.approvals.pending(run_id), timeout=timeout,
                  what=f"a pending override approval of {run_id}")
    until(lambda: steps(rt, run_id, "budget.override_requested"), timeout=timeout,
          what=f"{run_id} waiting on its override")
    assert len(found) == 1, found
    return found[0]


def retrying(call: Callable[[], T], *, timeout: float = 10.0) -> T:
    """``call()``, retried while the actor it addresses is between incarnations."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except (palyra.ActorUnavailable, pykka.ActorDeadError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)
