"""The built-in tools: echo, sleep (cancellable) and memory search."""

from __future__ import annotations

import threading
import time

import pytest

from palyra.clock import ManualClock
from palyra.errors import InvalidInput
from palyra.tools import ToolContext, default_registry


def ctx(**kw) -> ToolContext:
    kw.setdefault("cancel", threading.Event())
    kw.setdefault("deadline_monotonic", time.monotonic() + 60.0)
    return ToolContext(run_id="R", session_id="S", principal="user:ops", **kw)


def run(name: str, args: dict, context: ToolContext):
    registry = default_registry()
    valid = registry.validate_arguments(name, args)
    return registry.get(name).handler(valid, context)


def test_echo_returns_text() -> None:
    out = run("palyra.echo", {"text": "héllo"}, ctx())
    assert out.success and out.output == {"echo": "héllo"} and out.error is None


def test_echo_requires_text() -> None:
    with pytest.raises(InvalidInput, match=r"\$\.text"):
        run("palyra.echo", {}, ctx())


def test_sleep_zero_ms_succeeds() -> None:
    out = run("palyra.sleep", {"ms": 0}, ctx())
    assert out.success and out.output == {"slept_ms": 0}


def test_sleep_short_wait_succeeds() -> None:
    started = time.monotonic()
    out = run("palyra.sleep", {"ms": 20}, ctx())
    assert out.success
    assert time.monotonic() - started >= 0.015


@pytest.mark.parametrize("ms", [-1, 60_001, "10", 1.5])
def test_sleep_rejects_bad_ms(ms) -> None:
    with pytest.raises(InvalidInput, match=r"\$\.ms"):
        run("palyra.sleep", {"ms": ms}, ctx())


def test_sleep_honours_cancel_quickly() -> None:
    cancel = threading.Event()
    timer = threading.Timer(0.05, cancel.set)
    started = time.monotonic()
    timer.start()
    try:
        out = run("palyra.sleep", {"ms": 10_000}, ctx(cancel=cancel))
    finally:
        timer.cancel()
    elapsed = time.monotonic() - started
    assert not out.success
    assert out.error == "cancelled"
    assert elapsed < 2.0  # asked for 10 s


def test_sleep_already_cancelled_returns_immediately() -> None:
    cancel = threading.Event()
    cancel.set()
    started = time.monotonic()
    out = run("palyra.sleep", {"ms": 60_000}, ctx(cancel=cancel))
    assert out.error == "cancelled"
    assert time.monotonic() - started < 1.0


def test_sleep_stops_at_the_deadline() -> None:
    clock = ManualClock()
    out = run(
        "palyra.sleep",
        {"ms": 60_000},
        ctx(deadline_monotonic=clock.monotonic(), clock=clock),
    )
    assert not out.success
    assert out.error == "deadline exceeded"


def test_sleep_never_calls_time_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(_):
        raise AssertionError("time.sleep used")

    monkeypatch.setattr(time, "sleep", forbidden)
    assert run("palyra.sleep", {"ms": 1}, ctx()).success


def test_memory_search_without_backend_returns_no_hits() -> None:
    out = run("palyra.memory.search", {"query": "cats"}, ctx())
    assert out.success and out.output == {"hits": []}


def test_memory_search_calls_the_backend_with_query_and_limit() -> None:
    calls = []

    def search(query: str, limit: int) -> list[dict]:
        calls.append((query, limit))
        return [{"id": str(i)} for i in range(10)]

    out = run("palyra.memory.search", {"query": "cats", "limit": 3}, ctx(memory_search=search))
    assert calls == [("cats", 3)]
    assert out.success and out.output == {"hits": [{"id": "0"}, {"id": "1"}, {"id": "2"}]}


def test_memory_search_backend_error_is_a_failed_result() -> None:
    from palyra.errors import ActorUnavailable

    def search(query: str, limit: int) -> list[dict]:
        raise ActorUnavailable("memory actor down")

    out = run("palyra.memory.search", {"query": "cats"}, ctx(memory_search=search))
    assert not out.success
    assert out.error == "memory search failed: memory actor down"


def test_memory_search_rejects_empty_query() -> None:
    with pytest.raises(InvalidInput, match=r"\$\.query"):
        run("palyra.memory.search", {"query": ""}, ctx())
