"""Budget policies and the reservation ledger (spec 3.1, 3.3 step 9; quirk 13.4 fixed).

A :class:`BudgetPolicy` caps ``total_tokens`` or ``estimated_cost_usd`` for one scope
(``global``, a ``principal``, a ``session`` or an ``agent``) over an interval
(``rolling_24h``, ``rolling_30d``, ``calendar_month`` in UTC, or ``run``: each run on its
own). Unlike upstream, a policy only applies to runs in its scope, honours its interval,
and counts consumed usage for *both* metrics.

The :class:`Ledger` enforces limits exactly when several runs are in flight. Before a
provider call the budget actor :meth:`Ledger.reserve`\\ s the projected usage; the check
is ``consumed (in the window) + reserved (in flight) + projected`` against every
applicable policy, so two concurrent runs cannot both squeeze under the same hard limit.
When the run ends the actor :meth:`~Ledger.settle`\\ s its actual usage (which may exceed
the projection) or :meth:`~Ledger.release`\\ s the reservation (the run died before
calling the provider).

Usage is indexed by *scope*, not by policy: a settled run counts toward every policy
whose scope contains it, including policies created or edited afterwards.

The ledger is pure: no clock (``now_ms`` is passed in), no I/O, no threads. Every state
change is also produced as a plain event dict (ints and strings only, so it is canonical
JSON) that the actor journals after :meth:`~Ledger.drain_events`; :meth:`Ledger.rebuild`
replays those events to reconstruct the same state after a restart.

Units: token amounts are tokens; cost amounts and cost limits are integer micro-USD
(see :mod:`palyra.governance.pricing`). The wire form (:meth:`BudgetPolicy.to_record`,
:func:`policy_from_mapping`) speaks USD floats for cost limits, like upstream.
"""

from __future__ import annotations

import dataclasses
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from palyra.errors import Conflict, InvalidInput
from palyra.governance.pricing import micros_to_usd_exact, usd_to_micros
from palyra.validation import bad, is_int, is_number, non_empty_text, non_negative_int

__all__ = [
    "ACTIONS",
    "BLOCKED",
    "APPROVAL_REQUIRED",
    "HARD_LIMIT",
    "INTERVAL_KINDS",
    "METRIC_KINDS",
    "OK",
    "OUTCOMES",
    "OVERRIDE_APPLIED",
    "REASON_CODES",
    "ROUTING_MODES",
    "SCOPE_KINDS",
    "SOFT_LIMIT",
    "ZERO",
    "Amount",
    "BudgetDecision",
    "BudgetEvaluation",
    "BudgetPolicy",
    "Ledger",
    "Override",
    "PolicyEvaluation",
    "Reservation",
    "UsageScope",
    "applies_to",
    "policy_from_mapping",
    "validate_policy",
    "window_start",
]

SCOPE_KINDS = frozenset({"global", "principal", "session", "agent"})
METRIC_KINDS = frozenset({"total_tokens", "estimated_cost_usd"})
INTERVAL_KINDS = frozenset({"rolling_24h", "rolling_30d", "calendar_month", "run"})
ACTIONS = frozenset({"block", "approval_required", "warn"})
ROUTING_MODES = frozenset({"suggest", "dry_run", "enforced"})

OK = "ok"
SOFT_LIMIT = "soft_limit"
OVERRIDE_APPLIED = "override_applied"
HARD_LIMIT = "hard_limit"  # over the hard limit of a warn-only policy
APPROVAL_REQUIRED = "approval_required"
BLOCKED = "blocked"
# Ordered by severity: the overall outcome of an evaluation is the most severe one.
OUTCOMES = (OK, SOFT_LIMIT, OVERRIDE_APPLIED, HARD_LIMIT, APPROVAL_REQUIRED, BLOCKED)
_SEVERITY = {outcome: rank for rank, outcome in enumerate(OUTCOMES)}
REASON_CODES = {
    SOFT_LIMIT: "budget_soft_limit",
    OVERRIDE_APPLIED: "budget_override_applied",
    HARD_LIMIT: "budget_hard_limit",
    APPROVAL_REQUIRED: "budget_approval_required",
    BLOCKED: "budget_blocked",
}

DAY_MS = 86_400_000
_ROLLING_MS = {"rolling_24h": DAY_MS, "rolling_30d": 30 * DAY_MS}
# Settled usage older than this can no longer fall inside any window (a calendar month
# reaches back at most 31 days); see Ledger.prune.
HORIZON_MS = 32 * DAY_MS

