"""One actor per active run: the agent loop as a message-driven state machine.

The actor never blocks. Provider calls and tool executions run on worker threads and
report back by message; journal writes go out one at a time and their commits come
back as messages, so the actor always answers liveness probes and a ``Cancel`` is
handled as soon as it arrives (the worker it interrupts is told through an event).

Durability points (the actor waits for the commit before going on): before a tool
executes (its proposal and allow decision are on the tape, so a crash can never
re-run a side effect blindly), when an approval is requested, and at the terminal
state (the terminal event is published only once it is durable). Everything else is
written in order behind those points without waiting.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson

from actors.budget import (
    BUDGET,
    OverrideResolved,
    Release,
    ReleaseRun,
    RequestOverride,
    Reserve,
    Settle,
    tell_budget,
)
from actors.journal import JOURNAL, Write
from actors.writing import RETRYABLE, Committed, Redispatch, tell, tell_by_name
from palyra.errors import (
    AlreadyExists,
    PalyraError,
)
from palyra.governance import Amount, UsageScope
from palyra.governance import store as gstore
from palyra.ids import new_ulid
from palyra.journal.store import TapeDraft, Txn
from palyra.memory import MemoryQueries, augment_prompt, auto_inject_payload
from palyra.observability import classify_provider_error
from palyra.orchestrator import loop, steps, store
from palyra.orchestrator.approvals import (
    approval_prompt,
    cache_key,
    policy_snapshot,
    request_summary,
)
from palyra.orchestrator.state import ACCEPTED, CANCELLED, DONE, FAILED, IN_PROGRESS, transition
from palyra.policy import PolicyRequest
from palyra.providers import Message, ProviderCancelled, ProviderRequest, ToolSpec, estimate_tokens
from palyra.providers import ToolCall as ModelToolCall
from palyra.records import Approval, RunEvent, Session, Usage
from palyra.redaction import redact_message
from palyra.tools import ToolCall, ToolContext, ToolDecision, ToolOutput, decide_tool_call
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.run")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    run_id: str
    session: Session
    text: str
    next_seq: int
    history: tuple[Message, ...] = ()
    resume: Any = None  # palyra.healing.recovery.RecoveryPlan: continue a crashed run


def run_actor_name(run_id: str) -> str:
    return f"run:{run_id}"


def finished_outside(services: Any, run_id: str,
                     result: tuple[int, dict[str, Any]] | None) -> None:
    """What follows a committed ``store.finish_run_from_outside`` (the run has no actor to
    do it): publish the terminal status it taped (``None``: nothing was taped, e.g. the
    run was terminal already) and free what the run still holds in the budget."""
    if result is not None:
        seq, payload = result
        services.hub.publish(RunEvent(run_id, "status", payload, seq))
    tell_budget(services, ReleaseRun(run_id))


# -- messages ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ApprovalDecided:
    approval_id: str
    approved: bool
    scope: str
    reason: str
    ttl_ms: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class Begin:
    """Sent by whoever started the actor, once it is up (not from init: a supervisor's
    start-up probe must be answered before the loop can fail)."""


@dataclasses.dataclass(frozen=True, slots=True)
class _ProviderDone:
    token: int
    response: Any
    error: BaseException | None


@dataclasses.dataclass(frozen=True, slots=True)
class _ToolDone:
    token: int
    output: ToolOutput
    executed_at_ms: int


# How often a run waiting on an approval looks for a decision it was never told about.
APPROVAL_RECHECK_S = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class _Timeout:
    kind: str  # "tool" | "approval" | "approval_recheck" | "budget_override" | "wall_clock"
    token: int


class _Beat:
    pass


_BEAT = _Beat()


@dataclasses.dataclass(frozen=True, slots=True)
class _Reserved:
    request: Reserve
    routing: Any


@dataclasses.dataclass(frozen=True, slots=True)
class _OverrideRequested:
    request: RequestOverride


@dataclasses.dataclass(frozen=True, slots=True)
class _Resend:
    name: str
    message: Any


@dataclasses.dataclass
class _Proposal:
    call: ModelToolCall
    proposal_id: str
    arguments: dict[str, Any]
    approval_required: bool
    posture: str
    approval_id: str | None = None


@dataclasses.dataclass
class _Inflight:
    write: Write
    ops: tuple[Any, ...]
    events: list[RunEvent]
    then: list[Callable[[Any], None]]


class RunActor(Supervised):
    reuse_threads = True  # one actor per run: thread creation would be a tenth of a run
    def __init__(self, *, ctx: Any = None, spec: RunSpec) -> None:
        super().__init__(ctx=ctx)
        self.spec = spec

    # -- lifecycle ------------------------------------------------------------------------

    def init(self) -> None:
        svc = self.services
        spec = self.spec
        self.run_id = spec.run_id
        self.session = spec.session
        self.clock = svc.clock
        self.limits = svc.config.runs.limits
        self.state = ACCEPTED
        self.seq = spec.next_seq
        self.messages: list[Message] = [*spec.history, Message("user", spec.text)]
        self.usage = Usage()
        self.turn = 0
        self.tool_calls_left = self.limits.max_tool_calls
        self.cancel_event = threading.Event()
        self.token = 0
        self.waiting: str | None = None
        self.proposals: list[_Proposal] = []
        self.current: _Proposal | None = None
        self.tool_exec_cancel: threading.Event | None = None
        self.loop_started = False
        self.scope = UsageScope(spec.session.principal, spec.session.session_id)
        self.completion_cap = svc.config.governance.max_completion_tokens
        self.reservation: str | None = None
        self.budget_approval_id: str | None = None
        self.override_retries = 0
        self.tools_ran: list[str] = []  # successful tool executions, in order (for learning)
        self.reserved_any = False
        self._resumed = False
        self.cost_micro_usd = 0
        self.failure_class: str | None = None  # set when a provider error ends the run
        self.model_id: str | None = None
        self.provider_id: str | None = None
        self._pending: list[Any] = []  # TapeDrafts and ops not yet sent
        self._pending_events: list[RunEvent] = []  # published once their write commits
        self._pending_then: list[Callable[[Any], None]] = []
        self._inflight: _Inflight | None = None
        self._timers: list[Any] = []
        self.started_mono = self.clock.monotonic()
        self._first_beat = self.clock.now_ms()
        if spec.resume is not None:
            # Rebuilt from the tape by crash recovery: the loop goes on where it stopped.
            plan = spec.resume
            self.state = IN_PROGRESS
            self.loop_started = True
            self.messages = list(plan.messages)
            self.turn = plan.turns_used
            self.tool_calls_left = max(0, self.limits.max_tool_calls - plan.tool_calls_used)
        self._heartbeat()
        self._wall_clock_armed = False
        self._beat_interval = svc.config.healing.loop_interval_ms / 2000

    def terminate(self) -> None:
        for handle in getattr(self, "_timers", ()):
            handle.cancel()
        if hasattr(self, "cancel_event"):
            self.cancel_event.set()
        if getattr(self, "tool_exec_cancel", None) is not None:
            self.tool_exec_cancel.set()  # type: ignore[union-attr]
        beats = getattr(self.services, "heartbeats", None)
        if beats is not None and hasattr(self, "run_id"):
            beats.pop(self.run_id, None)

    # -- dispatch -------------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        self._heartbeat()
        if type(message) is Committed:
            return self._on_committed(message.write)
        if type(message) is Redispatch:
            return self._dispatch(message.write)
        if message is _BEAT:
            if self.state == IN_PROGRESS:
                self._after(self._beat_interval, _BEAT)
            return None
        if self.state in (DONE, FAILED, CANCELLED):
            return None  # late worker results, timers, duplicate cancels
        handler = {
            Begin: self._begin,
            _ProviderDone: self._on_provider_done,
            _ToolDone: self._on_tool_done,
            _Timeout: self._on_timeout,
            Cancel: self._on_cancel,
            ApprovalDecided: self._on_approval_decided,
            _Reserved: self._on_reserved,
            OverrideResolved: self._on_override_resolved,
            _OverrideRequested: self._on_override_requested,
            _Resend: lambda m: self._send_to(m.name, m.message),
        }.get(type(message))
        if handler is None:
            return super().on_receive(message)
        return handler(message)

    def status(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "state": self.state, "waiting": self.waiting,
                "turn": self.turn, "tape_seq": self.seq}

    # -- the loop -----------------------------------------------------------------------

    def _begin(self, _: Begin) -> None:
        plan = self.spec.resume
        if plan is not None and self.turn == plan.turns_used and not self._resumed:
            self._resumed = True
            self._tape("run.resumed", {"attempt": plan.resume_attempt, "reason": plan.reason,
                                       "turns_used": plan.turns_used})
            return self._next_turn()
        if self.state != ACCEPTED:
            return
        now = self.clock.now_ms()
        self.state = transition(self.state, "start")
        provider = self.services.provider
        self.provider_id = provider.provider_id
        self.model_id = getattr(provider, "model", None)
        self._op(store.set_run_started(self.run_id, now, self.model_id, self.provider_id))
        self._op(store.lifecycle(self.run_id, self.session.session_id, ACCEPTED, IN_PROGRESS,
                                 now_ms=now, reason="run.state.in_progress"))
        self._tape("status", {"kind": IN_PROGRESS, "message": "streaming"})
        catalog = self.services.tools.catalog()
        self._tape("tool_catalog_snapshot", {
            "schema_version": catalog.schema_version, "catalog_hash": catalog.catalog_hash,
            "tools": list(catalog.names),
        })
        self._tape("agent_loop.started", {
            "max_model_turns": self.limits.max_model_turns, "max_tool_calls": self.limits.max_tool_calls,
            "wall_clock_budget_ms": self.limits.wall_clock_ms,
        })
        self.loop_started = True
        self._auto_inject()
        self._next_turn()

    def _auto_inject(self) -> None:
        """Spec 1.7 step 6: relevant memory, fenced as retrieved data (never instructions)
        ahead of the user's text. Off by default; a failing search degrades to nothing."""
        cfg = self.services.config.memory
        if not cfg.auto_inject_enabled:
            return
        s = self.session
        allowed = self.services.policy.engine.evaluate(PolicyRequest(
            principal=s.principal, action="memory.search", resource=f"memory:session:{s.session_id}",
            device_id=s.device_id, channel=s.channel, session_id=s.session_id, run_id=self.run_id))
        if not allowed.allowed:
            return
        try:
            hits = MemoryQueries(self.services.readers.conn(), self.clock).search(
                self.spec.text, s.principal, channel=s.channel, session_id=s.session_id,
                limit=cfg.auto_inject_max_items, min_score=cfg.auto_inject_min_score, any_term=True)
        except PalyraError as exc:
            log.warning("run %s: memory auto-inject skipped: %s", self.run_id, exc)
            return
        if not hits:
            return
        self._tape("memory_auto_inject", auto_inject_payload(self.spec.text, hits))
        last = self.messages[-1]
        self.messages[-1] = Message("user", augment_prompt(hits, last.content))

    def _next_turn(self) -> None:
        elapsed_ms = (self.clock.monotonic() - self.started_mono) * 1000
        if elapsed_ms > self.limits.wall_clock_ms:
            return self._finish(FAILED, loop.WALL_CLOCK, error="wall-clock budget exhausted")
        if self.turn >= self.limits.max_model_turns:
            return self._finish(FAILED, loop.MAX_TURNS, error="model turn limit reached")
        self.turn += 1
        self._tape("agent_loop.turn_started", {"turn": self.turn})
        self._govern()

    # -- usage governance -------------------------------------------------------------------

    def _govern(self) -> None:
        """Route the call and, when a budget policy applies, reserve its worst case first."""
        view = self.services.governance.view
        now = self.clock.now_ms()
        routing = view.route(self._last_user_text(), now_ms=now, health=self._provider_health())
        policies = view.applicable(self.scope) if view.enabled else ()
        if not policies:
            return self._routed(routing, None)
        prompt_tokens = sum(estimate_tokens(m.content) for m in self.messages)
        projected = view.projected(routing.actual, prompt_tokens, self.completion_cap, now)
        request = Reserve(f"{self.run_id}:{self.turn}", self.scope, projected)
        ref = self.actor_ref
        request.on_done = lambda r: tell(ref, _Reserved(r, routing))
        self.waiting = "budget"
        self.reserved_any = True
        self._arm_wall_clock()
        self._send_to(BUDGET, request)

    def _on_reserved(self, msg: _Reserved) -> None:
        if self.waiting != "budget":
            return
        request = msg.request
        if request.error is not None:
            if isinstance(request.error, RETRYABLE):
                request.rearm()  # the budget actor restarted with it queued: ask again
                return self._send_to(BUDGET, request)
            return self._finish(FAILED, "budget_error", error=f"budget check failed: {request.error}")
        decision = request.value
        routing = self.services.governance.view.route(
            self._last_user_text(), now_ms=self.clock.now_ms(), health=self._provider_health(),
            budget=decision.evaluation)
        if decision.granted:
            self.reservation = request.reservation_id
            return self._routed(routing, decision)
        self._record_routing(routing)  # spec 3.3 step 10: persisted before failing
        payload = {"reservation_id": request.reservation_id, **decision.evaluation.to_dict()}
        self._tape("budget.outcome", payload)
        blocking = [e.policy_id for e in decision.evaluation.evaluations
                    if e.outcome in ("blocked", "approval_required")]
        if decision.outcome == "approval_required":
            return self._request_budget_override(blocking[0])
        self._finish(FAILED, "budget_blocked",
                     error=f"usage budget hard limit blocked the requested run (policy {', '.join(blocking)})")

    def _request_budget_override(self, policy_id: str) -> None:
        request = RequestOverride(policy_id, f"run {self.run_id} needs it", self.session.principal,
                                  self.run_id, self.session.session_id)
        ref = self.actor_ref
        request.on_done = lambda r: tell(ref, _OverrideRequested(r))
        self.waiting = "budget_override"
        self._send_to(BUDGET, request)

    def _on_override_requested(self, msg: _OverrideRequested) -> None:
        if self.waiting != "budget_override":
            return
        if msg.request.error is not None:
            return self._finish(FAILED, "budget_blocked",
                                error=f"usage budget override required but could not be requested: "
                                      f"{msg.request.error}")
        approval = msg.request.value
        if approval.decision == "allow":
            self.override_retries += 1
            if self.override_retries > 1:
                return self._finish(FAILED, "budget_blocked",
                                    error="usage budget hard limit blocked the run; its override "
                                          "is already spent")
            return self._govern()
        self.budget_approval_id = approval.approval_id
        self._tape("budget.override_requested", {"approval_id": approval.approval_id,
                                                 "subject_id": approval.subject_id})
        self.token += 1
        self._arm_wall_clock()
        self._after(self.limits.approval_timeout_ms / 1000, _Timeout("budget_override", self.token))
        self._flush()

    def _record_routing(self, routing: Any) -> dict[str, Any]:
        record = routing.to_record(run_id=self.run_id, session_id=self.session.session_id,
                                   principal=self.session.principal,
                                   created_at_unix_ms=self.clock.now_ms())
        self._op(gstore.insert_routing_decision(record))
        return record

    def _routed(self, routing: Any, decision: Any) -> None:
        record = self._record_routing(routing)
        self._tape("usage.routing_decision", {
            "decision_id": record["decision_id"], "mode": routing.mode,
            "default_model_id": routing.default_model_id,
            "recommended_model_id": routing.recommended_model_id,
            "actual_model_id": routing.actual_model_id, "routing_action": routing.routing_action,
            "budget_outcome": routing.budget_outcome, "reason_codes": list(routing.reason_codes),
        })
        if decision is not None and decision.outcome != "ok":
            self._tape("budget.outcome", {"reservation_id": self.reservation,
                                          **decision.evaluation.to_dict()})
        override = routing.actual_model_id if routing.actual_model_id != routing.default_model_id else None
        self._call_provider(override)

    def _last_user_text(self) -> str:
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    def _provider_health(self) -> dict[str, str]:
        provider = self.services.provider
        circuit = provider.status_snapshot().get("circuit", {}) if hasattr(provider, "status_snapshot") else {}
        return {provider.provider_id: "degraded" if circuit.get("state") == "open" else "ok"}

    def _settle(self, response: Any) -> None:
        """Count what the call really used; release what the reservation held beyond it."""
        view = self.services.governance.view
        now = self.clock.now_ms()
        usage = response.usage
        kind = getattr(self.services.provider, "kind", "unknown")
        cost = view.actual_cost(response.model_id, kind, response.provider_id, usage.prompt_tokens,
                                usage.completion_tokens, now)
        self.cost_micro_usd += cost
        self._op(gstore.set_run_cost(self.run_id, cost))
        if self.reservation is None:
            return
        actual = Amount(usage.total_tokens, cost)
        self._op(gstore.append_ledger_events([{
            "type": "settled", "reservation_id": self.reservation, **self.scope.to_dict(),
            "tokens": actual.tokens, "cost_micro_usd": actual.cost_micro_usd, "at_unix_ms": now,
        }], now))
        tell_budget(self.services, Settle(self.reservation, actual, now))
        self.reservation = None

    def _release_reservation(self) -> None:
        if self.reservation is not None:
            tell_budget(self.services, Release(self.reservation))
            self.reservation = None

    def _send_to(self, name: str, message: Any) -> None:
        if not tell_by_name(self.services.names, name, message):
            self._after(0.005, _Resend(name, message))

    # -- the provider call ---------------------------------------------------------------------

    def _call_provider(self, model_override: str | None) -> None:
        catalog = self.services.tools.catalog()
        request = ProviderRequest(
            stream=True,  # tokens fan out live; providers that cannot stream ignore it
            messages=tuple(self.messages),
            tools=tuple(ToolSpec(t["name"], t["description"], t["input_schema"]) for t in catalog.tools),
            model_override=model_override,
            max_tokens=self.completion_cap,
        )
        self.token += 1
        token, ref, cancel = self.token, self.actor_ref, self.cancel_event
        provider, hub, run_id = self.services.provider, self.services.hub, self.run_id

        def on_token(text: str) -> None:
            hub.publish(RunEvent(run_id, "model_token", {"token": text, "is_final": False}))

        def complete() -> _ProviderDone:
            try:
                return _ProviderDone(token, provider.complete(request, cancel=cancel, on_token=on_token), None)
            except BaseException as exc:  # reported to the actor, which decides
                return _ProviderDone(token, None, exc)

        self.waiting = "provider"
        may_block = getattr(provider, "may_block", None)
        if may_block is not None and not may_block(request):
            return self._on_provider_done(complete())  # cannot block: no thread hop
        self._flush()
        self._arm_wall_clock()
        self.services.workers.submit(lambda: tell(ref, complete()))

    def _on_provider_done(self, msg: _ProviderDone) -> None:
        if msg.token != self.token or self.waiting != "provider":
            return
        self.waiting = None
        if msg.error is not None:
            self._release_reservation()
            if isinstance(msg.error, ProviderCancelled):
                return  # a cancel is already being handled
            text = msg.error.message if isinstance(msg.error, PalyraError) else repr(msg.error)
            self.failure_class = classify_provider_error(
                msg.error.details if isinstance(msg.error, PalyraError) else None)
            self._tape("agent_loop.terminated", {"reason": loop.PROVIDER_ERROR})
            return self._finish(FAILED, loop.PROVIDER_ERROR, error=f"provider error: {redact_message(text)}",
                                terminated=True)
        response = msg.response
        self.usage = self.usage.plus(response.usage.prompt_tokens, response.usage.completion_tokens)
        self._settle(response)
        self.model_id, self.provider_id = response.model_id, response.provider_id
        if response.text:
            self._tape("model_token", {"token": response.text, "is_final": True})
        self._tape("provider_turn_output", steps.provider_turn_output(response))
        if response.tool_calls:
            self.messages.append(Message("assistant", response.text, tool_calls=response.tool_calls))
            self.proposals = [self._propose(call) for call in response.tool_calls]
            return self._next_tool()
        self.messages.append(Message("assistant", response.text))
        self._tape("message.replied", {"reply_text": response.text})
        self._tape("agent_loop.terminated", {"reason": loop.FINAL_ANSWER})
        self._finish(DONE, loop.FINAL_ANSWER, reply=response.text, terminated=True)

    # -- tools --------------------------------------------------------------------------------

    def _propose(self, call: ModelToolCall) -> _Proposal:
        tools = self.services.tools
        config = self.services.config.tools
        posture = config.posture.get(call.name, "ask_each_time")
        needs = (tools.tool_requires_approval(call.name) or call.name in config.sensitive) \
            and posture != "always_allow"
        return _Proposal(call, new_ulid(), dict(call.arguments), needs, posture)

    def _next_tool(self) -> None:
        if not self.proposals:
            self._tape("agent_loop.turn_completed", {"turn": self.turn})
            return self._next_turn()
        proposal = self.current = self.proposals.pop(0)
        call = proposal.call
        try:
            proposal.arguments = self.services.tools.validate_arguments(call.name, call.arguments)
        except PalyraError as exc:
            proposal.approval_required = False  # rejected at intake: nothing to approve
            self._tape_proposal(proposal)
            return self._intake_rejected(proposal, exc)
        self._tape_proposal(proposal)
        if not proposal.approval_required:
            return self._decide(proposal, None)
        # Ask only when an approval could change the outcome.
        if not self._policy_decision(proposal, True).allowed:
            return self._decide(proposal, True)
        key = self._approval_key(call.name)
        cached = self.services.approval_cache.lookup(key, self.clock.now_ms())
        if cached is not None:
            self._tape("tool_approval_response", steps.approval_response(
                proposal.proposal_id, cached.approval_id, cached.allowed,
                f"cached_approval(scope={cached.scope})", decision_scope=cached.scope))
            return self._decide(proposal, cached.allowed)
        self._request_approval(proposal)

    def _tape_proposal(self, proposal: _Proposal) -> None:
        self._tape("tool_proposal", steps.tool_proposal(
            proposal.proposal_id, proposal.call.name, proposal.call.arguments, proposal.approval_required))

    def _intake_rejected(self, proposal: _Proposal, exc: PalyraError) -> None:
        reason = f"{exc.code}: {exc.message}"
        self.tool_calls_left = max(0, self.tool_calls_left - 1)
        self._tape_decision(proposal, ToolDecision("deny", reason, False, False, False))
        self._tape("tool.intake_rejected", {"proposal_id": proposal.proposal_id,
                                            "tool_name": proposal.call.name, "reason": reason})
        self._record_result(proposal, ToolOutput.failed(reason), self.clock.now_ms(), timed_out=False)
        self._next_tool()

    def _approval_key(self, tool_name: str) -> str:
        s = self.session
        return cache_key(s.principal, s.device_id, s.channel, s.session_id, f"tool:{tool_name}")

    def _request_approval(self, proposal: _Proposal) -> None:
        now = self.clock.now_ms()
        timeout_ms = self.limits.approval_timeout_ms
        s = self.session
        if self.spec.resume is not None and self._adopt_approval(proposal, now):
            return
        approval = Approval(
            approval_id=new_ulid(now), run_id=self.run_id, session_id=s.session_id,
            principal=s.principal, device_id=s.device_id, channel=s.channel,
            subject_type="tool", subject_id=f"tool:{proposal.call.name}",
            proposal_id=proposal.proposal_id,
            request_summary=request_summary(proposal.call.name, proposal.arguments),
            prompt=approval_prompt(proposal.call.name, proposal.arguments, -(-timeout_ms // 1000)),
            requested_at_unix_ms=now, expires_at_unix_ms=now + timeout_ms,
        )
        snapshot = policy_snapshot(proposal.call.name, self.services.policy.engine.policy_text)
        self._op(store.insert_approval(approval, snapshot))
        self._await_approval(proposal, approval, timeout_ms / 1000)
        self._durable(lambda _: None)

    def _on_override_resolved(self, msg: OverrideResolved) -> None:
        self._on_approval_decided(ApprovalDecided(msg.approval_id, msg.approved, "once",
                                                  "budget override decided", None))

    def _adopt_approval(self, proposal: _Proposal, now: int) -> bool:
        """A resumed run asking for the same tool again takes over the approval it was
        waiting on before the interruption: waiting approvals survive restarts, and the
        operator's decision (by that approval id) still applies."""
        subject = f"tool:{proposal.call.name}"
        waiting = [a for a in store.Queries(self.services.readers.conn()).approvals(
            pending=True, run_id=self.run_id) if a.subject_id == subject]
        if not waiting:
            return False
        approval = waiting[0]
        expires = approval.expires_at_unix_ms or now + self.limits.approval_timeout_ms
        self._await_approval(proposal, approval, max(0.0, (expires - now) / 1000), resumed=True)
        self._flush()
        return True

    def _await_approval(self, proposal: _Proposal, approval: Approval, timeout_s: float,
                        **extra: Any) -> None:
        """Tape the request and wait for its decision: told by the gateway, found by the
        recheck, or timed out after ``timeout_s``."""
        proposal.approval_id = approval.approval_id
        self._tape("tool_approval_request", steps.approval_request(
            proposal.proposal_id, proposal.call.name, proposal.arguments, approval, **extra))
        self.waiting = "approval"
        self.token += 1
        self._arm_wall_clock()
        self._after(timeout_s, _Timeout("approval", self.token))
        self._arm_approval_recheck()

    def _arm_approval_recheck(self) -> None:
        self._after(APPROVAL_RECHECK_S, _Timeout("approval_recheck", self.token))

    def _recheck_approval(self) -> None:
        """The gateway tells a run its decision once; if it died between committing the
        decision and telling us, the journal still has it. Look there now and then
        rather than wait for the approval timeout."""
        proposal = self.current
        assert proposal is not None and proposal.approval_id is not None
        approval = store.Queries(self.services.readers.conn()).approval(proposal.approval_id)
        if approval is not None and approval.decision in ("allow", "deny"):
            return self._on_approval_decided(ApprovalDecided(
                approval.approval_id, approval.decision == "allow", approval.decision_scope or "once",
                approval.decision_reason or "", approval.decision_scope_ttl_ms))
        self._arm_approval_recheck()

    def _on_approval_decided(self, msg: ApprovalDecided) -> None:
        if self.waiting == "budget_override" and msg.approval_id == self.budget_approval_id:
            self.waiting = None
            self.token += 1
            self._tape("budget.override_decided", {"approval_id": msg.approval_id,
                                                   "approved": msg.approved, "reason": msg.reason})
            if msg.approved:
                return self._govern()
            return self._finish(FAILED, "budget_blocked",
                                error="usage budget override was denied by an operator")
        proposal = self.current
        if self.waiting != "approval" or proposal is None or proposal.approval_id != msg.approval_id:
            return
        self.waiting = None
        self.token += 1  # the approval timer is now stale
        self._tape("tool_approval_response", steps.approval_response(
            proposal.proposal_id, msg.approval_id, msg.approved, msg.reason,
            decision_scope=msg.scope, decision_scope_ttl_ms=msg.ttl_ms))
        self._decide(proposal, msg.approved)

    def _approval_timed_out(self) -> None:
        proposal = self.current
        assert proposal is not None and proposal.approval_id is not None
        approval_id = proposal.approval_id
        seconds = self.limits.approval_timeout_ms / 1000
        self.waiting = "approval_timeout"
        reason = f"approval timed out after {seconds:g}s"

        def then(recorded: bool | str) -> None:
            if recorded is not True:
                # Someone decided first; act on the stored decision rather than wait for a
                # message that may have been lost with a restarting gateway.
                self.waiting = None
                approved = recorded == "allow"
                self._tape("tool_approval_response", steps.approval_response(
                    proposal.proposal_id, approval_id, approved, f"decided ({recorded}) before the timeout"))
                return self._decide(proposal, approved)
            self.waiting = None
            self._tape("tool_approval_response", steps.approval_response(
                proposal.proposal_id, approval_id, False, reason, decision="timeout"))
            self._deny(proposal, ToolDecision("deny", f"tool execution denied: {reason}", True, True, False))

        self._op(_close_approval(approval_id, "timeout", reason, self.clock.now_ms()))
        self._durable(then)

    def _policy_decision(self, proposal: _Proposal, outcome: bool | None) -> ToolDecision:
        s = self.session
        definition = self.services.tools.get(proposal.call.name)
        return decide_tool_call(
            self.services.policy.engine,
            ToolCall(principal=s.principal, tool_name=proposal.call.name, device_id=s.device_id,
                     channel=s.channel, session_id=s.session_id, run_id=self.run_id,
                     capabilities=definition.capabilities),
            remaining_budget=self.tool_calls_left,
            posture=proposal.posture,  # type: ignore[arg-type]
            approval_required=proposal.approval_required,
            approval_outcome=outcome,
        )

    def _decide(self, proposal: _Proposal, outcome: bool | None) -> None:
        decision = self._policy_decision(proposal, outcome)
        if not decision.allowed:
            return self._deny(proposal, decision)
        self.tool_calls_left -= 1
        self._tape_decision(proposal, decision)
        if not self.services.tools.get(proposal.call.name).side_effects:
            return self._execute(proposal)  # harmless to repeat: no durability point
        self.waiting = "tool_durable"
        self._durable(lambda _: self._execute(proposal))

    def _tape_decision(self, proposal: _Proposal, decision: ToolDecision) -> None:
        self._tape("tool_decision", steps.tool_decision(proposal.proposal_id, decision))

    def _deny(self, proposal: _Proposal, decision: ToolDecision) -> None:
        self._tape_decision(proposal, decision)
        self._record_result(proposal, ToolOutput.failed(decision.reason), self.clock.now_ms(),
                            timed_out=False, attest=False)
        self._next_tool()

    def _execute(self, proposal: _Proposal) -> None:
        if self.state != IN_PROGRESS:
            return
        definition = self.services.tools.get(proposal.call.name)
        timeout_s = self.limits.tool_timeout_ms / 1000
        cancel = self.tool_exec_cancel = threading.Event()
        ctx = ToolContext(run_id=self.run_id, session_id=self.session.session_id,
                          principal=self.session.principal, cancel=cancel,
                          deadline_monotonic=self.clock.monotonic() + timeout_s, clock=self.clock,
                          memory_search=self._memory_search)
        self.token += 1
        token, ref, clock, args = self.token, self.actor_ref, self.clock, proposal.arguments

        def execute() -> _ToolDone:
            started = clock.now_ms()
            try:
                output = definition.handler(args, ctx)
            except Exception as exc:
                output = ToolOutput.failed(f"tool raised {type(exc).__name__}: {redact_message(str(exc))}")
            return _ToolDone(token, output, started)

        self.waiting = "tool"
        if not definition.blocking:
            return self._on_tool_done(execute())
        self._flush()  # what happened so far is on its way to disk while the tool runs
        self._arm_wall_clock()
        self._after(timeout_s, _Timeout("tool", token))
        self.services.workers.submit(lambda: tell(ref, execute()))

    def _memory_search(self, query: str, limit: int) -> list[dict[str, Any]]:
        """For ``palyra.memory.search`` (runs on the tool's thread, with its own reader):
        only what this run's principal, channel and session may see."""
        s = self.session
        hits = MemoryQueries(self.services.readers.conn(), self.clock).search(
            query, s.principal, channel=s.channel, session_id=s.session_id, limit=limit)
        return [h.to_dict() for h in hits]

    def _on_tool_done(self, msg: _ToolDone) -> None:
        if msg.token != self.token or self.waiting != "tool" or self.current is None:
            return
        self.waiting = None
        if msg.output.success:
            self.tools_ran.append(self.current.call.name)
        self._record_result(self.current, msg.output, msg.executed_at_ms, timed_out=False)
        self._next_tool()

    def _record_result(self, proposal: _Proposal, output: ToolOutput, executed_at_ms: int, *,
                       timed_out: bool, attest: bool = True) -> None:
        name = proposal.call.name
        self._tape("tool_result", steps.tool_result(proposal.proposal_id, name, output))
        if attest:
            self._tape("tool_attestation", steps.tool_attestation(
                new_ulid(), proposal.proposal_id, name, proposal.arguments, output, executed_at_ms, timed_out))
        content = orjson.dumps({"success": output.success, "tool_name": name,
                                "error": output.error, "output": output.output}).decode()
        self.messages.append(Message("tool", content, tool_call_id=proposal.call.id))

    # -- timeouts and cancellation ---------------------------------------------------------

    def _on_timeout(self, msg: _Timeout) -> None:
        if msg.kind == "wall_clock":
            self.cancel_event.set()
            if self.loop_started:
                self._tape("agent_loop.terminated", {"reason": loop.WALL_CLOCK})
            return self._finish(FAILED, loop.WALL_CLOCK, error="wall-clock budget exhausted",
                                terminated=True)
        if msg.token != self.token:
            return
        if msg.kind == "tool" and self.waiting == "tool" and self.current is not None:
            if self.tool_exec_cancel is not None:
                self.tool_exec_cancel.set()
            self.waiting = None
            self.token += 1
            error = f"tool execution timed out after {self.limits.tool_timeout_ms}ms"
            self._record_result(self.current, ToolOutput.failed(error), self.clock.now_ms(), timed_out=True)
            return self._next_tool()
        if msg.kind == "approval" and self.waiting == "approval":
            return self._approval_timed_out()
        if msg.kind == "approval_recheck" and self.waiting == "approval":
            return self._recheck_approval()
        if msg.kind == "budget_override" and self.waiting == "budget_override":
            seconds = self.limits.approval_timeout_ms / 1000
            assert self.budget_approval_id is not None
            self._op(_close_approval(self.budget_approval_id, "timeout",
                                     f"no decision within {seconds:g}s", self.clock.now_ms()))
            return self._finish(FAILED, "budget_blocked",
                                error=f"usage budget override approval required; none was granted "
                                      f"within {seconds:g}s")

    def _on_cancel(self, msg: Cancel) -> None:
        self.cancel_event.set()
        if self.tool_exec_cancel is not None:
            self.tool_exec_cancel.set()
        now = self.clock.now_ms()
        self._op(store.set_cancel_requested(self.run_id, msg.reason, now))
        if self.waiting in ("approval", "approval_timeout") and self.current and self.current.approval_id:
            self._op(_close_approval(self.current.approval_id, "error", "run cancelled", now))
        if self.loop_started:
            self._tape("agent_loop.terminated", {"reason": loop.CANCELLATION})
        error = msg.reason if msg.reason.startswith("cancelled") else f"cancelled by request: {msg.reason}"
        self._finish(CANCELLED, loop.CANCELLATION, error=error, terminated=True)

    # -- finishing ---------------------------------------------------------------------------

    def _finish(self, state: str, reason: str, *, reply: str | None = None, error: str | None = None,
                terminated: bool = False) -> None:
        if self.state in (DONE, FAILED, CANCELLED):
            return
        event = {DONE: "complete", FAILED: "fail", CANCELLED: "cancel"}[state]
        previous, self.state = self.state, transition(self.state, event)
        self.waiting = None
        self.cancel_event.set()
        for handle in self._timers:
            handle.cancel()
        self.reservation = None  # the budget actor settles or releases it from the journal
        now = self.clock.now_ms()
        if self.loop_started and not terminated:
            self._tape("agent_loop.terminated", {"reason": reason})
        self._op(store.set_run_terminal(self.run_id, state, now_ms=now, usage=self.usage,
                                        last_error=error, termination_reason=reason, reply_text=reply))
        self._op(store.lifecycle(self.run_id, self.session.session_id, previous, state, now_ms=now,
                                 reason=error or f"run.state.{state}", termination_reason=reason,
                                 failure_class=self.failure_class if state == FAILED else None))
        payload = {
            "kind": state,
            "message": {DONE: "completed", FAILED: error, CANCELLED: error}[state],
            "termination_reason": reason,
            "reply_text": reply,
            "last_error": error,
            "usage": dataclasses.asdict(self.usage),
            "estimated_cost_micro_usd": self.cost_micro_usd,
        }
        self._tape("status", payload)

        def done(_: Any) -> None:
            if self.reserved_any:  # settled and released for good, now that it is durable
                tell_budget(self.services, ReleaseRun(self.run_id))
            if state == DONE:  # reflection is scheduled from the durable finish (quirk 13.6)
                from actors.learning import LEARNING, RunFinished  # it imports the queue, and so us

                s = self.session
                tell_by_name(self.services.names, LEARNING, RunFinished(
                    self.run_id, s.session_id, s.principal, s.device_id, s.channel,
                    self.spec.text, reply or "", tuple(self.tools_ran),
                    anonymous=s.session_key == s.session_id and s.session_label is None))
            self.stop()

        self._durable(done)  # the terminal event is out once durable

    # -- journal pipeline ---------------------------------------------------------------------

    def _tape(self, event_type: str, payload: dict[str, Any]) -> int:
        """Append a step; subscribers see it once it is committed (so a subscriber that
        replays the tape and then follows live events can never miss one)."""
        seq = self.seq
        self._pending.append(TapeDraft.build(
            self.run_id, seq, event_type, payload, now_ms=self.clock.now_ms(),
            max_payload_bytes=self.services.config.journal.max_payload_bytes,
        ))
        self._pending_events.append(RunEvent(self.run_id, event_type, payload, seq))
        self.seq += 1
        return seq

    def _op(self, op: Callable[[Txn], Any]) -> None:
        self._pending.append(op)

    def _flush(self) -> None:
        """Send what is pending (if no write is in flight); do not wait for it."""
        if self._inflight is not None or not self._pending:
            return
        ops = _compile(self._pending)
        inflight = _Inflight(self._new_write(ops), ops, self._pending_events, self._pending_then)
        self._pending, self._pending_events, self._pending_then = [], [], []
        self._inflight = inflight
        self._dispatch(inflight.write)

    def _durable(self, then: Callable[[Any], None]) -> None:
        """Run ``then`` once everything taped so far is committed."""
        if not self._pending and self._inflight is None:
            then(None)
            return
        if self._pending:
            self._pending_then.append(then)
        else:
            self._inflight.then.append(then)  # type: ignore[union-attr]
        self._flush()

    def _new_write(self, ops: tuple[Any, ...]) -> Write:
        write = Write(ops)
        ref = self.actor_ref
        write.on_done = lambda w: tell(ref, Committed(w))
        return write

    def _dispatch(self, write: Write) -> None:
        if not tell_by_name(self.services.names, JOURNAL, write):
            self._after(0.005, Redispatch(write))  # the journal is restarting; never block

    def _on_committed(self, write: Write) -> None:
        inflight = self._inflight
        if inflight is None or inflight.write is not write:
            return
        error = write.error
        if error is None or isinstance(error, AlreadyExists):
            # AlreadyExists: a resent write whose first incarnation did commit.
            self._inflight = None
            hub = self.services.hub
            for event in inflight.events:
                hub.publish(event)
            for callback in inflight.then:
                callback(write.value)
            self._flush()
            return
        if isinstance(error, RETRYABLE):
            inflight.write = self._new_write(inflight.ops)
            self._after(0.005, Redispatch(inflight.write))
            return
        log.error("run %s: journal write failed: %s", self.run_id, error)
        raise error  # crash: the supervisor fails the run with this reason

    def _arm_wall_clock(self) -> None:
        """The wall-clock budget needs a timer only once the run waits on something
        outside itself; steps run inline check the budget at every turn. From then on the
        run also beats on a timer, so a run waiting legitimately stays fresh while a hung
        actor (which cannot handle the beat) goes stale for self-healing."""
        if not self._wall_clock_armed:
            self._after(self._beat_interval, _BEAT)
            self._wall_clock_armed = True
            remaining = self.limits.wall_clock_ms / 1000 - (self.clock.monotonic() - self.started_mono)
            self._after(max(0.0, remaining), _Timeout("wall_clock", 0))

    def _after(self, delay: float, message: Any) -> None:
        ref = self.actor_ref
        self._timers.append(self.services.timers.call_later(delay, lambda: tell(ref, message)))

    def _heartbeat(self) -> None:
        """A work heartbeat on every message handled (self-healing reads these)."""
        self.services.heartbeats[self.run_id] = ("run", self.clock.now_ms(), self._first_beat,
                                                 self.session.session_id)


def _close_approval(approval_id: str, decision: str, reason: str,
                    now_ms: int) -> Callable[[Txn], bool | str]:
    """An op recording ``decision`` (scope once) unless the approval was decided
    meanwhile: it returns True if recorded, else the decision that stands ("error" if
    the approval is missing)."""
    resolve = store.resolve_approval(approval_id, decision, scope="once", reason=reason,
                                     ttl_ms=None, now_ms=now_ms)

    def op(txn: Txn) -> bool | str:
        try:
            resolve(txn)
        except PalyraError as exc:  # Conflict (decided meanwhile) carries that decision
            return exc.details.get("decision") or "error"
        return True

    return op


def _compile(pending: list[Any]) -> tuple[Any, ...]:
    """Group consecutive tape drafts into one operation each."""
    ops: list[Any] = []
    drafts: list[TapeDraft] = []
    for item in pending:
        if isinstance(item, TapeDraft):
            drafts.append(item)
            continue
        if drafts:
            ops.append(store.append_tape(tuple(drafts)))
            drafts = []
        ops.append(item)
    if drafts:
        ops.append(store.append_tape(tuple(drafts)))
    return tuple(ops)
