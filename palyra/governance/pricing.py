"""The pricing catalog and the cost estimate of one model call (spec 3.1, 3.3 step 8).

Money is held as **integer micro-USD** (1 USD = 1_000_000 micro-USD) everywhere inside
Palyra, never as ``float``:

* budget arithmetic is exact: sums of many small costs neither drift nor depend on the
  order they were added in, so a hard limit compares the same way on every replay;
* integers are canonical JSON (``palyra.canonical`` refuses floats), so ledger events can
  be journalled and hash-chained as they are.

Per-million-token rates are micro-USD per million tokens (``0.15`` USD -> ``150_000``).
The cost of a call is computed exactly and then rounded half-up to 5 decimals of a USD
(a multiple of 10 micro-USD), as upstream rounds its ``f64``. Floats appear only at the
edge: :func:`usd_to_micros` turns a wire value into micro-USD (half-up to the nearest
micro) and :func:`micros_to_usd` turns micro-USD into a wire ``float`` with 5 decimals.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from palyra.errors import InvalidInput
from palyra.validation import bad, is_int, non_empty_text, non_negative_int

__all__ = [
    "MICROS_PER_USD",
    "PRECISIONS",
    "SEED_PRICING",
    "PricingEstimate",
    "PricingRecord",
    "estimate_cost",
    "find_pricing",
    "micros_to_usd",
    "micros_to_usd_exact",
    "pricing_from_mapping",
    "projected_completion_tokens",
    "usd_to_micros",
    "validate_pricing",
]

MICROS_PER_USD = 1_000_000
PRECISIONS = frozenset({"estimate_only", "exact"})
CURRENCY = "USD"
SOURCE_UNAVAILABLE = "unavailable"
PRECISION_UNKNOWN = "unknown"

_TOKENS_PER_RATE = 1_000_000  # rates are per million tokens
_ROUND_UNIT = 10 * _TOKENS_PER_RATE  # 10 micro-USD (5 USD decimals), in micro-USD x 1e-6
_USD_5DP = Decimal("0.00001")


def usd_to_micros(value: Any, *, field: str = "value") -> int:
    """A finite USD amount (int, float, str or Decimal) as integer micro-USD, half-up.

    Floats are read through ``repr`` so ``0.15`` means 0.15, not its binary neighbour.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise InvalidInput(f"{field} must be a number", details={"field": field})
    try:
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except InvalidOperation:
        raise InvalidInput(f"{field} must be a number", details={"field": field}) from None
    if not amount.is_finite():
        raise InvalidInput(f"{field} must be finite", details={"field": field})
    return int((amount * MICROS_PER_USD).to_integral_value(rounding=ROUND_HALF_UP))


def micros_to_usd(micros: int) -> float:
    """Integer micro-USD as a wire ``float`` USD rounded half-up to 5 decimals."""
    usd = (Decimal(micros) / MICROS_PER_USD).quantize(_USD_5DP, rounding=ROUND_HALF_UP)
    return float(usd)


def projected_completion_tokens(prompt_tokens: int) -> int:
    """Before a call the completion is unknown; upstream projects half the prompt."""
    return prompt_tokens // 2


def _seed_id(provider_kind: str, provider_id: str, model_id: str) -> str:
    """A deterministic canonical ULID (time 0) so re-seeding is idempotent."""
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    digest = hashlib.sha256(f"{provider_kind}/{provider_id}/{model_id}".encode()).digest()
    value = int.from_bytes(digest[:10], "big")  # 80 random bits, 48 time bits of zero
    return "".join(alphabet[(value >> shift) & 31] for shift in range(125, -1, -5))


