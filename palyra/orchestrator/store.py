"""Storage of sessions, runs, tapes, lifecycle rows and approvals.

Write operations are functions of a journal :class:`~palyra.journal.store.Txn`; the
journal actor applies them in its group-committed transactions. Reads take an apsw
connection the caller owns (each actor has its own reader connection).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import apsw
import orjson

from palyra.errors import Conflict, NotFound, ResourceExhausted
from palyra.ids import new_ulid
from palyra.journal.filters import where
from palyra.journal.store import TapeDraft, Txn
from palyra.orchestrator.state import PHASES
from palyra.records import Approval, Identity, Run, Session, TapeEvent, Usage
from palyra.redaction import sanitize_value

Op = Callable[[Txn], Any]

MAX_TAPE_PAGE = 1000
MAX_TAPE_PAGE_BYTES = 2 * 1024 * 1024

# --------------------------------------------------------------------------- writes


def insert_session(s: Session) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(
            "INSERT INTO orchestrator_sessions(session_ulid, session_key, session_label, principal,"
            " device_id, channel, created_at_unix_ms, updated_at_unix_ms, last_run_ulid,"
            " manual_title_locked, title_generation_state) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (s.session_id, s.session_key, s.session_label, s.principal, s.device_id, s.channel,
             s.created_at_unix_ms, s.updated_at_unix_ms, s.last_run_id,
             int(s.session_label is not None), "manual_locked" if s.session_label else "idle"),
        )

    return op


def update_session(s: Session, *, label_changed: bool, reset: bool = False) -> Op:
    """``reset`` forgets the session's cached approval decisions, durably."""

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "UPDATE orchestrator_sessions SET session_label = ?, updated_at_unix_ms = ?,"
            " last_run_ulid = ?, manual_title_locked = manual_title_locked OR ?,"
            " title_generation_state = CASE WHEN ? THEN 'manual_locked' ELSE title_generation_state END,"
            " approvals_reset_at_unix_ms = CASE WHEN ? THEN ? ELSE approvals_reset_at_unix_ms END"
            " WHERE session_ulid = ?",
            (s.session_label, s.updated_at_unix_ms, s.last_run_id, int(label_changed),
             int(label_changed), int(reset), s.updated_at_unix_ms, s.session_id),
        )

    return op


def archive_session(session_id: str, new_key: str, now_ms: int) -> Op:
    def op(txn: Txn) -> bool:
        txn.conn.execute(
            "UPDATE orchestrator_sessions SET archived_at_unix_ms = ?, last_run_ulid = NULL,"
            " session_key = ?, updated_at_unix_ms = ?, approvals_reset_at_unix_ms = ?"
            " WHERE session_ulid = ? AND archived_at_unix_ms IS NULL",
            (now_ms, new_key, now_ms, now_ms, session_id),
        )
        return txn.conn.changes() > 0

    return op


def request_sha256(fields: dict[str, Any]) -> str:
    """Idempotency fingerprint of a run start (spec 1.2)."""
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def insert_run(run: Run, request_hash: str, input_text: str) -> Op:
    """``input_text`` is stored redacted, as on the tape (it feeds later turns' history)."""
    stored_input = sanitize_value(input_text)[0]

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "INSERT INTO orchestrator_runs(run_ulid, session_ulid, state, created_at_unix_ms,"
            " updated_at_unix_ms, origin_kind, origin_run_ulid, parent_run_ulid,"
            " triggered_by_principal, request_sha256, input_text) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (run.run_id, run.session_id, run.state, run.created_at_unix_ms, run.updated_at_unix_ms,
             run.origin_kind, run.origin_run_id, run.parent_run_id, run.triggered_by_principal,
             request_hash, stored_input),
        )
        txn.conn.execute(
            "UPDATE orchestrator_sessions SET last_run_ulid = ?, updated_at_unix_ms = ?"
            " WHERE session_ulid = ?",
            (run.run_id, run.created_at_unix_ms, run.session_id),
        )

    return op


