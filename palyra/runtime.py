"""The embeddable runtime: ``with palyra.Runtime.start(state_dir) as rt: ...``.

This façade is the one module of ``palyra/`` that assembles the layers above it: it
builds the supervision tree out of the actors, starts it, and offers the embedding
API. Everything it knows durably lives in the journal under ``state_dir``.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import threading
import weakref
from pathlib import Path
from typing import Any

import pykka

from actors.background_queue import BACKGROUND, BackgroundQueueActor, ControlTask, CreateTask
from actors.budget import (
    BUDGET,
    BudgetActor,
    GovernanceHolder,
    PutPolicy,
    PutPricing,
    RecordAlerts,
    RequestOverride,
    initial_view,
)
from actors.diagnostics import collect as collect_diagnostics
from actors.gateway import (
    GATEWAY,
    Admission,
    ArchiveSession,
    CancelRun,
    DecideApproval,
    GatewayActor,
    ResolveSessionRequest,
    StartRun,
)
from actors.hub import EventHub
from actors.journal import JOURNAL, JournalActor, JournalClient, SupervisionRecorder, Write
from actors.learning import LEARNING, LearningActor, Review
from actors.learning import candidates as learning_candidates
from actors.memory import MEMORY, Maintain, MemoryActor
from actors.policy import POLICY, PolicyActor, PolicyHolder, policy_config
from actors.readers import ThreadReaders
from actors.runs import RunsSupervisor
from actors.self_healing import SELF_HEALING, SelfHealingActor
from actors.services import RuntimeServices
from actors.workers import WorkerPool
from palyra.access.registry import ApiTokens
from palyra.access.store import TokenQueries
from palyra.background.store import TaskQueries
from palyra.background.tasks import BackgroundTask
from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.config import Config
from palyra.errors import NotFound, RuntimeStopped
from palyra.governance import BudgetPolicy, PricingRecord, UsageScope
from palyra.governance.store import GovernanceQueries
from palyra.governance.usage import (
    alerts,
    export,
    model_mix,
    principal_breakdown,
    session_breakdown,
    summarize,
    tool_mix,
    usage_query,
)
from palyra.handles import RunHandle
from palyra.healing.store import HealingQueries
from palyra.ids import new_ulid
from palyra.journal.store import (
    ChainReport,
    EventDraft,
    JournalQueries,
    Writer,
    append_op,
    open_writer_connection,
    prepare_state_dir,
)
from palyra.memory import (
    MemoryHit,
    MemoryItem,
    MemoryQueries,
    delete_op,
    ingest_op,
    purge_op,
)
from palyra.observability import RuntimeCounters
from palyra.orchestrator.sessions import Resolution, SessionSelector
from palyra.orchestrator.store import Queries
from palyra.policy import PolicyEngine
from palyra.providers import build_provider
from palyra.records import Approval, Identity, Run, Session, TapeEvent
from palyra.statelock import StateLock
from palyra.tools import default_registry
from supervisors import (
    Address,
    Chaos,
    ChildExit,
    ChildSpec,
    SupervisionEvent,
    start_root,
    supervisor_spec,
)
from supervisors.supervised import Supervised, actor_of

log = logging.getLogger("palyra.runtime")

_running: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _stop_all_runtimes() -> None:
    for rt in list(_running):
        rt.stop()


@dataclasses.dataclass(frozen=True)
class StopReport:
    clean: bool
    reason: str
    leaked: tuple[str, ...] = ()
    unrecorded_events: int = 0


def build_tree(config: Config) -> ChildSpec:
    """The daemon's supervision tree; later subsystems fill the empty slots."""
    sup = config.supervision
    child = {
        "probe_interval": sup.probe_interval,
        "probe_timeout": sup.probe_timeout,
        "shutdown_timeout": sup.shutdown_timeout,
    }
    limits = {"max_restarts": sup.max_restarts, "max_seconds": sup.max_seconds}
    # core is one_for_one, not the rest_for_one of ARCHITECTURE.md: run actors hold no
    # reference into the gateway (they address it by name, and the approval cache is
    # rebuilt from the journal), so a gateway restart has no reason to stop every run.
    core = [
        ChildSpec(name=POLICY, actor=PolicyActor, **child),
        ChildSpec(name=BUDGET, actor=BudgetActor, **child),
        ChildSpec(name=GATEWAY, actor=GatewayActor, **child),
        supervisor_spec("runs", [], actor=RunsSupervisor, max_restarts=sup.max_restarts,
                        max_seconds=sup.max_seconds),
    ]
    return supervisor_spec(
        "root",
        [
            ChildSpec(name=JOURNAL, actor=JournalActor, **child),
            supervisor_spec("core", core, **limits),
            ChildSpec(name=BACKGROUND, actor=BackgroundQueueActor, **child),
            ChildSpec(name=LEARNING, actor=LearningActor, **child),
            ChildSpec(name=MEMORY, actor=MemoryActor, **child),
            # self-healing under its own supervisor, temporary in root: if it keeps failing
            # it gives up (journalled) instead of becoming the thing that loops
            supervisor_spec("healing", [ChildSpec(name=SELF_HEALING, actor=SelfHealingActor, **child)],
                            restart="temporary", max_restarts=3, max_seconds=60),
            supervisor_spec("surfaces", [], **limits),
        ],
        **limits,
    )


