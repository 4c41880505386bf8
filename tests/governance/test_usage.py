"""Usage summary, breakdowns, mixes and alert candidates (spec 3.5)."""

from __future__ import annotations

import pytest

from palyra.errors import InvalidInput
from palyra.governance.budgets import Amount, BudgetPolicy, Ledger, UsageScope
from palyra.governance.usage import (
    DAY_MS,
    HOUR_MS,
    UsageRecord,
    agent_breakdown,
    alerts,
    model_mix,
    principal_breakdown,
    session_breakdown,
    summarize,
    tool_mix,
    usage_query,
)

T = 1_700_000_000_000 // DAY_MS * DAY_MS  # a UTC midnight


def run(i: int, at: int, **kw) -> UsageRecord:
    fields = {
        "run_id": f"R{i}",
        "session_id": "S1",
        "principal": "user:ops",
        "state": "done",
        "started_at_unix_ms": at,
        "completed_at_unix_ms": at + 1000,
        "model_id": "gpt-4o-mini",
        "provider_kind": "openai_compatible",
        "prompt_tokens": 100,
        "completion_tokens": 50,
        "estimated_cost_micro_usd": 45,
    }
    fields.update(kw)
    return UsageRecord(**fields)


# --------------------------------------------------------------------------- summary


def test_summary_totals():
    records = [
        run(1, T, completed_at_unix_ms=T + 1000),
        run(2, T + 10, session_id="S2", completed_at_unix_ms=T + 3010),
        run(
            3, T + 20, state="in_progress", completed_at_unix_ms=None, estimated_cost_micro_usd=None
        ),
        run(4, T + DAY_MS),  # outside [start, end)
    ]
    envelope = summarize(records, T, T + DAY_MS, "hour")
    totals = envelope["totals"]
    assert totals == {
        "runs": 3,
        "session_count": 2,
        "active_runs": 1,
        "completed_runs": 2,
        "prompt_tokens": 300,
        "completion_tokens": 150,
        "total_tokens": 450,
        "average_latency_ms": 2000,
        "latest_started_at_unix_ms": T + 20,
        "estimated_cost_usd": 0.00009,
    }
    assert envelope["cost_tracking_available"] is True
    assert envelope["query"] == {
        "start_at_unix_ms": T,
        "end_at_unix_ms": T + DAY_MS,
        "bucket": "hour",
        "resolved_bucket": "hour",
    }


def test_empty_summary_has_zero_totals_and_no_cost_tracking():
    envelope = summarize([], T, T + HOUR_MS)
    assert envelope["totals"]["runs"] == 0
    assert envelope["totals"]["latest_started_at_unix_ms"] is None
    assert envelope["totals"]["average_latency_ms"] == 0
    assert envelope["cost_tracking_available"] is False
    assert len(envelope["timeline"]) == 1


def test_auto_bucket_is_hourly_up_to_72_hours_then_daily():
    hourly = summarize([], T, T + 72 * HOUR_MS)
    assert hourly["query"]["resolved_bucket"] == "hour"
    assert len(hourly["timeline"]) == 72
    daily = summarize([], T, T + 72 * HOUR_MS + 1)
    assert daily["query"]["resolved_bucket"] == "day"
    assert len(daily["timeline"]) == 4


def test_timeline_buckets_are_aligned_gap_free_and_hold_their_runs():
    records = [
        run(1, T + 5 * HOUR_MS),
        run(2, T + 5 * HOUR_MS + 59 * 60_000),
        run(3, T + 7 * HOUR_MS),
    ]
    timeline = summarize(records, T + 30 * 60_000, T + 8 * HOUR_MS, "hour")["timeline"]
    assert timeline[0]["bucket_start_unix_ms"] == T  # aligned to the hour
    assert [b["bucket_end_unix_ms"] - b["bucket_start_unix_ms"] for b in timeline] == [HOUR_MS] * 8
    assert [b["runs"] for b in timeline] == [0, 0, 0, 0, 0, 2, 0, 1]
    assert timeline[5]["total_tokens"] == 300
    days = summarize(records, T, T + 2 * DAY_MS, "day")["timeline"]
    assert [b["runs"] for b in days] == [3, 0]


