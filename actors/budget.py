"""The budget actor: serialises every budget decision, so concurrent runs can never
overspend a hard limit.

Before a provider call a run asks for a *reservation* of its worst case (prompt + the
``max_tokens`` it passes to the provider, and their cost); the actor checks consumed +
reserved + projected against every applicable policy, records the reservation in the
journal, and only then answers. After the call the run settles the actual usage (it
writes the ``settled`` event in its own durable step and tells the actor). A restart
rebuilds consumed and reserved amounts exactly from ``budget_ledger_events``;
reservations of runs that died are released by the run's terminal transition.

Everything the runs need to decide *without* a round trip (is any policy applicable to
me? which model would routing pick?) is published as an immutable
:class:`GovernanceView`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import orjson

from actors.journal import JournalClient
from actors.writing import AsyncJournalWrites, replying, tell_by_name
from palyra.errors import InvalidInput, NotFound, PalyraError
from palyra.governance import (
    SEED_PRICING,
    Amount,
    BudgetPolicy,
    Ledger,
    ModelCandidate,
    Override,
    PricingRecord,
    UsageScope,
    applies_to,
    estimate_cost,
    find_pricing,
    plan_usage_routing,
    policy_from_mapping,
    pricing_from_mapping,
)
from palyra.governance import store as gstore
from palyra.governance.routing import RoutingDecision
from palyra.governance.usage import alerts as usage_alerts
from palyra.ids import new_ulid
from palyra.journal.store import connect
from palyra.orchestrator import store
from palyra.orchestrator.approvals import approval_prompt
from palyra.records import Approval
from supervisors.request import Request
from supervisors.supervised import Supervised

log = logging.getLogger("palyra.budget")

BUDGET = "budget"
OVERRIDE_SUBJECT = "usage-budget:"


@dataclasses.dataclass(frozen=True)
class GovernanceView:
    """What a run needs to route and to know whether it must reserve (immutable)."""

    enabled: bool
    mode: str
    policies: tuple[BudgetPolicy, ...]
    pricing: tuple[PricingRecord, ...]
    candidates: tuple[ModelCandidate, ...]
    default: ModelCandidate

    def applicable(self, scope: UsageScope) -> tuple[BudgetPolicy, ...]:
        return tuple(p for p in self.policies if p.enabled and applies_to(p, scope))

    def route(self, prompt: str, *, now_ms: int, health: dict[str, str],
              budget: Any = None) -> RoutingDecision:
        return plan_usage_routing(
            prompt=prompt, candidates=self.candidates, default_model=self.default,
            health=health, mode=self.mode, budget=budget, catalog=self.pricing, now_ms=now_ms,
        )

    def projected(self, model: ModelCandidate, prompt_tokens: int, completion_cap: int,
                  now_ms: int) -> Amount:
        """The worst case of one call: prompt + completion cap, and its cost."""
        pricing = find_pricing(self.pricing, model.provider_kind, model.provider_id, model.model_id, now_ms)
        cost = estimate_cost(pricing, prompt_tokens, completion_cap).upper_micro_usd or 0
        return Amount(prompt_tokens + completion_cap, cost)

    def actual_cost(self, model_id: str, provider_kind: str, provider_id: str, prompt: int,
                    completion: int, now_ms: int) -> int:
        pricing = find_pricing(self.pricing, provider_kind, provider_id, model_id, now_ms)
        return estimate_cost(pricing, prompt, completion).upper_micro_usd or 0


class GovernanceHolder:
    def __init__(self, view: GovernanceView) -> None:
        self.view = view


def default_candidates(services: Any) -> tuple[ModelCandidate, tuple[ModelCandidate, ...]]:
    provider = services.provider
    kind = getattr(provider, "kind", "unknown")
    default = ModelCandidate(getattr(provider, "model", kind), provider.provider_id, kind,
                             cost_tier="low" if kind == "deterministic" else "standard")
    extra = tuple(ModelCandidate(**m) for m in services.config.governance.models)
    return default, (default, *(c for c in extra if c.key != default.key))


def initial_view(services: Any) -> GovernanceView:
    default, candidates = default_candidates(services)
    gov = services.config.governance
    return GovernanceView(gov.enabled, gov.routing_mode.replace("-", "_"), (), tuple(SEED_PRICING),
                          candidates, default)


# -- requests ----------------------------------------------------------------------------


class Reserve(Request):
    __slots__ = ("reservation_id", "scope", "projected")

    def __init__(self, reservation_id: str, scope: UsageScope, projected: Amount) -> None:
        super().__init__()
        self.reservation_id, self.scope, self.projected = reservation_id, scope, projected


@dataclasses.dataclass(frozen=True, slots=True)
class Settle:
    reservation_id: str
    actual: Amount
    at_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    reservation_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class ReleaseRun:
    """A run ended without its actor (crash, hang, recovery): free what it held."""

    run_id: str


@dataclasses.dataclass(frozen=True, slots=True)
class OverrideResolved:
    """To each run waiting on a budget override approval."""

    approval_id: str
    approved: bool


@dataclasses.dataclass(frozen=True, slots=True)
class OverrideDecided:
    approval: Approval


class PutPolicy(Request):
    __slots__ = ("policy", "principal")

    def __init__(self, policy: Any, principal: str | None = None) -> None:
        super().__init__()
        self.policy, self.principal = policy, principal


class RecordAlerts(Request):
    __slots__ = ("alerts",)

    def __init__(self, alerts: list[Any]) -> None:
        super().__init__()
        self.alerts = alerts


class PutPricing(Request):
    __slots__ = ("pricing",)

    def __init__(self, pricing: Any) -> None:
        super().__init__()
        self.pricing = pricing


class RequestOverride(Request):
    __slots__ = ("policy_id", "reason", "principal", "run_id", "session_id")

    def __init__(self, policy_id: str, reason: str | None, principal: str,
                 run_id: str | None = None, session_id: str | None = None) -> None:
        super().__init__()
        self.policy_id, self.reason, self.principal = policy_id, reason, principal
        self.run_id, self.session_id = run_id, session_id


class BudgetActor(AsyncJournalWrites, Supervised):
    adopts_predecessor_writes = False  # grants come from this incarnation's ledger only

    def init(self) -> None:
        svc = self.services
        self.clock = svc.clock
        self.conn = connect(svc.state_dir, svc.config.journal)
        # A previous incarnation (killed, or abandoned as hung) may have reservation writes
        # still queued at the journal. Read the ledger only after they are on disk: the
        # single writer commits in arrival order, so an empty write that commits is a
        # barrier behind them. Without it a reservation granted just before the restart is
        # missing from the rebuilt ledger, and its slot is granted twice.
        svc.journal.write()
        q = gstore.GovernanceQueries(self.conn)
        self.conn.execute("BEGIN")  # one snapshot: ledger events and run states agree
        try:
            events = q.ledger_events()
            finished = {r[0] for r in self.conn.execute(
                "SELECT run_ulid FROM orchestrator_runs WHERE state IN ('done', 'failed', 'cancelled')")}
            policies = q.policies()
            approvals = store.Queries(self.conn).approvals(limit=500)
            pricing = q.pricing()
        finally:
            self.conn.execute("COMMIT")
        if not pricing:
            # Seeding is part of start-up; block on it once (the journal starts first).
            journal: JournalClient = svc.journal
            journal.write(gstore.upsert_pricing(SEED_PRICING, self.clock.now_ms()))
            pricing = list(SEED_PRICING)
        self.pricing = {p.pricing_id: p for p in pricing}
        self.policies = {p.policy_id: p for p in policies}
        self.ledger = Ledger.rebuild(events)
        self.overrides: dict[str, Override] = {}
        self.override_waiters: dict[str, set[str]] = {}  # policy_id -> runs waiting on it
        self.override_inflight: dict[str, list[RequestOverride]] = {}
        # allow_once overrides belong to the first run that uses them (all its turns).
        self.once: dict[str, str | None] = {}  # policy_id -> run id that used it
        self.pending_overrides: dict[str, str] = {}  # policy_id -> approval_id
        for approval in approvals:
            self._learn_override(approval)
        self._release_dead_reservations(finished)
        self._publish()

    def terminate(self) -> None:
        self.fail_waiting_callers()  # e.g. reservations: the run asks again (idempotent)
        self.close_reader()

    def _publish(self) -> None:
        old = self.services.governance.view
        self.services.governance.view = dataclasses.replace(
            old, policies=tuple(self.policies.values()), pricing=tuple(self.pricing.values()),
        )

    def _learn_override(self, approval: Approval) -> None:
        if not approval.subject_id.startswith(OVERRIDE_SUBJECT):
            return
        policy_id = approval.subject_id[len(OVERRIDE_SUBJECT):]
        if approval.decision is None:
            self.pending_overrides[policy_id] = approval.approval_id
            return
        self.pending_overrides.pop(policy_id, None)
        if approval.decision != "allow":
            return
        ttl = approval.decision_scope_ttl_ms
        expires = (approval.resolved_at_unix_ms or 0) + ttl if ttl else None
        self.overrides[policy_id] = Override(policy_id, approval.approval_id, expires)
        if approval.decision_scope == "once":
            self.once[policy_id] = None

    def _release_dead_reservations(self, finished: set[str]) -> None:
        """Reservations of runs that ended without settling them (read in the same
        snapshot as the ledger, so a settle committed meanwhile cannot be mistaken)."""
        now = self.clock.now_ms()
        for rid in list(self.ledger.reservations):
            if rid.split(":", 1)[0] in finished:
                self.ledger.release(rid, now)
        events = self.ledger.drain_events()
        if events:
            self.write_async([gstore.append_ledger_events(events, now)], lambda w: None)

    # -- messages -------------------------------------------------------------------------

    def handlers(self) -> dict[type, Any]:
        return {
            Reserve: self._reserve,
            Settle: self._settle,
            Release: self._release,
            ReleaseRun: self._release_run,
            OverrideDecided: self._override_decided,
            PutPolicy: self._put_policy,
            PutPricing: self._put_pricing,
            RequestOverride: self._request_override,
            RecordAlerts: self._record_alerts,
        }

    def _active_overrides(self, run_id: str | None = None) -> list[Override]:
        now = self.clock.now_ms()
        return [
            o for o in self.overrides.values()
            if o.active(now) and self.once.get(o.policy_id, run_id) in (None, run_id)
        ]

    def _reserve(self, req: Reserve) -> None:
        now = self.clock.now_ms()
        run_id = req.reservation_id.split(":", 1)[0]
        try:
            decision = self.ledger.reserve(req.reservation_id, self.policies.values(), req.scope,
                                           req.projected, now, self._active_overrides(run_id))
        except PalyraError as exc:
            req.fail(exc)
            return
        events = self.ledger.drain_events()
        if decision.outcome != "ok":
            # soft limits, warn-only hard limits, blocks: deduplicated budget alerts
            found = usage_alerts((), evaluations=decision.evaluation)
            if found:
                self.write_async([gstore.upsert_alerts(found, now)], lambda w: None)
        if decision.granted:
            for ev in decision.evaluation.evaluations:
                if ev.outcome == "override_applied" and ev.policy_id in self.once:
                    self.once[ev.policy_id] = run_id  # spent on this run
        if not events:
            req.reply(decision)
            return
        # Answer only once the reservation is durable: a restart must find it.
        self.write_async([gstore.append_ledger_events(events, now)],
                         lambda w: req.reply(decision) if w.error is None else req.fail(w.error),
                         caller=req)

    def _settle(self, msg: Settle) -> None:
        # The run writes the ``settled`` event in its own durable step; mirror it here.
        self.ledger.settle(msg.reservation_id, msg.actual, msg.at_ms)
        self.ledger.drain_events()

    def _release(self, msg: Release) -> None:
        if self.ledger.release(msg.reservation_id, self.clock.now_ms()):
            events = self.ledger.drain_events()
            self.write_async([gstore.append_ledger_events(events, self.clock.now_ms())], lambda w: None)

    def _record_alerts(self, req: RecordAlerts) -> None:
        if not req.alerts:
            req.reply(0)
            return
        self.write_async([gstore.upsert_alerts(req.alerts, self.clock.now_ms())],
                         replying(req, lambda: len(req.alerts)), caller=req)

    def _release_run(self, msg: ReleaseRun) -> None:
        """The run is over: settle what it settled (its own write may have reached the
        journal while a Settle message to us was lost), release the rest."""
        now = self.clock.now_ms()
        live = [r for r in self.ledger.reservations if r.startswith(f"{msg.run_id}:")]
        for rid in live:
            row = self.conn.execute(
                "SELECT event_json FROM budget_ledger_events WHERE reservation_id = ?"
                " AND event_type = 'settled' LIMIT 1", (rid,)).fetchone()
            if row is not None:
                self.ledger.apply(orjson.loads(row[0]))
            else:
                self.ledger.release(rid, now)
        events = [e for e in self.ledger.drain_events() if e["type"] == "released"]
        if events:
            self.write_async([gstore.append_ledger_events(events, now)], lambda w: None)

    def _override_decided(self, msg: OverrideDecided) -> None:
        approval = msg.approval
        self._learn_override(approval)
        policy_id = approval.subject_id[len(OVERRIDE_SUBJECT):]
        resolved = OverrideResolved(approval.approval_id, approval.decision == "allow")
        for run_id in self.override_waiters.pop(policy_id, set()):
            tell_by_name(self.services.names, f"run:{run_id}", resolved)  # run_actor_name

    def _put_policy(self, req: PutPolicy) -> None:
        try:
            raw = req.policy
            now = self.clock.now_ms()
            if isinstance(raw, BudgetPolicy):
                raw = raw.to_record()
            if not isinstance(raw, dict):
                raise InvalidInput("a budget policy must be a mapping or a BudgetPolicy")
            record = dict(raw)
            record.setdefault("policy_id", new_ulid(now))
            existing = self.policies.get(record["policy_id"])
            record.setdefault("created_at_unix_ms", existing.created_at_unix_ms if existing else now)
            record.setdefault("created_by_principal",
                              existing.created_by_principal if existing else req.principal)
            record["updated_at_unix_ms"] = now
            record["updated_by_principal"] = req.principal
            policy = policy_from_mapping(record)
        except PalyraError as exc:
            req.fail(exc)
            return

        def apply() -> BudgetPolicy:
            self.policies[policy.policy_id] = policy
            self._publish()
            return policy

        self.write_async([gstore.upsert_policy(policy)], replying(req, apply), caller=req)

    def _put_pricing(self, req: PutPricing) -> None:
        try:
            raw = req.pricing
            record = raw if isinstance(raw, PricingRecord) else pricing_from_mapping(
                {"pricing_id": new_ulid(), **dict(raw)} if isinstance(raw, dict) else raw)
        except PalyraError as exc:
            req.fail(exc)
            return

        def apply() -> PricingRecord:
            self.pricing[record.pricing_id] = record
            self._publish()
            return record

        self.write_async([gstore.upsert_pricing([record], self.clock.now_ms())], replying(req, apply),
                         caller=req)

    def _request_override(self, req: RequestOverride) -> None:
        policy = self.policies.get(req.policy_id)
        if policy is None:
            req.fail(NotFound(f"budget policy {req.policy_id} not found", details={"policy_id": req.policy_id}))
            return
        if req.run_id:
            self.override_waiters.setdefault(policy.policy_id, set()).add(req.run_id)
        inflight = self.override_inflight.get(policy.policy_id)
        if inflight is not None:
            inflight.append(req)  # one approval for concurrent requesters
            return
        q = store.Queries(self.conn)
        pending = self.pending_overrides.get(policy.policy_id)
        if pending is not None:
            approval = q.approval(pending)
            if approval is not None and approval.decision is None:
                req.reply(approval)  # idempotent while one is pending
                return
        if any(o.policy_id == policy.policy_id for o in self._active_overrides(req.run_id)):
            approval = q.approval(self.overrides[policy.policy_id].approval_id)
            if approval is not None:
                req.reply(approval)
                return
        now = self.clock.now_ms()
        summary = f"Budget override requested for policy {policy.policy_id}"
        if req.reason:
            summary += f": {req.reason[:256]}"
        timeout_ms = self.services.config.runs.approval_timeout_ms
        prompt = approval_prompt("usage.budget_override", {"policy": policy.to_record()},
                                 -(-timeout_ms // 1000))
        prompt["title"] = f"Approve budget override for {policy.policy_id}"
        prompt["options"] = [{"id": "allow_once", "scope": "once", "default": True},
                             {"id": "deny_once", "scope": "once"}]
        approval = Approval(
            approval_id=new_ulid(now), run_id=req.run_id or new_ulid(now),
            session_id=req.session_id or new_ulid(now), principal=req.principal, device_id="local",
            channel=None, subject_type="usage_budget", subject_id=OVERRIDE_SUBJECT + policy.policy_id,
            proposal_id=None, request_summary=summary, prompt=prompt, requested_at_unix_ms=now,
            expires_at_unix_ms=None,
        )
        snapshot = {"policy_id": "usage_budget_policy.v1", "engine": "usage-governance-v1",
                    "policy": policy.to_record()}
        self.override_inflight[policy.policy_id] = [req]

        def done(write: Any) -> None:
            waiting = self.override_inflight.pop(policy.policy_id, [])
            for request in waiting:
                if write.error is not None:
                    request.fail(write.error)
                else:
                    request.reply(approval)
            if write.error is None:
                self.pending_overrides[policy.policy_id] = approval.approval_id

        self.write_async([store.insert_approval(approval, snapshot)], done, caller=req)

    # -- reads for the embedding API --------------------------------------------------------

    def evaluate(self, scope: UsageScope) -> dict[str, Any]:
        evaluation = self.ledger.evaluate(self.policies.values(), scope, Amount(), self.clock.now_ms(),
                                          self._active_overrides())
        return evaluation.to_dict()

    def reserved(self) -> dict[str, Any]:
        total = self.ledger.reserved_total()
        return {"reservations": len(self.ledger.reservations), "tokens": total.tokens,
                "cost_micro_usd": total.cost_micro_usd}

    def consumed(self, policy_id: str) -> dict[str, int]:
        policy = self.policies.get(policy_id)
        if policy is None:
            raise NotFound(f"budget policy {policy_id} not found")
        used = self.ledger.consumed_for(policy, self.clock.now_ms())
        held = self.ledger.reserved_for(policy)
        return {"consumed_tokens": used.tokens, "consumed_cost_micro_usd": used.cost_micro_usd,
                "reserved_tokens": held.tokens, "reserved_cost_micro_usd": held.cost_micro_usd}


def tell_budget(services: Any, message: Any) -> None:
    """Best effort: what it carries is also in the journal, which a restart rebuilds from."""
    tell_by_name(services.names, BUDGET, message)