ScopeKey = tuple[str, str]
_GLOBAL_KEY: ScopeKey = ("global", "")


# --------------------------------------------------------------------------- values


@dataclasses.dataclass(frozen=True, slots=True)
class Amount:
    """Usage in both metrics: tokens and integer micro-USD."""

    tokens: int = 0
    cost_micro_usd: int = 0

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.tokens + other.tokens, self.cost_micro_usd + other.cost_micro_usd)

    def __sub__(self, other: Amount) -> Amount:
        return Amount(self.tokens - other.tokens, self.cost_micro_usd - other.cost_micro_usd)

    def metric(self, metric_kind: str) -> int:
        return self.tokens if metric_kind == "total_tokens" else self.cost_micro_usd

    def checked(self, field: str = "amount") -> Amount:
        """Itself, after checking both parts are non-negative integers."""
        non_negative_int(self.tokens, f"{field}.tokens")
        non_negative_int(self.cost_micro_usd, f"{field}.cost_micro_usd")
        return self


ZERO = Amount()


@dataclasses.dataclass(frozen=True, slots=True)
class UsageScope:
    """Whose usage this is: a run belongs to a principal, a session and maybe an agent."""

    principal: str
    session_id: str | None = None
    agent_id: str | None = None

    def scope_keys(self) -> tuple[ScopeKey, ...]:
        """The scope keys this usage counts toward."""
        keys = [_GLOBAL_KEY, ("principal", self.principal)]
        if self.session_id is not None:
            keys.append(("session", self.session_id))
        if self.agent_id is not None:
            keys.append(("agent", self.agent_id))
        return tuple(keys)

    def to_dict(self) -> dict[str, Any]:
        return {
            "principal": self.principal,
            "session_id": self.session_id,
            "agent_id": self.agent_id,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetPolicy:
    """One ``usage_budget_policies`` row. Validated on construction.

    ``soft_limit`` / ``hard_limit`` are in ledger units: tokens for ``total_tokens``,
    micro-USD for ``estimated_cost_usd`` (the wire names are ``soft_limit_value`` /
    ``hard_limit_value`` in tokens or USD, and errors name those). A limit is exceeded
    when usage is strictly above it.
    """

    policy_id: str
    scope_kind: str
    metric_kind: str
    interval_kind: str
    action: str
    scope_id: str | None = None
    soft_limit: int | None = None
    hard_limit: int | None = None
    routing_mode_override: str | None = None
    enabled: bool = True
    created_by_principal: str | None = None
    updated_by_principal: str | None = None
    created_at_unix_ms: int = 0
    updated_at_unix_ms: int = 0

    def __post_init__(self) -> None:
        if self.routing_mode_override == "dry-run":
            object.__setattr__(self, "routing_mode_override", "dry_run")
        validate_policy(self)

    @property
    def scope_key(self) -> ScopeKey:
        return (
            _GLOBAL_KEY if self.scope_kind == "global" else (self.scope_kind, self.scope_id or "")
        )

    def _wire_limit(self, value: int | None) -> int | float | None:
        if value is None or self.metric_kind == "total_tokens":
            return value
        return micros_to_usd_exact(value)

    def to_record(self) -> dict[str, Any]:
        """The wire form (``UsageBudgetPolicyRecord``)."""
        return {
            "policy_id": self.policy_id,
            "scope_kind": self.scope_kind,
            "scope_id": self.scope_id,
            "metric_kind": self.metric_kind,
            "interval_kind": self.interval_kind,
            "soft_limit_value": self._wire_limit(self.soft_limit),
            "hard_limit_value": self._wire_limit(self.hard_limit),
            "action": self.action,
            "routing_mode_override": self.routing_mode_override,
            "enabled": self.enabled,
            "created_by_principal": self.created_by_principal,
            "updated_by_principal": self.updated_by_principal,
            "created_at_unix_ms": self.created_at_unix_ms,
            "updated_at_unix_ms": self.updated_at_unix_ms,
        }


def _one_of(value: Any, allowed: frozenset[str], field: str) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise bad(field, f"must be one of {', '.join(sorted(allowed))} (got {value!r})")


def validate_policy(policy: BudgetPolicy) -> None:
    """Reject a malformed policy with an :class:`InvalidInput` that names the field."""
    non_empty_text(policy.policy_id, "policy_id")
    _one_of(policy.scope_kind, SCOPE_KINDS, "scope_kind")
    _one_of(policy.metric_kind, METRIC_KINDS, "metric_kind")
    _one_of(policy.interval_kind, INTERVAL_KINDS, "interval_kind")
    _one_of(policy.action, ACTIONS, "action")
    if policy.scope_kind == "global":
        if policy.scope_id not in (None, ""):
            raise bad("scope_id", "must be empty for a global policy")
    elif not isinstance(policy.scope_id, str) or not policy.scope_id.strip():
        raise bad("scope_id", f"is required for scope_kind {policy.scope_kind}")
    for field, value in (
        ("soft_limit_value", policy.soft_limit),
        ("hard_limit_value", policy.hard_limit),
    ):
        if value is not None:
            non_negative_int(value, field)
    if policy.soft_limit is None and policy.hard_limit is None:
        raise bad("hard_limit_value", "or soft_limit_value is required")
    if (
        policy.soft_limit is not None
        and policy.hard_limit is not None
        and policy.soft_limit > policy.hard_limit
    ):
        raise bad("soft_limit_value", "must not be above hard_limit_value")
    if policy.routing_mode_override is not None:
        _one_of(policy.routing_mode_override, ROUTING_MODES, "routing_mode_override")
    if not isinstance(policy.enabled, bool):
        raise bad("enabled", "must be a boolean")
    for field in ("created_by_principal", "updated_by_principal"):
        value = getattr(policy, field)
        if value is not None and not isinstance(value, str):
            raise bad(field, "must be a string")
    non_negative_int(policy.created_at_unix_ms, "created_at_unix_ms")
    non_negative_int(policy.updated_at_unix_ms, "updated_at_unix_ms")


_POLICY_FIELDS = frozenset(
    {
        "policy_id",
        "scope_kind",
        "scope_id",
        "metric_kind",
        "interval_kind",
        "soft_limit_value",
        "hard_limit_value",
        "action",
        "routing_mode_override",
        "enabled",
        "created_by_principal",
        "updated_by_principal",
        "created_at_unix_ms",
        "updated_at_unix_ms",
    }
)
_REQUIRED_FIELDS = ("policy_id", "scope_kind", "metric_kind", "interval_kind", "action")


def _limit_from_wire(value: Any, metric_kind: str, field: str) -> int | None:
    if value is None:
        return None
    if metric_kind == "estimated_cost_usd":
        micros = usd_to_micros(value, field=field)
    elif not is_number(value):
        raise bad(field, "must be a number")
    elif isinstance(value, float) and not value.is_integer():
        raise bad(field, "must be a whole number of tokens")
    else:
        micros = int(value)
    if micros < 0:
        raise bad(field, "must not be negative")
    return micros


def policy_from_mapping(mapping: Mapping[str, Any]) -> BudgetPolicy:
    """A validated policy from its wire form; unknown fields are rejected by name."""
    if not isinstance(mapping, Mapping):
        raise InvalidInput("budget policy must be an object")
    unknown = sorted(str(k) for k in set(mapping) - _POLICY_FIELDS)
    if unknown:
        raise InvalidInput(
            f"unknown budget policy field(s): {', '.join(unknown)}", details={"fields": unknown}
        )
    for field in _REQUIRED_FIELDS:
        if mapping.get(field) is None:
            raise bad(field, "is required")
    metric_kind = mapping["metric_kind"]
    _one_of(metric_kind, METRIC_KINDS, "metric_kind")
    kwargs = {
        k: v
        for k, v in mapping.items()
        if k not in ("soft_limit_value", "hard_limit_value") and v is not None
    }
    kwargs["soft_limit"] = _limit_from_wire(
        mapping.get("soft_limit_value"), metric_kind, "soft_limit_value"
    )
    kwargs["hard_limit"] = _limit_from_wire(
        mapping.get("hard_limit_value"), metric_kind, "hard_limit_value"
    )
    return BudgetPolicy(**kwargs)


def applies_to(policy: BudgetPolicy, scope: UsageScope) -> bool:
    """Whether an enabled policy covers usage in ``scope`` (upstream applied them all)."""
    if not policy.enabled:
        return False
    if policy.scope_kind == "global":
        return True
    if policy.scope_kind == "principal":
        return scope.principal == policy.scope_id
    if policy.scope_kind == "session":
        return scope.session_id is not None and scope.session_id == policy.scope_id
    return scope.agent_id is not None and scope.agent_id == policy.scope_id


def window_start(interval_kind: str, now_ms: int) -> int | None:
    """First millisecond (inclusive) whose settled usage counts at ``now_ms``.

    ``calendar_month`` starts at 00:00 UTC on the 1st. ``run`` returns ``None``: a run
    policy caps each run by itself, so no earlier usage (and no other run's reservation)
    counts.
    """
    if interval_kind in _ROLLING_MS:
        return now_ms - _ROLLING_MS[interval_kind]
    if interval_kind == "calendar_month":
        at = datetime.fromtimestamp(now_ms // 1000, tz=UTC)
        return int(datetime(at.year, at.month, 1, tzinfo=UTC).timestamp()) * 1000
    if interval_kind == "run":
        return None
    raise bad("interval_kind", f"must be one of {', '.join(sorted(INTERVAL_KINDS))}")


@dataclasses.dataclass(frozen=True, slots=True)
class Override:
    """An operator-approved override (approval subject ``usage-budget:<policy_id>``).

    While active (``now < expires_at_ms``, or forever when ``None``) it lifts the hard
    limit of that policy: the outcome is ``override_applied`` instead of a block.
    """

    policy_id: str
    approval_id: str
    expires_at_ms: int | None = None

    def active(self, now_ms: int) -> bool:
        return self.expires_at_ms is None or now_ms < self.expires_at_ms


# --------------------------------------------------------------------------- evaluations


@dataclasses.dataclass(frozen=True, slots=True)
class PolicyEvaluation:
    """One policy's verdict; amounts are in the policy's metric (tokens or micro-USD)."""

    policy: BudgetPolicy
    outcome: str
    consumed: int
    reserved: int
    projected: int
    override_approval_id: str | None = None

    @property
    def policy_id(self) -> str:
        return self.policy.policy_id

    @property
    def used(self) -> int:
        return self.consumed + self.reserved + self.projected

    @property
    def reason_code(self) -> str | None:
        return REASON_CODES.get(self.outcome)

    def to_dict(self) -> dict[str, Any]:
        p = self.policy

        def wire(value: int | None) -> int | float | None:
            return p._wire_limit(value)

        return {
            "policy_id": p.policy_id,
            "scope_kind": p.scope_kind,
            "scope_id": p.scope_id,
            "metric_kind": p.metric_kind,
            "interval_kind": p.interval_kind,
            "action": p.action,
            "status": self.outcome,
            "consumed_value": wire(self.consumed),
            "reserved_value": wire(self.reserved),
            "projected_value": wire(self.used),
            "soft_limit_value": wire(p.soft_limit),
            "hard_limit_value": wire(p.hard_limit),
            "override_approval_id": self.override_approval_id,
            "reason_code": self.reason_code,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetEvaluation:
    """All applicable policies' verdicts; ``outcome`` is the most severe (``ok`` if none)."""

    outcome: str
    evaluations: tuple[PolicyEvaluation, ...] = ()

    @property
    def allowed(self) -> bool:
        return self.outcome not in (BLOCKED, APPROVAL_REQUIRED)

    @property
    def reason_codes(self) -> tuple[str, ...]:
        codes = (e.reason_code for e in self.evaluations)
        return tuple(dict.fromkeys(c for c in codes if c is not None))

    def with_outcome(self, *outcomes: str) -> tuple[PolicyEvaluation, ...]:
        return tuple(e for e in self.evaluations if e.outcome in outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_outcome": self.outcome,
            "reason_codes": list(self.reason_codes),
            "evaluations": [e.to_dict() for e in self.evaluations],
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Reservation:
    reservation_id: str
    scope: UsageScope
    amount: Amount
    policy_ids: tuple[str, ...]
    reserved_at_unix_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class BudgetDecision:
    """The answer to :meth:`Ledger.reserve`: granted with a reservation, or denied.

    ``replayed`` is true when the same reservation was asked for again and the existing
    one is returned (idempotent retry).
    """

    granted: bool
    evaluation: BudgetEvaluation
    reservation: Reservation | None = None
    replayed: bool = False

    @property
    def outcome(self) -> str:
        return self.evaluation.outcome


# --------------------------------------------------------------------------- ledger


class _Series:
    """Settled usage of one scope: times ascending, with running sums for O(log n) windows."""

    __slots__ = ("cost", "times", "tokens")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.tokens: list[int] = []  # cumulative
        self.cost: list[int] = []  # cumulative

    def add(self, at_ms: int, amount: Amount) -> None:
        if not self.times or at_ms >= self.times[-1]:
            self.times.append(at_ms)
            self.tokens.append((self.tokens[-1] if self.tokens else 0) + amount.tokens)
            self.cost.append((self.cost[-1] if self.cost else 0) + amount.cost_micro_usd)
            return
        # Out of order (a settle stamped earlier than the last one): rebuild the suffix.
        i = bisect_right(self.times, at_ms)
        parts = [
            (t, tk - (self.tokens[j - 1] if j else 0), c - (self.cost[j - 1] if j else 0))
            for j, (t, tk, c) in enumerate(zip(self.times, self.tokens, self.cost, strict=True))
        ]
        parts.insert(i, (at_ms, amount.tokens, amount.cost_micro_usd))
        self._reset(parts)

    def _reset(self, parts: list[tuple[int, int, int]]) -> None:
        self.times, self.tokens, self.cost = [], [], []
        for t, tk, c in parts:
            self.add(t, Amount(tk, c))

    def since(self, start_ms: int) -> Amount:
        if not self.times:
            return ZERO
        i = bisect_left(self.times, start_ms)
        if i == 0:
            return Amount(self.tokens[-1], self.cost[-1])
        return Amount(self.tokens[-1] - self.tokens[i - 1], self.cost[-1] - self.cost[i - 1])

    def prune(self, before_ms: int) -> None:
        i = bisect_left(self.times, before_ms)
        if i == 0:
            return
        base_t, base_c = self.tokens[i - 1], self.cost[i - 1]
        self.times = self.times[i:]
        self.tokens = [t - base_t for t in self.tokens[i:]]
        self.cost = [c - base_c for c in self.cost[i:]]


@dataclasses.dataclass(frozen=True, slots=True)
class _Settled:
    at_ms: int
    reservation_id: str
    scope: UsageScope
    amount: Amount


def _scope_from_event(event: Mapping[str, Any]) -> UsageScope:
    scope = UsageScope(event["principal"], event.get("session_id"), event.get("agent_id"))
    if not isinstance(scope.principal, str) or not all(
        v is None or isinstance(v, str) for v in (scope.session_id, scope.agent_id)
    ):
        raise TypeError("scope fields must be strings")
    return scope


class Ledger:
    """Reservations in flight and settled usage; see the module docstring.

    Not thread-safe on purpose: one budget actor owns it.
    """

    def __init__(self) -> None:
        self._reservations: dict[str, Reservation] = {}
        self._reserved: dict[ScopeKey, Amount] = {}
        self._consumed: dict[ScopeKey, _Series] = {}
        self._settled: list[_Settled] = []
        self._closed: dict[str, int] = {}  # reservation_id -> settled/released at
        self._events: list[dict[str, Any]] = []

    # ----------------------------------------------------------------- inspection

    @property
    def reservations(self) -> Mapping[str, Reservation]:
        return dict(self._reservations)

    def reserved_for(self, policy: BudgetPolicy) -> Amount:
        """Usage reserved by in-flight runs in the policy's scope (none for ``run``)."""
        if policy.interval_kind == "run":
            return ZERO
        return self._reserved.get(policy.scope_key, ZERO)

    def consumed_for(self, policy: BudgetPolicy, now_ms: int) -> Amount:
        """Settled usage in the policy's scope and window at ``now_ms`` (none for ``run``)."""
        start = window_start(policy.interval_kind, now_ms)
        series = self._consumed.get(policy.scope_key)
        if start is None or series is None:
            return ZERO
        return series.since(start)

    def reserved_total(self) -> Amount:
        return self._reserved.get(_GLOBAL_KEY, ZERO)

    # ----------------------------------------------------------------- decisions

    def evaluate(
        self,
        policies: Iterable[BudgetPolicy],
        scope: UsageScope,
        projected: Amount,
        now_ms: int,
        overrides: Iterable[Override] = (),
    ) -> BudgetEvaluation:
        """Judge ``projected`` more usage in ``scope`` against every applicable policy."""
        projected.checked("projected")
        active = {}
        for override in overrides:
            if override.active(now_ms):
                active.setdefault(override.policy_id, override.approval_id)
        results = []
        for policy in policies:
            if not applies_to(policy, scope):
                continue
            metric = policy.metric_kind
            consumed = self.consumed_for(policy, now_ms).metric(metric)
            reserved = self.reserved_for(policy).metric(metric)
            used = consumed + reserved + projected.metric(metric)
            approval_id = None
            if policy.hard_limit is not None and used > policy.hard_limit:
                approval_id = active.get(policy.policy_id)
                if approval_id is not None:
                    outcome = OVERRIDE_APPLIED
                elif policy.action == "block":
                    outcome = BLOCKED
                elif policy.action == "approval_required":
                    outcome = APPROVAL_REQUIRED
                else:
                    outcome = HARD_LIMIT
            elif policy.soft_limit is not None and used > policy.soft_limit:
                outcome = SOFT_LIMIT
            else:
                outcome = OK
            results.append(
                PolicyEvaluation(
                    policy, outcome, consumed, reserved, projected.metric(metric), approval_id
                )
            )
        overall = max((r.outcome for r in results), key=_SEVERITY.__getitem__, default=OK)
        return BudgetEvaluation(overall, tuple(results))

    def reserve(
        self,
        reservation_id: str,
        policies: Iterable[BudgetPolicy],
        scope: UsageScope,
        projected: Amount,
        now_ms: int,
        overrides: Iterable[Override] = (),
    ) -> BudgetDecision:
        """Check every applicable policy and, only if none blocks, hold ``projected``.

        Asking again for a live reservation with the same scope and amount returns it
        (``replayed``); reusing an id otherwise raises :class:`Conflict`.
        """
        non_empty_text(reservation_id, "reservation_id")
        projected.checked("projected")
        policies = tuple(policies)
        existing = self._reservations.get(reservation_id)
        if existing is not None:
            if existing.scope != scope or existing.amount != projected:
                raise Conflict(f"reservation {reservation_id} already exists with other terms")
            evaluation = self.evaluate(policies, scope, ZERO, now_ms, overrides)
            return BudgetDecision(True, evaluation, existing, replayed=True)
        if reservation_id in self._closed:
            raise Conflict(f"reservation {reservation_id} was already settled or released")
        evaluation = self.evaluate(policies, scope, projected, now_ms, overrides)
        if not evaluation.allowed:
            return BudgetDecision(False, evaluation)
        self._emit(
            {
                "type": "reserved",
                "reservation_id": reservation_id,
                **scope.to_dict(),
                "tokens": projected.tokens,
                "cost_micro_usd": projected.cost_micro_usd,
                "policy_ids": [e.policy_id for e in evaluation.evaluations],
                "at_unix_ms": now_ms,
            }
        )
        return BudgetDecision(True, evaluation, self._reservations[reservation_id])

    def settle(self, reservation_id: str, actual: Amount, now_ms: int) -> bool:
        """Count ``actual`` as consumed at ``now_ms`` and drop the reservation.

        ``actual`` may exceed what was reserved. False (and nothing changes) when the
        reservation is not live: already settled/released, or unknown.
        """
        actual.checked("actual")
        reservation = self._reservations.get(reservation_id)
        if reservation is None:
            return False
        self._emit(
            {
                "type": "settled",
                "reservation_id": reservation_id,
                **reservation.scope.to_dict(),
                "tokens": actual.tokens,
                "cost_micro_usd": actual.cost_micro_usd,
                "at_unix_ms": now_ms,
            }
        )
        return True

    def release(self, reservation_id: str, now_ms: int | None = None) -> bool:
        """Drop a reservation without usage (the run died). False if it is not live."""
        reservation = self._reservations.get(reservation_id)
        if reservation is None:
            return False
        at = reservation.reserved_at_unix_ms if now_ms is None else now_ms
        self._emit({"type": "released", "reservation_id": reservation_id, "at_unix_ms": at})
        return True

    # ----------------------------------------------------------------- events

    def _emit(self, event: dict[str, Any]) -> None:
        self.apply(event)
        self._events.append(event)

    def drain_events(self) -> list[dict[str, Any]]:
        """The events produced since the last drain, oldest first, for the journal."""
        events, self._events = self._events, []
        return events

    def apply(self, event: Mapping[str, Any]) -> bool:
        """Apply one journalled event; duplicates and stale events are ignored (False).

        A malformed event raises :class:`InvalidInput` and leaves the ledger unchanged.
        """
        kind = event.get("type")
        if kind not in ("reserved", "settled", "released"):
            raise InvalidInput(f"unknown ledger event type {kind!r}", details={"event": kind})
        try:
            rid = event["reservation_id"]
            at = event["at_unix_ms"]
            if not isinstance(rid, str) or not is_int(at):
                raise TypeError
            if kind != "released":
                scope = _scope_from_event(event)
                amount = Amount(event["tokens"], event["cost_micro_usd"]).checked(kind)
        except (KeyError, TypeError, InvalidInput) as exc:
            raise InvalidInput(
                f"malformed {kind} ledger event", details={"event": kind, "error": str(exc)}
            ) from None
        if rid in self._closed:
            return False
        if kind == "reserved":
            if rid in self._reservations:
                return False
            policy_ids = tuple(event.get("policy_ids", ()))
            self._reservations[rid] = Reservation(rid, scope, amount, policy_ids, at)
            for key in scope.scope_keys():
                self._reserved[key] = self._reserved.get(key, ZERO) + amount
            return True
        reservation = self._reservations.pop(rid, None)
        if reservation is None and kind == "released":
            return False
        if reservation is not None:
            for key in reservation.scope.scope_keys():
                left = self._reserved.get(key, ZERO) - reservation.amount
                if left == ZERO:
                    self._reserved.pop(key, None)
                else:
                    self._reserved[key] = left
        if kind == "settled":
            # Settled events carry their scope, so they count even when the matching
            # reserved event is no longer in the journal (compacted).
            self._record(_Settled(at, rid, scope, amount))
        self._closed[rid] = at
        return True

    def _record(self, settled: _Settled) -> None:
        self._settled.append(settled)
        for key in settled.scope.scope_keys():
            self._consumed.setdefault(key, _Series()).add(settled.at_ms, settled.amount)

    @classmethod
    def rebuild(cls, events: Iterable[Mapping[str, Any]]) -> Ledger:
        """The ledger that the given events (oldest first) leave behind."""
        ledger = cls()
        for event in events:
            ledger.apply(event)
        return ledger

    def prune(self, now_ms: int) -> None:
        """Forget settled usage and closed ids older than any window can reach."""
        before = now_ms - HORIZON_MS
        self._settled = [s for s in self._settled if s.at_ms >= before]
        for series in self._consumed.values():
            series.prune(before)
        self._consumed = {k: s for k, s in self._consumed.items() if s.times}
        self._closed = {rid: at for rid, at in self._closed.items() if at >= before}

    # ----------------------------------------------------------------- snapshots

    def snapshot(self) -> dict[str, Any]:
        """The whole state as canonical JSON-able data (ints and strings only)."""
        return {
            "reservations": [
                {
                    "reservation_id": r.reservation_id,
                    **r.scope.to_dict(),
                    "tokens": r.amount.tokens,
                    "cost_micro_usd": r.amount.cost_micro_usd,
                    "policy_ids": list(r.policy_ids),
                    "at_unix_ms": r.reserved_at_unix_ms,
                }
                for r in sorted(self._reservations.values(), key=lambda r: r.reservation_id)
            ],
            "settled": [
                {
                    "reservation_id": s.reservation_id,
                    **s.scope.to_dict(),
                    "tokens": s.amount.tokens,
                    "cost_micro_usd": s.amount.cost_micro_usd,
                    "at_unix_ms": s.at_ms,
                }
                for s in sorted(self._settled, key=lambda s: (s.at_ms, s.reservation_id))
            ],
            "closed": dict(sorted(self._closed.items())),
        }

    @classmethod
    def from_snapshot(cls, snapshot: Mapping[str, Any]) -> Ledger:
        ledger = cls()
        for item in snapshot["reservations"]:
            ledger.apply({"type": "reserved", **item})
        for item in snapshot["settled"]:
            ledger._record(
                _Settled(
                    item["at_unix_ms"],
                    item["reservation_id"],
                    _scope_from_event(item),
                    Amount(item["tokens"], item["cost_micro_usd"]),
                )
            )
        ledger._closed = dict(snapshot["closed"])
        return ledger