@pytest.mark.parametrize(
    ("start", "end", "bucket", "field"),
    [
        (T, T, "auto", "end_at_unix_ms"),
        (T + 1, T, "auto", "end_at_unix_ms"),
        (T, T + 366 * DAY_MS + 1, "auto", "start_at_unix_ms"),
        (T, T + DAY_MS, "week", "bucket"),
        (-1, T, "auto", "start_at_unix_ms"),
    ],
)
def test_invalid_queries_are_rejected(start, end, bucket, field):
    with pytest.raises(InvalidInput) as err:
        summarize([], start, end, bucket)
    assert err.value.details["field"] == field


def test_query_defaults_to_the_last_30_days():
    query = usage_query(now_ms=T)
    assert (query.start_at_unix_ms, query.end_at_unix_ms) == (T - 30 * DAY_MS, T)
    assert query.resolved_bucket == "day"
    assert usage_query(T, T + 366 * DAY_MS).end_at_unix_ms == T + 366 * DAY_MS


# --------------------------------------------------------------------------- breakdowns


def test_session_breakdown_sorted_by_tokens_with_cursor_paging():
    records = [run(i, T + i, session_id=f"S{i}", prompt_tokens=i * 10) for i in range(1, 15)]
    first = session_breakdown(records)
    assert len(first["items"]) == 10
    assert [r["session_id"] for r in first["items"][:2]] == ["S14", "S13"]
    assert first["next_cursor"] == "10"
    rest = session_breakdown(records, cursor=first["next_cursor"])
    assert [r["session_id"] for r in rest["items"]] == ["S4", "S3", "S2", "S1"]
    assert rest["next_cursor"] is None


@pytest.mark.parametrize(("limit", "cursor"), [(0, None), (51, None), (10, "x")])
def test_breakdown_limits_are_checked(limit, cursor):
    with pytest.raises(InvalidInput):
        session_breakdown([], limit=limit, cursor=cursor)


def test_principal_and_agent_breakdowns():
    records = [
        run(1, T, principal="user:a", agent_id="A1"),
        run(2, T, principal="user:a"),
        run(3, T, principal="user:b", agent_id="A1", prompt_tokens=1000),
    ]
    principals = principal_breakdown(records)["items"]
    assert [(p["principal"], p["runs"]) for p in principals] == [("user:b", 1), ("user:a", 2)]
    agents = agent_breakdown(records, limit=50)["items"]
    assert [(a["agent_id"], a["runs"], a["total_tokens"]) for a in agents] == [("A1", 2, 1200)]


def test_model_mix_counts_inferred_default_separately():
    records = [
        run(1, T, model_id="gpt-4.1", prompt_tokens=1000),
        run(2, T),
        run(3, T, model_id=None, provider_kind=None, estimated_cost_micro_usd=None),
    ]
    mix = model_mix(
        records, default_model_id="gpt-4o-mini", default_provider_kind="openai_compatible"
    )
    assert mix == [
        {
            "model_id": "gpt-4.1",
            "provider_kind": "openai_compatible",
            "runs": 1,
            "total_tokens": 1050,
            "estimated_cost_usd": 0.00005,
            "source": "routing_decision",
        },
        {
            "model_id": "gpt-4o-mini",
            "provider_kind": "openai_compatible",
            "runs": 1,
            "total_tokens": 150,
            "estimated_cost_usd": None,
            "source": "inferred_default",
        },
        {
            "model_id": "gpt-4o-mini",
            "provider_kind": "openai_compatible",
            "runs": 1,
            "total_tokens": 150,
            "estimated_cost_usd": 0.00005,
            "source": "routing_decision",
        },
    ]
    assert len(model_mix(records)) == 2  # without a default, unknown models are left out


