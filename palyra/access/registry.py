"""``rt.api_tokens``: create, list, revoke and verify API tokens.

Verification is on every authenticated request, so it must not cost a journal write,
and should not cost a database read either:

* **Cache.** Verified records are cached by digest. Only one process writes a state
  directory (the state lock), and every revocation goes through :meth:`revoke` here, so
  the cache is invalidated where the revocation happens: a revoked token fails on its
  very next request. Ids revoked by this process are also remembered in a set, so a
  verification that read the row just before the revocation committed cannot put the
  stale record back. Expiry is checked against the clock on every call, cached or not.
  Unknown digests are not cached (a flood of made-up tokens would evict real ones;
  the per-address rate limit bounds them instead).
* **last_used_at.** Kept in memory per token and written at most once per
  :data:`TOUCH_EVERY_MS` per token, by a fire-and-forget write that never blocks the
  caller (``send_touch``). :meth:`list` and :meth:`get` show the in-memory time, so
  they are exact while the runtime runs; a crash loses at most a minute of precision.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from palyra.access import tokens as t
from palyra.access.store import TokenQueries, insert_op, revoke_op, touch_op
from palyra.access.tokens import ApiToken
from palyra.clock import Clock
from palyra.errors import InvalidApiToken, NotFound
from palyra.ids import new_ulid
from palyra.journal.store import EventDraft, append_op

log = logging.getLogger("palyra.access")

TOUCH_EVERY_MS = 60_000
MAX_CACHED = 4096

Write = Callable[..., Any]  # JournalClient.write: apply ops, return the last value
SendTouch = Callable[[Callable[..., Any]], bool]  # queue one op without waiting


class ApiTokens:
    def __init__(self, queries: Callable[[], TokenQueries], write: Write, send_touch: SendTouch,
                 clock: Clock, draft: Callable[..., EventDraft]) -> None:
        self._draft = draft  # JournalClient.draft: a redacted, sized journal event
        self._queries = queries
        self._write = write
        self._send_touch = send_touch
        self._clock = clock
        self._lock = threading.Lock()  # the HTTP thread and pool threads verify at once
        self._cache: OrderedDict[str, ApiToken] = OrderedDict()
        self._revoked: set[str] = set()
        self._used: dict[str, int] = {}  # token_id -> last use seen (ms)
        self._touched: dict[str, int] = {}  # token_id -> last use handed to the journal

    # -- management ---------------------------------------------------------------------

    def create(self, name: str, scopes: Iterable[str], *, principal: str | None = None,
               expires_in_s: int | None = None,
               rate_limit_per_minute: int = t.DEFAULT_RATE_LIMIT_PER_MINUTE,
               ) -> tuple[str, ApiToken]:
        """A new token: ``(plaintext, record)``. The plaintext is not kept anywhere;
        this is the only time it is seen."""
        name = t.check_name(name)
        scopes = t.normalize_scopes(scopes)
        principal = t.check_principal(f"api:{name}" if principal is None else principal)
        rate = t.check_rate_limit(rate_limit_per_minute)
        expires_in = t.check_expires_in(expires_in_s)
        now = self._clock.now_ms()
        token = t.generate()
        record = ApiToken(
            token_id=new_ulid(now), name=name, prefix=t.display_prefix(token), scopes=scopes,
            principal=principal, rate_limit_per_minute=rate, created_at_unix_ms=now,
            expires_at_unix_ms=None if expires_in is None else now + expires_in * 1000,
            _sha256=t.digest(token),
        )
        # "id", not "token_id": the payload redaction takes any key saying "token" for a secret
        audit = {"id": record.token_id, "name": name, "prefix": record.prefix,
                 "scopes": list(scopes), "principal": principal, "rate_limit_per_minute": rate,
                 "expires_at_unix_ms": record.expires_at_unix_ms}
        self._write(self._audit("api_token.created", audit), insert_op(record))
        return token, record

    def list(self) -> list[ApiToken]:
        return [self._with_last_use(r) for r in self._queries().list()]

    def get(self, token_id: str) -> ApiToken:
        record = self._queries().get(token_id)
        if record is None:
            raise NotFound(f"API token {token_id} not found", details={"token_id": token_id})
        return self._with_last_use(record)

    def revoke(self, token_id: str) -> ApiToken:
        """Revoke now (durably, before returning); revoking twice keeps the first time."""
        def audit(record: ApiToken) -> EventDraft:
            return self._draft("api_token.revoked", {"id": record.token_id, "name": record.name},
                               actor="admin")

        record = self._write(revoke_op(token_id, self._clock.now_ms(), audit))
        if record is None:
            raise NotFound(f"API token {token_id} not found", details={"token_id": token_id})
        with self._lock:
            self._revoked.add(token_id)
            self._cache.pop(record._sha256, None)
        return self._with_last_use(record)

    def _audit(self, kind: str, payload: dict[str, Any]) -> Callable[..., Any]:
        # an audit event in the same transaction as the row: both or neither
        return append_op(self._draft(kind, payload, actor="admin"))

    # -- verification -------------------------------------------------------------------

    def verify(self, token: str, scope: str | None = None) -> ApiToken:
        """The token's record if it is valid (and holds ``scope``), else
        :class:`~palyra.errors.InvalidApiToken` or :class:`~palyra.errors.MissingScope`."""
        record = self.verify_cached(token, scope)
        if record is not None:
            return record
        sha = t.digest(token)
        found = self._queries().by_digest(sha) if t.well_formed(token) else None
        if found is not None:
            with self._lock:
                if found.token_id not in self._revoked:
                    self._remember(sha, found)
        return self._check(found, sha, scope)

    def verify_cached(self, token: str, scope: str | None = None) -> ApiToken | None:
        """Like :meth:`verify` without touching the database: None when the token is not
        in the cache (then call :meth:`verify`). Cheap enough for an event loop."""
        sha = t.digest(token)
        with self._lock:
            record = self._cache.get(sha)
            if record is None:
                return None
            self._cache.move_to_end(sha)
        return self._check(record, sha, scope)

    def _check(self, record: ApiToken | None, sha: str, scope: str | None) -> ApiToken:
        now = self._clock.now_ms()
        if (record is not None and record.revoked_at_unix_ms is None
                and record.token_id in self._revoked):  # read just before the revocation
            record = dataclasses.replace(record, revoked_at_unix_ms=now)
        try:
            record = t.authorize(record, sha, scope, now)
        except InvalidApiToken as exc:
            log.info("API token rejected (%s)", getattr(exc, "reason", "invalid"))
            raise
        self._note_use(record.token_id, now)
        return record

    def _remember(self, sha: str, record: ApiToken) -> None:
        self._cache[sha] = record
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)

    # -- last use -----------------------------------------------------------------------

    def _note_use(self, token_id: str, now: int) -> None:
        with self._lock:
            self._used[token_id] = max(now, self._used.get(token_id, 0))
            if now - self._touched.get(token_id, 0) < TOUCH_EVERY_MS:
                return
            self._touched[token_id] = now
        if not self._send_touch(touch_op({token_id: now})):
            with self._lock:  # the journal is away: try again on a later use
                self._touched.pop(token_id, None)

    def flush(self, timeout: float = 5.0) -> None:
        """Write every in-memory last-use time now (at a clean stop)."""
        with self._lock:
            pending = {k: v for k, v in self._used.items() if v > self._touched.get(k, 0)}
        if pending:
            self._write(touch_op(pending), timeout=timeout)
            with self._lock:
                self._touched.update(pending)

    def _with_last_use(self, record: ApiToken) -> ApiToken:
        with self._lock:
            seen = self._used.get(record.token_id)
        if seen is None or (record.last_used_at_unix_ms or 0) >= seen:
            return record
        return dataclasses.replace(record, last_used_at_unix_ms=seen)
