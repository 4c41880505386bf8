"""DDL of the learning tables (spec 6). Not applied here: add it as a migration.

``learning_candidates`` is unique per (owner, scope, kind, dedupe key): re-extracting the
same candidate updates it instead of adding a row. ``learning_candidate_history`` is
append-only: one row per creation and per review. ``learning_preferences`` holds the
accepted (or auto-applied) preferences a provider input may include.
"""

from __future__ import annotations

SCHEMA_SQL = """
CREATE TABLE learning_candidates (
    candidate_ulid TEXT PRIMARY KEY,
    candidate_kind TEXT NOT NULL CHECK (candidate_kind IN (
        'durable_fact', 'preference', 'procedure', 'patch_skill', 'patch_procedure',
        'write_support_file')),
    session_ulid TEXT NOT NULL,
    run_ulid TEXT,
    owner_principal TEXT NOT NULL,
    device_id TEXT NOT NULL,
    channel TEXT,
    scope_kind TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    status TEXT NOT NULL,
    auto_applied INTEGER NOT NULL DEFAULT 0,
    confidence REAL NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    risk_level TEXT NOT NULL,
    title TEXT NOT NULL,
    summary TEXT NOT NULL,
    target_path TEXT,
    dedupe_key TEXT NOT NULL,
    content_json TEXT NOT NULL,
    provenance_json TEXT NOT NULL,
    source_task_ulid TEXT,
    reviewed_at_unix_ms INTEGER,
    reviewed_by TEXT,
    last_action_summary TEXT,
    last_action_payload_json TEXT,
    created_at_unix_ms INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL,
    UNIQUE (owner_principal, scope_kind, scope_id, candidate_kind, dedupe_key)
);
CREATE INDEX learning_candidates_status
    ON learning_candidates(owner_principal, status, created_at_unix_ms);
CREATE INDEX learning_candidates_session ON learning_candidates(session_ulid, created_at_unix_ms);

CREATE TABLE learning_candidate_history (
    history_ulid TEXT PRIMARY KEY,
    candidate_ulid TEXT NOT NULL REFERENCES learning_candidates(candidate_ulid),
    from_status TEXT,
    to_status TEXT NOT NULL,
    actor TEXT NOT NULL,
    action_summary TEXT,
    action_payload_json TEXT,
    created_at_unix_ms INTEGER NOT NULL
);
CREATE INDEX learning_candidate_history_candidate
    ON learning_candidate_history(candidate_ulid, created_at_unix_ms);
CREATE TRIGGER learning_candidate_history_no_update BEFORE UPDATE ON learning_candidate_history
BEGIN SELECT RAISE(ABORT, 'learning_candidate_history is append-only'); END;
CREATE TRIGGER learning_candidate_history_no_delete BEFORE DELETE ON learning_candidate_history
BEGIN SELECT RAISE(ABORT, 'learning_candidate_history is append-only'); END;

CREATE TABLE learning_preferences (
    preference_ulid TEXT PRIMARY KEY,
    owner_principal TEXT NOT NULL,
    scope_kind TEXT NOT NULL,
    scope_id TEXT NOT NULL,
    preference_key TEXT NOT NULL,
    value TEXT NOT NULL,
    confidence REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'retired')),
    source_candidate_ulid TEXT REFERENCES learning_candidates(candidate_ulid),
    created_at_unix_ms INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL,
    UNIQUE (owner_principal, scope_kind, scope_id, preference_key, value)
);
CREATE INDEX learning_preferences_owner
    ON learning_preferences(owner_principal, status, preference_key);
"""
