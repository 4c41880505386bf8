"""Cedar policy: baseline rules, allowlists and explained decisions (spec 1.6.1)."""

from palyra.policy.engine import (
    DEFAULT_SENSITIVE_ACTIONS,
    DEFAULT_SENSITIVE_CAPABILITIES,
    DENY_BY_DEFAULT_REASON,
    PolicyConfig,
    PolicyDecision,
    PolicyEngine,
    PolicyRequest,
    baseline_policies,
    policy_schema,
)

__all__ = [
    "DEFAULT_SENSITIVE_ACTIONS",
    "DEFAULT_SENSITIVE_CAPABILITIES",
    "DENY_BY_DEFAULT_REASON",
    "PolicyConfig",
    "PolicyDecision",
    "PolicyEngine",
    "PolicyRequest",
    "baseline_policies",
    "policy_schema",
]
