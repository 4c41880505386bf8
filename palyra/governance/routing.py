"""Smart routing: which model should serve a run (spec 3.2, 3.3 steps 3-8).

:func:`plan_usage_routing` is a pure function of the prompt, the candidate models,
provider health, credential leases, the routing mode and a budget evaluation. The
caller (the budget actor) evaluates the budget for the *default* model's projection
first, plans the route, then reserves the projection of the *actual* model
(:attr:`RoutingDecision.projected`).

Smart routing is publish-only by default: in ``suggest`` and ``dry_run`` the decision is
recorded but the run keeps the default model; only ``enforced`` changes the model.

Differences from upstream, on purpose:

* the deterministic provider is healthy without credentials (quirk 13.10), see
  :func:`provider_health`;
* when the default's provider is healthy, candidates on unhealthy providers are not
  routed to (upstream only filters them when failing over);
* a ``soft_limit`` (or warn-only ``hard_limit``) budget outcome steers the
  recommendation to the cheapest candidate, which ``enforced`` mode then uses.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson

from palyra.errors import InvalidInput
from palyra.governance.budgets import (
    APPROVAL_REQUIRED,
    BLOCKED,
    HARD_LIMIT,
    OK,
    OUTCOMES,
    REASON_CODES,
    SOFT_LIMIT,
    Amount,
    BudgetEvaluation,
)
from palyra.governance.pricing import (
    PricingEstimate,
    PricingRecord,
    estimate_cost,
    find_pricing,
)
from palyra.ids import new_ulid
from palyra.providers.base import estimate_tokens
from palyra.validation import bad, is_int

__all__ = [
    "COMPLEXITY_KEYWORDS",
    "LOW_COST_TASK_CLASSES",
    "LOW_LATENCY_TASK_CLASSES",
    "MODES",
    "TASK_CLASSES",
    "ModelCandidate",
    "RoutingDecision",
    "SmartRoutingConfig",
    "complexity_score",
    "normalize_mode",
    "plan_usage_routing",
    "provider_health",
]

MODES = ("suggest", "dry_run", "enforced")
TASK_CLASSES = frozenset(
    {
        "primary_interactive",
        "background_automation",
        "auxiliary_summary",
        "auxiliary_recall",
        "auxiliary_classification",
        "auxiliary_extraction",
        "auxiliary_vision",
    }
)
LOW_COST_TASK_CLASSES = frozenset(
    {"background_automation", "auxiliary_summary", "auxiliary_recall", "auxiliary_extraction"}
)
LOW_LATENCY_TASK_CLASSES = frozenset({"auxiliary_classification"})
COMPLEXITY_KEYWORDS = ("analyze", "architecture", "investigate", "regression", "security")
HIGH_COMPLEXITY = 0.75
LOW_COMPLEXITY = 0.35

HEALTH_STATES = frozenset({"ok", "degraded", "missing_auth"})
LEASE_STATES = ("ready", "waiting", "deferred")
_COST_RANK = {"low": 0, "standard": 1, "premium": 2}
_LATENCY_RANK = {"low": 0, "standard": 1, "high": 2}
_LEASE_RANK = {state: rank for rank, state in enumerate(LEASE_STATES)}

# reason codes (wire strings in explanation_json.reason_codes)
R_PUBLISH_ONLY = "mode_publish_only"
R_JSON_MODE = "capability_json_mode"
R_VISION = "capability_vision"
R_NO_CAPABLE = "no_capable_candidate"
R_DEFAULT_UNHEALTHY = "default_provider_unhealthy"
R_FAILOVER_POOL = "failover_healthy_pool"
R_UNHEALTHY_SKIPPED = "unhealthy_candidates_skipped"
R_LEASE_READY = "lease_ready_pool"
R_AUX_DISABLED = "auxiliary_routing_disabled"
R_AUX_COST_CAP = "auxiliary_cost_cap"
R_LOW_COST = "task_class_low_cost"
R_LOW_LATENCY = "task_class_low_latency"
R_HIGH_COMPLEXITY = "high_complexity"
R_LOW_COMPLEXITY = "low_complexity"
R_DEFAULT = "default_model"
R_DEFAULT_NOT_IN_POOL = "default_not_in_pool"
R_BUDGET_DOWNGRADE = "budget_soft_limit_downgrade"
R_LEASE_DEFERRED = "lease_deferred"


def normalize_mode(mode: str) -> str:
    """``suggest | dry_run | enforced`` (``dry-run`` accepted); anything else is rejected."""
    normalized = mode.strip().lower().replace("-", "_") if isinstance(mode, str) else mode
    if normalized not in MODES:
        raise InvalidInput(
            f"routing mode must be one of {', '.join(MODES)} (got {mode!r})",
            details={"field": "mode"},
        )
    return normalized


@dataclasses.dataclass(frozen=True, slots=True)
class SmartRoutingConfig:
    """``SmartRoutingRuntimeConfig``: env ``PALYRA_SMART_ROUTING_{ENABLED,MODE,AUXILIARY_ENABLED}``."""

    enabled: bool = True
    default_mode: str = "suggest"
    auxiliary_routing_enabled: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "default_mode", normalize_mode(self.default_mode))

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SmartRoutingConfig:
        def flag(name: str, default: bool) -> bool:
            raw = env.get(name)
            if raw is None:
                return default
            value = raw.strip().lower()
            if value in ("1", "true", "yes", "on"):
                return True
            if value in ("0", "false", "no", "off"):
                return False
            raise InvalidInput(f"{name} must be a boolean (got {raw!r})", details={"field": name})

        return cls(
            enabled=flag("PALYRA_SMART_ROUTING_ENABLED", True),
            default_mode=env.get("PALYRA_SMART_ROUTING_MODE", "suggest"),
            auxiliary_routing_enabled=flag("PALYRA_SMART_ROUTING_AUXILIARY_ENABLED", True),
        )

    def effective_mode(self, run_override: str | None = None) -> str:
        """``suggest`` when disabled; a run's ``routing.mode`` wins only when enabled."""
        if not self.enabled:
            return "suggest"
        return normalize_mode(run_override) if run_override is not None else self.default_mode


