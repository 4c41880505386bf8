"""DDL of the memory store (spec §7, migrations 6 + 10 upstream).

:data:`SCHEMA_SQL` is not applied by this package: it is meant to become one numbered
migration in :mod:`palyra.journal.schema` (tests execute it directly).

Design notes:

* ``memory_items`` has an explicit ``item_rowid INTEGER PRIMARY KEY``. The FTS5 index
  is *external content* keyed by that rowid; an implicit rowid (a table keyed by a TEXT
  primary key) may be renumbered by ``VACUUM``, which maintenance runs weekly, and that
  would silently detach the index from its rows.
* ``ttl_unix_ms`` (upstream's name, kept) is the absolute expiry instant, not a
  duration. Reads hide an item once ``ttl_unix_ms <= now``; retention deletes it later.
* ``scope`` is stored explicitly (upstream derives it from which of session / channel is
  set). CHECKs guarantee a session-scoped item has a session and a channel-scoped one a
  channel, so the visibility predicate never compares against NULL.
* Deletion is real (no tombstones): the delete trigger removes the FTS entry and the
  vector, so purged text is gone from every index. ``memory_vectors`` also cascades for
  connections that have ``foreign_keys=ON``.
"""

from __future__ import annotations

SCHEMA_SQL = """
CREATE TABLE memory_items (
    item_rowid INTEGER PRIMARY KEY,
    memory_ulid TEXT NOT NULL UNIQUE,
    principal TEXT NOT NULL,
    channel TEXT,
    session_ulid TEXT,
    scope TEXT NOT NULL CHECK (scope IN ('session', 'channel', 'principal')),
    source TEXT NOT NULL,
    content_text TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    tags_json TEXT NOT NULL DEFAULT '[]',
    confidence REAL CHECK (confidence IS NULL OR (confidence >= 0.0 AND confidence <= 1.0)),
    ttl_unix_ms INTEGER,
    created_at_unix_ms INTEGER NOT NULL,
    updated_at_unix_ms INTEGER NOT NULL,
    CHECK (scope <> 'session' OR session_ulid IS NOT NULL),
    CHECK (scope <> 'channel' OR channel IS NOT NULL)
);
CREATE INDEX memory_items_principal ON memory_items(principal, scope, created_at_unix_ms);
CREATE INDEX memory_items_principal_channel ON memory_items(principal, channel);
CREATE INDEX memory_items_session ON memory_items(session_ulid) WHERE session_ulid IS NOT NULL;
CREATE INDEX memory_items_ttl ON memory_items(ttl_unix_ms) WHERE ttl_unix_ms IS NOT NULL;
CREATE INDEX memory_items_created ON memory_items(created_at_unix_ms);

CREATE TABLE memory_vectors (
    memory_ulid TEXT PRIMARY KEY
        REFERENCES memory_items(memory_ulid) ON DELETE CASCADE,
    embedding_model_id TEXT NOT NULL,
    embedding_dims INTEGER NOT NULL CHECK (embedding_dims > 0),
    embedding_version INTEGER NOT NULL,
    embedding_vector BLOB NOT NULL CHECK (length(embedding_vector) = 4 * embedding_dims),
    embedded_at_unix_ms INTEGER NOT NULL
);

CREATE VIRTUAL TABLE memory_items_fts USING fts5(
    content_text,
    content = 'memory_items',
    content_rowid = 'item_rowid',
    tokenize = 'unicode61'
);

CREATE TRIGGER memory_items_ai AFTER INSERT ON memory_items BEGIN
    INSERT INTO memory_items_fts(rowid, content_text) VALUES (new.item_rowid, new.content_text);
END;

CREATE TRIGGER memory_items_ad AFTER DELETE ON memory_items BEGIN
    INSERT INTO memory_items_fts(memory_items_fts, rowid, content_text)
        VALUES ('delete', old.item_rowid, old.content_text);
    DELETE FROM memory_vectors WHERE memory_ulid = old.memory_ulid;
END;

CREATE TRIGGER memory_items_au AFTER UPDATE OF content_text ON memory_items BEGIN
    INSERT INTO memory_items_fts(memory_items_fts, rowid, content_text)
        VALUES ('delete', old.item_rowid, old.content_text);
    INSERT INTO memory_items_fts(rowid, content_text) VALUES (new.item_rowid, new.content_text);
END;
"""

TABLES = ("memory_items", "memory_items_fts", "memory_vectors")
