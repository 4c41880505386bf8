"""Fixtures: an in-memory database with the healing schema and a minimal txn."""

from __future__ import annotations

import types
from collections.abc import Iterator

import apsw
import pytest

from palyra.healing.schema import SCHEMA_SQL


@pytest.fixture
def conn() -> Iterator[apsw.Connection]:
    db = apsw.Connection(":memory:")
    db.execute(SCHEMA_SQL)
    yield db
    db.close()


@pytest.fixture
def txn(conn: apsw.Connection) -> types.SimpleNamespace:
    return types.SimpleNamespace(conn=conn)
