"""Session resolution (spec 1.1): id / key / label selectors and identity rules."""

from __future__ import annotations

import dataclasses
from typing import Protocol

from palyra.errors import Conflict, IdentityMismatch, InvalidInput, NotFound
from palyra.ids import is_ulid
from palyra.records import Identity, Session

MAX_KEY_CHARS = 256
MAX_LABEL_CHARS = 256


@dataclasses.dataclass(frozen=True, slots=True)
class SessionSelector:
    session_id: str | None = None
    session_key: str | None = None
    session_label: str | None = None
    require_existing: bool = False
    reset_session: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Resolution:
    session: Session
    created: bool
    reset_applied: bool = False
    label_changed: bool = False


class SessionLookup(Protocol):
    def session_by_id(self, session_id: str) -> Session | None: ...
    def session_by_key(self, session_key: str) -> Session | None: ...
    def session_by_label(self, label: str, identity: Identity) -> Session | None: ...


def _clean(value: str | None, what: str, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be a string", details={"field": what})
    value = value.strip()
    if not value:
        return None
    if len(value) > limit:
        raise InvalidInput(f"{what} is longer than {limit} characters", details={"field": what})
    if any(ord(c) < 32 for c in value):
        raise InvalidInput(f"{what} contains control characters", details={"field": what})
    return value


def validate_identity(identity: Identity) -> Identity:
    principal = _clean(identity.principal, "principal", 256)
    device = _clean(identity.device_id, "device_id", 256)
    channel = _clean(identity.channel, "channel", 256)
    if principal is None:
        raise InvalidInput("principal is required (e.g. 'user:local')", details={"field": "principal"})
    if device is None:
        raise InvalidInput("device_id is required", details={"field": "device_id"})
    return Identity(principal, device, channel)


def resolve_session(
    lookup: SessionLookup,
    selector: SessionSelector,
    identity: Identity,
    *,
    now_ms: int,
    new_id: str,
) -> Resolution:
    session_id = _clean(selector.session_id, "session_id", 26)
    key = _clean(selector.session_key, "session_key", MAX_KEY_CHARS)
    label = _clean(selector.session_label, "session_label", MAX_LABEL_CHARS)
    if session_id is not None and not is_ulid(session_id):
        raise InvalidInput("session_id must be a canonical ULID", details={"field": "session_id"})

    by_id = lookup.session_by_id(session_id) if session_id else None
    by_key = lookup.session_by_key(key) if key else None
    if by_id and by_key and by_id.session_id != by_key.session_id:
        raise InvalidInput("session_id and session_key resolve to different sessions")
    if by_id and key and by_id.session_key != key:
        raise InvalidInput("session_id and session_key resolve to different sessions")
    if by_key and session_id and by_key.session_id != session_id:
        raise InvalidInput("session_id and session_key resolve to different sessions")
    found = by_id or by_key
    if found is None and session_id is None and key is None and label is not None:
        found = lookup.session_by_label(label, identity)

    if found is not None:
        if found.identity != identity:
            raise IdentityMismatch(
                "session belongs to another identity (sessions are immutable per principal, "
                "device and channel)",
                details={"session_id": found.session_id},
            )
        if found.archived_at_unix_ms is not None:
            raise Conflict(
                f"session {found.session_id} is archived", details={"session_id": found.session_id}
            )
        label_changed = label is not None and label != found.session_label
        updated = dataclasses.replace(
            found,
            session_label=label if label is not None else found.session_label,
            updated_at_unix_ms=now_ms,
            last_run_id=None if selector.reset_session else found.last_run_id,
        )
        return Resolution(updated, False, selector.reset_session, label_changed)

    if selector.require_existing:
        what = session_id or key or label or "(no selector)"
        raise NotFound(f"session {what} not found", details={"selector": what})
    sid = session_id or new_id
    return Resolution(
        Session(
            session_id=sid,
            session_key=key or sid,
            session_label=label,
            principal=identity.principal,
            device_id=identity.device_id,
            channel=identity.channel,
            created_at_unix_ms=now_ms,
            updated_at_unix_ms=now_ms,
        ),
        created=True,
    )


def archived_key(session_id: str, now_ms: int) -> str:
    """Archiving frees the key for reuse (spec 1.1)."""
    return f"archived:{session_id}:{now_ms}"
