"""One diagnostics snapshot of a running runtime, gathered within a deadline.

Actors are probed with the supervisor's own liveness ``Ping`` (delivered ahead of any
backlog) all at once, so the snapshot costs one deadline at most: an actor that does
not answer in time is reported ``unresponsive`` instead of stalling the snapshot.
Everything else is read from the state directory on the caller's own connection,
which needs no actor at all. The result is redacted with the diagnostics key list.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import TYPE_CHECKING, Any

import orjson
import pykka

from palyra.healing.store import HealingQueries
from palyra.journal.store import db_path
from palyra.redaction import redact_diagnostics
from supervisors.supervised import PING, send_first

if TYPE_CHECKING:
    from palyra.runtime import Runtime

DEFAULT_DEADLINE = 1.0


def config_fingerprint(config: Any) -> str:
    """SHA-256 of the effective config, so two snapshots show whether it changed."""
    body = orjson.dumps(dataclasses.asdict(config), default=str, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(body).hexdigest()


def probe_actors(rt: Runtime, deadline: float) -> list[dict[str, Any]]:
    """Every supervised actor's table row plus ``status``: responsive/unresponsive/down."""
    rows = rt.actors()
    futures: dict[str, pykka.Future[Any] | None] = {}
    started = time.monotonic()
    for row in rows:
        ref = rt.services.names.get(row["name"])
        futures[row["name"]] = send_first(ref, PING) if ref is not None and ref.is_alive() else None
    until = started + deadline
    for row in rows:
        future = futures[row["name"]]
        if future is None:
            row["status"] = "down"
            continue
        try:
            future.get(timeout=max(0.0, until - time.monotonic()))
        except pykka.Timeout:
            row["status"] = "unresponsive"
        except Exception as exc:  # noqa: BLE001 - a dead actor answers with its error
            row["status"] = "down"
            row["probe_error"] = type(exc).__name__
        else:
            row["status"] = "responsive"
            row["probe_ms"] = round((time.monotonic() - started) * 1000, 3)
    return rows


def _file_size(path: Any) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def journal_section(rt: Runtime) -> dict[str, Any]:
    path = db_path(rt.state_dir)
    conn = rt.services.readers.conn()
    head = conn.execute("SELECT seq, hash FROM journal_events ORDER BY seq DESC LIMIT 1").fetchone()
    return {
        "path": str(path),
        "size_bytes": _file_size(path),
        "wal_size_bytes": _file_size(str(path) + "-wal"),
        "events": head[0] if head else 0,
        "chain_head": head[1] if head else None,
    }


def background_section(rt: Runtime) -> dict[str, int]:
    conn = rt.services.readers.conn()
    return {state: n for state, n in conn.execute(
        "SELECT state, count(*) FROM orchestrator_background_tasks GROUP BY state")}


def runs_section(rt: Runtime) -> dict[str, Any]:
    conn = rt.services.readers.conn()
    by_state = {state: n for state, n in conn.execute(
        "SELECT state, count(*) FROM orchestrator_runs GROUP BY state")}
    return {"by_state": by_state, "live_heartbeats": len(rt.services.heartbeats)}


def collect(rt: Runtime, deadline: float = DEFAULT_DEADLINE) -> dict[str, Any]:
    started = time.monotonic()
    actors = probe_actors(rt, deadline)
    snapshot: dict[str, Any] = {
        "generated_at_unix_ms": rt.clock.now_ms(),
        "deadline_ms": int(deadline * 1000),
        "supervision": {
            "actors": actors,
            "unresponsive": [a["name"] for a in actors if a["status"] == "unresponsive"],
            "down": [a["name"] for a in actors if a["status"] == "down"],
            "recent_events": [dataclasses.asdict(e) for e in rt.supervision_events()[-50:]],
        },
        "journal": journal_section(rt),
        "runs": runs_section(rt),
        "background": {"by_state": background_section(rt)},
        "incidents": HealingQueries(rt.services.readers.conn()).summary(),
        "provider": {"kind": rt.config.provider.kind, "options": dict(rt.config.provider.options)},
        "config": {"fingerprint": config_fingerprint(rt.config)},
    }
    snapshot["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    return redact_diagnostics(snapshot)
