"""Storage of learning candidates, their history and preferences.

Write ops are ``def op(txn)`` closures over ``txn.conn`` (apsw), applied by the journal
actor; reads go through :class:`LearningQueries`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import apsw
import orjson

from palyra.errors import Conflict, InvalidInput, NotFound
from palyra.ids import new_ulid
from palyra.journal.filters import where
from palyra.journal.store import Txn
from palyra.learning import candidates as c
from palyra.learning import review as rv
from palyra.learning.candidates import Candidate, HistoryEntry, Preference

Op = Callable[[Txn], Any]

_COLS = (
    "candidate_ulid, candidate_kind, session_ulid, run_ulid, owner_principal, device_id, channel,"
    " scope_kind, scope_id, status, auto_applied, confidence, risk_level, title, summary,"
    " target_path, dedupe_key, content_json, provenance_json, source_task_ulid,"
    " reviewed_at_unix_ms, reviewed_by, last_action_summary, last_action_payload_json,"
    " created_at_unix_ms, updated_at_unix_ms"
)
_HISTORY_COLS = (
    "history_ulid, candidate_ulid, from_status, to_status, actor, created_at_unix_ms,"
    " action_summary, action_payload_json"
)
_PREFERENCE_COLS = (
    "preference_ulid, owner_principal, scope_kind, scope_id, preference_key, value, confidence,"
    " created_at_unix_ms, updated_at_unix_ms, status, source_candidate_ulid"
)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _load(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _candidate(row: Sequence[Any]) -> Candidate:
    (cid, kind, session, run, owner, device, channel, scope_kind, scope_id, status, auto,
     confidence, risk, title, summary, target, dedupe, content, provenance, task, reviewed_at,
     reviewed_by, action_summary, action_payload, created, updated) = row
    return Candidate(
        candidate_id=cid, candidate_kind=kind, session_id=session, owner_principal=owner,
        device_id=device, scope_kind=scope_kind, scope_id=scope_id, status=status,
        confidence=confidence, risk_level=risk, title=title, summary=summary, dedupe_key=dedupe,
        content=_load(content), provenance=_load(provenance), created_at_unix_ms=created,
        updated_at_unix_ms=updated, run_id=run, channel=channel, auto_applied=bool(auto),
        target_path=target, source_task_id=task, reviewed_at_unix_ms=reviewed_at,
        reviewed_by=reviewed_by, last_action_summary=action_summary,
        last_action_payload=_load(action_payload),
    )


def _history(row: Sequence[Any]) -> HistoryEntry:
    hid, cid, before, after, actor, created, summary, payload = row
    return HistoryEntry(hid, cid, before, after, actor, created, summary, _load(payload))


def _read(conn: apsw.Connection, candidate_id: str) -> Candidate | None:
    row = conn.execute(
        f"SELECT {_COLS} FROM learning_candidates WHERE candidate_ulid = ?", (candidate_id,)
    ).fetchone()
    return _candidate(row) if row else None


def _insert_history(conn: apsw.Connection, entry: HistoryEntry) -> None:
    conn.execute(
        f"INSERT INTO learning_candidate_history({_HISTORY_COLS}) VALUES (?,?,?,?,?,?,?,?)",
        (entry.history_id, entry.candidate_id, entry.from_status, entry.to_status, entry.actor,
         entry.created_at_unix_ms, entry.action_summary, _json(entry.action_payload)),
    )


# --------------------------------------------------------------------------- writes

# A candidate suppressed only for low confidence, re-extracted as queued, is promoted.
_PROMOTE = ("status = 'suppressed' AND risk_level = 'low_confidence'"
            " AND excluded.status = 'queued'")


def upsert_candidates(candidates: Sequence[Candidate]) -> Op:
    """Insert new candidates (with a creation history row). A candidate whose dedupe key
    exists keeps its row and id and raises its confidence; if it had been suppressed only
    for low confidence and is now confident enough, it is promoted to ``queued`` (with a
    history row). Returns the stored candidate ids, in input order.
    """

    def op(txn: Txn) -> list[str]:
        ids = []
        for cand in candidates:
            row = (
                cand.candidate_id, cand.candidate_kind, cand.session_id, cand.run_id,
                cand.owner_principal, cand.device_id, cand.channel, cand.scope_kind,
                cand.scope_id, cand.status, int(cand.auto_applied), cand.confidence,
                cand.risk_level, cand.title, cand.summary, cand.target_path, cand.dedupe_key,
                _json(cand.content), _json(cand.provenance), cand.source_task_id,
                cand.reviewed_at_unix_ms, cand.reviewed_by, cand.last_action_summary,
                _json(cand.last_action_payload), cand.created_at_unix_ms,
                cand.updated_at_unix_ms,
            )
            before = txn.conn.execute(
                "SELECT status FROM learning_candidates WHERE owner_principal = ?"
                " AND scope_kind = ? AND scope_id = ? AND candidate_kind = ? AND dedupe_key = ?",
                (cand.owner_principal, cand.scope_kind, cand.scope_id, cand.candidate_kind,
                 cand.dedupe_key),
            ).fetchone()
            stored, status = txn.conn.execute(
                f"INSERT INTO learning_candidates({_COLS}) VALUES ({','.join('?' * len(row))})"
                " ON CONFLICT(owner_principal, scope_kind, scope_id, candidate_kind, dedupe_key)"
                f" DO UPDATE SET confidence = max(confidence, excluded.confidence),"
                f" status = CASE WHEN {_PROMOTE} THEN excluded.status ELSE status END,"
                f" risk_level = CASE WHEN {_PROMOTE} THEN excluded.risk_level ELSE risk_level END,"
                " updated_at_unix_ms = excluded.updated_at_unix_ms"
                " RETURNING candidate_ulid, status",
                row,
            ).fetchone()
            if before is None:
                _insert_history(txn.conn, rv.created_entry(cand))
            elif before[0] != status:
                _insert_history(txn.conn, HistoryEntry(
                    new_ulid(cand.updated_at_unix_ms), stored, before[0], status,
                    c.SYSTEM_REVIEWER, cand.updated_at_unix_ms,
                    "confident enough after a later run", None))
            ids.append(stored)
        return ids

    return op


def _upsert_preference(conn: apsw.Connection, pref: Preference) -> None:
    conn.execute(
        f"INSERT INTO learning_preferences({_PREFERENCE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT(owner_principal, scope_kind, scope_id, preference_key, value) DO UPDATE SET"
        " status = 'active', confidence = excluded.confidence,"
        " source_candidate_ulid = excluded.source_candidate_ulid,"
        " updated_at_unix_ms = excluded.updated_at_unix_ms",
        (pref.preference_id, pref.owner_principal, pref.scope_kind, pref.scope_id, pref.key,
         pref.value, pref.confidence, pref.created_at_unix_ms, pref.updated_at_unix_ms,
         pref.status, pref.source_candidate_id),
    )


def save_review(before: Candidate, outcome: rv.ReviewOutcome) -> Op:
    """Write a review: optimistic on ``before.status`` (Conflict if it moved), append the
    history row, and put the candidate's preference in force or retire it."""
    after = outcome.candidate
    if before.candidate_id != after.candidate_id:
        raise InvalidInput("save_review needs two versions of the same candidate",
                           details={"field": "candidate_id"})

    def op(txn: Txn) -> Candidate:
        txn.conn.execute(
            "UPDATE learning_candidates SET status = ?, auto_applied = ?, reviewed_at_unix_ms = ?,"
            " reviewed_by = ?, last_action_summary = ?, last_action_payload_json = ?,"
            " updated_at_unix_ms = ? WHERE candidate_ulid = ? AND status = ?",
            (after.status, int(after.auto_applied), after.reviewed_at_unix_ms, after.reviewed_by,
             after.last_action_summary, _json(after.last_action_payload),
             after.updated_at_unix_ms, before.candidate_id, before.status),
        )
        if txn.conn.changes() == 0:
            current = _read(txn.conn, before.candidate_id)
            if current is None:
                raise NotFound(f"learning candidate {before.candidate_id} not found",
                               details={"candidate_id": before.candidate_id})
            raise Conflict(
                f"learning candidate {before.candidate_id} moved to {current.status}",
                details={"expected": before.status, "status": current.status},
            )
        _insert_history(txn.conn, outcome.history)
        pref = rv.preference_from(after, now_ms=after.updated_at_unix_ms)
        if pref is not None:
            _upsert_preference(txn.conn, pref)
        elif after.candidate_kind == c.PREFERENCE:
            txn.conn.execute(
                "UPDATE learning_preferences SET status = 'retired', updated_at_unix_ms = ?"
                " WHERE source_candidate_ulid = ?",
                (after.updated_at_unix_ms, after.candidate_id),
            )
        return after

    return op


