"""plan_usage_routing: each rule of spec 3.3 steps 3-8, mode handling and budget effects."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from palyra.errors import InvalidInput
from palyra.governance.budgets import Amount, BudgetPolicy, Ledger, UsageScope
from palyra.governance.pricing import SEED_PRICING
from palyra.governance.routing import (
    ModelCandidate,
    SmartRoutingConfig,
    complexity_score,
    plan_usage_routing,
    provider_health,
)

OPENAI = "openai-primary"
MINI = ModelCandidate("gpt-4o-mini", OPENAI, "openai_compatible", "low", "low", {"json_mode"})
STD = ModelCandidate(
    "gpt-4.1", OPENAI, "openai_compatible", "standard", "standard", {"json_mode", "vision"}
)
BIG = ModelCandidate(
    "gpt-5.4", OPENAI, "openai_compatible", "premium", "high", {"json_mode", "vision"}
)
ALT = ModelCandidate("claude-x", "anthropic-primary", "anthropic", "standard", "low", {"json_mode"})
CANDIDATES = (MINI, STD, BIG, ALT)

SHORT = "hi there"  # complexity ~0
# 5 keywords (0.25) + ~2460 chars (0.215) + ~307 words (0.036) = ~0.5
MODERATE = "analyze the architecture, investigate the security regression " + "context " * 300
LONG = "analyze " * 3000  # 0.35 + 0.35 + 0.05


def plan(prompt: str = MODERATE, **kw):
    kw.setdefault("candidates", CANDIDATES)
    kw.setdefault("default_model", "gpt-4.1")
    kw.setdefault("mode", "enforced")
    return plan_usage_routing(prompt=prompt, **kw)


# --------------------------------------------------------------------------- step 3, 4


def test_complexity_score_follows_the_formula():
    prompt = "Please ANALYZE the security architecture"
    expected = 0.35 * len(prompt) / 4000 + 0.35 * 5 / 3000 + 0.2 + 0.15 + 3 * 0.05
    assert complexity_score(prompt, json_mode=True, vision_inputs=1) == pytest.approx(expected)
    assert complexity_score("x" * 8000) == pytest.approx(0.35 + 0.35 / 3000)
    assert complexity_score("", vision_inputs=5) == pytest.approx(0.3)  # vision capped
    assert complexity_score(LONG, json_mode=True, vision_inputs=9) == 1.0  # clamped
    assert 0.35 < complexity_score(MODERATE) < 0.75


def test_provider_health_rules():
    assert provider_health(kind="openai_compatible", circuit_open=True, auth_configured=True) == (
        "degraded"
    )
    assert provider_health(kind="openai_compatible", runtime_error_count=1) == "degraded"
    assert provider_health(kind="openai_compatible", auth_configured=True) == "ok"
    assert provider_health(kind="openai_compatible") == "missing_auth"
    assert provider_health(kind="deterministic") == "ok"  # quirk 13.10 fixed


# --------------------------------------------------------------------------- step 6


@pytest.mark.parametrize(
    "task_class",
    ["background_automation", "auxiliary_summary", "auxiliary_recall", "auxiliary_extraction"],
)
def test_low_cost_task_classes_pick_the_cheapest(task_class):
    decision = plan(LONG, task_class=task_class)
    assert decision.recommended == MINI
    assert "task_class_low_cost" in decision.reason_codes


def test_low_latency_class_prefers_latency_over_cost():
    cheap_slow = ModelCandidate("cheap-slow", OPENAI, "openai_compatible", "low", "high")
    fast = ModelCandidate("fast", OPENAI, "openai_compatible", "standard", "low")
    pool = (cheap_slow, fast, STD)
    classify = plan(candidates=pool, task_class="auxiliary_classification")
    assert classify.recommended == fast
    assert "task_class_low_latency" in classify.reason_codes
    assert plan(candidates=pool, task_class="background_automation").recommended == cheap_slow


def test_high_complexity_escalates_to_the_highest_cost_rank():
    decision = plan(LONG, json_mode=True)
    assert decision.complexity_score >= 0.75
    assert decision.recommended == BIG
    assert decision.routing_action == "proceed"  # more expensive, same provider
    assert "high_complexity" in decision.reason_codes


def test_high_complexity_breaks_cost_ties_by_lower_latency():
    slow = ModelCandidate("premium-slow", OPENAI, "openai_compatible", "premium", "high")
    quick = ModelCandidate("premium-quick", OPENAI, "openai_compatible", "premium", "standard")
    assert plan(LONG, candidates=(slow, quick, STD), json_mode=False).recommended == quick


def test_low_complexity_picks_the_cheapest():
    decision = plan(SHORT)
    assert decision.complexity_score <= 0.35
    assert decision.recommended == MINI
    assert decision.routing_action == "degrade"
    assert "low_complexity" in decision.reason_codes


def test_moderate_complexity_keeps_the_default():
    decision = plan(MODERATE)
    assert decision.recommended == STD and decision.actual == STD
    assert decision.routing_action == "proceed"
    assert "default_model" in decision.reason_codes


def test_moderate_complexity_without_default_in_pool_takes_lowest_latency():
    decision = plan(MODERATE, candidates=(MINI, BIG, ALT, dataclasses.replace(STD, enabled=False)))
    assert decision.recommended == MINI  # low latency, then low cost beats ALT
    assert "default_not_in_pool" in decision.reason_codes


# --------------------------------------------------------------------------- step 5


def test_json_mode_filters_out_models_without_it():
    det = ModelCandidate("deterministic", "deterministic-primary", "deterministic", "low", "low")
    decision = plan(SHORT, candidates=(det, STD), json_mode=True)
    assert decision.recommended == STD
    assert "capability_json_mode" in decision.reason_codes
    assert plan(SHORT, candidates=(det, STD)).recommended == det


def test_vision_inputs_need_vision_capable_models():
    decision = plan("", vision_inputs=1)
    assert decision.recommended == STD  # cheapest vision-capable model
    assert "capability_vision" in decision.reason_codes


def test_no_capable_candidate_keeps_the_default():
    decision = plan(SHORT, candidates=(MINI,), default_model=MINI, vision_inputs=1)
    assert decision.actual == MINI
    assert "no_capable_candidate" in decision.reason_codes


def test_default_unknown_to_the_registry_is_added_to_the_pool():
    decision = plan(MODERATE, default_model="custom-model")
    assert decision.default.model_id == "custom-model"
    assert decision.recommended.model_id == "custom-model"
    extra = ModelCandidate("extra", "extra-provider", "openai_compatible")
    assert plan(MODERATE, default_model=extra).actual == extra


def test_failover_to_a_healthy_provider_when_the_default_is_unhealthy():
    health = {OPENAI: provider_health(kind="openai_compatible", circuit_open=True)}
    decision = plan(MODERATE, health=health)
    assert decision.actual == ALT
    assert decision.routing_action == "failover"
    assert decision.health_state == "ok"
    assert {"default_provider_unhealthy", "failover_healthy_pool"} <= set(decision.reason_codes)


def test_no_failover_when_disabled():
    decision = plan(MODERATE, health={OPENAI: "degraded"}, failover_enabled=False)
    assert decision.actual == STD
    assert decision.health_state == "degraded"
    assert "default_provider_unhealthy" in decision.reason_codes
    assert "failover_healthy_pool" not in decision.reason_codes


def test_unhealthy_candidates_are_skipped_when_the_default_is_healthy():
    decision = plan(
        SHORT, candidates=(MINI, ALT, STD), default_model=ALT, health={OPENAI: "missing_auth"}
    )
    assert decision.actual == ALT
    assert "unhealthy_candidates_skipped" in decision.reason_codes


def test_lease_pressure_restricts_the_pool_to_ready_candidates():
    decision = plan(SHORT, leases={OPENAI: "waiting", "anthropic-primary": "ready"})
    assert decision.actual == ALT
    assert decision.lease_state == "ready"
    assert "lease_ready_pool" in decision.reason_codes


def test_auxiliary_task_with_deferred_lease_is_deferred():
    leases = {OPENAI: "deferred", "anthropic-primary": "deferred"}
    decision = plan(SHORT, task_class="auxiliary_summary", leases=leases)
    assert decision.routing_action == "defer" and decision.deferred
    assert not decision.may_proceed
    assert "lease_deferred" in decision.reason_codes
    assert plan(SHORT, leases=leases).routing_action == "degrade"  # foreground is not deferred


# --------------------------------------------------------------------------- auxiliary


def test_auxiliary_may_not_exceed_the_default_cost_rank():
    cheap_slow = ModelCandidate("cheap-slow", OPENAI, "openai_compatible", "low", "high")
    pool = (cheap_slow, ALT)
    decision = plan(
        candidates=pool, default_model=cheap_slow, task_class="auxiliary_classification"
    )
    assert decision.recommended == cheap_slow  # ALT is faster but costs more than the default
    assert "auxiliary_cost_cap" in decision.reason_codes
    vision = plan(LONG, default_model=STD, task_class="auxiliary_vision", vision_inputs=1)
    assert vision.recommended == STD  # BIG would be chosen for complexity, but is premium
    assert plan(LONG, default_model=STD, vision_inputs=1).recommended == BIG


def test_auxiliary_routing_disabled_pins_the_default():
    decision = plan(
        LONG, task_class="auxiliary_summary", auxiliary_routing_enabled=False, default_model=STD
    )
    assert decision.recommended == STD and decision.actual == STD
    assert "auxiliary_routing_disabled" in decision.reason_codes


# --------------------------------------------------------------------------- step 7


@pytest.mark.parametrize("mode", ["suggest", "dry_run", "dry-run"])
def test_publish_only_modes_keep_the_default(mode):
    decision = plan(SHORT, mode=mode)
    assert decision.recommended == MINI
    assert decision.actual == STD
    assert decision.routing_action == "proceed"
    assert "mode_publish_only" in decision.reason_codes
    assert decision.mode == mode.replace("-", "_")


def test_enforced_mode_changes_the_model():
    decision = plan(SHORT, mode="enforced")
    assert decision.actual == MINI
    assert "mode_publish_only" not in decision.reason_codes


def test_invalid_mode_and_task_class_are_rejected():
    with pytest.raises(InvalidInput, match="routing mode"):
        plan(mode="yolo")
    with pytest.raises(InvalidInput, match="task_class"):
        plan(task_class="gossip")
    with pytest.raises(InvalidInput, match="lease state"):
        plan(leases={OPENAI: "maybe"})


# --------------------------------------------------------------------------- budgets


def budget(outcome_tokens: int, action: str = "block"):
    policies = [
        BudgetPolicy(
            "P", "global", "total_tokens", "rolling_24h", action, soft_limit=50, hard_limit=100
        )
    ]
    return Ledger().evaluate(policies, UsageScope("user:ops"), Amount(outcome_tokens, 0), 0)


def test_soft_limit_downgrades_to_the_cheapest_in_enforced_mode():
    decision = plan(MODERATE, budget=budget(60))
    assert decision.budget_outcome == "soft_limit"
    assert decision.actual == MINI
    assert decision.routing_action == "degrade"
    assert {"budget_soft_limit", "budget_soft_limit_downgrade"} <= set(decision.reason_codes)
    suggest = plan(MODERATE, budget=budget(60), mode="suggest")
    assert suggest.recommended == MINI and suggest.actual == STD


def test_warn_hard_limit_also_downgrades_and_ok_budget_does_not():
    assert plan(MODERATE, budget=budget(200, action="warn")).actual == MINI
    assert plan(MODERATE, budget=budget(10)).actual == STD


@pytest.mark.parametrize(
    ("action", "routing_action"),
    [("block", "blocked"), ("approval_required", "approval_required")],
)
def test_blocking_budget_outcomes_override_the_action(action, routing_action):
    decision = plan(MODERATE, budget=budget(200, action=action))
    assert decision.routing_action == routing_action
    assert not decision.may_proceed
    assert f"budget_{routing_action}" in decision.reason_codes


def test_budget_outcome_string_is_accepted():
    assert plan(MODERATE, budget="blocked").routing_action == "blocked"
    with pytest.raises(InvalidInput):
        plan(budget="doomed")


# --------------------------------------------------------------------------- record


def test_cost_estimate_and_record():
    prompt = "word " * 500  # 500 tokens; projected completion 250
    decision = plan(prompt, catalog=SEED_PRICING, mode="enforced")
    assert decision.actual == MINI
    # 500 * 0.15 + 250 * 0.60 = 225 micro-USD = $0.000225, half-up to $0.00023
    assert decision.cost_estimate.upper_micro_usd == 230
    assert decision.projected == Amount(750, 230)
    record = decision.to_record(
        run_id="RUN", session_id="SES", principal="user:ops", created_at_unix_ms=1_700_000_000_000
    )
    assert record["estimated_cost_lower_usd"] == record["estimated_cost_upper_usd"] == 0.00023
    assert record["scope_kind"] == "session" and record["scope_id"] == "SES"
    assert record["actual_model_id"] == "gpt-4o-mini"
    assert record["default_model_id"] == "gpt-4.1"
    assert record["provider_kind"] == "openai_compatible"
    assert len(record["decision_id"]) == 26
    explanation = orjson.loads(record["explanation_json"])
    assert explanation["routing_action"] == "degrade"
    assert explanation["lease"] == "ready" and explanation["deferred"] is False
    assert explanation["reason_codes"] == list(decision.reason_codes)
    assert explanation["explanation"] and all(
        isinstance(x, str) for x in explanation["explanation"]
    )


def test_unpriced_model_has_unavailable_estimate():
    decision = plan(MODERATE, default_model=ALT, catalog=SEED_PRICING)
    assert decision.cost_estimate.source == "unavailable"
    assert decision.projected.cost_micro_usd == 0


# --------------------------------------------------------------------------- config


def test_smart_routing_config_from_env_and_effective_mode():
    config = SmartRoutingConfig.from_env({"PALYRA_SMART_ROUTING_MODE": "dry-run"})
    assert (config.enabled, config.default_mode, config.auxiliary_routing_enabled) == (
        True,
        "dry_run",
        True,
    )
    assert config.effective_mode() == "dry_run"
    assert config.effective_mode("enforced") == "enforced"
    disabled = SmartRoutingConfig.from_env({"PALYRA_SMART_ROUTING_ENABLED": "false"})
    assert disabled.effective_mode("enforced") == "suggest"
    with pytest.raises(InvalidInput, match="PALYRA_SMART_ROUTING_ENABLED"):
        SmartRoutingConfig.from_env({"PALYRA_SMART_ROUTING_ENABLED": "perhaps"})
