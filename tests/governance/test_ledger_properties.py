"""Property tests of the reservation ledger: random reserve/settle/release/time sequences
across several policies, checked against a plain model of what must hold."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    rule,
)

from palyra.governance.budgets import (
    DAY_MS,
    Amount,
    BudgetPolicy,
    Ledger,
    UsageScope,
    applies_to,
    window_start,
)
from palyra.governance.pricing import PricingRecord, estimate_cost

# Four hours before a month boundary, so calendar_month windows reset mid-run.
T0 = int(datetime(2024, 1, 31, 20, tzinfo=UTC).timestamp()) * 1000

POLICIES = (
    BudgetPolicy(
        "G", "global", "total_tokens", "rolling_24h", "block", soft_limit=800, hard_limit=1000
    ),
    BudgetPolicy(
        "PA",
        "principal",
        "estimated_cost_usd",
        "calendar_month",
        "block",
        scope_id="alice",
        hard_limit=5_000,
    ),
    BudgetPolicy(
        "S1",
        "session",
        "total_tokens",
        "rolling_30d",
        "approval_required",
        scope_id="S1",
        hard_limit=600,
    ),
    BudgetPolicy(
        "AG", "agent", "estimated_cost_usd", "rolling_24h", "warn", scope_id="A1", hard_limit=300
    ),
    BudgetPolicy("RUN", "global", "total_tokens", "run", "block", hard_limit=400),
)
DENYING = ("block", "approval_required")
SCOPES = (
    UsageScope("alice", "S1", "A1"),
    UsageScope("alice", "S2"),
    UsageScope("bob", "S3", "A1"),
    UsageScope("bob", "S1"),
)
# Probe policies with huge limits: one per scope key, to read reserved totals per key.
PROBES = tuple(
    BudgetPolicy(
        f"probe-{kind}-{sid}",
        kind,
        "total_tokens",
        "rolling_24h",
        "warn",
        scope_id=sid,
        hard_limit=10**12,
    )
    for kind, sid in [
        ("global", None),
        ("principal", "alice"),
        ("principal", "bob"),
        ("session", "S1"),
        ("session", "S2"),
        ("session", "S3"),
        ("agent", "A1"),
    ]
)

amounts = st.builds(Amount, st.integers(0, 450), st.integers(0, 3_000))


class LedgerMachine(RuleBasedStateMachine):
    """``settle`` never exceeds the reservation here, so hard limits must hold exactly."""

    OVERRUN = False
    reservations = Bundle("reservations")

    @initialize()
    def start(self) -> None:
        self.ledger = Ledger()
        self.now = T0
        self.counter = 0
        self.events: list[dict] = []
        self.live: dict[str, tuple[UsageScope, Amount]] = {}
        self.settled: list[tuple[int, UsageScope, Amount]] = []

    def _drain(self) -> None:
        self.events.extend(self.ledger.drain_events())

    @rule(target=reservations, scope=st.sampled_from(SCOPES), projected=amounts)
    def reserve(self, scope, projected):
        self.counter += 1
        rid = f"R{self.counter}"
        decision = self.ledger.reserve(rid, POLICIES, scope, projected, self.now)
        self._drain()
        denied = [
            e
            for e in decision.evaluation.evaluations
            if e.outcome in ("blocked", "approval_required")
        ]
        assert decision.granted == (not denied)
        event(f"reserve {decision.outcome}")
        if decision.granted:
            assert decision.reservation.amount == projected
            self.live[rid] = (scope, projected)
        else:
            assert rid not in self.ledger.reservations
        return rid

    @rule(rid=consumes(reservations), num=st.integers(0, 4), extra=amounts)
    def settle(self, rid, num, extra):
        was_live = rid in self.live
        if was_live:
            scope, held = self.live[rid]
            actual = Amount(held.tokens * num // 4, held.cost_micro_usd * num // 4)
            if self.OVERRUN:
                actual = actual + extra
        else:
            actual = extra
        assert self.ledger.settle(rid, actual, self.now) == was_live
        self._drain()
        if was_live:
            del self.live[rid]
            self.settled.append((self.now, scope, actual))
        assert not self.ledger.settle(rid, actual, self.now)  # idempotent
        assert not self.ledger.release(rid, self.now)

    @rule(rid=consumes(reservations))
    def release(self, rid):
        was_live = self.live.pop(rid, None) is not None
        assert self.ledger.release(rid, self.now) == was_live
        self._drain()
        assert not self.ledger.release(rid, self.now)

    @rule(step=st.sampled_from([0, 1, 3_600_000, 6 * 3_600_000, DAY_MS, 31 * DAY_MS]))
    def advance(self, step):
        self.now += step

    # ----------------------------------------------------------------- properties

    @invariant()
    def reserved_totals_match_live_reservations(self):  # (a)
        assert set(self.ledger.reservations) == set(self.live)
        for probe in PROBES:
            held = self.ledger.reserved_for(probe)
            assert held.tokens >= 0 and held.cost_micro_usd >= 0
            expected = sum((a for s, a in self.live.values() if applies_to(probe, s)), Amount())
            assert held == expected

    @invariant()
    def consumed_is_the_sum_of_settled_actuals_in_window(self):  # (b)
        for p in POLICIES + PROBES:
            start = window_start(p.interval_kind, self.now)
            expected = Amount()
            if start is not None:
                expected = sum(
                    (a for at, s, a in self.settled if at >= start and applies_to(p, s)), Amount()
                )
            assert self.ledger.consumed_for(p, self.now) == expected

    @invariant()
    def hard_limits_that_deny_are_never_exceeded(self):  # (c)
        if self.OVERRUN:
            return
        for p in POLICIES:
            if p.action not in DENYING:
                continue
            if p.interval_kind == "run":
                for scope, amount in self.live.values():
                    if applies_to(p, scope):
                        assert amount.metric(p.metric_kind) <= p.hard_limit
                continue
            used = self.ledger.consumed_for(p, self.now) + self.ledger.reserved_for(p)
            assert used.metric(p.metric_kind) <= p.hard_limit, p.policy_id

    @invariant()
    def rebuild_from_events_reproduces_the_state(self):  # (d)
        assert Ledger.rebuild(self.events).snapshot() == self.ledger.snapshot()

    def teardown(self):
        if not hasattr(self, "ledger"):
            return
        for i, rid in enumerate(list(self.live)):
            scope, held = self.live.pop(rid)
            if i % 2:
                assert self.ledger.release(rid, self.now)
            else:
                assert self.ledger.settle(rid, held, self.now)
        assert self.ledger.reservations == {}
        for probe in PROBES:
            assert self.ledger.reserved_for(probe) == Amount()
        self._drain()
        assert Ledger.rebuild(self.events).snapshot() == self.ledger.snapshot()


class OverrunLedgerMachine(LedgerMachine):
    """Actual usage may exceed the reservation; everything but (c) must still hold."""

    OVERRUN = True


_settings = settings(
    max_examples=150,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerProperties = LedgerMachine.TestCase
TestLedgerProperties.settings = _settings
TestOverrunLedgerProperties = OverrunLedgerMachine.TestCase
TestOverrunLedgerProperties.settings = _settings


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.lists(st.tuples(st.integers(0, 3 * DAY_MS), amounts), max_size=25),
    st.integers(0, 4 * DAY_MS),
)
def test_window_sums_match_brute_force_for_out_of_order_settles(entries, now_offset):
    ledger = Ledger()
    scope = SCOPES[0]
    for i, (offset, amount) in enumerate(entries):
        ledger.apply(
            {
                "type": "settled",
                "reservation_id": f"R{i}",
                **scope.to_dict(),
                "tokens": amount.tokens,
                "cost_micro_usd": amount.cost_micro_usd,
                "at_unix_ms": T0 + offset,
            }
        )
    now = T0 + now_offset
    for p in POLICIES + PROBES:
        start = window_start(p.interval_kind, now)
        if start is None or not applies_to(p, scope):
            continue
        expected = sum((a for off, a in entries if T0 + off >= start), Amount())
        assert ledger.consumed_for(p, now) == expected


@settings(max_examples=200, deadline=None, database=None)
@given(
    st.integers(0, 10**7),
    st.integers(0, 10**7),
    st.integers(0, 20_000_000),
    st.integers(0, 20_000_000),
)
def test_estimate_cost_equals_decimal_arithmetic(prompt, completion, rate_in, rate_out):
    record = PricingRecord(
        "P",
        "p",
        "k",
        "m",
        input_cost_per_million_micro_usd=rate_in,
        output_cost_per_million_micro_usd=rate_out,
    )
    usd = (Decimal(prompt) * rate_in + Decimal(completion) * rate_out) / Decimal(10**12)
    expected = usd.quantize(Decimal("0.00001"), rounding=ROUND_HALF_UP)
    est = estimate_cost(record, prompt, completion)
    assert Decimal(est.upper_micro_usd) / 10**6 == expected
    assert est.upper_usd == float(expected)
