"""Budget policies, evaluation and the reservation ledger (spec 3.3 step 9, quirk 13.4)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from palyra.errors import Conflict, InvalidInput
from palyra.governance.budgets import (
    DAY_MS,
    Amount,
    BudgetPolicy,
    Ledger,
    Override,
    UsageScope,
    applies_to,
    policy_from_mapping,
    window_start,
)

T0 = 1_700_000_000_000
ALICE = UsageScope("user:alice", session_id="S1", agent_id="A1")
BOB = UsageScope("user:bob", session_id="S2")


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1000


def policy(**kw) -> BudgetPolicy:
    fields = {
        "policy_id": "P",
        "scope_kind": "global",
        "metric_kind": "total_tokens",
        "interval_kind": "rolling_24h",
        "action": "block",
        "soft_limit": 80,
        "hard_limit": 100,
    }
    fields.update(kw)
    return BudgetPolicy(**fields)


def tokens(n: int) -> Amount:
    return Amount(n, 0)


def reserve_and_settle(ledger: Ledger, rid: str, amount: Amount, at: int, scope=ALICE) -> None:
    assert ledger.reserve(rid, [], scope, amount, at).granted
    assert ledger.settle(rid, amount, at)


# --------------------------------------------------------------------------- policies


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"scope_kind": "team"}, "scope_kind"),
        ({"metric_kind": "requests"}, "metric_kind"),
        ({"interval_kind": "weekly"}, "interval_kind"),
        ({"action": "shout"}, "action"),
        ({"soft_limit": -1}, "soft_limit_value"),
        ({"hard_limit": -1, "soft_limit": None}, "hard_limit_value"),
        ({"soft_limit": 101}, "soft_limit_value"),
        ({"scope_kind": "principal"}, "scope_id"),
        ({"scope_kind": "session", "scope_id": " "}, "scope_id"),
        ({"scope_id": "x"}, "scope_id"),
        ({"soft_limit": None, "hard_limit": None}, "hard_limit_value"),
        ({"routing_mode_override": "yolo"}, "routing_mode_override"),
        ({"enabled": "yes"}, "enabled"),
    ],
)
def test_invalid_policy_is_rejected_naming_the_field(fields, field):
    with pytest.raises(InvalidInput) as err:
        policy(**fields)
    assert err.value.details["field"] == field
    assert field in err.value.message


def test_soft_limit_equal_to_hard_is_allowed_and_dry_run_alias_normalized():
    assert policy(soft_limit=100).soft_limit == 100
    assert policy(routing_mode_override="dry-run").routing_mode_override == "dry_run"


def test_policy_from_mapping_reads_wire_units():
    cost = policy_from_mapping(
        {
            "policy_id": "C",
            "scope_kind": "principal",
            "scope_id": "user:alice",
            "metric_kind": "estimated_cost_usd",
            "interval_kind": "calendar_month",
            "soft_limit_value": 1.5,
            "hard_limit_value": "2.00",
            "action": "approval_required",
        }
    )
    assert (cost.soft_limit, cost.hard_limit) == (1_500_000, 2_000_000)
    assert cost.to_record()["hard_limit_value"] == 2.0
    assert policy_from_mapping(cost.to_record()) == cost
    tok = policy_from_mapping(policy().to_record())
    assert tok == policy()


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"colour": "red"}, "unknown budget policy field"),
        ({"action": None}, "action is required"),
        ({"hard_limit_value": 10.5}, "hard_limit_value must be a whole number"),
        ({"soft_limit_value": 200}, "soft_limit_value must not be above"),
        ({"metric_kind": "requests"}, "metric_kind must be one of"),
    ],
)
def test_policy_from_mapping_rejects_bad_input(patch, message):
    with pytest.raises(InvalidInput, match=message):
        policy_from_mapping(policy().to_record() | patch)


def test_applies_to_honours_scope_and_enabled():
    assert applies_to(policy(), ALICE)
    assert not applies_to(policy(enabled=False), ALICE)
    assert applies_to(policy(scope_kind="principal", scope_id="user:alice"), ALICE)
    assert not applies_to(policy(scope_kind="principal", scope_id="user:alice"), BOB)
    assert applies_to(policy(scope_kind="session", scope_id="S1"), ALICE)
    assert not applies_to(policy(scope_kind="session", scope_id="S1"), BOB)
    assert applies_to(policy(scope_kind="agent", scope_id="A1"), ALICE)
    assert not applies_to(policy(scope_kind="agent", scope_id="A1"), BOB)


def test_window_start_per_interval():
    now = ms(2024, 3, 15, 12, 30)
    assert window_start("rolling_24h", now) == now - DAY_MS
    assert window_start("rolling_30d", now) == now - 30 * DAY_MS
    assert window_start("calendar_month", now) == ms(2024, 3, 1)
    assert window_start("calendar_month", ms(2024, 3, 1)) == ms(2024, 3, 1)
    assert window_start("calendar_month", ms(2024, 3, 1) - 1) == ms(2024, 2, 1)
    assert window_start("run", now) is None


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(
    ("action", "projected", "expected", "allowed"),
    [
        ("block", 80, "ok", True),
        ("block", 81, "soft_limit", True),
        ("block", 100, "soft_limit", True),
        ("block", 101, "blocked", False),
        ("approval_required", 101, "approval_required", False),
        ("warn", 101, "hard_limit", True),
    ],
)
def test_every_outcome_of_evaluate_and_reserve(action, projected, expected, allowed):
    ledger = Ledger()
    policies = [policy(action=action)]
    evaluation = ledger.evaluate(policies, ALICE, tokens(projected), T0)
    assert evaluation.outcome == expected
    assert evaluation.allowed is allowed
    decision = ledger.reserve("R", policies, ALICE, tokens(projected), T0)
    assert decision.granted is allowed
    assert decision.outcome == expected
    assert ("R" in ledger.reservations) is allowed
    expected_codes = {
        "ok": (),
        "soft_limit": ("budget_soft_limit",),
        "blocked": ("budget_blocked",),
        "approval_required": ("budget_approval_required",),
        "hard_limit": ("budget_hard_limit",),
    }[expected]
    assert evaluation.reason_codes == expected_codes


def test_overall_outcome_is_the_most_severe_policy():
    policies = [
        policy(policy_id="warn", action="warn", hard_limit=10, soft_limit=None),
        policy(policy_id="block", action="block", hard_limit=20, soft_limit=None),
        policy(policy_id="soft", soft_limit=5, hard_limit=None),
    ]
    evaluation = Ledger().evaluate(policies, ALICE, tokens(25), T0)
    assert evaluation.outcome == "blocked"
    assert [e.outcome for e in evaluation.evaluations] == ["hard_limit", "blocked", "soft_limit"]
    assert evaluation.reason_codes == ("budget_hard_limit", "budget_blocked", "budget_soft_limit")


def test_no_applicable_policy_is_ok():
    other = policy(scope_kind="principal", scope_id="user:bob", hard_limit=0, soft_limit=None)
    evaluation = Ledger().evaluate([other], ALICE, tokens(10**9), T0)
    assert evaluation.outcome == "ok" and evaluation.evaluations == ()


def test_reservations_in_flight_count_against_the_limit():
    ledger = Ledger()
    policies = [policy(soft_limit=None)]
    assert ledger.reserve("R1", policies, ALICE, tokens(60), T0).granted
    second = ledger.reserve("R2", policies, BOB, tokens(60), T0)
    assert not second.granted
    assert second.evaluation.evaluations[0].reserved == 60
    assert ledger.release("R1")
    assert ledger.reserve("R2", policies, BOB, tokens(60), T0).granted


def test_scoped_policies_only_see_their_scope():
    ledger = Ledger()
    alice_only = [policy(scope_kind="principal", scope_id="user:alice", soft_limit=None)]
    reserve_and_settle(ledger, "R1", tokens(90), T0, scope=BOB)
    assert ledger.reserve("R2", alice_only, ALICE, tokens(90), T0).granted
    assert not ledger.reserve("R3", alice_only, ALICE, tokens(20), T0).granted
    assert ledger.reserve("R4", alice_only, BOB, tokens(1000), T0).granted


def test_session_and_agent_policies():
    ledger = Ledger()
    session = policy(scope_kind="session", scope_id="S1", soft_limit=None)
    agent = policy(policy_id="A", scope_kind="agent", scope_id="A1", soft_limit=None, hard_limit=50)
    reserve_and_settle(ledger, "R1", tokens(40), T0)
    assert ledger.consumed_for(session, T0) == tokens(40)
    assert ledger.consumed_for(agent, T0) == tokens(40)
    decision = ledger.reserve("R2", [session, agent], ALICE, tokens(20), T0)
    assert not decision.granted
    assert {e.policy_id: e.outcome for e in decision.evaluation.evaluations} == {
        "P": "ok",
        "A": "blocked",
    }


def test_settle_moves_actual_usage_into_consumed_even_above_the_reservation():
    ledger = Ledger()
    p = policy(soft_limit=None)
    ledger.reserve("R1", [p], ALICE, tokens(10), T0)
    assert ledger.settle("R1", tokens(70), T0 + 1)
    assert ledger.consumed_for(p, T0 + 1) == tokens(70)
    assert ledger.reserved_for(p) == Amount()
    assert ledger.reservations == {}
    assert not ledger.reserve("R2", [p], ALICE, tokens(31), T0 + 2).granted
    assert ledger.reserve("R3", [p], ALICE, tokens(30), T0 + 2).granted


def test_settle_and_release_are_idempotent():
    ledger = Ledger()
    ledger.reserve("R1", [], ALICE, tokens(10), T0)
    assert ledger.settle("R1", tokens(5), T0)
    assert not ledger.settle("R1", tokens(5), T0)
    assert not ledger.release("R1")
    ledger.reserve("R2", [], ALICE, tokens(10), T0)
    assert ledger.release("R2")
    assert not ledger.release("R2")
    assert not ledger.settle("R2", tokens(1), T0)
    assert not ledger.settle("unknown", tokens(1), T0)
    assert ledger.consumed_for(policy(), T0) == tokens(5)
    assert [e["type"] for e in ledger.drain_events()] == [
        "reserved",
        "settled",
        "reserved",
        "released",
    ]
    assert ledger.drain_events() == []


def test_reserve_retry_is_idempotent_and_reuse_conflicts():
    ledger = Ledger()
    first = ledger.reserve("R1", [], ALICE, tokens(10), T0)
    again = ledger.reserve("R1", [], ALICE, tokens(10), T0)
    assert again.granted and again.replayed and again.reservation == first.reservation
    assert ledger.reserved_total() == tokens(10)
    with pytest.raises(Conflict):
        ledger.reserve("R1", [], ALICE, tokens(11), T0)
    ledger.settle("R1", tokens(10), T0)
    with pytest.raises(Conflict):
        ledger.reserve("R1", [], ALICE, tokens(10), T0)


@pytest.mark.parametrize("rid", ["", "   ", "\t\n", None, 7])
def test_reservation_id_must_be_non_blank_text(rid):
    ledger = Ledger()
    with pytest.raises(InvalidInput, match="reservation_id must be a non-empty string") as err:
        ledger.reserve(rid, [], ALICE, tokens(1), T0)
    assert err.value.details == {"field": "reservation_id"}
    assert ledger.reservations == {} and ledger.drain_events() == []


def test_negative_amounts_are_rejected():
    ledger = Ledger()
    with pytest.raises(InvalidInput, match="projected.tokens"):
        ledger.reserve("R1", [], ALICE, tokens(-1), T0)
    ledger.reserve("R1", [], ALICE, tokens(1), T0)
    with pytest.raises(InvalidInput, match="actual.cost_micro_usd"):
        ledger.settle("R1", Amount(1, -1), T0)


def test_rolling_window_expires_old_usage():
    ledger = Ledger()
    p = policy(soft_limit=None)
    reserve_and_settle(ledger, "R1", tokens(90), T0)
    assert not ledger.reserve("R2", [p], ALICE, tokens(20), T0 + DAY_MS).granted  # inclusive
    assert ledger.reserve("R2", [p], ALICE, tokens(20), T0 + DAY_MS + 1).granted
    month = policy(policy_id="M", interval_kind="rolling_30d", soft_limit=None, hard_limit=200)
    assert ledger.consumed_for(month, T0 + DAY_MS + 1) == tokens(90)
    assert ledger.consumed_for(month, T0 + 30 * DAY_MS + 1) == Amount()


def test_calendar_month_resets_at_the_utc_boundary():
    ledger = Ledger()
    p = policy(interval_kind="calendar_month", soft_limit=None)
    end_of_march = ms(2024, 3, 31, 23, 59, 59)
    reserve_and_settle(ledger, "R1", tokens(100), end_of_march)
    assert not ledger.reserve("R2", [p], ALICE, tokens(1), ms(2024, 4, 1) - 1).granted
    assert ledger.reserve("R2", [p], ALICE, tokens(100), ms(2024, 4, 1)).granted


def test_run_interval_caps_each_run_alone():
    ledger = Ledger()
    p = policy(interval_kind="run", soft_limit=None)
    reserve_and_settle(ledger, "R0", tokens(1000), T0)
    ledger.reserve("R1", [], ALICE, tokens(1000), T0)
    assert ledger.reserve("R2", [p], ALICE, tokens(100), T0).granted
    assert not ledger.reserve("R3", [p], ALICE, tokens(101), T0).granted


def test_cost_metric_includes_consumed_cost():
    """Upstream compared only the projected request cost with the limit (quirk 13.4)."""
    ledger = Ledger()
    p = policy(metric_kind="estimated_cost_usd", soft_limit=None, hard_limit=1_000_000)
    reserve_and_settle(ledger, "R1", Amount(10, 900_000), T0)
    decision = ledger.reserve("R2", [p], ALICE, Amount(10, 200_000), T0 + 1)
    assert not decision.granted
    ev = decision.evaluation.evaluations[0]
    assert (ev.consumed, ev.projected, ev.used) == (900_000, 200_000, 1_100_000)
    assert ev.to_dict()["consumed_value"] == 0.9
    assert ledger.reserve("R3", [p], ALICE, Amount(10_000_000, 100_000), T0 + 1).granted


def test_active_override_lifts_the_hard_limit_until_it_expires():
    ledger = Ledger()
    p = policy(action="approval_required", soft_limit=None)
    overrides = [Override("P", "APPROVAL1", expires_at_ms=T0 + 1000)]
    decision = ledger.reserve("R1", [p], ALICE, tokens(500), T0, overrides)
    assert decision.granted and decision.outcome == "override_applied"
    ev = decision.evaluation.evaluations[0]
    assert ev.override_approval_id == "APPROVAL1"
    assert decision.evaluation.reason_codes == ("budget_override_applied",)
    expired = ledger.reserve("R2", [p], ALICE, tokens(1), T0 + 1000, overrides)
    assert not expired.granted and expired.outcome == "approval_required"
    other_policy = [Override("Q", "APPROVAL2")]
    assert ledger.evaluate([p], ALICE, tokens(1), T0, other_policy).outcome == "approval_required"
    forever = [Override("P", "APPROVAL3")]
    assert ledger.evaluate([p], ALICE, tokens(1), T0 + 10**9, forever).outcome == "override_applied"


def test_override_does_not_mask_a_blocking_policy():
    ledger = Ledger()
    policies = [policy(policy_id="P"), policy(policy_id="Q")]
    evaluation = ledger.evaluate(policies, ALICE, tokens(200), T0, [Override("P", "A")])
    assert evaluation.outcome == "blocked"


# --------------------------------------------------------------------------- recovery


def test_rebuild_and_snapshot_reproduce_the_ledger():
    ledger = Ledger()
    events = []
    reserve_and_settle(ledger, "R1", Amount(30, 100), T0)
    ledger.reserve("R2", [policy()], BOB, Amount(20, 50), T0 + 5)
    ledger.reserve("R3", [], ALICE, Amount(1, 1), T0 + 6)
    ledger.release("R3", T0 + 7)
    events += ledger.drain_events()
    rebuilt = Ledger.rebuild(events)
    assert rebuilt.snapshot() == ledger.snapshot()
    assert Ledger.from_snapshot(ledger.snapshot()).snapshot() == ledger.snapshot()
    assert rebuilt.reservations["R2"].policy_ids == ("P",)
    # Replaying the log twice changes nothing (at-least-once journal delivery).
    assert Ledger.rebuild(events + events).snapshot() == ledger.snapshot()


def test_settled_event_counts_without_its_reserved_event():
    ledger = Ledger()
    reserve_and_settle(ledger, "R1", tokens(30), T0)
    settled = [e for e in ledger.drain_events() if e["type"] == "settled"]
    assert Ledger.rebuild(settled).consumed_for(policy(), T0) == tokens(30)


def test_unknown_event_type_is_rejected():
    with pytest.raises(InvalidInput, match="unknown ledger event"):
        Ledger().apply({"type": "teleported", "reservation_id": "R", "at_unix_ms": 0})


def test_prune_forgets_usage_no_window_can_reach():
    ledger = Ledger()
    reserve_and_settle(ledger, "R1", tokens(10), T0)
    reserve_and_settle(ledger, "R2", tokens(5), T0 + 40 * DAY_MS)
    ledger.prune(T0 + 40 * DAY_MS)
    snapshot = ledger.snapshot()
    assert [s["reservation_id"] for s in snapshot["settled"]] == ["R2"]
    assert list(snapshot["closed"]) == ["R2"]
    p = policy(interval_kind="rolling_30d")
    assert ledger.consumed_for(p, T0 + 40 * DAY_MS) == tokens(5)


def test_out_of_order_settles_keep_window_sums_exact():
    ledger = Ledger()
    reserve_and_settle(ledger, "R1", tokens(1), T0 + 100)
    reserve_and_settle(ledger, "R2", tokens(2), T0)
    reserve_and_settle(ledger, "R3", tokens(4), T0 + 50)
    p = policy(interval_kind="rolling_24h")
    assert ledger.consumed_for(p, T0 + DAY_MS) == tokens(7)
    assert ledger.consumed_for(p, T0 + DAY_MS + 50) == tokens(5)
    assert ledger.consumed_for(p, T0 + DAY_MS + 51) == tokens(1)


def test_zero_sized_reservations_release_cleanly():
    ledger = Ledger()
    ledger.reserve("R1", [], ALICE, Amount(), T0)
    ledger.reserve("R2", [], ALICE, Amount(), T0)
    assert ledger.release("R1") and ledger.release("R2")
    assert ledger.reservations == {} and ledger.reserved_total() == Amount()


@pytest.mark.parametrize(
    "event",
    [
        {"type": "settled", "reservation_id": "R1", "at_unix_ms": T0},  # no scope/amount
        {"type": "released", "reservation_id": 7, "at_unix_ms": T0},
        {
            "type": "reserved",
            "reservation_id": "R9",
            "principal": "p",
            "tokens": -1,
            "cost_micro_usd": 0,
            "at_unix_ms": T0,
        },
    ],
)
def test_malformed_event_is_rejected_and_changes_nothing(event):
    ledger = Ledger()
    ledger.reserve("R1", [], ALICE, tokens(5), T0)
    before = ledger.snapshot()
    with pytest.raises(InvalidInput, match="ledger event"):
        ledger.apply(event)
    assert ledger.snapshot() == before


def test_cost_limits_round_trip_through_the_wire_at_micro_precision():
    p = policy(metric_kind="estimated_cost_usd", soft_limit=1, hard_limit=123_457)
    assert p.to_record()["hard_limit_value"] == 0.123457
    assert policy_from_mapping(p.to_record()) == p
