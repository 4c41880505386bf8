"""Runtime counters and recent failures (spec section 11); see :mod:`.counters`."""

from palyra.observability.counters import COMMIT_BUCKETS, GROUPS, RuntimeCounters
from palyra.observability.failures import (
    CONFIG_FAILURE,
    FAILURE_CLASSES,
    PRODUCT_FAILURE,
    UPSTREAM_PROVIDER_FAILURE,
    Failure,
    classify_provider_error,
    classify_run_failure,
)

__all__ = [
    "COMMIT_BUCKETS", "CONFIG_FAILURE", "FAILURE_CLASSES", "GROUPS", "PRODUCT_FAILURE",
    "UPSTREAM_PROVIDER_FAILURE", "Failure", "RuntimeCounters", "classify_provider_error",
    "classify_run_failure",
]