def review_candidate(candidate_id: str, status: str, *, reviewer: str, now_ms: int,
                     summary: str | None = None, payload: dict[str, Any] | None = None) -> Op:
    """Read, review and write one candidate in one transaction (console review)."""

    def op(txn: Txn) -> Candidate:
        before = _read(txn.conn, candidate_id)
        if before is None:
            raise NotFound(f"learning candidate {candidate_id} not found",
                           details={"candidate_id": candidate_id})
        outcome = rv.review(before, status, reviewer=reviewer, now_ms=now_ms, summary=summary,
                            payload=payload)
        return save_review(before, outcome)(txn)

    return op


# --------------------------------------------------------------------------- reads


class LearningQueries:
    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def candidate(self, candidate_id: str) -> Candidate | None:
        return _read(self.conn, candidate_id)

    def candidates(self, *, owner_principal: str | None = None, status: str | None = None,
                   session_id: str | None = None, limit: int = 100) -> list[Candidate]:
        """Newest first; ``status`` accepts console aliases."""
        clause, args = where({
            "owner_principal": owner_principal,
            "status": None if status is None else c.normalize_status(status),
            "session_ulid": session_id,
        })
        rows = self.conn.execute(
            f"SELECT {_COLS} FROM learning_candidates {clause}"
            " ORDER BY created_at_unix_ms DESC, candidate_ulid DESC LIMIT ?",
            (*args, max(1, min(int(limit), 500))),
        ).fetchall()
        return [_candidate(r) for r in rows]

    def history(self, candidate_id: str) -> list[HistoryEntry]:
        """Oldest first."""
        rows = self.conn.execute(
            f"SELECT {_HISTORY_COLS} FROM learning_candidate_history WHERE candidate_ulid = ?"
            " ORDER BY created_at_unix_ms, history_ulid",
            (candidate_id,),
        ).fetchall()
        return [_history(r) for r in rows]

    def preferences(self, owner_principal: str, *,
                    include_retired: bool = False) -> list[Preference]:
        rows = self.conn.execute(
            f"SELECT {_PREFERENCE_COLS} FROM learning_preferences WHERE owner_principal = ?"
            " AND (? OR status = 'active') ORDER BY preference_key, created_at_unix_ms",
            (owner_principal, int(include_retired)),
        ).fetchall()
        return [Preference(pid, owner, sk, sid, key, value, conf, created, updated, status, src)
                for (pid, owner, sk, sid, key, value, conf, created, updated, status, src) in rows]
