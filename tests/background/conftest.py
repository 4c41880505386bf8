"""Fixtures: an in-memory database with the background schema and a minimal txn."""

from __future__ import annotations

import types
from collections.abc import Iterator

import apsw
import pytest

from palyra.background.schema import SCHEMA_SQL


@pytest.fixture
def conn() -> Iterator[apsw.Connection]:
    db = apsw.Connection(":memory:")
    db.execute(SCHEMA_SQL)
    yield db
    db.close()


@pytest.fixture
def txn(conn: apsw.Connection) -> types.SimpleNamespace:
    """Write ops only touch ``txn.conn``."""
    return types.SimpleNamespace(conn=conn)
