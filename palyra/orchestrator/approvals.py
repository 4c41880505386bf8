"""Approval decisions: scopes, the decision cache and the prompt shown to an approver."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import threading
from typing import Any

import orjson

from palyra.errors import InvalidInput
from palyra.records import Approval
from palyra.validation import is_int

SCOPES = ("once", "session", "timeboxed")
CACHE_CAPACITY = 1024
SUMMARY_LIMIT = 1024
READ_ONLY_COMMANDS = frozenset(
    {"cat", "find", "grep", "head", "id", "ls", "pwd", "rg", "stat", "tail", "uname", "wc", "whoami"}
)


def validate_scope(scope: str, ttl_ms: int | None) -> None:
    if scope not in SCOPES:
        raise InvalidInput(f"decision scope must be one of {SCOPES}, got {scope!r}", details={"field": "scope"})
    if ttl_ms is not None and (not is_int(ttl_ms) or ttl_ms <= 0):
        raise InvalidInput("ttl_ms must be a positive integer", details={"field": "ttl_ms"})
    if scope == "timeboxed" and ttl_ms is None:
        raise InvalidInput("a timeboxed decision needs ttl_ms", details={"field": "ttl_ms"})


def cache_key(principal: str, device_id: str, channel: str | None, session_id: str, subject_id: str) -> str:
    return f"principal={principal}|device_id={device_id}|channel={channel or ''}|session={session_id}|subject={subject_id}"


@dataclasses.dataclass(frozen=True, slots=True)
class CachedDecision:
    allowed: bool
    scope: str
    approval_id: str
    expires_at_ms: int | None


class ApprovalCache:
    """Session- and time-scoped decisions (spec 1.6 step 4), rebuilt from the approvals
    table at gateway start, so a restart forgets nothing (upstream quirk 13.9).
    Thread-safe: the gateway writes, run actors read."""

    def __init__(self, capacity: int = CACHE_CAPACITY) -> None:
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[str, CachedDecision] = collections.OrderedDict()
        self.capacity = capacity

    def remember(self, approval: Approval) -> None:
        if approval.decision not in ("allow", "deny") or approval.decision_scope not in ("session", "timeboxed"):
            return
        ttl = approval.decision_scope_ttl_ms
        if approval.decision_scope == "timeboxed" and not ttl:
            return
        expires = (approval.resolved_at_unix_ms or 0) + ttl if ttl else None
        key = cache_key(approval.principal, approval.device_id, approval.channel, approval.session_id,
                        approval.subject_id)
        with self._lock:
            self._entries[key] = CachedDecision(approval.decision == "allow", approval.decision_scope,
                                                approval.approval_id, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def lookup(self, key: str, now_ms: int) -> CachedDecision | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at_ms is not None and entry.expires_at_ms <= now_ms:
                del self._entries[key]
                return None
            return entry

    def forget_session(self, session_id: str) -> None:
        marker = f"|session={session_id}|"
        with self._lock:
            for key in [k for k in self._entries if marker in k]:
                del self._entries[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def request_summary(tool_name: str, arguments: dict[str, Any]) -> str:
    text = orjson.dumps({"tool": tool_name, "input": arguments}, option=orjson.OPT_SORT_KEYS).decode()
    if len(text.encode()) > SUMMARY_LIMIT:
        text = text.encode()[: SUMMARY_LIMIT - 3].decode(errors="ignore") + "..."
    return text


def policy_snapshot(tool_name: str, policy_text: str) -> dict[str, Any]:
    return {
        "policy_id": "tool_call_policy.v1",
        "policy_hash": hashlib.sha256(policy_text.encode()).hexdigest(),
        "summary": f"action=tool.execute resource=tool:{tool_name} approval_required=true deny_by_default=true",
    }


def approval_prompt(tool_name: str, arguments: dict[str, Any], timeout_s: int) -> dict[str, Any]:
    risk = "high"
    if tool_name == "palyra.process.run":
        command = str(arguments.get("command", "")).split(" ", 1)[0]
        if command in READ_ONLY_COMMANDS:
            risk = "medium"
    return {
        "title": f"Approve {tool_name}",
        "risk_level": risk,
        "options": [
            {"id": "allow_once", "scope": "once", "default": True},
            {"id": "allow_session", "scope": "session"},
            {"id": "deny_once", "scope": "once"},
        ],
        "timeout_seconds": timeout_s,
        "details": {"input": arguments},
    }