class Runtime:
    """A running Palyra: a supervision tree over one state directory."""

    def __init__(self, state_dir: Path, config: Config, clock: Clock) -> None:
        self.state_dir = state_dir
        self.config = config
        self.clock = clock
        self.last_verify: dict[str, Any] | None = None  # the last verify_journal() outcome
        self.services = RuntimeServices(state_dir=state_dir, config=config, clock=clock,
                                        counters=RuntimeCounters(clock))
        self.journal = JournalClient(
            self.services.names, config.journal, clock, retry_for=config.supervision.address_retry_for
        )
        self.services.journal = self.journal
        self._recorder = SupervisionRecorder(self.journal)
        self.services.emit = self._recorder
        self.chaos = Chaos(self.services.names)
        svc = self.services
        svc.hub = EventHub()
        svc.workers = WorkerPool(config.runs.workers)
        svc.provider = build_provider({"kind": config.provider.kind, **config.provider.options})
        svc.tools = default_registry()
        svc.policy = PolicyHolder(
            PolicyEngine.build(policy_config(config.tools, svc.tools.sensitive_tool_names()))
        )
        svc.governance = GovernanceHolder(initial_view(svc))
        svc.readers = ThreadReaders(state_dir, config.journal)
        self.approvals = Approvals(self)
        self.sessions = Sessions(self)
        self.budgets = Budgets(self)
        self.pricing = Pricing(self)
        self.usage = Usage(self)
        self.memory = Memory(self)
        self.tasks = Tasks(self)
        self.incidents = Incidents(self)
        self.learning = Learning(self)
        self.api_tokens = ApiTokens(lambda: TokenQueries(svc.readers.conn()), self.journal.write,
                                    self._send_nowait, clock, self.journal.draft)
        self.aio = AsyncRuntime(self)
        self._lock = threading.Lock()
        self._root: Any = None
        self._stopping = False
        self.stopped = threading.Event()
        self.stop_report: StopReport | None = None
        self._lock_file: StateLock | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        state_dir: str | os.PathLike[str],
        config: Config | dict[str, Any] | None = None,
        *,
        clock: Clock | None = None,
    ) -> Runtime:
        cfg = config if isinstance(config, Config) else Config.from_mapping(config)
        path = prepare_state_dir(state_dir)
        lock = StateLock(path)
        lock.acquire()
        rt = cls(path, cfg, clock or SYSTEM_CLOCK)
        rt._lock_file = lock
        try:
            rt._root = start_root(build_tree(cfg), rt.services, on_exit=rt._on_root_exit)
        except Exception:
            rt._recorder.close()
            rt.services.timers.stop()
            lock.release()
            raise
        _running.add(rt)
        rt.journal.append("runtime.started", {"pid": os.getpid(), "state_dir": str(rt.state_dir)})
        return rt

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, reason: str = "stop requested") -> StopReport:
        """Stop the tree in reverse start order within the shutdown timeouts."""
        with self._lock:
            if self._stopping:
                self.stopped.wait(120)
                return self.stop_report  # type: ignore[return-value]
            self._stopping = True
        try:
            self.api_tokens.flush()  # last-use times still in memory
        except Exception:
            log.warning("could not record API token last-use times at stop", exc_info=True)
        root = self._root
        if root is not None and root.ref.is_alive():
            try:
                root.ref.stop(timeout=120)
            except pykka.Timeout:
                self.services.table.note_leak("root (did not stop within 120s)")
        return self._finish(reason, clean=True)

    def _on_root_exit(self, exit_: ChildExit) -> None:
        if exit_.reason == "normal":
            return
        why = f"root supervisor gave up: {exit_.error}"
        log.error("%s; shutting the runtime down", why)
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        # Not in the root's own thread: it is still unwinding.
        threading.Thread(
            target=self._finish, args=(why, False), name="palyra-shutdown", daemon=True
        ).start()

    def _finish(self, reason: str, clean: bool) -> StopReport:
        unrecorded = self._recorder.close()
        self.services.workers.close()
        self.services.readers.close()
        leaked = self._leaked_threads()
        self.services.timers.stop()
        final = [
            EventDraft.build(e.kind, dataclasses.asdict(e), actor="system", clock=self.clock)
            for e in unrecorded
        ]
        final.append(
            EventDraft.build(
                "runtime.stopped" if clean else "runtime.shutdown",
                {"reason": reason, "clean": clean, "leaked": list(leaked)},
                actor="system",
                clock=self.clock,
            )
        )
        self._write_directly(final)
        for actor in _supervised_actors():
            actor.release_hang()  # let abandoned threads finish instead of lingering
        self.stop_report = StopReport(clean and not leaked, reason, tuple(leaked), 0)
        if self._lock_file is not None:
            self._lock_file.release()
        self.stopped.set()
        _running.discard(self)
        return self.stop_report

    def _write_directly(self, drafts: list[EventDraft]) -> None:
        """After the tree is down this process is the only writer left."""
        try:
            conn = open_writer_connection(self.state_dir, self.config.journal, self.clock)
        except Exception:
            log.exception("could not open the journal to record shutdown")
            return
        try:
            Writer(conn, self.config.journal, self.clock).apply([[append_op(d) for d in drafts]])
        finally:
            conn.close()

    def _leaked_threads(self) -> list[str]:
        leaked = list(self.services.table.leaked)
        for actor in _supervised_actors():
            ours = actor.ctx is not None and actor.ctx.services is self.services
            if ours and not actor.actor_stopped.is_set():
                leaked.append(f"{actor.ctx.path} (still running)")
        return leaked

    # -- embedding API ------------------------------------------------------------------

    def _check_running(self) -> None:
        if self.stopped.is_set():
            raise RuntimeStopped("the runtime is stopped")

    def actors(self) -> list[dict[str, Any]]:
        """Every supervised actor: name, path, alive, restarts, incarnation, ..."""
        return sorted(self.services.table.snapshot(), key=lambda row: row["path"])

    def actor(self, name: str) -> dict[str, Any] | None:
        info = self.services.table.get(name)
        return info.snapshot() if info else None

    def verify_journal(self) -> ChainReport:
        """Recompute the journal's hash chain (and every run tape's) from disk."""
        report = self._journal_queries().verify_chain()
        self.last_verify = {"at_unix_ms": self.clock.now_ms(), "ok": report.ok,
                            "events": report.events, "tapes": report.tapes}
        return report

    def observability(self) -> dict[str, Any]:
        """The runtime counters (what ``/metrics`` exports), with the provider's own call
        totals, the journal commit-latency histogram and the recent-failures ring."""
        self._check_running()
        snapshot = self.services.counters.snapshot()
        totals = self.services.provider.status_snapshot().get("totals") or {}
        snapshot["counters"]["provider"] = {k: v for k, v in sorted(totals.items())
                                            if isinstance(v, int | float)}
        return snapshot

    def recent_events(self, limit: int = 20, kind: str | None = None) -> list[dict[str, Any]]:
        return self._journal_queries().recent(limit, kind)

    def supervision_events(self) -> list[SupervisionEvent]:
        return list(self._recorder.pending)

    def diagnostics(self, deadline: float = 1.0) -> dict[str, Any]:
        """One redacted snapshot of every subsystem, returned within ``deadline`` seconds
        plus the reads; a hung actor is named under ``supervision.unresponsive``."""
        self._check_running()
        return collect_diagnostics(self, deadline)

    # -- runs -------------------------------------------------------------------------

    def _queries(self) -> Queries:
        """Reads on the caller's own connection (apsw cursors are not shareable)."""
        return Queries(self.services.readers.conn())

    def _journal_queries(self) -> JournalQueries:
        return JournalQueries(self.services.readers.conn())

    def _send_nowait(self, op: Any) -> bool:
        """Queue one journal op without waiting or retrying (False if the journal is
        away): for bookkeeping a request path must never block on."""
        ref = self.services.names.get(JOURNAL)
        if ref is None or self.stopped.is_set():
            return False
        try:
            ref.tell(Write((op,)))
        except pykka.ActorDeadError:
            return False
        return True

    def _request(self, name: str, message: Any, timeout: float | None = 30.0) -> Any:
        self._check_running()
        address = Address(self.services.names, name, retry_for=self.config.supervision.address_retry_for,
                          timeout=timeout)
        return address.request(message)

    def send(
        self,
        text: str,
        *,
        session_key: str | None = None,
        session_id: str | None = None,
        session_label: str | None = None,
        principal: str = "user:local",
        device_id: str = "local",
        channel: str | None = None,
        run_id: str | None = None,
        require_existing: bool = False,
        reset_session: bool = False,
        timeout: float | None = 30.0,
    ) -> RunHandle:
        """Start a run; returns once it is durably accepted (idempotent by ``run_id``)."""
        request = StartRun(
            text,
            SessionSelector(session_id, session_key, session_label, require_existing, reset_session),
            Identity(principal, device_id, channel),
            run_id or new_ulid(),
        )
        admission: Admission = self._request(GATEWAY, request, timeout)
        return RunHandle(self, admission.run_id, admission.session_id, admission.session_created)

    def handle(self, run_id: str) -> RunHandle:
        run = self._run(run_id)
        return RunHandle(self, run.run_id, run.session_id)

    def cancel(self, run_id: str, reason: str = "cancelled by request") -> dict[str, Any]:
        return self._request(GATEWAY, CancelRun(run_id, reason))

    def run(self, run_id: str) -> Run:
        """The run's record, with ``tape_events`` counted."""
        return self._run(run_id, count_tape=True)

    def _run(self, run_id: str, *, count_tape: bool = False) -> Run:
        run = self._queries().run(run_id, count_tape=count_tape)
        if run is None:
            raise NotFound(f"run {run_id} not found", details={"run_id": run_id})
        return run

    def run_state(self, run_id: str) -> str:
        state = self._queries().run_state(run_id)
        if state is None:
            raise NotFound(f"run {run_id} not found", details={"run_id": run_id})
        return state

    def runs(self, *, state: str | None = None, session_id: str | None = None,
             limit: int = 100) -> list[Run]:
        return self._queries().runs(states=[state] if state else None, session_id=session_id, limit=limit)

    def tape(self, run_id: str) -> list[TapeEvent]:
        self.run_state(run_id)  # NotFound for an unknown run
        return self._queries().tape(run_id)

    def tape_page(self, run_id: str, *, after_seq: int = -1, limit: int = 100,
                  max_bytes: int = 2 * 1024 * 1024) -> dict[str, Any]:
        self.run_state(run_id)
        return self._queries().tape_page(run_id, after_seq=after_seq, limit=limit, max_bytes=max_bytes)

    def heartbeats(self) -> list[dict[str, Any]]:
        """Live work heartbeats (runs, running background tasks)."""
        return [{"domain": d, "subject_id": s, "last_beat_ms": last, "first_beat_ms": first,
                 "session_id": session}
                for s, (d, last, first, session) in dict(self.services.heartbeats).items()]


