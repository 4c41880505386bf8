"""Time you can control.

Everything that reads time for a decision (heartbeats, expiry, TTLs, backoff, circuit
breakers) takes a :class:`Clock`, so tests move time forward instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def now_ms(self) -> int:
        """Wall-clock unix milliseconds (persisted timestamps)."""

    def monotonic(self) -> float:
        """Monotonic seconds (intervals, deadlines)."""


class SystemClock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to; thread-safe."""

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._lock = threading.Lock()
        self._ms = start_ms
        self._mono = 1000.0

    def now_ms(self) -> int:
        with self._lock:
            return self._ms

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._ms += int(seconds * 1000)
            self._mono += seconds


SYSTEM_CLOCK = SystemClock()
