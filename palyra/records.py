"""The record types a caller of the embedding API sees (wire names kept from upstream)."""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

TERMINAL_STATES = frozenset({"done", "failed", "cancelled"})


@dataclasses.dataclass(frozen=True, slots=True)
class Identity:
    """Who is talking: sessions are immutable per (principal, device_id, channel)."""

    principal: str
    device_id: str = "local"
    channel: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    session_key: str
    session_label: str | None
    principal: str
    device_id: str
    channel: str | None
    created_at_unix_ms: int
    updated_at_unix_ms: int
    last_run_id: str | None = None
    archived_at_unix_ms: int | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.principal, self.device_id, self.channel)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    def plus(self, prompt: int, completion: int) -> Usage:
        p, c = self.prompt_tokens + prompt, self.completion_tokens + completion
        return Usage(p, c, p + c)


@dataclasses.dataclass(frozen=True, slots=True)
class Run:
    run_id: str
    session_id: str
    state: str
    created_at_unix_ms: int
    updated_at_unix_ms: int
    started_at_unix_ms: int | None = None
    completed_at_unix_ms: int | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    usage: Usage = Usage()
    last_error: str | None = None
    termination_reason: str | None = None
    reply_text: str | None = None
    model_id: str | None = None
    provider_id: str | None = None
    origin_kind: str = "manual"
    origin_run_id: str | None = None
    parent_run_id: str | None = None
    triggered_by_principal: str | None = None
    tape_events: int = 0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def result(self) -> RunResult:
        return RunResult(self.run_id, self.session_id, self.state, self.reply_text, self.usage,
                         self.last_error, self.termination_reason)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class TapeEvent:
    run_id: str
    seq: int
    event_type: str
    payload: dict[str, Any]
    created_at_unix_ms: int
    hash: str | None = None

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> TapeEvent:
        run_id, seq, event_type, payload_json, created, digest = row
        return cls(run_id, seq, event_type, orjson.loads(payload_json), created, digest)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class RunEvent:
    """A live event of a run: a tape step, or a transient streamed token (seq None)."""

    run_id: str
    event_type: str
    payload: dict[str, Any]
    seq: int | None = None

    @property
    def terminal(self) -> bool:
        return self.event_type == "status" and self.payload.get("kind") in TERMINAL_STATES


@dataclasses.dataclass(frozen=True, slots=True)
class RunResult:
    run_id: str
    session_id: str
    state: str
    reply_text: str | None
    usage: Usage
    last_error: str | None
    termination_reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Approval:
    approval_id: str
    run_id: str
    session_id: str
    principal: str
    device_id: str
    channel: str | None
    subject_type: str
    subject_id: str
    proposal_id: str | None
    request_summary: str
    prompt: dict[str, Any]
    requested_at_unix_ms: int
    expires_at_unix_ms: int | None
    decision: str | None = None
    decision_scope: str | None = None
    decision_reason: str | None = None
    decision_scope_ttl_ms: int | None = None
    resolved_at_unix_ms: int | None = None

    @property
    def pending(self) -> bool:
        return self.decision is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
