"""Pricing catalog, cost estimates and their rounding (spec 3.1, 3.3 step 8)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from palyra.errors import InvalidInput
from palyra.governance.pricing import (
    SEED_PRICING,
    PricingRecord,
    estimate_cost,
    find_pricing,
    micros_to_usd,
    pricing_from_mapping,
    usd_to_micros,
)
from palyra.ids import is_ulid
from palyra.providers import deterministic, openai_compatible


def seed(model_id: str) -> PricingRecord:
    return next(p for p in SEED_PRICING if p.model_id == model_id)


def price(**kw) -> PricingRecord:
    fields = {
        "pricing_id": "P1",
        "provider_id": "openai-primary",
        "provider_kind": "openai_compatible",
        "model_id": "m",
        "input_cost_per_million_micro_usd": 1_000_000,
        "output_cost_per_million_micro_usd": 2_000_000,
    }
    fields.update(kw)
    return PricingRecord(**fields)


def test_seed_catalog_matches_spec_rates_and_provider_defaults():
    expected = {
        "gpt-4o-mini": ("0.15", "0.60"),
        "gpt-4.1-mini": ("0.40", "1.60"),
        "gpt-4.1": ("2.00", "8.00"),
        "gpt-4o": ("2.50", "10.00"),
        "gpt-5.4-mini": ("0.60", "2.40"),
        "gpt-5.4": ("3.00", "12.00"),
    }
    for model_id, (inp, out) in expected.items():
        record = seed(model_id)
        assert record.provider_id == openai_compatible.DEFAULT_PROVIDER_ID
        assert record.provider_kind == openai_compatible.OpenAICompatibleProvider.kind
        assert record.input_cost_per_million_micro_usd == int(Decimal(inp) * 1_000_000)
        assert record.output_cost_per_million_micro_usd == int(Decimal(out) * 1_000_000)
        assert (record.source, record.precision, record.effective_from_unix_ms) == (
            "local_estimate",
            "estimate_only",
            0,
        )
    det = seed(deterministic.MODEL_ID)
    assert det.provider_id == deterministic.PROVIDER_ID
    assert det.provider_kind == deterministic.DeterministicProvider.kind
    assert det.input_cost_per_million_micro_usd == det.output_cost_per_million_micro_usd == 0
    assert len(SEED_PRICING) == 7


def test_seed_ids_are_stable_distinct_ulids():
    ids = [p.pricing_id for p in SEED_PRICING]
    assert all(is_ulid(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_usd_conversions_are_exact_and_round_half_up():
    assert usd_to_micros(0.15) == 150_000
    assert usd_to_micros("0.0000005") == 1  # half-up to the nearest micro
    assert usd_to_micros(Decimal("2.5")) == 2_500_000
    assert micros_to_usd(150_000) == 0.15
    assert micros_to_usd(5) == 0.00001  # half-up to 5 decimals
    assert micros_to_usd(4) == 0.0
    with pytest.raises(InvalidInput, match="x must be finite"):
        usd_to_micros(float("nan"), field="x")
    with pytest.raises(InvalidInput, match="must be a number"):
        usd_to_micros(True)


def test_estimate_projects_completion_as_half_the_prompt():
    est = estimate_cost(seed("gpt-4o-mini"), 1000)
    assert est.completion_tokens == 500
    # 1000 * 0.15/1e6 + 500 * 0.60/1e6 = 0.00015 + 0.0003
    assert est.upper_micro_usd == est.lower_micro_usd == 450
    assert est.upper_usd == 0.00045
    assert (est.source, est.precision, est.currency) == ("local_estimate", "estimate_only", "USD")


def test_estimate_rounds_half_up_to_five_decimals():
    record = price(input_cost_per_million_micro_usd=1_000_000, output_cost_per_million_micro_usd=0)
    assert estimate_cost(record, 5, 0).upper_micro_usd == 10  # 0.000005 -> 0.00001
    assert estimate_cost(record, 4, 0).upper_micro_usd == 0  # 0.000004 -> 0.00000
    assert estimate_cost(record, 15, 0).upper_usd == 0.00002  # 0.000015 -> 0.00002
    fixed = price(fixed_request_cost_micro_usd=1_234)
    assert estimate_cost(fixed, 0, 0).upper_micro_usd == 1_230


def test_estimate_with_exact_pricing_is_exact_and_unknown_pricing_is_unavailable():
    assert estimate_cost(price(precision="exact"), 10, 10).precision == "exact"
    missing = estimate_cost(None, 100)
    assert (missing.source, missing.precision) == ("unavailable", "unknown")
    assert missing.upper_usd is None and not missing.available
    assert missing.to_dict()["estimated_cost_upper_usd"] is None


def test_estimate_rejects_negative_tokens():
    with pytest.raises(InvalidInput, match="prompt_tokens"):
        estimate_cost(None, -1)


def test_find_pricing_honours_effective_windows():
    old = price(pricing_id="old", effective_from_unix_ms=0, effective_to_unix_ms=1000)
    new = price(pricing_id="new", effective_from_unix_ms=1000)
    other = price(pricing_id="other", model_id="n")
    catalog = [old, new, other]
    args = ("openai_compatible", "openai-primary", "m")
    assert find_pricing(catalog, *args, 999).pricing_id == "old"
    assert find_pricing(catalog, *args, 1000).pricing_id == "new"  # effective_to exclusive
    assert find_pricing(catalog, "openai_compatible", "elsewhere", "m", 5) is None
    later = price(pricing_id="later", effective_from_unix_ms=500)
    assert find_pricing([price(pricing_id="base"), later], *args, 600).pricing_id == "later"
    assert find_pricing([price(pricing_id="base"), later], *args, 400).pricing_id == "base"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"input_cost_per_million_micro_usd": -1}, "input_cost_per_million_micro_usd"),
        ({"fixed_request_cost_micro_usd": -5}, "fixed_request_cost_micro_usd"),
        ({"effective_from_unix_ms": 10, "effective_to_unix_ms": 10}, "effective_to_unix_ms"),
        ({"precision": "roughly"}, "precision"),
        ({"model_id": ""}, "model_id"),
        ({"currency": "EUR"}, "currency"),
    ],
)
def test_invalid_pricing_names_the_field(fields, field):
    with pytest.raises(InvalidInput) as err:
        price(**fields)
    assert err.value.details["field"] == field
    assert field in err.value.message


def test_pricing_from_mapping_round_trips_and_names_wire_fields():
    record = pricing_from_mapping(seed("gpt-4.1").to_record())
    assert record == seed("gpt-4.1")
    wire = seed("gpt-4.1").to_record() | {"output_cost_per_million_usd": -0.5}
    with pytest.raises(InvalidInput) as err:
        pricing_from_mapping(wire)
    assert err.value.details["field"] == "output_cost_per_million_usd"
    with pytest.raises(InvalidInput, match="unknown pricing field"):
        pricing_from_mapping(seed("gpt-4.1").to_record() | {"discount": 1})
    with pytest.raises(InvalidInput, match="model_id is required"):
        pricing_from_mapping({"pricing_id": "x", "provider_id": "p", "provider_kind": "k"})