def complexity_score(prompt: str, json_mode: bool = False, vision_inputs: int = 0) -> float:
    """Step 4: clamp01(0.35*min(chars/4000,1) + 0.35*min(words/3000,1) + 0.2*json_mode
    + min(0.15*vision_inputs, 0.3) + 0.05*keywords present)."""
    lowered = prompt.lower()
    keywords = sum(1 for keyword in COMPLEXITY_KEYWORDS if keyword in lowered)
    score = (
        0.35 * min(len(prompt) / 4000, 1.0)
        + 0.35 * min(estimate_tokens(prompt) / 3000, 1.0)
        + (0.2 if json_mode else 0.0)
        + min(0.15 * max(vision_inputs, 0), 0.3)
        + 0.05 * keywords
    )
    return min(max(score, 0.0), 1.0)


def provider_health(
    *,
    kind: str,
    circuit_open: bool = False,
    runtime_error_count: int = 0,
    auth_configured: bool = False,
) -> str:
    """Step 3: ``degraded`` when the circuit is open or errors were seen, else ``ok`` with
    credentials, else ``missing_auth``. The deterministic provider needs none (quirk fixed)."""
    if circuit_open or runtime_error_count > 0:
        return "degraded"
    if auth_configured or kind == "deterministic":
        return "ok"
    return "missing_auth"


@dataclasses.dataclass(frozen=True, slots=True)
class ModelCandidate:
    """A chat model of a provider; ``capabilities`` may hold ``json_mode`` and ``vision``."""

    model_id: str
    provider_id: str
    provider_kind: str
    cost_tier: str = "standard"  # low | standard | premium
    latency_tier: str = "standard"  # low | standard | high
    capabilities: frozenset[str] = frozenset()
    enabled: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "capabilities", frozenset(self.capabilities))

    @property
    def cost_rank(self) -> int:
        return _COST_RANK.get(self.cost_tier, 1)

    @property
    def latency_rank(self) -> int:
        return _LATENCY_RANK.get(self.latency_tier, 1)

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider_id, self.model_id)