class Approvals:
    """``rt.approvals``: pending tool approvals and operator decisions."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def pending(self, run_id: str | None = None) -> list[Approval]:
        return self._rt._queries().approvals(pending=True, run_id=run_id)

    def list(self, *, run_id: str | None = None, pending: bool | None = None) -> list[Approval]:
        return self._rt._queries().approvals(pending=pending, run_id=run_id)

    def get(self, approval_id: str) -> Approval:
        approval = self._rt._queries().approval(approval_id)
        if approval is None:
            raise NotFound(f"approval {approval_id} not found", details={"approval_id": approval_id})
        return approval

    def decide(self, approval_id: str, allow: bool, *, scope: str = "once",
               ttl_ms: int | None = None, reason: str | None = None) -> Approval:
        """Record a decision (once; a second decision is a Conflict) and resume the run."""
        return self._rt._request(GATEWAY, DecideApproval(approval_id, allow, scope, ttl_ms, reason))


class Sessions:
    """``rt.sessions``: resolve, list and archive sessions of an identity."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def resolve(self, *, session_key: str | None = None, session_id: str | None = None,
                session_label: str | None = None, principal: str = "user:local",
                device_id: str = "local", channel: str | None = None,
                require_existing: bool = False, reset_session: bool = False) -> Resolution:
        selector = SessionSelector(session_id, session_key, session_label, require_existing, reset_session)
        return self._rt._request(GATEWAY, ResolveSessionRequest(selector, Identity(principal, device_id, channel)))

    def list(self, *, principal: str = "user:local", device_id: str = "local",
             channel: str | None = None, after_key: str | None = None, limit: int = 100,
             include_archived: bool = False) -> list[Session]:
        return self._rt._queries().sessions(Identity(principal, device_id, channel), after_key=after_key,
                                            limit=limit, include_archived=include_archived)

    def get(self, session_id: str) -> Session:
        session = self._rt._queries().session_by_id(session_id)
        if session is None:
            raise NotFound(f"session {session_id} not found", details={"session_id": session_id})
        return session

    def archive(self, *, session_key: str | None = None, session_id: str | None = None,
                principal: str = "user:local", device_id: str = "local",
                channel: str | None = None) -> dict[str, Any]:
        selector = SessionSelector(session_id, session_key)
        return self._rt._request(GATEWAY, ArchiveSession(selector, Identity(principal, device_id, channel)))