def lifecycle(
    run_id: str,
    session_id: str,
    from_state: str | None,
    to_state: str,
    *,
    now_ms: int,
    reason: str,
    actor_kind: str = "system",
    actor_id: str | None = None,
    idempotency_key: str | None = None,
    termination_reason: str | None = None,
    failure_class: str | None = None,
) -> Op:
    def op(txn: Txn) -> None:
        txn.note("run.transition", run_id=run_id, session_id=session_id, to_state=to_state,
                 reason=reason, termination_reason=termination_reason, failure_class=failure_class)
        txn.conn.execute(
            "INSERT INTO run_lifecycle_events(event_ulid, run_ulid, session_ulid, from_state, to_state,"
            " phase, actor_kind, actor_id, correlation_id, idempotency_key, reason, created_at_unix_ms)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (new_ulid(now_ms), run_id, session_id, from_state, to_state, PHASES[to_state], actor_kind,
             actor_id, run_id, idempotency_key, reason, now_ms),
        )

    return op


def set_run_started(run_id: str, now_ms: int, model_id: str | None, provider_id: str | None) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(
            "UPDATE orchestrator_runs SET state = 'in_progress', started_at_unix_ms = ?,"
            " updated_at_unix_ms = ?, model_id = ?, provider_id = ? WHERE run_ulid = ?",
            (now_ms, now_ms, model_id, provider_id, run_id),
        )

    return op


def _stored_text(text: str | None) -> str | None:
    return None if text is None else sanitize_value(text)[0]


def set_run_terminal(
    run_id: str,
    state: str,
    *,
    now_ms: int,
    usage: Usage,
    last_error: str | None,
    termination_reason: str | None,
    reply_text: str | None,
) -> Op:
    """Finish a run. Guarded: a run already terminal is left as it is (returns False)."""
    reply_text = _stored_text(reply_text)

    def op(txn: Txn) -> bool:
        txn.conn.execute(
            "UPDATE orchestrator_runs SET state = ?, completed_at_unix_ms = ?, updated_at_unix_ms = ?,"
            " prompt_tokens = ?, completion_tokens = ?, total_tokens = ?, last_error = ?,"
            " termination_reason = ?, reply_text = ?"
            " WHERE run_ulid = ? AND state NOT IN ('done', 'failed', 'cancelled')",
            (state, now_ms, now_ms, usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
             last_error, termination_reason, reply_text, run_id),
        )
        return txn.conn.changes() > 0

    return op


def finish_run_from_outside(
    run_id: str,
    session_id: str,
    state: str,
    *,
    reason: str,
    termination_reason: str,
    now_ms: int,
    max_payload_bytes: int,
) -> Op:
    """Fail or cancel a run whose actor is gone (crashed, hung, or never started).

    Reads the run's state and tape head inside the transaction, so it composes with
    whatever the run's own (possibly late) writes did. Returns the terminal status
    payload and its seq, or None if the run was already terminal.
    """

    def op(txn: Txn) -> tuple[int, dict[str, Any]] | None:
        row = txn.conn.execute(
            "SELECT state, prompt_tokens, completion_tokens, total_tokens FROM orchestrator_runs"
            " WHERE run_ulid = ?", (run_id,),
        ).fetchone()
        if row is None or row[0] in ("done", "failed", "cancelled"):
            return None
        previous, p, c, t = row
        usage = Usage(p, c, t)
        set_run_terminal(run_id, state, now_ms=now_ms, usage=usage, last_error=reason,
                         termination_reason=termination_reason, reply_text=None)(txn)
        lifecycle(run_id, session_id, previous, state, now_ms=now_ms, reason=reason,
                  termination_reason=termination_reason)(txn)
        close_open_approvals(run_id, f"run {state}: {reason}", now_ms)(txn)  # nobody can act on them
        payload = {
            "kind": state, "message": reason, "termination_reason": termination_reason,
            "reply_text": None, "last_error": reason,
            "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": t},
        }
        seq = txn.tape_next_seq(run_id)
        txn.append_tape(TapeDraft.build(run_id, seq, "status", payload, now_ms=now_ms,
                                        max_payload_bytes=max_payload_bytes))
        return seq, payload

    return op


def close_open_approvals(run_id: str, reason: str, now_ms: int) -> Op:
    def op(txn: Txn) -> int:
        txn.conn.execute(
            "UPDATE approvals SET decision = 'error', decision_scope = 'once', decision_reason = ?,"
            " resolved_at_unix_ms = ?, updated_at_unix_ms = ? WHERE run_ulid = ? AND decision IS NULL",
            (reason[:512], now_ms, now_ms, run_id),
        )
        closed = txn.conn.changes()
        if closed:
            txn.note("approval.resolved", run_id=run_id, decision="error", count=closed)
        return closed

    return op


