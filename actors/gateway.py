"""The gateway actor: session resolution, run admission, cancellation, approval decisions.

Admission is durable before it is acknowledged: the session and the ``accepted`` run
(with its first tape steps) are committed by the journal, then the run's actor is
started, then the caller is answered. The gateway never blocks on the journal: each
write's commit comes back as a message and the admission continues from there, so
the gateway keeps answering liveness probes and other callers meanwhile.

Requests are idempotent by run id, so a caller whose request was lost with a crashed
gateway incarnation simply sends it again (name-addressed requests do this
automatically for requests that were never handled).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import pykka

from actors.budget import OVERRIDE_SUBJECT, OverrideDecided, tell_budget
from actors.journal import Write
from actors.run import (
    ApprovalDecided,
    Begin,
    Cancel,
    RunActor,
    RunSpec,
    finished_outside,
    run_actor_name,
)
from actors.writing import AsyncJournalWrites, tell_by_name
from palyra.errors import (
    ActorUnavailable,
    AlreadyExists,
    Conflict,
    IdentityMismatch,
    InvalidInput,
    NotFound,
    PalyraError,
    PayloadTooLarge,
)
from palyra.healing import store as hstore
from palyra.healing.incidents import open_or_update
from palyra.healing.recovery import recovery_plan
from palyra.ids import is_ulid, new_ulid
from palyra.journal.store import TapeDraft, connect
from palyra.orchestrator import store
from palyra.orchestrator.approvals import validate_scope
from palyra.orchestrator.sessions import (
    Resolution,
    SessionSelector,
    archived_key,
    resolve_session,
    validate_identity,
)
from palyra.orchestrator.state import ACCEPTED, CANCELLED, FAILED, IN_PROGRESS, TERMINAL
from palyra.providers import Message
from palyra.records import Approval, Identity, Session
from supervisors.names import Address
from supervisors.request import Request
from supervisors.spec import ChildSpec
from supervisors.supervised import Supervised
from supervisors.supervisor import LaunchChild

log = logging.getLogger("palyra.gateway")

GATEWAY = "gateway"
RUNS = "runs"
HISTORY_RUNS = 3  # previous runs of the session whose turns are replayed to the model


# -- requests --------------------------------------------------------------------------------


class StartRun(Request):
    __slots__ = ("text", "selector", "identity", "run_id", "origin_kind")

    def __init__(self, text: str, selector: SessionSelector, identity: Identity, run_id: str,
                 origin_kind: str = "manual") -> None:
        super().__init__()
        self.text, self.selector, self.identity = text, selector, identity
        self.run_id, self.origin_kind = run_id, origin_kind


@dataclasses.dataclass(frozen=True)
class Admission:
    run_id: str
    session_id: str
    session_created: bool
    state: str


class CancelRun(Request):
    __slots__ = ("run_id", "reason")

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__()
        self.run_id, self.reason = run_id, reason


class DecideApproval(Request):
    __slots__ = ("approval_id", "allow", "scope", "ttl_ms", "reason")

    def __init__(self, approval_id: str, allow: bool, scope: str, ttl_ms: int | None,
                 reason: str | None) -> None:
        super().__init__()
        self.approval_id, self.allow, self.scope = approval_id, allow, scope
        self.ttl_ms, self.reason = ttl_ms, reason


class ResolveSessionRequest(Request):
    __slots__ = ("selector", "identity")

    def __init__(self, selector: SessionSelector, identity: Identity) -> None:
        super().__init__()
        self.selector, self.identity = selector, identity


class ArchiveSession(Request):
    __slots__ = ("selector", "identity")

    def __init__(self, selector: SessionSelector, identity: Identity) -> None:
        super().__init__()
        self.selector, self.identity = selector, identity


class RecoverRuns:
    """Look for runs whose actor is gone: relaunch ``accepted`` ones, fail the rest.
    Sent by the gateway to itself at start and by the runs supervisor at every start."""


@dataclasses.dataclass(frozen=True, slots=True)
class _RecoverRun:
    run_id: str


class _PendingLookup:
    """Session lookup that also sees sessions whose creation is not committed yet."""

    def __init__(self, queries: store.Queries, pending: dict[str, Session]) -> None:
        self.q, self.pending = queries, pending

    def session_by_id(self, session_id: str) -> Session | None:
        for s in self.pending.values():
            if s.session_id == session_id:
                return s
        return self.q.session_by_id(session_id)

    def session_by_key(self, session_key: str) -> Session | None:
        return self.pending.get(session_key) or self.q.session_by_key(session_key)

    def session_by_label(self, label: str, identity: Identity) -> Session | None:
        return self.q.session_by_label(label, identity)


class GatewayActor(AsyncJournalWrites, Supervised):
    def init(self) -> None:
        svc = self.services
        self.clock = svc.clock
        self.conn = connect(svc.state_dir, svc.config.journal)
        self.q = store.Queries(self.conn)
        self.runs = Address(svc.names, RUNS, retry_for=10.0, timeout=10.0)
        self._pending_sessions: dict[str, Session] = {}  # by key, until committed
        self._pending_runs: dict[str, tuple[str, list[StartRun]]] = {}
        cache = svc.approval_cache
        for approval in self.q.cached_decisions(self.clock.now_ms()):
            cache.remember(approval)
        if self.services.names.get(RUNS) is not None:
            # Restarted alone: look for runs a previous incarnation left behind. At start-up
            # the runs supervisor (started after us) sends RecoverRuns once it is up;
            # recovering before that would block on it while it waits for us.
            self.actor_ref.tell(RecoverRuns())

    def terminate(self) -> None:
        # Admissions in flight were never answered: fail them as never handled, so
        # name-addressed callers resend them (run starts are idempotent by run id).
        for _, waiters in getattr(self, "_pending_runs", {}).values():
            for request in waiters:
                request.fail(pykka.ActorDeadError("gateway stopped during admission"))
        self.fail_waiting_callers()
        self.close_reader()

    def handlers(self) -> dict[type, Any]:
        return {
            StartRun: self._start_run,
            CancelRun: self._cancel_run,
            DecideApproval: self._decide,
            ResolveSessionRequest: self._resolve_session,
            ArchiveSession: self._archive_session,
            RecoverRuns: self._recover,
            _RecoverRun: self._recover_run,
        }

    # -- admission ------------------------------------------------------------------------

    def _start_run(self, req: StartRun) -> None:
        try:
            admission = self._admit(req)
        except PalyraError as exc:
            req.fail(exc)
            return
        if admission is not None:
            req.reply(admission)

    def _admit(self, req: StartRun) -> Admission | None:
        runs_cfg = self.services.config.runs
        if not isinstance(req.text, str) or not req.text.strip():
            raise InvalidInput("message text must be a non-empty string", details={"field": "text"})
        size = len(req.text.encode("utf-8", "surrogatepass"))
        if size > runs_cfg.max_input_bytes:
            raise PayloadTooLarge(
                f"message text is {size} bytes; the limit is {runs_cfg.max_input_bytes}",
                details={"field": "text", "limit": runs_cfg.max_input_bytes},
            )
        identity = validate_identity(req.identity)
        if not is_ulid(req.run_id):
            raise InvalidInput("run_id must be a canonical ULID", details={"field": "run_id"})
        fingerprint = store.request_sha256({
            "run_id": req.run_id, "text": req.text, "principal": identity.principal,
            "device_id": identity.device_id, "channel": identity.channel,
            "session_id": req.selector.session_id, "session_key": req.selector.session_key,
            "session_label": req.selector.session_label, "origin_kind": req.origin_kind,
        })
        pending = self._pending_runs.get(req.run_id)
        if pending is not None:
            if pending[0] != fingerprint:
                raise AlreadyExists(f"run {req.run_id} exists with a different request")
            pending[1].append(req)
            return None
        existing = self.q.run_request_hash(req.run_id)
        if existing is not None:
            if existing != fingerprint:
                raise AlreadyExists(f"run {req.run_id} exists with a different request",
                                    details={"run_id": req.run_id})
            run = self.q.run(req.run_id)
            assert run is not None
            if run.state == ACCEPTED and self.services.names.get(run_actor_name(run.run_id)) is None:
                self._launch_existing(run.run_id)
            return Admission(run.run_id, run.session_id, False, run.state)

        now = self.clock.now_ms()
        resolution = resolve_session(
            _PendingLookup(self.q, self._pending_sessions), req.selector, identity,
            now_ms=now, new_id=new_ulid(now),
        )
        session = dataclasses.replace(resolution.session, last_run_id=req.run_id)
        ops = self._session_ops(resolution, session)
        history = () if resolution.created or resolution.reset_applied else self._history(session.session_id)
        run = store.Run(req.run_id, session.session_id, ACCEPTED, now, now,
                        origin_kind=req.origin_kind, triggered_by_principal=identity.principal)
        limit = self.services.config.journal.max_payload_bytes
        ops += [
            store.insert_run(run, fingerprint, req.text),
            store.lifecycle(run.run_id, session.session_id, None, ACCEPTED, now_ms=now,
                            reason="run.accepted", actor_kind="principal",
                            actor_id=identity.principal, idempotency_key=f"run:start:{run.run_id}"),
            store.append_tape((
                TapeDraft.build(run.run_id, 0, "status", {
                    "kind": ACCEPTED,
                    "message": f"accepted session={session.session_id} principal={identity.principal}",
                }, now_ms=now, max_payload_bytes=limit),
                TapeDraft.build(run.run_id, 1, "message.received", {"text": req.text},
                                now_ms=now, max_payload_bytes=limit),
            )),
        ]
        if resolution.created:
            self._pending_sessions[session.session_key] = session
        self._pending_runs[run.run_id] = (fingerprint, [req])
        spec = RunSpec(run.run_id, session, req.text, 2, history)
        self.write_async(ops, lambda write: self._admitted(write, spec, resolution.created))
        return None

    def _session_ops(self, resolution: Resolution, session: Session) -> list[Any]:
        if resolution.created:
            return [store.insert_session(session)]
        if resolution.reset_applied:
            self.services.approval_cache.forget_session(session.session_id)
        return [store.update_session(session, label_changed=resolution.label_changed,
                                     reset=resolution.reset_applied)]

    def _history(self, session_id: str) -> tuple[Message, ...]:
        messages: list[Message] = []
        for text, reply in self.q.history(session_id, HISTORY_RUNS):
            messages += [Message("user", text), Message("assistant", reply)]
        return tuple(messages)

    def _admitted(self, write: Write, spec: RunSpec, created: bool) -> None:
        session = spec.session
        if created and self._pending_sessions.get(session.session_key) is session:
            del self._pending_sessions[session.session_key]
        fingerprint, waiters = self._pending_runs.pop(spec.run_id, ("", []))
        if write.error is not None and self.q.run_request_hash(spec.run_id) == fingerprint:
            # A resent admission whose first write did commit (spec 1.2: a duplicate
            # insert during a retry is success): start the run if nobody did.
            self._launch_existing(spec.run_id)
            run = self.q.run(spec.run_id)
            admission = Admission(spec.run_id, session.session_id, False, run.state if run else ACCEPTED)
            for request in waiters:
                request.reply(admission)
            return
        if write.error is not None:
            error = write.error
            if not isinstance(error, PalyraError):
                error = InvalidInput(f"run could not be admitted: {error}")
            for request in waiters:
                request.fail(error)
            return
        try:
            self._launch(spec)
        except PalyraError as exc:
            self._fail_unstarted(spec.run_id, spec.session.session_id, f"run actor failed to start: {exc}")
            for request in waiters:
                request.fail(ActorUnavailable(f"run {spec.run_id} was accepted but could not start: {exc}"))
            return
        admission = Admission(spec.run_id, session.session_id, created, ACCEPTED)
        for request in waiters:
            request.reply(admission)

    def _launch(self, spec: RunSpec) -> None:
        sup = self.services.config.supervision
        child = ChildSpec(
            name=run_actor_name(spec.run_id), actor=RunActor, kwargs={"spec": spec},
            restart="temporary", probe_interval=sup.probe_interval, probe_timeout=sup.probe_timeout,
            shutdown_timeout=sup.shutdown_timeout,
        )
        # The gateway never waits for a run actor to start: its supervisor starts it and
        # hands it Begin, drops a duplicate, and fails the run if the start fails.
        self.runs.tell(LaunchChild(child, Begin()))

    def _launch_existing(self, run_id: str) -> None:
        """Start the actor of an ``accepted`` run that has none (after a restart)."""
        run = self.q.run(run_id)
        if run is None or run.state != ACCEPTED:
            return
        session = self.q.session_by_id(run.session_id)
        tape = self.q.tape(run_id)
        text = next((e.payload.get("text", "") for e in tape if e.event_type == "message.received"), "")
        if session is None or not text:
            self._fail_unstarted(run_id, run.session_id, "accepted run has no recorded input")
            return
        spec = RunSpec(run_id, session, text, tape[-1].seq + 1 if tape else 0,
                       self._history(session.session_id))
        try:
            self._launch(spec)
        except PalyraError as exc:
            self._fail_unstarted(run_id, run.session_id, f"run actor failed to start: {exc}")

    def _fail_unstarted(self, run_id: str, session_id: str, reason: str,
                        state: str = FAILED, then: Callable[[Any], None] | None = None) -> None:
        op = store.finish_run_from_outside(
            run_id, session_id, state, reason=reason,
            termination_reason="cancellation" if state == CANCELLED else "runtime_failure",
            now_ms=self.clock.now_ms(), max_payload_bytes=self.services.config.journal.max_payload_bytes,
        )

        def done(write: Write) -> None:
            finished_outside(self.services, run_id, write.value if write.error is None else None)
            if then is not None:
                then(write)

        self.write_async([op], done)

    def _recover(self, _: RecoverRuns) -> None:
        """Runs left behind by a previous incarnation or process: one message per run,
        so a long recovery never keeps the gateway from answering its liveness probes."""
        for run in self.q.runs(states=[ACCEPTED, IN_PROGRESS], limit=10_000):
            self.actor_ref.tell(_RecoverRun(run.run_id))

    def _recover_run(self, msg: _RecoverRun) -> None:
        run = self.q.run(msg.run_id)
        if run is None or run.state not in (ACCEPTED, IN_PROGRESS):
            return
        if self.services.names.get(run_actor_name(run.run_id)) is not None:
            # A decision committed by a previous incarnation may never have reached the
            # run: tell it again (a run ignores decisions it is not waiting for).
            for approval in self.q.approvals(pending=False, run_id=run.run_id):
                self._apply_decision(approval)
            return
        if run.state == ACCEPTED:
            self._launch_existing(run.run_id)
        else:
            self._resume_or_fail(run.run_id, run.session_id)

    def _resume_or_fail(self, run_id: str, session_id: str) -> None:
        """A run left in progress with no actor (its process or its supervisor died).

        The tape decides (palyra.healing.recovery): a run with a tool execution in flight
        is failed with an incident, never re-run blindly; otherwise it resumes from its
        recorded steps, at most three times.
        """
        tape = self.q.tape(run_id)
        plan = recovery_plan(tape, run_id=run_id)
        session = self.q.session_by_id(session_id)
        text = next((e.payload.get("text", "") for e in tape if e.event_type == "message.received"), "")
        if plan.action == "resume" and session is not None and plan.messages:
            spec = RunSpec(run_id, session, text, tape[-1].seq + 1, (), resume=plan)
            try:
                # a pending approval stays open: the resumed run takes it over (actors/run.py)
                self._launch(spec)
                return
            except PalyraError as exc:
                plan = dataclasses.replace(plan, reason=f"resume failed to start: {exc}")
        now = self.clock.now_ms()
        ops = []
        if plan.observation is not None:
            ops.append(hstore.save_incident(open_or_update(None, plan.observation, now_ms=now)))
        reason = f"interrupted: {plan.reason}"
        self.write_async(ops, lambda w: self._fail_unstarted(run_id, session_id, reason)) if ops \
            else self._fail_unstarted(run_id, session_id, reason)

    # -- cancellation -------------------------------------------------------------------

    def _cancel_run(self, req: CancelRun) -> None:
        reason = (req.reason or "cancelled by request").strip()[:512]
        run = self.q.run(req.run_id) if is_ulid(req.run_id) else None
        if run is None and req.run_id in self._pending_runs:
            req.fail(InvalidInput(f"run {req.run_id} is still being admitted; cancel again shortly"))
            return
        if run is None:
            req.fail(NotFound(f"run {req.run_id} not found", details={"run_id": req.run_id}))
            return
        if run.state in TERMINAL:
            req.reply({"run_id": run.run_id, "cancel_requested": False, "state": run.state})
            return
        if tell_by_name(self.services.names, run_actor_name(run.run_id), Cancel(reason)):
            req.reply({"run_id": run.run_id, "cancel_requested": True, "state": run.state})
            return
        self.write_async([store.set_cancel_requested(run.run_id, reason, self.clock.now_ms())], lambda w: None)
        self._fail_unstarted(
            run.run_id, run.session_id, f"cancelled by request: {reason}", state=CANCELLED,
            then=lambda w: req.reply({"run_id": run.run_id, "cancel_requested": True, "state": CANCELLED}),
        )

    # -- approvals -------------------------------------------------------------------------

    def _decide(self, req: DecideApproval) -> None:
        try:
            validate_scope(req.scope, req.ttl_ms)
            if not isinstance(req.allow, bool):
                raise InvalidInput("allow must be true or false", details={"field": "allow"})
            approval = self.q.approval(req.approval_id) if is_ulid(req.approval_id) else None
            if approval is None:
                raise NotFound(f"approval {req.approval_id} not found",
                               details={"approval_id": req.approval_id})
        except PalyraError as exc:
            req.fail(exc)
            return
        decision = "allow" if req.allow else "deny"
        if approval.decision is not None:
            if approval.decision == decision and approval.decision_scope == req.scope:
                # The same decision again (a retry after a lost answer): apply, don't fail.
                self._apply_decision(approval)
                req.reply(approval)
            else:
                req.fail(Conflict(f"approval {approval.approval_id} was already decided "
                                  f"({approval.decision})",
                                  details={"approval_id": approval.approval_id,
                                           "decision": approval.decision}))
            return
        reason = (req.reason or ("approved_by_operator" if req.allow else "denied_by_operator"))[:512]
        now = self.clock.now_ms()
        op = store.resolve_approval(approval.approval_id, decision, scope=req.scope, reason=reason,
                                    ttl_ms=req.ttl_ms, now_ms=now)

        def done(write: Write) -> None:
            if write.error is not None:
                req.fail(write.error)
                return
            decided = dataclasses.replace(
                approval, decision=decision, decision_scope=req.scope, decision_reason=reason,
                decision_scope_ttl_ms=req.ttl_ms, resolved_at_unix_ms=now,
            )
            self._apply_decision(decided)
            req.reply(decided)

        self.write_async([op], done, caller=req)

    def _apply_decision(self, decided: Approval) -> None:
        """Tell everyone who acts on a recorded decision (idempotent on their side)."""
        if decided.decision not in ("allow", "deny"):
            return
        self.services.approval_cache.remember(decided)
        if decided.subject_id.startswith(OVERRIDE_SUBJECT):
            tell_budget(self.services, OverrideDecided(decided))
        tell_by_name(self.services.names, run_actor_name(decided.run_id), ApprovalDecided(
            decided.approval_id, decided.decision == "allow", decided.decision_scope or "once",
            decided.decision_reason or "", decided.decision_scope_ttl_ms))

    # -- sessions -------------------------------------------------------------------------

    def _resolve_session(self, req: ResolveSessionRequest) -> None:
        try:
            identity = validate_identity(req.identity)
            now = self.clock.now_ms()
            resolution = resolve_session(_PendingLookup(self.q, self._pending_sessions), req.selector,
                                         identity, now_ms=now, new_id=new_ulid(now))
        except PalyraError as exc:
            req.fail(exc)
            return
        ops = self._session_ops(resolution, resolution.session)
        if resolution.created:
            self._pending_sessions[resolution.session.session_key] = resolution.session

        def done(write: Write) -> None:
            self._pending_sessions.pop(resolution.session.session_key, None)
            if write.error is not None:
                req.fail(write.error)
            else:
                req.reply(resolution)

        self.write_async(ops, done, caller=req)

    def _archive_session(self, req: ArchiveSession) -> None:
        try:
            identity = validate_identity(req.identity)
            selector = dataclasses.replace(req.selector, require_existing=True)
            lookup = _PendingLookup(self.q, self._pending_sessions)
            session = (lookup.session_by_id(selector.session_id) if selector.session_id
                       else lookup.session_by_key(selector.session_key or ""))
            if session is None:
                raise NotFound("session not found", details={"selector": selector.session_id or selector.session_key})
            if session.identity != identity:
                raise IdentityMismatch("session belongs to another identity")
        except PalyraError as exc:
            req.fail(exc)
            return
        if session.archived_at_unix_ms is not None:
            req.reply({"session_id": session.session_id, "cleaned": False,
                       "previous_session_key": session.session_key})
            return
        now = self.clock.now_ms()
        self.services.approval_cache.forget_session(session.session_id)
        runs = self.conn.execute("SELECT count(*) FROM orchestrator_runs WHERE session_ulid = ?",
                                 (session.session_id,)).fetchone()[0]

        def done(write: Write) -> None:
            if write.error is not None:
                req.fail(write.error)
            else:
                req.reply({"session_id": session.session_id, "cleaned": True,
                           "previous_session_key": session.session_key, "run_count": runs})

        self.write_async([store.archive_session(session.session_id, archived_key(session.session_id, now), now)],
                    done)
