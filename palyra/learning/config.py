"""``LearningRuntimeConfig`` (spec 6), env ``PALYRA_LEARNING_*``; thresholds in basis points."""

from __future__ import annotations

import dataclasses

from palyra.errors import InvalidInput
from palyra.validation import is_int

BPS = 10_000


@dataclasses.dataclass(frozen=True, slots=True)
class LearningConfig:
    enabled: bool = True
    sampling_percent: int = 100
    cooldown_ms: int = 300_000
    budget_tokens: int = 1200
    max_candidates_per_run: int = 24
    durable_fact_review_min_confidence_bps: int = 7500
    durable_fact_auto_write_threshold_bps: int = 9000
    preference_review_min_confidence_bps: int = 8000
    procedure_min_occurrences: int = 2
    procedure_review_min_confidence_bps: int = 8500

    def __post_init__(self) -> None:
        checks = {
            "sampling_percent": (self.sampling_percent, 0, 100),
            "cooldown_ms": (self.cooldown_ms, 0, None),
            "budget_tokens": (self.budget_tokens, 1, None),
            "max_candidates_per_run": (self.max_candidates_per_run, 0, None),
            "durable_fact_review_min_confidence_bps":
                (self.durable_fact_review_min_confidence_bps, 0, BPS),
            "durable_fact_auto_write_threshold_bps":
                (self.durable_fact_auto_write_threshold_bps, 0, BPS),
            "preference_review_min_confidence_bps":
                (self.preference_review_min_confidence_bps, 0, BPS),
            "procedure_min_occurrences": (self.procedure_min_occurrences, 1, None),
            "procedure_review_min_confidence_bps":
                (self.procedure_review_min_confidence_bps, 0, BPS),
        }
        for name, (value, low, high) in checks.items():
            if not is_int(value):
                raise InvalidInput(f"learning.{name} must be an integer", details={"field": name})
            if value < low or (high is not None and value > high):
                bound = f"{low}..{high}" if high is not None else f">= {low}"
                raise InvalidInput(f"learning.{name} must be {bound}", details={"field": name})


DEFAULT_CONFIG = LearningConfig()