def set_cancel_requested(run_id: str, reason: str, now_ms: int) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(
            "UPDATE orchestrator_runs SET cancel_requested = 1, cancel_reason = ?, updated_at_unix_ms = ?"
            " WHERE run_ulid = ?",
            (reason, now_ms, run_id),
        )

    return op


def append_tape(entries: Sequence[TapeDraft]) -> Op:
    def op(txn: Txn) -> int:
        for entry in entries:
            txn.append_tape(entry)
        return len(entries)

    return op


def insert_approval(a: Approval, policy_snapshot: dict[str, Any]) -> Op:
    def op(txn: Txn) -> None:
        txn.conn.execute(
            "INSERT INTO approvals(approval_ulid, session_ulid, run_ulid, principal, device_id, channel,"
            " requested_at_unix_ms, expires_at_unix_ms, subject_type, subject_id, proposal_id,"
            " request_summary, policy_snapshot_json, prompt_json, created_at_unix_ms,"
            " updated_at_unix_ms) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (a.approval_id, a.session_id, a.run_id, a.principal, a.device_id, a.channel,
             a.requested_at_unix_ms, a.expires_at_unix_ms, a.subject_type, a.subject_id,
             a.proposal_id, a.request_summary, orjson.dumps(policy_snapshot).decode(),
             orjson.dumps(a.prompt).decode(), a.requested_at_unix_ms, a.requested_at_unix_ms),
        )

    return op


def resolve_approval(
    approval_id: str,
    decision: str,
    *,
    scope: str,
    reason: str,
    ttl_ms: int | None,
    now_ms: int,
) -> Op:
    """Record a decision once: a second decision is a Conflict (upstream allowed it, quirk 13.8)."""

    def op(txn: Txn) -> None:
        txn.conn.execute(
            "UPDATE approvals SET decision = ?, decision_scope = ?, decision_reason = ?,"
            " decision_scope_ttl_ms = ?, resolved_at_unix_ms = ?, updated_at_unix_ms = ?"
            " WHERE approval_ulid = ? AND decision IS NULL",
            (decision, scope, reason, ttl_ms, now_ms, now_ms, approval_id),
        )
        if txn.conn.changes():
            txn.note("approval.resolved", approval_id=approval_id, decision=decision)
            return
        row = txn.conn.execute(
            "SELECT decision FROM approvals WHERE approval_ulid = ?", (approval_id,)
        ).fetchone()
        if row is None:
            raise NotFound(f"approval {approval_id} not found", details={"approval_id": approval_id})
        raise Conflict(
            f"approval {approval_id} was already decided ({row[0]})",
            details={"approval_id": approval_id, "decision": row[0]},
        )

    return op


# --------------------------------------------------------------------------- reads

_SESSION_COLS = (
    "session_ulid, session_key, session_label, principal, device_id, channel, created_at_unix_ms,"
    " updated_at_unix_ms, last_run_ulid, archived_at_unix_ms"
)
_RUN_COLS = (
    "run_ulid, session_ulid, state, created_at_unix_ms, updated_at_unix_ms, started_at_unix_ms,"
    " completed_at_unix_ms, cancel_requested, cancel_reason, prompt_tokens, completion_tokens,"
    " total_tokens, last_error, termination_reason, reply_text, model_id, provider_id, origin_kind,"
    " origin_run_ulid, parent_run_ulid, triggered_by_principal"
)
_APPROVAL_COLS = (
    "approval_ulid, run_ulid, session_ulid, principal, device_id, channel, subject_type, subject_id,"
    " proposal_id, request_summary, prompt_json, requested_at_unix_ms, expires_at_unix_ms, decision,"
    " decision_scope, decision_reason, decision_scope_ttl_ms, resolved_at_unix_ms"
)


def _session(row: tuple[Any, ...] | None) -> Session | None:
    return Session(*row) if row else None