@dataclasses.dataclass(frozen=True, slots=True)
class PricingRecord:
    """One row of ``usage_pricing_catalog``; money in integer micro-USD (see module doc).

    ``effective_to_unix_ms`` is exclusive; ``None`` means open-ended. A ``None`` cost
    component counts as zero. Construction validates (:func:`validate_pricing`).
    """

    pricing_id: str
    provider_id: str
    provider_kind: str
    model_id: str
    effective_from_unix_ms: int = 0
    effective_to_unix_ms: int | None = None
    input_cost_per_million_micro_usd: int | None = None
    output_cost_per_million_micro_usd: int | None = None
    fixed_request_cost_micro_usd: int | None = None
    source: str = "local_estimate"
    precision: str = "estimate_only"
    currency: str = CURRENCY

    def __post_init__(self) -> None:
        validate_pricing(self)

    def in_effect(self, at_ms: int) -> bool:
        if at_ms < self.effective_from_unix_ms:
            return False
        return self.effective_to_unix_ms is None or at_ms < self.effective_to_unix_ms

    def to_record(self) -> dict[str, Any]:
        """The wire form (``UsagePricingRecord``): costs as USD floats."""

        def usd(micros: int | None) -> float | None:
            return None if micros is None else micros_to_usd_exact(micros)

        return {
            "pricing_id": self.pricing_id,
            "provider_id": self.provider_id,
            "provider_kind": self.provider_kind,
            "model_id": self.model_id,
            "effective_from_unix_ms": self.effective_from_unix_ms,
            "effective_to_unix_ms": self.effective_to_unix_ms,
            "input_cost_per_million_usd": usd(self.input_cost_per_million_micro_usd),
            "output_cost_per_million_usd": usd(self.output_cost_per_million_micro_usd),
            "fixed_request_cost_usd": usd(self.fixed_request_cost_micro_usd),
            "source": self.source,
            "precision": self.precision,
            "currency": self.currency,
        }


def micros_to_usd_exact(micros: int) -> float:
    """Micro-USD as a float with all 6 decimals (catalog rates are not rounded to 5)."""
    return float(Decimal(micros) / MICROS_PER_USD)


def validate_pricing(record: PricingRecord) -> None:
    """Reject a pricing row on write; the :class:`InvalidInput` names the bad field."""
    for field in ("pricing_id", "provider_id", "provider_kind", "model_id", "source"):
        non_empty_text(getattr(record, field), field)
    non_negative_int(record.effective_from_unix_ms, "effective_from_unix_ms")
    if record.effective_to_unix_ms is not None:
        non_negative_int(record.effective_to_unix_ms, "effective_to_unix_ms")
    if (
        record.effective_to_unix_ms is not None
        and record.effective_to_unix_ms <= record.effective_from_unix_ms
    ):
        raise bad("effective_to_unix_ms", "must be after effective_from_unix_ms")
    for field in (
        "input_cost_per_million_micro_usd",
        "output_cost_per_million_micro_usd",
        "fixed_request_cost_micro_usd",
    ):
        value = getattr(record, field)
        if value is not None:
            non_negative_int(value, field)
    if record.precision not in PRECISIONS:
        raise bad("precision", f"must be one of {sorted(PRECISIONS)}")
    if record.currency != CURRENCY:
        raise bad("currency", "must be USD")


_WIRE_COSTS = {
    "input_cost_per_million_usd": "input_cost_per_million_micro_usd",
    "output_cost_per_million_usd": "output_cost_per_million_micro_usd",
    "fixed_request_cost_usd": "fixed_request_cost_micro_usd",
}
_WIRE_PLAIN = frozenset(
    {
        "pricing_id",
        "provider_id",
        "provider_kind",
        "model_id",
        "effective_from_unix_ms",
        "effective_to_unix_ms",
        "source",
        "precision",
        "currency",
    }
)


def pricing_from_mapping(mapping: Mapping[str, Any]) -> PricingRecord:
    """Build a validated record from its wire form (USD floats); unknown keys rejected."""
    if not isinstance(mapping, Mapping):
        raise InvalidInput("pricing must be an object")
    unknown = sorted(set(mapping) - _WIRE_PLAIN - set(_WIRE_COSTS))
    if unknown:
        raise InvalidInput(
            f"unknown pricing field(s): {', '.join(unknown)}", details={"fields": unknown}
        )
    kwargs: dict[str, Any] = {k: v for k, v in mapping.items() if k in _WIRE_PLAIN}
    for wire, internal in _WIRE_COSTS.items():
        value = mapping.get(wire)
        if value is not None:
            micros = usd_to_micros(value, field=wire)
            if micros < 0:
                raise bad(wire, "must not be negative")
            kwargs[internal] = micros
    for required in ("pricing_id", "provider_id", "provider_kind", "model_id"):
        if required not in kwargs:
            raise bad(required, "is required")
    try:
        return PricingRecord(**kwargs)
    except InvalidInput as exc:  # name the wire field, not the internal one
        field = exc.details.get("field")
        for wire, internal in _WIRE_COSTS.items():
            if field == internal:
                raise bad(wire, exc.message.removeprefix(internal).strip()) from None
        raise


def _seed(provider_kind: str, provider_id: str, model_id: str, inp: str, out: str) -> PricingRecord:
    return PricingRecord(
        pricing_id=_seed_id(provider_kind, provider_id, model_id),
        provider_id=provider_id,
        provider_kind=provider_kind,
        model_id=model_id,
        input_cost_per_million_micro_usd=usd_to_micros(inp),
        output_cost_per_million_micro_usd=usd_to_micros(out),
        source="local_estimate",
        precision="estimate_only",
    )


