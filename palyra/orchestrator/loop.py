"""Agent-loop limits and termination reasons (spec 1.5)."""

from __future__ import annotations

import dataclasses

FINAL_ANSWER = "final_answer"
MAX_TURNS = "max_turns"
MAX_TOOL_CALLS = "max_tool_calls"
WALL_CLOCK = "wall_clock"
CANCELLATION = "cancellation"
APPROVAL_DENIED = "approval_denied"
PROVIDER_ERROR = "provider_error"
RUNTIME_FAILURE = "runtime_failure"


@dataclasses.dataclass(frozen=True, slots=True)
class LoopLimits:
    max_tool_calls: int = 4
    wall_clock_ms: int = 120_000
    approval_timeout_ms: int = 60_000
    tool_timeout_ms: int = 750

    @property
    def max_model_turns(self) -> int:
        return max(1, min(self.max_tool_calls + 1, 8))
