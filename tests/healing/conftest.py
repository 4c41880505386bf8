"""Fixtures: an in-memory database with the healing schema and an op transaction."""

from __future__ import annotations

from collections.abc import Iterator

import apsw
import pytest

from palyra.healing.schema import SCHEMA_SQL
from tests.support.txn import OpTxn


@pytest.fixture
def conn() -> Iterator[apsw.Connection]:
    db = apsw.Connection(":memory:")
    db.execute(SCHEMA_SQL)
    yield db
    db.close()


@pytest.fixture
def txn(conn: apsw.Connection) -> OpTxn:
    return OpTxn(conn)
