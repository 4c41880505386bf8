"""Bounded polling for tests that wait on a condition no event announces.

Prefer an event (a hub subscription, ``handle.wait``, a ``threading.Event``) where one
exists; poll only what has none, and always within a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def poll(predicate: Callable[[], T], timeout: float, interval: float = 0.01) -> T:
    """``predicate()`` called with short waits until it is truthy or ``timeout`` has passed;
    returns its last value (falsy when the deadline passed first)."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()  # never set: wait() is a bounded pause (and not time.sleep)
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        pause.wait(interval)


def until(predicate: Callable[[], T], *, timeout: float = 5.0, interval: float = 0.01,
          what: str = "condition") -> T:
    """Poll ``predicate`` until it is truthy and return its value; fail after ``timeout``."""
    value = poll(predicate, timeout, interval)
    if not value:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return value


def holds_within(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> bool:
    """Whether ``predicate`` becomes truthy within ``timeout`` (no assertion)."""
    return bool(poll(predicate, timeout, interval))
