"""Helpers for memory tests: a real apsw database with the memory schema, a Txn stand-in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apsw

from palyra.memory.schema import SCHEMA_SQL
from palyra.memory.store import MemoryItem, Op, ingest_op

NOW = 1_700_000_000_000
ALICE = "user:alice"
BOB = "user:bob"
S1 = "01HF7YAT00000000000000000S"
S2 = "01HF7YAT00000000000000000T"


class FakeTxn:
    """The one thing write ops use of palyra.journal.store.Txn."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn


def open_db(directory: Path) -> apsw.Connection:
    conn = apsw.Connection(str(directory / "memory.sqlite3"))
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute(SCHEMA_SQL)
    return conn


def apply(conn: apsw.Connection, op: Op) -> Any:
    """Run one op in its own transaction, as the journal writer would."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        value = op(FakeTxn(conn))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return value


def add(conn: apsw.Connection, text: str, *, principal: str = ALICE, now_ms: int = NOW,
        **kw: Any) -> MemoryItem:
    return apply(conn, ingest_op(MemoryItem.build(text, principal=principal, now_ms=now_ms, **kw)))


def fts_ok(conn: apsw.Connection) -> None:
    conn.execute("INSERT INTO memory_items_fts(memory_items_fts) VALUES ('integrity-check')")
