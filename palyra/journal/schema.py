"""Numbered schema migrations, applied in order, each in its own transaction."""

from __future__ import annotations

import apsw

from palyra.clock import SYSTEM_CLOCK, Clock


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