class Budgets:
    """``rt.budgets``: budget policies (plain mappings with the record's field names, or
    ``BudgetPolicy``), their evaluation and override requests."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def put(self, policy: Any, *, principal: str = "user:local") -> BudgetPolicy:
        return self._rt._request(BUDGET, PutPolicy(policy, principal))

    def list(self) -> list[BudgetPolicy]:
        return list(self._rt.services.governance.view.policies)

    def get(self, policy_id: str) -> BudgetPolicy:
        for policy in self.list():
            if policy.policy_id == policy_id:
                return policy
        raise NotFound(f"budget policy {policy_id} not found", details={"policy_id": policy_id})

    def evaluate(self, scope: UsageScope | dict[str, Any] | None = None) -> dict[str, Any]:
        if scope is None:
            scope = UsageScope("user:local")
        elif isinstance(scope, dict):
            scope = UsageScope(**scope)
        return Address(self._rt.services.names, BUDGET).call("evaluate", scope)

    def consumed(self, policy_id: str) -> dict[str, int]:
        return Address(self._rt.services.names, BUDGET).call("consumed", policy_id)

    def reserved(self) -> dict[str, Any]:
        return Address(self._rt.services.names, BUDGET).call("reserved")

    def request_override(self, policy_id: str, reason: str | None = None, *,
                         principal: str = "user:local") -> Approval:
        """Idempotent while one is pending; decide it with ``rt.approvals.decide``."""
        return self._rt._request(BUDGET, RequestOverride(policy_id, reason, principal))


class Pricing:
    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def put(self, record: Any) -> PricingRecord:
        return self._rt._request(BUDGET, PutPricing(record))

    def list(self) -> list[PricingRecord]:
        return list(self._rt.services.governance.view.pricing)


class Usage:
    """``rt.usage``: aggregations of section 3.5 over the runs in a window."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def _window(self, start: int | None, end: int | None, bucket: str = "auto") -> Any:
        return usage_query(start, end, bucket, now_ms=self._rt.clock.now_ms())

    def _gq(self) -> GovernanceQueries:
        return GovernanceQueries(self._rt._queries().conn)

    def summary(self, start: int | None = None, end: int | None = None, bucket: str = "auto") -> dict[str, Any]:
        q = self._window(start, end, bucket)
        records = self._gq().usage_records(q.start_at_unix_ms, q.end_at_unix_ms)
        return summarize(records, q.start_at_unix_ms, q.end_at_unix_ms, q.bucket)

    def model_mix(self, start: int | None = None, end: int | None = None) -> list[dict[str, Any]]:
        q = self._window(start, end)
        view = self._rt.services.governance.view
        return model_mix(self._gq().usage_records(q.start_at_unix_ms, q.end_at_unix_ms), view.default.model_id,
                         view.default.provider_kind)

    def tool_mix(self, start: int | None = None, end: int | None = None) -> list[dict[str, Any]]:
        q = self._window(start, end)
        return tool_mix(self._gq().tool_proposals(q.start_at_unix_ms, q.end_at_unix_ms))

    def sessions(self, start: int | None = None, end: int | None = None, *, limit: int = 10,
                 cursor: str | None = None) -> dict[str, Any]:
        """Per-session breakdown, most tokens first (``{items, next_cursor}``)."""
        q = self._window(start, end)
        records = self._gq().usage_records(q.start_at_unix_ms, q.end_at_unix_ms)
        return session_breakdown(records, limit=limit, cursor=cursor)

    def principals(self, start: int | None = None, end: int | None = None, *, limit: int = 10,
                   cursor: str | None = None) -> dict[str, Any]:
        q = self._window(start, end)
        records = self._gq().usage_records(q.start_at_unix_ms, q.end_at_unix_ms)
        return principal_breakdown(records, limit=limit, cursor=cursor)

    def export(self, start: int | None = None, end: int | None = None, dataset: str = "runs",
               bucket: str = "auto") -> dict[str, Any]:
        """Flat rows for a CSV/JSON export (``dataset`` runs or timeline) with their
        ``columns`` in order."""
        q = self._window(start, end, bucket)
        records = self._gq().usage_records(q.start_at_unix_ms, q.end_at_unix_ms)
        return export(records, q.start_at_unix_ms, q.end_at_unix_ms, dataset, bucket)

    def routing_decisions(self, *, run_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return self._gq().routing_decisions(run_id=run_id, limit=limit)

    def alerts(self, start: int | None = None, end: int | None = None) -> list[dict[str, Any]]:
        """Evaluate the window (cost spike, model mix, provider health), record what it
        finds (deduplicated: a repeat bumps ``occurrence_count``) next to the budget
        alerts recorded as runs hit limits, and return the stored alerts."""
        q = self._window(start, end)
        records = self._gq().usage_records(q.start_at_unix_ms, q.end_at_unix_ms)
        provider = self._rt.services.provider
        health = {provider.provider_id: provider.status_snapshot().get("health", "ok")}
        self._rt._request(BUDGET, RecordAlerts(alerts(records, health=health)))
        return self._gq().alerts()


class Tasks:
    """``rt.tasks``: durable background work; prompt tasks run as real runs."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def create(self, *, text: str, kind: str = "background_prompt", session_key: str | None = None,
               session_id: str | None = None, principal: str = "user:local", device_id: str = "local",
               channel: str | None = None, parent_run_id: str | None = None,
               **options: Any) -> BackgroundTask:
        """``options``: priority, max_attempts, budget_tokens, not_before_unix_ms,
        expires_at_unix_ms, notification_target, delegation, parameter_delta.
        ``parent_run_id``: cancelling that run cancels the task and its own run."""
        resolution = self._rt.sessions.resolve(session_key=session_key, session_id=session_id,
                                               principal=principal, device_id=device_id, channel=channel)
        body = {"text": text, "task_kind": kind, **options}
        identity = Identity(principal, device_id, channel)
        return self._rt._request(BACKGROUND, CreateTask(body, resolution.session.session_id, identity,
                                                        parent_run_id))

    def get(self, task_id: str) -> BackgroundTask:
        task = TaskQueries(self._rt.services.readers.conn()).task(task_id)
        if task is None:
            raise NotFound(f"background task {task_id} not found", details={"task_id": task_id})
        return task

    def list(self, *, session_id: str | None = None, principal: str | None = None,
             state: str | None = None, limit: int = 100) -> list[BackgroundTask]:
        """Newest first; ``state`` accepts the aliases (pending, in_progress, ...)."""
        return TaskQueries(self._rt.services.readers.conn()).tasks(
            session_id=session_id, owner_principal=principal,
            states=None if state is None else (state,), limit=limit)

    def pause(self, task_id: str) -> BackgroundTask:
        return self._rt._request(BACKGROUND, ControlTask(task_id, "pause"))

    def resume(self, task_id: str) -> BackgroundTask:
        return self._rt._request(BACKGROUND, ControlTask(task_id, "resume"))

    def retry(self, task_id: str) -> BackgroundTask:
        return self._rt._request(BACKGROUND, ControlTask(task_id, "retry"))

    def cancel(self, task_id: str) -> BackgroundTask:
        return self._rt._request(BACKGROUND, ControlTask(task_id, "cancel"))


class Learning:
    """``rt.learning``: candidates learned from finished runs, and their review."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def candidates(self, *, principal: str | None = None, status: str | None = None,
                   session_id: str | None = None, limit: int = 100) -> list[Any]:
        return learning_candidates(self._rt.services.readers.conn(), principal=principal,
                                   status=status, session_id=session_id, limit=limit)

    def review(self, candidate_id: str, status: str, *, principal: str = "user:local",
               reason: str | None = None) -> Any:
        """Accept or reject (with history); an accepted durable fact goes to memory."""
        return self._rt._request(LEARNING, Review(candidate_id, status, principal, reason))


