"""Storage of API tokens: write ops for the journal writer, reads on a caller's connection."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import apsw
import orjson

from palyra.access.tokens import ApiToken
from palyra.journal.store import Txn

Op = Callable[[Txn], Any]

_COLS = (
    "token_ulid, name, token_prefix, scopes_json, principal, rate_limit_per_minute,"
    " created_at_unix_ms, expires_at_unix_ms, revoked_at_unix_ms, last_used_at_unix_ms,"
    " token_sha256"
)


def _token(row: Sequence[Any]) -> ApiToken:
    (token_id, name, prefix, scopes, principal, rate, created, expires, revoked, used,
     sha256) = row
    return ApiToken(token_id, name, prefix, tuple(orjson.loads(scopes)), principal, rate,
                    created, expires, revoked, used, sha256)


def _read(conn: apsw.Connection, token_id: str) -> ApiToken | None:
    row = conn.execute(f"SELECT {_COLS} FROM api_tokens WHERE token_ulid = ?",
                       (token_id,)).fetchone()
    return _token(row) if row else None


def insert_op(token: ApiToken) -> Op:
    def op(txn: Txn) -> ApiToken:
        txn.conn.execute(
            f"INSERT INTO api_tokens({_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (token.token_id, token.name, token.prefix, orjson.dumps(list(token.scopes)).decode(),
             token.principal, token.rate_limit_per_minute, token.created_at_unix_ms,
             token.expires_at_unix_ms, None, None, token._sha256),
        )
        return token

    return op


def revoke_op(token_id: str, now_ms: int, audit: Callable[[ApiToken], Any]) -> Op:
    """Revoke (idempotent: a second revoke keeps the first time); None if unknown.
    ``audit(record)`` returns the journal event of a revocation that took effect."""

    def op(txn: Txn) -> ApiToken | None:
        txn.conn.execute(
            "UPDATE api_tokens SET revoked_at_unix_ms = ?"
            " WHERE token_ulid = ? AND revoked_at_unix_ms IS NULL", (now_ms, token_id))
        changed = txn.conn.changes() > 0
        record = _read(txn.conn, token_id)
        if changed and record is not None:
            txn.append_event(audit(record))
        return record

    return op


def touch_op(last_used: dict[str, int]) -> Op:
    """Record last use times (never moving one backwards)."""
    rows = [(ms, token_id) for token_id, ms in last_used.items()]

    def op(txn: Txn) -> None:
        txn.conn.executemany(
            "UPDATE api_tokens SET last_used_at_unix_ms = max(coalesce(last_used_at_unix_ms, 0), ?)"
            " WHERE token_ulid = ?", rows)

    return op


class TokenQueries:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def by_digest(self, sha256: str) -> ApiToken | None:
        row = self.conn.execute(f"SELECT {_COLS} FROM api_tokens WHERE token_sha256 = ?",
                                (sha256,)).fetchone()
        return _token(row) if row else None

    def get(self, token_id: str) -> ApiToken | None:
        return _read(self.conn, token_id)

    def list(self) -> list[ApiToken]:
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM api_tokens ORDER BY created_at_unix_ms DESC, token_ulid DESC")
        return [_token(row) for row in rows]
