"""A consecutive-failure circuit breaker (spec 1.8: 3 failures open it for 30 s).

States:

* ``closed`` -- calls pass; consecutive failures are counted, a success resets the count.
* ``open`` -- for ``open_ms`` after the threshold is reached, ``before_call()`` raises a
  ``ProviderError`` whose envelope has kind ``circuit_open`` and ``retry_after_ms``.
* ``half_open`` -- the cool-down is over. The first caller is admitted as the *trial*;
  its success closes the circuit, its failure re-opens it for another ``open_ms``. While
  the trial is in flight other callers are rejected with
  ``retry_after_ms = HALF_OPEN_RETRY_AFTER_MS``. A trial that ends without a verdict
  (cancelled) must call :meth:`CircuitBreaker.release` so the next caller can try.

Time comes from an injectable :class:`~palyra.clock.Clock` (``monotonic()``), so tests
move time with ``ManualClock.advance`` instead of sleeping. Thread-safe.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from palyra.clock import SYSTEM_CLOCK, Clock
from palyra.errors import ProviderError
from palyra.providers.base import ErrorKind, error_envelope

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


class CircuitBreaker:
    HALF_OPEN_RETRY_AFTER_MS = 1_000

    def __init__(
        self,
        failure_threshold: int = 3,
        open_ms: int = 30_000,
        clock: Clock = SYSTEM_CLOCK,
        *,
        name: str | None = None,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be >= 1")
        if open_ms < 0:
            raise ValueError("open_ms must be >= 0")
        self.failure_threshold = failure_threshold
        self.open_ms = open_ms
        self.name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None  # clock.monotonic() when it last opened
        self._trial_in_flight = False
        self._times_opened = 0

    # ----------------------------------------------------------------- inspection

    def _remaining_ms(self) -> int:
        assert self._opened_at is not None
        elapsed = self._clock.monotonic() - self._opened_at
        return max(0, math.ceil(self.open_ms - elapsed * 1000))

    def _state(self) -> str:
        if self._opened_at is None:
            return CLOSED
        return OPEN if self._remaining_ms() > 0 else HALF_OPEN

    @property
    def state(self) -> str:
        with self._lock:
            return self._state()

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def retry_after_ms(self) -> int:
        """How long until a call may be admitted (0 when it would be now)."""
        with self._lock:
            if self._opened_at is None:
                return 0
            remaining = self._remaining_ms()
            if remaining == 0 and self._trial_in_flight:
                return self.HALF_OPEN_RETRY_AFTER_MS
            return remaining

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            state = self._state()
            return {
                "state": state,
                "consecutive_failures": self._failures,
                "failure_threshold": self.failure_threshold,
                "open_ms": self.open_ms,
                "retry_after_ms": self._remaining_ms() if state == OPEN else 0,
                "trial_in_flight": self._trial_in_flight,
                "times_opened": self._times_opened,
            }

    # ----------------------------------------------------------------- transitions

    def before_call(self) -> None:
        """Admit a call or raise ``ProviderError`` (kind ``circuit_open``)."""
        with self._lock:
            if self._opened_at is None:
                return
            remaining = self._remaining_ms()
            if remaining == 0 and not self._trial_in_flight:
                self._trial_in_flight = True
                return
            retry_after = remaining or self.HALF_OPEN_RETRY_AFTER_MS
            failures = self._failures
        message = (
            f"circuit open after {failures} consecutive failures; retry after {retry_after} ms"
        )
        details = error_envelope(
            ErrorKind.CIRCUIT_OPEN, message, provider_id=self.name, retry_after_ms=retry_after
        )
        raise ProviderError(details["redacted_message"], details=details)

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._opened_at = None
            self._trial_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            if self._trial_in_flight or (
                self._opened_at is None and self._failures >= self.failure_threshold
            ):
                self._opened_at = self._clock.monotonic()
                self._trial_in_flight = False
                self._times_opened += 1

    def release(self) -> None:
        """An admitted call ended without a verdict (e.g. cancelled): free the trial."""
        with self._lock:
            self._trial_in_flight = False