@dataclasses.dataclass(frozen=True, slots=True)
class RoutingDecision:
    mode: str
    task_class: str
    complexity_score: float
    default: ModelCandidate
    recommended: ModelCandidate
    actual: ModelCandidate
    health_state: str
    lease_state: str
    routing_action: str  # proceed | degrade | failover | approval_required | blocked | defer
    budget_outcome: str
    reason_codes: tuple[str, ...]
    explanation: tuple[str, ...]
    cost_estimate: PricingEstimate
    credential_id: str | None = None

    @property
    def default_model_id(self) -> str:
        return self.default.model_id

    @property
    def recommended_model_id(self) -> str:
        return self.recommended.model_id

    @property
    def actual_model_id(self) -> str:
        return self.actual.model_id

    @property
    def provider_id(self) -> str:
        return self.actual.provider_id

    @property
    def provider_kind(self) -> str:
        return self.actual.provider_kind

    @property
    def deferred(self) -> bool:
        return self.routing_action == "defer"

    @property
    def may_proceed(self) -> bool:
        return self.routing_action in ("proceed", "degrade", "failover")

    @property
    def projected(self) -> Amount:
        """What to reserve: prompt + projected completion tokens, and their cost (0 when
        no pricing is known)."""
        est = self.cost_estimate
        return Amount(est.prompt_tokens + est.completion_tokens, est.upper_micro_usd or 0)

    def to_record(
        self,
        *,
        run_id: str,
        session_id: str,
        principal: str,
        created_at_unix_ms: int,
        decision_id: str | None = None,
        scope_kind: str = "session",
        scope_id: str | None = None,
    ) -> dict[str, Any]:
        """A ``usage_routing_decisions`` row (``explanation_json`` as canonical JSON text)."""
        explanation = {
            "explanation": list(self.explanation),
            "budget_outcome": self.budget_outcome,
            "reason_codes": list(self.reason_codes),
            "task_class": self.task_class,
            "routing_action": self.routing_action,
            "credential_id": self.credential_id,
            "lease": self.lease_state,
            "deferred": self.deferred,
        }
        return {
            "decision_id": decision_id or new_ulid(created_at_unix_ms),
            "run_id": run_id,
            "session_id": session_id,
            "identity": principal,
            "scope_kind": scope_kind,
            "scope_id": session_id if scope_id is None and scope_kind == "session" else scope_id,
            "mode": self.mode,
            "default_model_id": self.default_model_id,
            "recommended_model_id": self.recommended_model_id,
            "actual_model_id": self.actual_model_id,
            "provider_id": self.provider_id,
            "provider_kind": self.provider_kind,
            "complexity_score": self.complexity_score,
            "health_state": self.health_state,
            "explanation_json": orjson.dumps(explanation, option=orjson.OPT_SORT_KEYS).decode(),
            "estimated_cost_lower_usd": self.cost_estimate.lower_usd,
            "estimated_cost_upper_usd": self.cost_estimate.upper_usd,
            "budget_outcome": self.budget_outcome,
            "created_at_unix_ms": created_at_unix_ms,
        }


def _budget_outcome(budget: BudgetEvaluation | str | None) -> tuple[str, tuple[str, ...]]:
    if budget is None:
        return OK, ()
    if isinstance(budget, BudgetEvaluation):
        return budget.outcome, budget.reason_codes
    if budget not in OUTCOMES:
        raise InvalidInput(f"unknown budget outcome {budget!r}", details={"field": "budget"})
    code = REASON_CODES.get(budget)
    return budget, (code,) if code else ()


def _cheapest_key(lease_rank: Callable[[ModelCandidate], int]) -> Callable[[ModelCandidate], tuple]:
    return lambda c: (lease_rank(c), c.cost_rank, c.latency_rank, c.model_id, c.provider_id)


