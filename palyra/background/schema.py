"""DDL of the background task table (spec 4). Not applied here: add it as a migration.

Column naming follows the journal schema (``*_ulid`` columns, ``*_unix_ms`` times); the
record fields of :class:`palyra.background.tasks.BackgroundTask` use ``*_id``.
JSON columns hold compact JSON text (``delegation_json``, ``payload_json`` …).
"""

from __future__ import annotations

SCHEMA_SQL = """
CREATE TABLE orchestrator_background_tasks (
    task_ulid TEXT PRIMARY KEY,
    task_kind TEXT NOT NULL CHECK (task_kind IN (
        'background_prompt', 'delegation_prompt', 'summary', 'recall_search', 'classification',
        'extraction', 'vision', 'attachment_derivation', 'attachment_recompute',
        'post_run_reflection')),
    session_ulid TEXT NOT NULL,
    parent_run_ulid TEXT,
    target_run_ulid TEXT,
    queued_input_ulid TEXT,
    owner_principal TEXT NOT NULL,
    device_id TEXT NOT NULL,
    channel TEXT,
    state TEXT NOT NULL CHECK (state IN (
        'queued', 'running', 'paused', 'succeeded', 'failed', 'cancel_requested', 'cancelled',
        'expired')),
    priority INTEGER NOT NULL DEFAULT 0,
    attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
    max_attempts INTEGER NOT NULL DEFAULT 3,
    budget_tokens INTEGER NOT NULL DEFAULT 0 CHECK (budget_tokens >= 0),
    delegation_json TEXT,
    not_before_unix_ms INTEGER,
    expires_at_unix_ms INTEGER,
    notification_target_json TEXT,
    input_text TEXT,
    payload_json TEXT,
    last_error TEXT,
    result_json TEXT,
    created_at_unix_ms INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL,
    started_at_unix_ms INTEGER,
    completed_at_unix_ms INTEGER
);
CREATE INDEX orchestrator_background_tasks_poll
    ON orchestrator_background_tasks(state, priority DESC, created_at_unix_ms);
CREATE INDEX orchestrator_background_tasks_session
    ON orchestrator_background_tasks(session_ulid, created_at_unix_ms);
CREATE INDEX orchestrator_background_tasks_parent
    ON orchestrator_background_tasks(parent_run_ulid);
CREATE INDEX orchestrator_background_tasks_target
    ON orchestrator_background_tasks(target_run_ulid);
"""