# Provider ids/kinds are the defaults of palyra.providers (openai_compatible.DEFAULT_PROVIDER_ID,
# deterministic.PROVIDER_ID / MODEL_ID); a test pins them together.
SEED_PRICING: tuple[PricingRecord, ...] = tuple(
    _seed("openai_compatible", "openai-primary", model, inp, out)
    for model, inp, out in (
        ("gpt-4o-mini", "0.15", "0.60"),
        ("gpt-4.1-mini", "0.40", "1.60"),
        ("gpt-4.1", "2.00", "8.00"),
        ("gpt-4o", "2.50", "10.00"),
        ("gpt-5.4-mini", "0.60", "2.40"),
        ("gpt-5.4", "3.00", "12.00"),
    )
) + (_seed("deterministic", "deterministic-primary", "deterministic", "0", "0"),)


def find_pricing(
    catalog: Iterable[PricingRecord],
    provider_kind: str,
    provider_id: str,
    model_id: str,
    at_ms: int,
) -> PricingRecord | None:
    """The row for this model in effect at ``at_ms``; the latest-starting row wins
    (then the later one in catalog order), so a new price can supersede an open one."""
    best: PricingRecord | None = None
    for record in catalog:
        if (
            record.provider_kind == provider_kind
            and record.provider_id == provider_id
            and record.model_id == model_id
            and record.in_effect(at_ms)
            and (best is None or record.effective_from_unix_ms >= best.effective_from_unix_ms)
        ):
            best = record
    return best


@dataclasses.dataclass(frozen=True, slots=True)
class PricingEstimate:
    """A cost estimate; ``lower == upper`` (upstream keeps a range for later use).

    With no pricing row the costs are ``None``, ``source`` is ``unavailable`` and
    ``precision`` is ``unknown``.
    """

    prompt_tokens: int
    completion_tokens: int
    lower_micro_usd: int | None
    upper_micro_usd: int | None
    source: str
    precision: str
    pricing_id: str | None = None
    currency: str = CURRENCY

    @property
    def available(self) -> bool:
        return self.upper_micro_usd is not None

    @property
    def lower_usd(self) -> float | None:
        return None if self.lower_micro_usd is None else micros_to_usd(self.lower_micro_usd)

    @property
    def upper_usd(self) -> float | None:
        return None if self.upper_micro_usd is None else micros_to_usd(self.upper_micro_usd)

    def to_dict(self) -> dict[str, Any]:
        return {
            "pricing_id": self.pricing_id,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "estimated_cost_lower_usd": self.lower_usd,
            "estimated_cost_upper_usd": self.upper_usd,
            "source": self.source,
            "precision": self.precision,
            "currency": self.currency,
        }


def estimate_cost(
    pricing: PricingRecord | None,
    prompt_tokens: int,
    completion_tokens: int | None = None,
) -> PricingEstimate:
    """``prompt/1e6*in + completion/1e6*out + fixed``, rounded half-up to 5 USD decimals.

    ``completion_tokens=None`` projects a call that has not happened yet
    (completion = prompt / 2, :func:`projected_completion_tokens`).
    """
    for field, value in (
        ("prompt_tokens", prompt_tokens),
        ("completion_tokens", completion_tokens),
    ):
        if value is not None and not (is_int(value) and value >= 0):
            raise bad(field, "must be a non-negative integer")
    if completion_tokens is None:
        completion_tokens = projected_completion_tokens(prompt_tokens)
    if pricing is None:
        return PricingEstimate(
            prompt_tokens, completion_tokens, None, None, SOURCE_UNAVAILABLE, PRECISION_UNKNOWN
        )
    # Exact total in units of 1e-6 micro-USD, then half-up to a multiple of 10 micro-USD.
    scaled = (
        prompt_tokens * (pricing.input_cost_per_million_micro_usd or 0)
        + completion_tokens * (pricing.output_cost_per_million_micro_usd or 0)
        + (pricing.fixed_request_cost_micro_usd or 0) * _TOKENS_PER_RATE
    )
    units, rest = divmod(scaled, _ROUND_UNIT)
    if 2 * rest >= _ROUND_UNIT:
        units += 1
    micros = units * 10
    precision = "exact" if pricing.precision == "exact" else "estimate_only"
    return PricingEstimate(
        prompt_tokens,
        completion_tokens,
        micros,
        micros,
        pricing.source,
        precision,
        pricing_id=pricing.pricing_id,
        currency=pricing.currency,
    )
