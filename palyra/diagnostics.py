"""Facts about an installation that need no running runtime: the version, a config
fingerprint, the journal's size and chain head, row counts by state. The live snapshot
built on them (probing actors within a deadline) is :mod:`actors.diagnostics`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from importlib import metadata
from pathlib import Path
from typing import Any

import apsw
import orjson


def palyra_version() -> str:
    try:
        return metadata.version("palyra")
    except metadata.PackageNotFoundError:
        return "0.0.0+unknown"


def config_fingerprint(config: Any) -> str:
    """SHA-256 of the effective config, so two snapshots show whether it changed."""
    body = orjson.dumps(dataclasses.asdict(config), default=str, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def _file_size(path: Any) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def journal_summary(conn: apsw.Connection, path: Path) -> dict[str, Any]:
    """File sizes and chain head of the journal at ``path``, read through ``conn``
    (the runtime's reader, or the support bundle's read-only one with the daemon down)."""
    head = conn.execute("SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1").fetchone()
    return {
        "path": str(path),
        "size_bytes": _file_size(path),
        "wal_size_bytes": _file_size(str(path) + "-wal"),
        "events": head[0] if head else 0,
        "chain_head": head[1] if head else None,
    }


def count_by_state(conn: apsw.Connection, table: str) -> dict[str, int]:
    """``{state: rows}`` of a table with a ``state`` column (a name from our own code)."""
    return {state: n for state, n in conn.execute(
        f"SELECT state, count(*) FROM {table} GROUP BY state")}