class Incidents:
    """``rt.incidents``: what self-healing found and did (persisted)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def list(self, *, active: bool = False, limit: int = 100) -> list[Any]:
        return HealingQueries(self._rt.services.readers.conn()).incidents(active_only=active, limit=limit)

    def attempts(self, incident_id: str | None = None) -> list[Any]:
        return HealingQueries(self._rt.services.readers.conn()).attempts(incident_id)

    def check_now(self) -> int:
        """Run one self-healing loop now (otherwise it runs every loop interval)."""
        return Address(self._rt.services.names, SELF_HEALING).call("run_once")


class Memory:
    """``rt.memory``: durable facts and summaries, searched by FTS5 + hash embeddings."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    def ingest(self, text: str, *, principal: str = "user:local", channel: str | None = None,
               session_id: str | None = None, scope: str | None = None, source: str = "manual",
               tags: tuple[str, ...] = (), confidence: float | None = None,
               ttl_ms: int | None = None) -> MemoryItem:
        now = self._rt.clock.now_ms()
        item = MemoryItem.build(
            text, principal=principal, now_ms=now, channel=channel, session_id=session_id,
            scope=scope, source=source, tags=tags, confidence=confidence,
            ttl_unix_ms=None if ttl_ms is None else now + ttl_ms,
        )
        return self._rt.journal.write(ingest_op(item))

    def search(self, query: str, *, principal: str = "user:local", channel: str | None = None,
               session_id: str | None = None, limit: int = 8, min_score: float = 0.0) -> list[MemoryHit]:
        return MemoryQueries(self._rt.services.readers.conn(), self._rt.clock).search(
            query, principal, channel=channel, session_id=session_id, limit=limit,
            min_score=min_score,
        )

    def get(self, memory_id: str, *, principal: str = "user:local") -> MemoryItem:
        item = MemoryQueries(self._rt.services.readers.conn(), self._rt.clock).get(memory_id, principal)
        if item is None:
            raise NotFound(f"memory item {memory_id} not found", details={"memory_id": memory_id})
        return item

    def delete(self, memory_id: str, *, principal: str = "user:local") -> bool:
        return self._rt.journal.write(delete_op(memory_id, principal))

    def maintain(self) -> dict[str, Any]:
        """Run one retention and embedding-backfill pass now (it also runs on a timer)."""
        return self._rt._request(MEMORY, Maintain())

    def purge(self, *, principal: str = "user:local", channel: str | None = None,
              session_id: str | None = None) -> int:
        return self._rt.journal.write(purge_op(principal, channel=channel, session_id=session_id))


