"""One diagnostics snapshot of a running runtime, gathered within a deadline.

Actors are probed with the supervisor's own liveness ``Ping`` (delivered ahead of any
backlog) all at once, so the snapshot costs one deadline at most: an actor that does
not answer in time is reported ``unresponsive`` instead of stalling the snapshot.
Everything else is read from the state directory on the caller's own connection,
which needs no actor at all. The result is redacted with the diagnostics key list.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import orjson
import pykka

from palyra.diagnostics import config_fingerprint, count_by_state, journal_summary
from palyra.healing.store import HealingQueries
from palyra.journal.store import db_path
from palyra.redaction import redact_diagnostics
from supervisors.names import Address
from supervisors.supervised import PING, send_first

if TYPE_CHECKING:
    from palyra.runtime import Runtime

DEFAULT_DEADLINE = 1.0

# Sections an actor contributes from its memory: (actor name, method answering a dict).
CONTRIBUTIONS: dict[str, tuple[str, str]] = {
    "learning": ("learning", "stats"),
    "budgets_reserved": ("budget", "reserved"),
    "memory_maintenance": ("memory", "stats"),
}
RESTART_KINDS = ("actor.restarted", "actor.escalated", "actor.hung", "runtime.started")


def _outcome(future: pykka.Future[Any] | Exception | None, until: float) -> tuple[str, Any]:
    """("ok", value) | ("unresponsive", None) | ("down", error name) within ``until``."""
    if future is None:
        return "down", None
    if isinstance(future, Exception):
        return "down", type(future).__name__
    try:
        return "ok", future.get(timeout=max(0.0, until - time.monotonic()))
    except pykka.Timeout:
        return "unresponsive", None
    except Exception as exc:  # noqa: BLE001 - a dead actor answers with its error
        return "down", type(exc).__name__


def _ask(rt: Runtime, actor: str, method: str) -> pykka.Future[Any] | Exception:
    try:  # retry_for=0: a restarting actor is reported, not waited for
        return Address(rt.services.names, actor, retry_for=0).call_future(method)
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return exc


def gather(rt: Runtime, until: float) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Probe every actor and ask every contributor at once, then collect by ``until``.

    Rows gain ``status``: responsive/unresponsive/down. Probes use the supervisor's own
    ``Ping``, delivered ahead of any backlog, so a busy actor is not mistaken for a hung one.
    """
    started = time.monotonic()
    rows = rt.actors()
    probes = {}
    for row in rows:
        ref = rt.services.names.get(row["name"])
        probes[row["name"]] = send_first(ref, PING) if ref is not None and ref.is_alive() else None
    asks = {section: _ask(rt, actor, method) for section, (actor, method) in CONTRIBUTIONS.items()}
    for row in rows:
        outcome, detail = _outcome(probes[row["name"]], until)
        row["status"] = "responsive" if outcome == "ok" else outcome
        if outcome == "ok":
            row["probe_ms"] = round((time.monotonic() - started) * 1000, 3)
        elif detail:
            row["probe_error"] = detail
    contributed: dict[str, Any] = {}
    for section, future in asks.items():
        outcome, value = _outcome(future, until)
        contributed[section] = value if outcome == "ok" else {
            "error": outcome, "actor": CONTRIBUTIONS[section][0], "detail": value}
    return rows, contributed


def recent_routing(rt: Runtime, limit: int = 10) -> list[dict[str, Any]]:
    conn = rt.services.readers.conn()
    return [{"decision_id": d, "run_id": r, "actual_model_id": m, "budget_outcome": o,
             "created_at_unix_ms": t}
            for d, r, m, o, t in conn.execute(
                "SELECT decision_id, run_id, actual_model_id, budget_outcome, created_at_unix_ms"
                " FROM usage_routing_decisions ORDER BY created_at_unix_ms DESC LIMIT ?", (limit,))]


def restart_history(rt: Runtime, limit: int = 50) -> list[dict[str, Any]]:
    """The latest supervision events from the journal (and any not written yet)."""
    conn = rt.services.readers.conn()
    marks = ",".join("?" * len(RESTART_KINDS))
    rows = conn.execute(
        f"SELECT seq, kind, timestamp_unix_ms, payload_json FROM journal_events WHERE kind IN ({marks})"
        " ORDER BY seq DESC LIMIT ?", (*RESTART_KINDS, limit)).fetchall()
    history = [{"seq": seq, "kind": kind, "timestamp_unix_ms": ts, **orjson.loads(payload)}
               for seq, kind, ts, payload in reversed(rows)]
    history += [{"seq": None, **dataclasses.asdict(e)} for e in rt.supervision_events()]
    return history[-limit:]


def journal_section(rt: Runtime) -> dict[str, Any]:
    return {**journal_summary(rt.services.readers.conn(), db_path(rt.state_dir)),
            "last_verify": rt.last_verify}


def background_section(rt: Runtime) -> dict[str, int]:
    return count_by_state(rt.services.readers.conn(), "orchestrator_background_tasks")


def runs_section(rt: Runtime) -> dict[str, Any]:
    by_state = count_by_state(rt.services.readers.conn(), "orchestrator_runs")
    return {"by_state": by_state, "live_heartbeats": len(rt.services.heartbeats)}


def collect(rt: Runtime, deadline: float = DEFAULT_DEADLINE) -> dict[str, Any]:
    started = time.monotonic()
    actors, contributed = gather(rt, started + deadline)
    snapshot: dict[str, Any] = {
        "generated_at_unix_ms": rt.clock.now_ms(),
        "deadline_ms": int(deadline * 1000),
        "supervision": {
            "actors": actors,
            "unresponsive": [a["name"] for a in actors if a["status"] == "unresponsive"],
            "down": [a["name"] for a in actors if a["status"] == "down"],
            "restart_history": restart_history(rt),
        },
        "journal": journal_section(rt),
        "runs": runs_section(rt),
        "background": {"by_state": background_section(rt)},
        "incidents": HealingQueries(rt.services.readers.conn()).summary(),
        "provider": {"kind": rt.config.provider.kind, "options": dict(rt.config.provider.options),
                     "status": rt.services.provider.status_snapshot()},
        "governance": {"routing_mode": rt.config.governance.routing_mode,
                       "recent_routing": recent_routing(rt),
                       "reserved": contributed["budgets_reserved"]},
        "learning": contributed["learning"],
        "memory": {"maintenance": contributed["memory_maintenance"]},
        "observability": rt.observability(),
        "config": {"fingerprint": config_fingerprint(rt.config)},
    }
    snapshot["elapsed_ms"] = round((time.monotonic() - started) * 1000, 3)
    return redact_diagnostics(snapshot)
