"""DDL of the API token table (spec 11). Not applied here: it is journal migration 8.

``token_sha256`` is unique and indexed: verification looks a presented token up by its
digest. The plaintext has no column. Rows are never deleted: a revoked token stays, so
its id, name and revocation time remain visible (and its digest can never be reused).
"""

from __future__ import annotations

SCHEMA_SQL = """
CREATE TABLE api_tokens (
    token_ulid TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    token_prefix TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    scopes_json TEXT NOT NULL,
    principal TEXT NOT NULL,
    rate_limit_per_minute INTEGER NOT NULL CHECK (rate_limit_per_minute > 0),
    created_at_unix_ms INTEGER NOT NULL,
    expires_at_unix_ms INTEGER,
    revoked_at_unix_ms INTEGER,
    last_used_at_unix_ms INTEGER
);
CREATE INDEX api_tokens_created ON api_tokens(created_at_unix_ms);
CREATE TRIGGER api_tokens_no_delete BEFORE DELETE ON api_tokens
BEGIN SELECT RAISE(ABORT, 'api_tokens rows are never deleted'); END;
CREATE TRIGGER api_tokens_no_unrevoke BEFORE UPDATE OF revoked_at_unix_ms ON api_tokens
WHEN OLD.revoked_at_unix_ms IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a revoked api token stays revoked'); END;
"""