class AsyncRuntime:
    """``rt.aio``: the trio twin of the embedding API (same messages, no thread per wait)."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt

    async def _request(self, name: str, message: Any, timeout: float | None = 30.0) -> Any:
        from surfaces import bridge

        self._rt._check_running()
        return await bridge.request(self._rt.services.names, name, message, timeout=timeout,
                                    retry_for=self._rt.config.supervision.address_retry_for)

    async def send(self, text: str, *, session_key: str | None = None, session_id: str | None = None,
                   session_label: str | None = None, principal: str = "user:local",
                   device_id: str = "local", channel: str | None = None, run_id: str | None = None,
                   require_existing: bool = False, reset_session: bool = False,
                   timeout: float | None = 30.0) -> RunHandle:
        request = StartRun(
            text,
            SessionSelector(session_id, session_key, session_label, require_existing, reset_session),
            Identity(principal, device_id, channel),
            run_id or new_ulid(),
        )
        admission: Admission = await self._request(GATEWAY, request, timeout)
        return RunHandle(self._rt, admission.run_id, admission.session_id, admission.session_created)

    async def cancel(self, run_id: str, reason: str = "cancelled by request") -> dict[str, Any]:
        return await self._request(GATEWAY, CancelRun(run_id, reason))

    async def decide(self, approval_id: str, allow: bool, *, scope: str = "once",
                     ttl_ms: int | None = None, reason: str | None = None) -> Approval:
        return await self._request(GATEWAY, DecideApproval(approval_id, allow, scope, ttl_ms, reason))


def _supervised_actors() -> list[Supervised]:
    found = []
    for ref in pykka.ActorRegistry.get_all():
        actor = actor_of(ref)
        if actor is not None:
            found.append(actor)
    return found
