"""DDL of the self-healing tables (spec 5). Not applied here: add it as a migration.

Upstream kept heartbeats, incidents and remediation attempts in memory (quirk 13.9): a
restart forgot every stuck run. Here they are rows, so the watchdog picks up where the
crashed process stopped. History and attempts are ring-buffered by the queries (128).
"""

from __future__ import annotations

SCHEMA_SQL = """
CREATE TABLE work_heartbeats (
    heartbeat_key TEXT PRIMARY KEY,
    domain TEXT NOT NULL CHECK (domain IN ('run', 'background_task', 'approval')),
    subject_id TEXT NOT NULL,
    summary TEXT NOT NULL DEFAULT '',
    session_ulid TEXT,
    first_beat_unix_ms INTEGER NOT NULL,
    last_beat_unix_ms INTEGER NOT NULL,
    UNIQUE (domain, subject_id)
);
CREATE INDEX work_heartbeats_last_beat ON work_heartbeats(domain, last_beat_unix_ms);

CREATE TABLE runtime_incidents (
    incident_id TEXT PRIMARY KEY,
    domain TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL CHECK (severity IN ('low', 'medium', 'high', 'critical')),
    state TEXT NOT NULL CHECK (state IN ('open', 'remediating', 'resolved')),
    summary TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    dedupe_key TEXT NOT NULL,
    subject_kind TEXT,
    subject_id TEXT,
    facts_json TEXT NOT NULL DEFAULT '{}',
    remediation_json TEXT,
    occurrences INTEGER NOT NULL DEFAULT 1,
    created_at_unix_ms INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL,
    resolved_at_unix_ms INTEGER,
    UNIQUE (domain, dedupe_key)
);
CREATE INDEX runtime_incidents_state ON runtime_incidents(state, updated_at_unix_ms);

CREATE TABLE runtime_incident_history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    incident_id TEXT NOT NULL,
    domain TEXT NOT NULL,
    state TEXT NOT NULL,
    summary TEXT NOT NULL,
    recorded_at_unix_ms INTEGER NOT NULL
);
CREATE INDEX runtime_incident_history_incident ON runtime_incident_history(incident_id, seq);

CREATE TABLE remediation_attempts (
    attempt_id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('fail_run', 'cancel_run', 'requeue_task',
        'fail_task', 'report_actor_restart_loop', 'report_circuit_open')),
    mode TEXT NOT NULL CHECK (mode IN ('disabled', 'observe_only', 'auto')),
    status TEXT NOT NULL CHECK (status IN ('planned', 'succeeded', 'failed', 'skipped')),
    detail TEXT NOT NULL DEFAULT '',
    subject_kind TEXT,
    subject_id TEXT,
    recorded_at_unix_ms INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL
);
CREATE INDEX remediation_attempts_incident
    ON remediation_attempts(incident_id, recorded_at_unix_ms);
CREATE INDEX remediation_attempts_recent ON remediation_attempts(recorded_at_unix_ms);
"""
