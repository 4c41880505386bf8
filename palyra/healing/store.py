"""Storage of heartbeats, incidents (with history) and remediation attempts.

Write ops are ``def op(txn)`` closures over ``txn.conn`` (apsw); reads go through
:class:`HealingQueries`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import apsw
import orjson

from palyra.errors import Conflict, NotFound
from palyra.healing.heartbeats import WorkHeartbeatRecord, heartbeat_key
from palyra.healing.incidents import (
    IncidentHistoryEntry,
    RemediationDescriptor,
    RuntimeIncidentRecord,
    history_entry,
)
from palyra.healing.remediation import RemediationAttempt
from palyra.journal.store import Txn

Op = Callable[[Txn], Any]
RING = 128

_HB_COLS = ("domain, subject_id, last_beat_unix_ms, first_beat_unix_ms, summary, session_ulid")
_INC_COLS = (
    "incident_id, domain, severity, state, summary, dedupe_key, created_at_unix_ms,"
    " updated_at_unix_ms, kind, detail, resolved_at_unix_ms, subject_kind, subject_id,"
    " facts_json, remediation_json, occurrences"
)
_ATT_COLS = (
    "attempt_id, incident_id, action, mode, status, detail, recorded_at_unix_ms,"
    " updated_at_unix_ms, subject_kind, subject_id"
)


def _incident(row: Sequence[Any]) -> RuntimeIncidentRecord:
    (iid, domain, severity, state, summary, dedupe, created, updated, kind, detail, resolved,
     subject_kind, subject_id, facts, remediation, occurrences) = row
    return RuntimeIncidentRecord(
        incident_id=iid, domain=domain, severity=severity, state=state, summary=summary,
        dedupe_key=dedupe, created_at_unix_ms=created, updated_at_unix_ms=updated, kind=kind,
        detail=detail, resolved_at_unix_ms=resolved, subject_kind=subject_kind,
        subject_id=subject_id, facts=orjson.loads(facts),
        remediation=RemediationDescriptor(**orjson.loads(remediation)) if remediation else None,
        occurrences=occurrences,
    )


def _read_incident(conn: apsw.Connection, incident_id: str) -> RuntimeIncidentRecord | None:
    row = conn.execute(
        f"SELECT {_INC_COLS} FROM runtime_incidents WHERE incident_id = ?", (incident_id,)
    ).fetchone()
    return _incident(row) if row else None


# --------------------------------------------------------------------------- writes


def upsert_heartbeat(beat: WorkHeartbeatRecord) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(
            f"INSERT INTO work_heartbeats(heartbeat_key, {_HB_COLS}) VALUES (?,?,?,?,?,?,?)"
            " ON CONFLICT(heartbeat_key) DO UPDATE SET"
            " last_beat_unix_ms = max(last_beat_unix_ms, excluded.last_beat_unix_ms),"
            " summary = excluded.summary,"
            " session_ulid = coalesce(excluded.session_ulid, session_ulid)",
            (beat.heartbeat_key, beat.domain, beat.subject_id, beat.last_beat_ms,
             beat.first_beat_ms, beat.summary, beat.session_id),
        )

    return op


def clear_heartbeat(domain: str, subject_id: str) -> Op:
    def op(txn: Txn) -> bool:
        txn.conn.execute("DELETE FROM work_heartbeats WHERE heartbeat_key = ?",
                         (heartbeat_key(domain, subject_id),))
        return txn.conn.changes() > 0

    return op


def save_incident(incident: RuntimeIncidentRecord, *, expected_state: str | None = None) -> Op:
    """Upsert an incident; a new incident or a state change appends a history row.

    ``expected_state`` makes the write optimistic: the stored state it must find
    (``"absent"`` for a new incident), else Conflict. None writes unconditionally.
    """
    remediation = (orjson.dumps(dataclasses.asdict(incident.remediation)).decode()
                   if incident.remediation else None)
    row = (
        incident.incident_id, incident.domain, incident.severity, incident.state,
        incident.summary, incident.dedupe_key, incident.created_at_unix_ms,
        incident.updated_at_unix_ms, incident.kind, incident.detail,
        incident.resolved_at_unix_ms, incident.subject_kind, incident.subject_id,
        orjson.dumps(dict(incident.facts)).decode(), remediation, incident.occurrences,
    )
    updates = ", ".join(f"{c.strip()} = excluded.{c.strip()}"
                        for c in _INC_COLS.split(",")[2:] if c.strip() != "created_at_unix_ms")

    def op(txn: Txn) -> RuntimeIncidentRecord:
        before = _read_incident(txn.conn, incident.incident_id)
        current = "absent" if before is None else before.state
        if expected_state is not None and current != expected_state:
            raise Conflict(f"incident {incident.incident_id} is {current}",
                           details={"expected": expected_state, "state": current})
        txn.conn.execute(
            f"INSERT INTO runtime_incidents({_INC_COLS}) VALUES ({','.join('?' * len(row))})"
            f" ON CONFLICT(incident_id) DO UPDATE SET {updates}",
            row,
        )
        if before is None or before.state != incident.state:
            txn.note("incident", incident_id=incident.incident_id, state=incident.state)
            entry = history_entry(incident)
            txn.conn.execute(
                "INSERT INTO runtime_incident_history(incident_id, domain, state, summary,"
                " recorded_at_unix_ms) VALUES (?,?,?,?,?)",
                (entry.incident_id, entry.domain, entry.state, entry.summary,
                 entry.recorded_at_unix_ms),
            )
        return incident

    return op


def _attempt_row(a: RemediationAttempt) -> tuple[Any, ...]:
    return (a.attempt_id, a.incident_id, a.action, a.mode, a.status, a.detail,
            a.recorded_at_unix_ms, a.updated_at_unix_ms, a.subject_kind, a.subject_id)


def insert_attempt(attempt: RemediationAttempt) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(f"INSERT INTO remediation_attempts({_ATT_COLS}) VALUES"
                         " (?,?,?,?,?,?,?,?,?,?)", _attempt_row(attempt))

    return op


def finish_attempt(attempt: RemediationAttempt) -> Op:
    """Record the outcome of a planned attempt (optimistic on ``planned``)."""

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "UPDATE remediation_attempts SET status = ?, detail = ?, updated_at_unix_ms = ?"
            " WHERE attempt_id = ? AND status = 'planned'",
            (attempt.status, attempt.detail, attempt.updated_at_unix_ms, attempt.attempt_id),
        )
        if txn.conn.changes() == 0:
            raise NotFound(f"no planned remediation attempt {attempt.attempt_id}",
                           details={"attempt_id": attempt.attempt_id})
        txn.note("remediation", incident_id=attempt.incident_id, outcome=attempt.status)

    return op


# --------------------------------------------------------------------------- reads


class HealingQueries:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def heartbeats(self, domain: str | None = None) -> list[WorkHeartbeatRecord]:
        rows = self.conn.execute(
            f"SELECT {_HB_COLS} FROM work_heartbeats WHERE ? IS NULL OR domain = ?"
            " ORDER BY heartbeat_key", (domain, domain),
        ).fetchall()
        return [WorkHeartbeatRecord(*r) for r in rows]

    def incident(self, incident_id: str) -> RuntimeIncidentRecord | None:
        return _read_incident(self.conn, incident_id)

    def incidents(self, *, active_only: bool = False,
                  limit: int = 32) -> list[RuntimeIncidentRecord]:
        rows = self.conn.execute(
            f"SELECT {_INC_COLS} FROM runtime_incidents WHERE NOT ? OR state != 'resolved'"
            " ORDER BY updated_at_unix_ms DESC, incident_id LIMIT ?",
            (int(active_only), max(1, min(int(limit), 1000))),
        ).fetchall()
        return [_incident(r) for r in rows]

    def history(self, incident_id: str | None = None,
                limit: int = RING) -> list[IncidentHistoryEntry]:
        """Newest last; at most ``limit`` (the ring of spec 5)."""
        rows = self.conn.execute(
            "SELECT incident_id, domain, state, summary, recorded_at_unix_ms FROM ("
            " SELECT * FROM runtime_incident_history WHERE ? IS NULL OR incident_id = ?"
            " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
            (incident_id, incident_id, max(1, min(int(limit), RING))),
        ).fetchall()
        return [IncidentHistoryEntry(*r) for r in rows]

    def attempts(self, incident_id: str | None = None,
                 limit: int = RING) -> list[RemediationAttempt]:
        rows = self.conn.execute(
            f"SELECT {_ATT_COLS} FROM remediation_attempts WHERE ? IS NULL OR incident_id = ?"
            " ORDER BY recorded_at_unix_ms DESC, attempt_id LIMIT ?",
            (incident_id, incident_id, max(1, min(int(limit), RING))),
        ).fetchall()
        return [RemediationAttempt(*r) for r in rows]

    def summary(self) -> dict[str, Any]:
        """Counts for diagnostics: active/remediating/resolved, by domain and severity."""
        out: dict[str, Any] = {"active": 0, "remediating": 0, "resolved": 0,
                               "by_domain": {}, "by_severity": {}}
        for domain, severity, state, n in self.conn.execute(
            "SELECT domain, severity, state, count(*) FROM runtime_incidents"
            " GROUP BY domain, severity, state"
        ):
            if state == "resolved":
                out["resolved"] += n
                continue
            out["active"] += n
            if state == "remediating":
                out["remediating"] += n
            out["by_domain"][domain] = out["by_domain"].get(domain, 0) + n
            out["by_severity"][severity] = out["by_severity"].get(severity, 0) + n
        return out