def plan_usage_routing(
    *,
    prompt: str,
    candidates: Sequence[ModelCandidate],
    default_model: ModelCandidate | str,
    task_class: str = "primary_interactive",
    json_mode: bool = False,
    vision_inputs: int = 0,
    health: Mapping[str, str] | None = None,
    leases: Mapping[str, str] | None = None,
    mode: str = "suggest",
    failover_enabled: bool = True,
    auxiliary_routing_enabled: bool = True,
    budget: BudgetEvaluation | str | None = None,
    catalog: Iterable[PricingRecord] = (),
    now_ms: int = 0,
    credential_id: str | None = None,
) -> RoutingDecision:
    """Plan the route of one run (steps 3-8 of spec 3.3).

    ``health`` and ``leases`` are keyed by provider id; a provider missing from ``health``
    is taken as ``ok`` and one missing from ``leases`` as ``ready``. ``default_model`` is
    a candidate, or a model id looked up in ``candidates`` (a model the registry does
    not know becomes a standard-tier candidate of an ``unknown`` provider).
    """
    mode = normalize_mode(mode)
    if task_class not in TASK_CLASSES:
        raise InvalidInput(
            f"task_class must be one of {', '.join(sorted(TASK_CLASSES))} (got {task_class!r})",
            details={"field": "task_class"},
        )
    if not is_int(vision_inputs) or vision_inputs < 0:
        raise bad("vision_inputs", "must be a non-negative integer")
    health = dict(health or {})
    leases = dict(leases or {})
    for provider, state in health.items():
        if state not in HEALTH_STATES:
            raise InvalidInput(
                f"unknown health state {state!r} for {provider}", details={"field": "health"}
            )
    for provider, state in leases.items():
        if state not in _LEASE_RANK:
            raise InvalidInput(
                f"unknown lease state {state!r} for {provider}", details={"field": "leases"}
            )

    def health_of(c: ModelCandidate) -> str:
        return health.get(c.provider_id, "ok")

    def lease_of(c: ModelCandidate) -> str:
        return leases.get(c.provider_id, "ready")

    def lease_rank(c: ModelCandidate) -> int:
        return _LEASE_RANK[lease_of(c)]

    reasons: list[str] = []
    lines: list[str] = []
    score = complexity_score(prompt, json_mode, vision_inputs)
    lines.append(f"complexity score {score:.2f} for task class {task_class}")
    budget_outcome, budget_codes = _budget_outcome(budget)

    # -- the default and the candidate pool (step 5)
    registry = {c.key: c for c in candidates}
    if isinstance(default_model, ModelCandidate):
        default = default_model
    else:
        default = next(
            (c for c in candidates if c.model_id == default_model),
            ModelCandidate(default_model, "unknown", "unknown"),
        )
    aux = task_class.startswith("auxiliary_")

    def capable(c: ModelCandidate) -> bool:
        if json_mode and "json_mode" not in c.capabilities:
            return False
        return not (vision_inputs > 0 and "vision" not in c.capabilities)

    pool = [c for c in candidates if c.enabled and capable(c)]
    if default.key not in registry:
        pool.append(default)
    if json_mode:
        reasons.append(R_JSON_MODE)
    if vision_inputs > 0:
        reasons.append(R_VISION)
    if not pool:
        pool = [default]
        reasons.append(R_NO_CAPABLE)
        lines.append("no candidate has the required capabilities; keeping the default model")

    default_health = health_of(default)
    healthy = [c for c in pool if health_of(c) == "ok"]
    if default_health != "ok":
        reasons.append(R_DEFAULT_UNHEALTHY)
        if failover_enabled and healthy:
            pool = healthy
            reasons.append(R_FAILOVER_POOL)
            lines.append(
                f"default provider {default.provider_id} is {default_health}; "
                "routing among healthy providers"
            )
        else:
            lines.append(f"default provider {default.provider_id} is {default_health}")
    elif healthy and len(healthy) < len(pool):
        pool = healthy
        reasons.append(R_UNHEALTHY_SKIPPED)
        lines.append("skipping candidates on unhealthy providers")

    ready = [c for c in pool if lease_of(c) == "ready"]
    if ready and len(ready) < len(pool):
        pool = ready
        reasons.append(R_LEASE_READY)
        lines.append("only candidates with a ready credential lease are considered")

    # -- choose (step 6)
    cheapest = _cheapest_key(lease_rank)
    pinned = aux and not auxiliary_routing_enabled
    if pinned:
        recommended = default
        reasons.append(R_AUX_DISABLED)
        lines.append("auxiliary routing is disabled; pinned to the default model")
    else:
        if aux:
            capped = [c for c in pool if c.cost_rank <= default.cost_rank]
            if len(capped) < len(pool):
                reasons.append(R_AUX_COST_CAP)
                lines.append("auxiliary tasks may not cost more than the default model")
            pool = capped or [default]
        pooled_default = next((c for c in pool if c.key == default.key), None)
        if task_class in LOW_COST_TASK_CLASSES:
            recommended = min(pool, key=cheapest)
            reasons.append(R_LOW_COST)
            lines.append(f"{task_class} prefers the lowest-cost model")
        elif task_class in LOW_LATENCY_TASK_CLASSES:
            recommended = min(
                pool,
                key=lambda c: (
                    lease_rank(c),
                    c.latency_rank,
                    c.cost_rank,
                    c.model_id,
                    c.provider_id,
                ),
            )
            reasons.append(R_LOW_LATENCY)
            lines.append(f"{task_class} prefers the lowest-latency model")
        elif score >= HIGH_COMPLEXITY:
            recommended = min(
                pool,
                key=lambda c: (
                    lease_rank(c),
                    -c.cost_rank,
                    c.latency_rank,
                    c.model_id,
                    c.provider_id,
                ),
            )
            reasons.append(R_HIGH_COMPLEXITY)
            lines.append("high complexity: escalating to the most capable model")
        elif score <= LOW_COMPLEXITY:
            recommended = min(pool, key=cheapest)
            reasons.append(R_LOW_COMPLEXITY)
            lines.append("low complexity: the cheapest model is enough")
        elif pooled_default is not None and lease_rank(pooled_default) == min(
            map(lease_rank, pool)
        ):
            recommended = pooled_default
            reasons.append(R_DEFAULT)
            lines.append("moderate complexity: keeping the default model")
        else:
            recommended = min(
                pool,
                key=lambda c: (
                    lease_rank(c),
                    c.latency_rank,
                    c.cost_rank,
                    c.model_id,
                    c.provider_id,
                ),
            )
            reasons.append(R_DEFAULT_NOT_IN_POOL)
            lines.append("the default model is not available; choosing the lowest-latency model")

        if budget_outcome in (SOFT_LIMIT, HARD_LIMIT):
            cheaper = min(pool, key=cheapest)
            if cheaper.cost_rank < recommended.cost_rank:
                recommended = cheaper
                reasons.append(R_BUDGET_DOWNGRADE)
                lines.append(
                    f"budget {budget_outcome.replace('_', ' ')} reached: "
                    f"downgrading to {cheaper.model_id}"
                )

    # -- actual model and action (step 7)
    if mode == "enforced":
        actual = recommended
    else:
        actual = default
        reasons.append(R_PUBLISH_ONLY)
        lines.append(f"{mode} mode publishes the recommendation; the run keeps the default model")
    if actual.key == default.key:
        action = "proceed"
    elif actual.provider_id != default.provider_id:
        action = "failover"
    elif actual.cost_rank <= default.cost_rank:
        action = "degrade"
    else:
        action = "proceed"
    reasons.extend(budget_codes)
    if budget_outcome == BLOCKED:
        action = "blocked"
        lines.append("a usage budget hard limit blocks this run")
    elif budget_outcome == APPROVAL_REQUIRED:
        action = "approval_required"
        lines.append("a usage budget requires an approved override before this run")
    elif aux and lease_of(actual) == "deferred":
        action = "defer"
        reasons.append(R_LEASE_DEFERRED)
        lines.append("the credential lease is deferred; the auxiliary task must wait")
    elif budget_outcome != OK:
        lines.append(f"usage budget outcome: {budget_outcome}")
    lines.append(f"recommended {recommended.model_id}; using {actual.model_id} ({action})")

    pricing = find_pricing(
        catalog, actual.provider_kind, actual.provider_id, actual.model_id, now_ms
    )
    estimate = estimate_cost(pricing, estimate_tokens(prompt))
    return RoutingDecision(
        mode=mode,
        task_class=task_class,
        complexity_score=score,
        default=default,
        recommended=recommended,
        actual=actual,
        health_state=health_of(actual),
        lease_state=lease_of(actual),
        routing_action=action,
        budget_outcome=budget_outcome,
        reason_codes=tuple(dict.fromkeys(reasons)),
        explanation=tuple(lines),
        cost_estimate=estimate,
        credential_id=credential_id,
    )
