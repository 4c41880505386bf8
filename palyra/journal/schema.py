"""Numbered schema migrations, applied in order, each in its own transaction."""

from __future__ import annotations

import apsw

from palyra.access.schema import SCHEMA_SQL as ACCESS_SCHEMA_SQL
from palyra.background.schema import SCHEMA_SQL as BACKGROUND_SCHEMA_SQL
from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.healing.schema import SCHEMA_SQL as HEALING_SCHEMA_SQL
from palyra.learning.schema import SCHEMA_SQL as LEARNING_SCHEMA_SQL
from palyra.memory.schema import SCHEMA_SQL as MEMORY_SCHEMA_SQL


def _append_only(table: str) -> str:
    return f"""
    CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
    BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
    CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
    BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
    """


MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "journal_events",
        """
        CREATE TABLE journal_events (
            seq INTEGER PRIMARY KEY,
            event_ulid TEXT NOT NULL UNIQUE,
            session_ulid TEXT,
            run_ulid TEXT,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            timestamp_unix_ms INTEGER NOT NULL,
            payload_json TEXT NOT NULL,
            redacted INTEGER NOT NULL DEFAULT 0,
            hash TEXT NOT NULL,
            prev_hash TEXT,
            principal TEXT,
            device_id TEXT,
            channel TEXT,
            created_at_unix_ms INTEGER NOT NULL
        );
        CREATE INDEX journal_events_kind ON journal_events(kind, seq);
        CREATE INDEX journal_events_run ON journal_events(run_ulid, seq);
        """
        + _append_only("journal_events"),
    ),
    (
        2,
        "orchestrator",
        """
        CREATE TABLE orchestrator_sessions (
            session_ulid TEXT PRIMARY KEY,
            session_key TEXT NOT NULL UNIQUE,
            session_label TEXT,
            principal TEXT NOT NULL,
            device_id TEXT NOT NULL,
            channel TEXT,
            created_at_unix_ms INTEGER NOT NULL,
            updated_at_unix_ms INTEGER NOT NULL,
            last_run_ulid TEXT,
            archived_at_unix_ms INTEGER,
            title_generation_state TEXT NOT NULL DEFAULT 'idle',
            manual_title_locked INTEGER NOT NULL DEFAULT 0,
            approvals_reset_at_unix_ms INTEGER
        );
        CREATE INDEX orchestrator_sessions_label ON orchestrator_sessions(session_label);
        CREATE INDEX orchestrator_sessions_identity
            ON orchestrator_sessions(principal, device_id, channel, session_key);

        CREATE TABLE orchestrator_runs (
            run_ulid TEXT PRIMARY KEY,
            session_ulid TEXT NOT NULL REFERENCES orchestrator_sessions(session_ulid),
            state TEXT NOT NULL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            cancel_reason TEXT,
            created_at_unix_ms INTEGER NOT NULL,
            started_at_unix_ms INTEGER,
            completed_at_unix_ms INTEGER,
            updated_at_unix_ms INTEGER NOT NULL,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0,
            total_tokens INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            termination_reason TEXT,
            input_text TEXT,
            reply_text TEXT,
            model_id TEXT,
            provider_id TEXT,
            origin_kind TEXT NOT NULL DEFAULT 'manual',
            origin_run_ulid TEXT,
            parent_run_ulid TEXT,
            triggered_by_principal TEXT,
            request_sha256 TEXT NOT NULL
        );
        CREATE INDEX orchestrator_runs_session
            ON orchestrator_runs(session_ulid, state, created_at_unix_ms);
        CREATE INDEX orchestrator_runs_state ON orchestrator_runs(state);

        CREATE TABLE orchestrator_tape (
            run_ulid TEXT NOT NULL,
            seq INTEGER NOT NULL,
            event_type TEXT NOT NULL,
            payload_json TEXT NOT NULL,
            created_at_unix_ms INTEGER NOT NULL,
            hash TEXT NOT NULL,
            prev_hash TEXT,
            PRIMARY KEY (run_ulid, seq)
        ) WITHOUT ROWID;

        CREATE TABLE run_lifecycle_events (
            event_ulid TEXT PRIMARY KEY,
            run_ulid TEXT NOT NULL,
            session_ulid TEXT NOT NULL,
            from_state TEXT,
            to_state TEXT NOT NULL,
            phase TEXT NOT NULL,
            actor_kind TEXT NOT NULL,
            actor_id TEXT,
            correlation_id TEXT NOT NULL,
            idempotency_key TEXT,
            reason TEXT,
            created_at_unix_ms INTEGER NOT NULL
        );
        CREATE INDEX run_lifecycle_events_run ON run_lifecycle_events(run_ulid, created_at_unix_ms);

        CREATE TABLE approvals (
            approval_ulid TEXT PRIMARY KEY,
            session_ulid TEXT NOT NULL,
            run_ulid TEXT NOT NULL,
            principal TEXT NOT NULL,
            device_id TEXT NOT NULL,
            channel TEXT,
            requested_at_unix_ms INTEGER NOT NULL,
            expires_at_unix_ms INTEGER,
            resolved_at_unix_ms INTEGER,
            subject_type TEXT NOT NULL,
            subject_id TEXT NOT NULL,
            proposal_id TEXT,
            request_summary TEXT NOT NULL,
            decision TEXT,
            decision_scope TEXT,
            decision_reason TEXT,
            decision_scope_ttl_ms INTEGER,
            policy_snapshot_json TEXT NOT NULL,
            prompt_json TEXT NOT NULL,
            created_at_unix_ms INTEGER NOT NULL,
            updated_at_unix_ms INTEGER NOT NULL
        );
        CREATE INDEX approvals_pending ON approvals(decision, requested_at_unix_ms);
        CREATE INDEX approvals_run ON approvals(run_ulid);
        """
        + _append_only("orchestrator_tape")
        + _append_only("run_lifecycle_events"),
    ),
    (
        3,
        "usage_governance",
        """
        ALTER TABLE orchestrator_runs ADD COLUMN estimated_cost_micro_usd INTEGER;

        CREATE TABLE usage_pricing_catalog (
            pricing_id TEXT PRIMARY KEY,
            provider_id TEXT NOT NULL,
            provider_kind TEXT NOT NULL,
            model_id TEXT NOT NULL,
            effective_from_unix_ms INTEGER NOT NULL,
            effective_to_unix_ms INTEGER,
            input_cost_per_million_micro_usd INTEGER,
            output_cost_per_million_micro_usd INTEGER,
            fixed_request_cost_micro_usd INTEGER,
            source TEXT NOT NULL,
            precision TEXT NOT NULL,
            currency TEXT NOT NULL DEFAULT 'USD',
            updated_at_unix_ms INTEGER NOT NULL
        );

        CREATE TABLE usage_budget_policies (
            policy_id TEXT PRIMARY KEY,
            policy_json TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            created_by_principal TEXT,
            updated_by_principal TEXT,
            created_at_unix_ms INTEGER NOT NULL,
            updated_at_unix_ms INTEGER NOT NULL
        );

        CREATE TABLE usage_routing_decisions (
            decision_id TEXT PRIMARY KEY,
            run_id TEXT NOT NULL,
            session_id TEXT NOT NULL,
            record_json TEXT NOT NULL,
            actual_model_id TEXT NOT NULL,
            budget_outcome TEXT NOT NULL,
            created_at_unix_ms INTEGER NOT NULL
        );
        CREATE INDEX usage_routing_decisions_run ON usage_routing_decisions(run_id);
        CREATE INDEX usage_routing_decisions_time ON usage_routing_decisions(created_at_unix_ms);

        CREATE TABLE budget_ledger_events (
            seq INTEGER PRIMARY KEY,
            reservation_id TEXT NOT NULL,
            event_type TEXT NOT NULL,
            event_json TEXT NOT NULL,
            created_at_unix_ms INTEGER NOT NULL
        );
        CREATE INDEX budget_ledger_events_reservation ON budget_ledger_events(reservation_id);

        CREATE TABLE usage_alerts (
            alert_id TEXT PRIMARY KEY,
            alert_kind TEXT NOT NULL,
            severity TEXT NOT NULL,
            scope_kind TEXT,
            scope_id TEXT,
            summary TEXT NOT NULL,
            reason TEXT,
            recommended_action TEXT,
            source TEXT NOT NULL,
            dedupe_key TEXT NOT NULL UNIQUE,
            occurrence_count INTEGER NOT NULL DEFAULT 1,
            payload_json TEXT NOT NULL,
            first_observed_at_unix_ms INTEGER NOT NULL,
            last_observed_at_unix_ms INTEGER NOT NULL,
            acknowledged_at_unix_ms INTEGER,
            resolved_at_unix_ms INTEGER
        );
        """
        + _append_only("budget_ledger_events"),
    ),
    (4, "memory_store", MEMORY_SCHEMA_SQL),
    (5, "background_tasks", BACKGROUND_SCHEMA_SQL),
    (6, "learning", LEARNING_SCHEMA_SQL),
    (7, "self_healing", HEALING_SCHEMA_SQL),
    (8, "api_tokens", ACCESS_SCHEMA_SQL),
]


def current_version(conn: apsw.Connection) -> int:
    row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    return int(row[0] or 0)


def migrate(conn: apsw.Connection, clock: Clock = SYSTEM_CLOCK) -> list[int]:
    """Apply every migration newer than the database; return the versions applied."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_unix_ms INTEGER NOT NULL)"
    )
    applied: list[int] = []
    for version, name, sql in MIGRATIONS:
        # IMMEDIATE: two processes opening one state directory must not both migrate.
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (version,)
            ).fetchone()
            if not done:
                conn.execute(sql)
                conn.execute(
                    "INSERT INTO schema_migrations(version, name, applied_at_unix_ms)"
                    " VALUES (?,?,?)",
                    (version, name, clock.now_ms()),
                )
                applied.append(version)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return applied


LATEST_VERSION = MIGRATIONS[-1][0]
