"""A transaction stand-in for store-op unit tests on a schema-only database.

Store operations touch ``txn.conn`` and report facts with ``txn.note``; the real
:class:`palyra.journal.store.Txn` also reads the journal's chain head, which these
schema-only databases do not have. ``notes`` keeps what the ops noted, for asserts.
"""

from __future__ import annotations

from typing import Any

import apsw


class OpTxn:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.notes: list[tuple[str, dict[str, Any]]] = []

    def note(self, name: str, **fields: Any) -> None:
        self.notes.append((name, fields))
