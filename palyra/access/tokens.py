"""API tokens (spec 11, AccessRegistry): format, hashing, scopes and the checks.

Pure: no I/O, no clock of its own. A token is ``palyra_<base64url of 32 random bytes>``
(50 characters). Only its SHA-256 (hex) and a short display prefix are ever stored; the
plaintext exists once, in the answer to ``create``.

Scopes are a small fixed catalogue, one per thing a token can do today:

* ``models.read``: ``GET /v1/models``
* ``chat.create``: ``POST /v1/chat/completions``

``compat.*`` is accepted on input as shorthand for every OpenAI-compatible scope
(upstream's role grouping) and is stored expanded, so a token never silently gains a
scope added to the catalogue later.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from typing import Any

from palyra.errors import InvalidApiToken, InvalidInput, MissingScope
from palyra.validation import is_int

TOKEN_PREFIX = "palyra_"
TOKEN_BYTES = 32
DISPLAY_PREFIX_LEN = 12  # "palyra_" + 5 characters: enough to tell tokens apart in a list
DEFAULT_RATE_LIMIT_PER_MINUTE = 120
MAX_RATE_LIMIT_PER_MINUTE = 1_000_000
MAX_EXPIRES_IN_S = 100 * 366 * 86_400  # a century: beyond it, "never" says it better

# In the state directory. surfaces/http/auth.py creates it; the CLI, doctor and the
# support bundle's secret scan read it, and they cannot import from surfaces.
ADMIN_TOKEN_FILE = "admin.token"

MODELS_READ = "models.read"
CHAT_CREATE = "chat.create"
SCOPES: tuple[str, ...] = (MODELS_READ, CHAT_CREATE)
SCOPE_GROUPS: dict[str, tuple[str, ...]] = {"compat.*": (MODELS_READ, CHAT_CREATE)}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# base64url of 32 bytes is exactly 43 characters without padding
_TOKEN_SHAPE = re.compile(r"palyra_[A-Za-z0-9_-]{43}")


@dataclasses.dataclass(frozen=True)
class ApiToken:
    """An API token's record (never its plaintext)."""

    token_id: str
    name: str
    prefix: str
    scopes: tuple[str, ...]
    principal: str
    rate_limit_per_minute: int
    created_at_unix_ms: int
    expires_at_unix_ms: int | None = None
    revoked_at_unix_ms: int | None = None
    last_used_at_unix_ms: int | None = None
    # the digest is what verification compares; kept out of every record a caller sees
    _sha256: str = dataclasses.field(default="", repr=False, compare=False)

    def state(self, now_ms: int) -> str:
        if self.revoked_at_unix_ms is not None:
            return "revoked"
        if self.expires_at_unix_ms is not None and now_ms >= self.expires_at_unix_ms:
            return "expired"
        return "active"

    def to_record(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if not f.name.startswith("_")}


def generate() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_PREFIX_LEN]


def looks_like_token(value: str) -> bool:
    """Shaped like one of ours (says nothing about whether it is valid)."""
    return value.startswith(TOKEN_PREFIX)


def well_formed(value: str) -> bool:
    return _TOKEN_SHAPE.fullmatch(value) is not None


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput("name: 1-64 characters of letters, digits, '.', '_' or '-', "
                           "starting with a letter or digit", details={"field": "name"})
    return name


def check_principal(principal: Any) -> str:
    if (not isinstance(principal, str) or not principal.strip() or len(principal) > 256
            or any(ord(c) < 32 for c in principal)):
        raise InvalidInput("principal: 1-256 printable characters", details={"field": "principal"})
    return principal


def normalize_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    """Expand groups, reject unknown scopes, drop duplicates; catalogue order."""
    if isinstance(scopes, str):
        scopes = (scopes,)
    wanted: set[str] = set()
    for scope in scopes:
        if not isinstance(scope, str):
            raise InvalidInput("scopes: every scope is a string", details={"field": "scopes"})
        if scope in SCOPE_GROUPS:
            wanted.update(SCOPE_GROUPS[scope])
        elif scope in SCOPES:
            wanted.add(scope)
        else:
            known = ", ".join((*SCOPES, *SCOPE_GROUPS))
            raise InvalidInput(f"scopes: unknown scope {scope!r} (known: {known})",
                               details={"field": "scopes", "scope": str(scope)})
    if not wanted:
        raise InvalidInput("scopes: at least one scope is required", details={"field": "scopes"})
    return tuple(s for s in SCOPES if s in wanted)


def check_rate_limit(value: Any) -> int:
    if not is_int(value) or not 1 <= value <= MAX_RATE_LIMIT_PER_MINUTE:
        raise InvalidInput(f"rate_limit_per_minute: an integer from 1 to "
                           f"{MAX_RATE_LIMIT_PER_MINUTE}", details={"field": "rate_limit_per_minute"})
    return value


def check_expires_in(value: Any) -> int | None:
    if value is None:
        return None
    if not is_int(value) or not 1 <= value <= MAX_EXPIRES_IN_S:
        raise InvalidInput(f"expires_in_s: a number of seconds from 1 to {MAX_EXPIRES_IN_S}",
                           details={"field": "expires_in_s"})
    return value


def authorize(record: ApiToken | None, presented_digest: str, scope: str | None,
              now_ms: int) -> ApiToken:
    """The token's record if it may be used (for ``scope``, when given), else raise.

    Unknown, revoked and expired all raise the same :class:`InvalidApiToken`; the
    reason is kept on the exception (``.reason``) for the operator's log only.
    """
    if record is None or not hmac.compare_digest(record._sha256, presented_digest):
        raise _invalid("unknown")
    state = record.state(now_ms)
    if state != "active":
        raise _invalid(state)
    if scope is not None:
        require_scope(record, scope)
    return record


def require_scope(record: ApiToken, scope: str) -> None:
    if scope not in record.scopes:
        raise MissingScope(f"this API token lacks the scope {scope!r}",
                           details={"scope": scope, "token_id": record.token_id})


def _invalid(reason: str) -> InvalidApiToken:
    exc = InvalidApiToken("invalid, revoked or expired API token")
    exc.reason = reason  # type: ignore[attr-defined]
    return exc