def test_tool_mix_from_names_or_counts():
    names = ["palyra.echo", "palyra.http.fetch", "palyra.echo"]
    expected = [
        {"tool_name": "palyra.echo", "proposals": 2},
        {"tool_name": "palyra.http.fetch", "proposals": 1},
    ]
    assert tool_mix(names) == expected
    assert tool_mix({"palyra.echo": 2, "palyra.http.fetch": 1, "unused": 0}) == expected


# --------------------------------------------------------------------------- alerts


def costs(*micros: int) -> list[UsageRecord]:
    return [run(i, T + i, estimated_cost_micro_usd=m) for i, m in enumerate(micros)]


def kinds(found) -> list[str]:
    return [a.alert_kind for a in found]


def test_cost_spike_when_newer_half_doubles_and_exceeds_fifty_cents():
    found = alerts(costs(100_000, 100_000, 300_000, 300_000))
    spike = next(a for a in found if a.alert_kind == "cost_spike")
    assert spike.dedupe_key == "cost_spike:global"
    assert spike.severity == "warning"
    assert spike.payload["newer_cost_usd"] == 0.6
    assert "cost_spike" not in kinds(alerts(costs(100_000, 100_000, 200_000, 200_000)))  # 2x only
    assert "cost_spike" not in kinds(alerts(costs(1, 1, 200_000, 200_000)))  # under $0.50
    assert "cost_spike" not in kinds(alerts(costs(900_000)))  # one run has no halves
    # odd count: the middle run belongs to neither half
    assert "cost_spike" in kinds(alerts(costs(100_000, 10_000_000, 600_000)))


def test_unusual_model_mix_needs_four_runs_and_a_dominant_model():
    three = [run(i, T + i) for i in range(3)]
    assert "unusual_model_mix" not in kinds(alerts(three))
    four = [*three, run(3, T + 3)]
    mix = next(a for a in alerts(four) if a.alert_kind == "unusual_model_mix")
    assert mix.dedupe_key == "unusual_model_mix:gpt-4o-mini"
    mixed = [*three, run(3, T + 3, model_id="gpt-4.1")]  # exactly 75 %: not above
    assert "unusual_model_mix" not in kinds(alerts(mixed))


def test_provider_health_alerts_are_danger():
    found = alerts(health={"openai-primary": "degraded", "deterministic-primary": "ok"})
    assert [(a.alert_kind, a.severity, a.dedupe_key) for a in found] == [
        ("provider_health", "danger", "provider_health:openai-primary:degraded")
    ]


def test_budget_alerts_per_non_ok_evaluation_with_stable_dedupe_keys():
    def p(pid: str, action: str, soft: int, hard: int) -> BudgetPolicy:
        return BudgetPolicy(
            pid, "global", "total_tokens", "rolling_24h", action, soft_limit=soft, hard_limit=hard
        )

    policies = [
        p("ok", "block", 10**6, 10**6),
        p("soft", "block", 10, 10**6),
        p("blk", "block", 10, 100),
        p("appr", "approval_required", 10, 100),
        p("warn", "warn", 10, 100),
    ]
    evaluation = Ledger().evaluate(policies, UsageScope("user:ops"), Amount(200, 0), T)
    found = alerts(evaluations=evaluation)
    assert [(a.dedupe_key, a.severity) for a in found] == [
        ("budget_alert:appr:approval_required", "danger"),
        ("budget_alert:blk:blocked", "danger"),
        ("budget_alert:soft:soft_limit", "warning"),
        ("budget_alert:warn:hard_limit", "warning"),
    ]
    assert found[1].payload["status"] == "blocked"
    again = alerts(evaluations=list(evaluation.evaluations) * 2)
    assert [a.dedupe_key for a in again] == [a.dedupe_key for a in found]


def test_routing_regression_from_enforced_decisions():
    decisions = [
        {"mode": "enforced", "default_model_id": "a", "actual_model_id": "b"},
        {"mode": "suggest", "default_model_id": "a", "actual_model_id": "a"},
    ]
    found = alerts(routing_decisions=decisions)
    assert [(a.alert_kind, a.payload["decisions"]) for a in found] == [("routing_regression", 1)]
    assert alerts(routing_decisions=decisions[1:]) == []