def _run(row: tuple[Any, ...] | None, tape_events: int = 0) -> Run | None:
    if not row:
        return None
    (rid, sid, state, created, updated, started, completed, cancel, cancel_reason, p, c, t, err,
     term, reply, model, provider, origin, origin_run, parent, trig) = row
    return Run(rid, sid, state, created, updated, started, completed, bool(cancel), cancel_reason,
               Usage(p, c, t), err, term, reply, model, provider, origin, origin_run, parent, trig,
               tape_events)


def _approval(row: tuple[Any, ...]) -> Approval:
    (aid, rid, sid, principal, device, channel, stype, subject, proposal, summary, prompt, requested,
     expires, decision, scope, reason, ttl, resolved) = row
    return Approval(aid, rid, sid, principal, device, channel, stype, subject, proposal, summary,
                    orjson.loads(prompt), requested, expires, decision, scope, reason, ttl, resolved)


class Queries:
    """Read queries over one connection; also the SessionLookup for resolution."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn

    def session_by_id(self, session_id: str) -> Session | None:
        return _session(self.conn.execute(
            f"SELECT {_SESSION_COLS} FROM orchestrator_sessions WHERE session_ulid = ?", (session_id,)
        ).fetchone())

    def session_by_key(self, session_key: str) -> Session | None:
        return _session(self.conn.execute(
            f"SELECT {_SESSION_COLS} FROM orchestrator_sessions WHERE session_key = ?", (session_key,)
        ).fetchone())

    def session_by_label(self, label: str, identity: Identity) -> Session | None:
        return _session(self.conn.execute(
            f"SELECT {_SESSION_COLS} FROM orchestrator_sessions WHERE session_label = ?"
            " AND principal = ? AND device_id = ? AND channel IS ? AND archived_at_unix_ms IS NULL"
            " ORDER BY updated_at_unix_ms DESC LIMIT 1",
            (label, identity.principal, identity.device_id, identity.channel),
        ).fetchone())

    def sessions(
        self, identity: Identity, *, after_key: str | None = None, limit: int = 100,
        include_archived: bool = False,
    ) -> list[Session]:
        limit = max(1, min(int(limit), 500))
        rows = self.conn.execute(
            f"SELECT {_SESSION_COLS} FROM orchestrator_sessions WHERE principal = ? AND device_id = ?"
            " AND channel IS ? AND session_key > ? AND (? OR archived_at_unix_ms IS NULL)"
            " ORDER BY session_key LIMIT ?",
            (identity.principal, identity.device_id, identity.channel, after_key or "",
             int(include_archived), limit),
        ).fetchall()
        return [Session(*r) for r in rows]

    def run(self, run_id: str, *, count_tape: bool = False) -> Run | None:
        """``count_tape`` fills ``tape_events`` (a count over the run's tape rows, for
        the API's run record); the actors' reads leave it 0, as ``runs()`` does."""
        row = self.conn.execute(
            f"SELECT {_RUN_COLS} FROM orchestrator_runs WHERE run_ulid = ?", (run_id,)
        ).fetchone()
        if not row or not count_tape:
            return _run(row)
        count = self.conn.execute(
            "SELECT count(*) FROM orchestrator_tape WHERE run_ulid = ?", (run_id,)
        ).fetchone()[0]
        return _run(row, count)

    def history(self, session_id: str, runs: int) -> list[tuple[str, str]]:
        """(input, reply) of the session's last finished runs, oldest first."""
        rows = self.conn.execute(
            "SELECT input_text, reply_text FROM orchestrator_runs WHERE session_ulid = ?"
            " AND state = 'done' ORDER BY created_at_unix_ms DESC LIMIT ?",
            (session_id, runs),
        ).fetchall()
        return [(i or "", r or "") for i, r in reversed(rows)]

    def run_state(self, run_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT state FROM orchestrator_runs WHERE run_ulid = ?", (run_id,)
        ).fetchone()
        return row[0] if row else None

    def run_request_hash(self, run_id: str) -> str | None:
        row = self.conn.execute(
            "SELECT request_sha256 FROM orchestrator_runs WHERE run_ulid = ?", (run_id,)
        ).fetchone()
        return row[0] if row else None

    def runs(self, *, states: Sequence[str] | None = None, session_id: str | None = None,
             limit: int = 100) -> list[Run]:
        clause, args = where({"session_ulid": session_id or None}, {"state": states or ()})
        rows = self.conn.execute(
            f"SELECT {_RUN_COLS} FROM orchestrator_runs {clause} ORDER BY created_at_unix_ms DESC,"
            " run_ulid DESC LIMIT ?",
            (*args, max(1, min(int(limit), 10_000))),
        ).fetchall()
        return [r for r in (_run(row) for row in rows) if r is not None]

    def tape(self, run_id: str) -> list[TapeEvent]:
        return [TapeEvent.from_row(r) for r in self.conn.execute(
            "SELECT run_ulid, seq, event_type, payload_json, created_at_unix_ms, hash"
            " FROM orchestrator_tape WHERE run_ulid = ? ORDER BY seq", (run_id,)
        )]

    def tape_page(self, run_id: str, *, after_seq: int = -1, limit: int = 100,
                  max_bytes: int = MAX_TAPE_PAGE_BYTES) -> dict[str, Any]:
        """A page of the tape with count and byte caps (spec 1.4 'Reading')."""
        limit = max(1, min(int(limit), MAX_TAPE_PAGE))
        events: list[TapeEvent] = []
        used = 0
        for row in self.conn.execute(
            "SELECT run_ulid, seq, event_type, payload_json, created_at_unix_ms, hash"
            " FROM orchestrator_tape WHERE run_ulid = ? AND seq > ? ORDER BY seq LIMIT ?",
            (run_id, after_seq, limit),
        ):
            size = len(row[3])
            if used + size > max_bytes:
                if not events:
                    raise ResourceExhausted(
                        f"tape event {row[1]} alone exceeds the {max_bytes}-byte page limit",
                        details={"seq": row[1], "max_bytes": max_bytes},
                    )
                break
            used += size
            events.append(TapeEvent.from_row(row))
        return {
            "run_id": run_id,
            "requested_after_seq": after_seq,
            "limit": limit,
            "max_response_bytes": max_bytes,
            "returned_bytes": used,
            "next_after_seq": events[-1].seq if events else None,
            "events": events,
        }

    def tape_head(self, run_id: str) -> int:
        row = self.conn.execute(
            "SELECT max(seq) FROM orchestrator_tape WHERE run_ulid = ?", (run_id,)
        ).fetchone()
        return -1 if row[0] is None else int(row[0])

    def approval(self, approval_id: str) -> Approval | None:
        row = self.conn.execute(
            f"SELECT {_APPROVAL_COLS} FROM approvals WHERE approval_ulid = ?", (approval_id,)
        ).fetchone()
        return _approval(row) if row else None

    def approvals(self, *, pending: bool | None = None, run_id: str | None = None,
                  limit: int = 500) -> list[Approval]:
        clauses, args = [], []
        if pending is True:
            clauses.append("decision IS NULL")
        elif pending is False:
            clauses.append("decision IS NOT NULL")
        if run_id:
            clauses.append("run_ulid = ?")
            args.append(run_id)
        clause = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.conn.execute(
            f"SELECT {_APPROVAL_COLS} FROM approvals {clause} ORDER BY requested_at_unix_ms, approval_ulid"
            " LIMIT ?", (*args, max(1, min(int(limit), 500))),
        ).fetchall()
        return [_approval(r) for r in rows]

    def cached_decisions(self, now_ms: int) -> list[Approval]:
        """Decisions that outlive their run: scope session (or timeboxed, unexpired),
        minus those a session reset or archive has since forgotten."""
        cols = ", ".join(f"a.{c.strip()}" for c in _APPROVAL_COLS.split(","))
        rows = self.conn.execute(
            f"SELECT {cols} FROM approvals a JOIN orchestrator_sessions s"
            " ON s.session_ulid = a.session_ulid"
            " WHERE a.decision IN ('allow', 'deny') AND a.decision_scope IN ('session', 'timeboxed')"
            " AND (a.decision_scope_ttl_ms IS NULL OR a.resolved_at_unix_ms + a.decision_scope_ttl_ms > ?)"
            " AND s.archived_at_unix_ms IS NULL"
            " AND a.resolved_at_unix_ms > coalesce(s.approvals_reset_at_unix_ms, -1)"
            " ORDER BY a.resolved_at_unix_ms",
            (now_ms,),
        ).fetchall()
        return [_approval(r) for r in rows]
