"""CircuitBreaker: opens after 3 consecutive failures for 30 s, half-open trial, reset.
Time moves through ManualClock; nothing sleeps."""

from __future__ import annotations

import threading

import pytest

from palyra.clock import ManualClock
from palyra.errors import ProviderError
from palyra.providers import CircuitBreaker


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def breaker(clock):
    return CircuitBreaker(clock=clock, name="test-provider")


def fail(breaker, times):
    for _ in range(times):
        breaker.before_call()
        breaker.record_failure()


def rejection(breaker) -> dict:
    with pytest.raises(ProviderError) as info:
        breaker.before_call()
    return info.value.details


def test_closed_breaker_admits_calls(breaker):
    breaker.before_call()
    assert breaker.state == "closed"
    assert breaker.retry_after_ms() == 0


def test_two_failures_keep_it_closed(breaker):
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2
    breaker.before_call()


def test_opens_after_three_consecutive_failures_and_rejects_with_retry_after(breaker, clock):
    fail(breaker, 3)
    assert breaker.state == "open"
    details = rejection(breaker)
    assert details["kind"] == "circuit_open"
    assert details["retry_after_ms"] == 30_000
    assert details["provider_id"] == "test-provider"
    assert details["retryability"] == "retry_after"
    clock.advance(10)
    assert rejection(breaker)["retry_after_ms"] == 20_000


def test_success_resets_the_consecutive_count(breaker):
    fail(breaker, 2)
    breaker.before_call()
    breaker.record_success()
    fail(breaker, 2)
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 2


def test_first_call_after_cooldown_is_a_half_open_trial(breaker, clock):
    fail(breaker, 3)
    clock.advance(30)
    assert breaker.state == "half_open"
    breaker.before_call()  # the trial is admitted
    details = rejection(breaker)  # others wait for the trial's verdict
    assert details["retry_after_ms"] == CircuitBreaker.HALF_OPEN_RETRY_AFTER_MS


def test_successful_trial_closes_and_resets(breaker, clock):
    fail(breaker, 3)
    clock.advance(30)
    breaker.before_call()
    breaker.record_success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    breaker.before_call()


def test_failed_trial_reopens_for_a_full_period(breaker, clock):
    fail(breaker, 3)
    clock.advance(31)
    breaker.before_call()
    breaker.record_failure()
    assert breaker.state == "open"
    assert rejection(breaker)["retry_after_ms"] == 30_000
    assert breaker.snapshot()["times_opened"] == 2


def test_released_trial_lets_the_next_caller_try(breaker, clock):
    fail(breaker, 3)
    clock.advance(30)
    breaker.before_call()
    breaker.release()  # e.g. the trial call was cancelled
    breaker.before_call()
    assert breaker.state == "half_open"


def test_snapshot_reports_state_and_failures(breaker):
    fail(breaker, 3)
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["consecutive_failures"] == 3
    assert snapshot["retry_after_ms"] == 30_000


def test_custom_threshold_and_period(clock):
    breaker = CircuitBreaker(failure_threshold=1, open_ms=500, clock=clock)
    fail(breaker, 1)
    assert rejection(breaker)["retry_after_ms"] == 500
    clock.advance(0.5)
    breaker.before_call()


def test_failures_recorded_from_many_threads_are_all_counted(clock):
    breaker = CircuitBreaker(failure_threshold=10_000, clock=clock)
    threads = [
        threading.Thread(target=lambda: [breaker.record_failure() for _ in range(200)])
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert breaker.consecutive_failures == 1_600
