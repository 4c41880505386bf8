"""Reflection sampling and scheduling (spec 6; quirks 13.5 and 13.6 fixed)."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.background import tasks as bg
from palyra.clock import ManualClock
from palyra.errors import InvalidInput
from palyra.ids import new_ulid
from palyra.learning import sampling
from palyra.learning.config import LearningConfig
from tests.learning.support import SESSION, T0

run_ids = st.text(min_size=1, max_size=40)


@given(run_ids)
def test_100_percent_always_reflects_and_0_never(run_id: str) -> None:
    assert sampling.should_reflect(run_id, 100, None, 300_000, T0)
    assert not sampling.should_reflect(run_id, 0, None, 300_000, T0)


def test_100_percent_samples_every_run_unlike_upstream() -> None:
    ids = [f"run-{i}" for i in range(500)]
    assert all(sampling.should_reflect(r, 100, None, 0, T0) for r in ids)
    # Upstream compared the first hash byte (0..255) with the percent: ~39 % at 100 %.
    upstream = sum(hashlib.sha256(r.encode()).digest()[0] < 100 for r in ids)
    assert upstream < 300


@given(run_ids, st.integers(0, 100), st.integers(0, 100))
def test_sampling_is_monotone_in_the_percent(run_id: str, a: int, b: int) -> None:
    low, high = sorted((a, b))
    if sampling.should_reflect(run_id, low, None, 0, T0):
        assert sampling.should_reflect(run_id, high, None, 0, T0)


def test_sampling_rate_follows_the_percent() -> None:
    ids = [f"run-{i}" for i in range(4000)]
    for percent in (10, 39, 75):
        share = sum(sampling.should_reflect(r, percent, None, 0, T0) for r in ids) / len(ids)
        assert abs(share - percent / 100) < 0.04


def test_bucket_is_value_mod_100_of_the_hash() -> None:
    digest = hashlib.sha256(b"run-1").digest()
    assert sampling.sample_bucket("run-1") == int.from_bytes(digest[:8], "big") % 100
    assert sampling.sample_key("R", "user:a", "dev", None) == "user:a:dev::R"
    assert sampling.sample_key("R") == "R"


def test_cooldown() -> None:
    clock = ManualClock(T0)
    last = clock.now_ms()
    clock.advance(299.999)
    assert not sampling.should_reflect("r", 100, last, 300_000, clock.now_ms())
    clock.advance(0.001)
    assert sampling.should_reflect("r", 100, last, 300_000, clock.now_ms())


@pytest.mark.parametrize("percent", [-1, 101, 50.0, True])
def test_invalid_percent_is_named(percent: object) -> None:
    with pytest.raises(InvalidInput) as err:
        sampling.should_reflect("r", percent, None, 0, T0)  # type: ignore[arg-type]
    assert err.value.details["field"] == "sampling_percent"


def _plan(**kw: object) -> bg.BackgroundTask | None:
    args: dict[str, object] = dict(run_id=new_ulid(), run_state="done", session_id=SESSION,
                                   owner_principal="user:ada", device_id="dev-1", channel=None,
                                   now_ms=T0, already_scheduled=False, last_reflection_ms=None)
    args.update(kw)
    return sampling.plan_reflection(**args)  # type: ignore[arg-type]


def test_plan_reflection_builds_the_spec_task() -> None:
    run_id = new_ulid()
    task = _plan(run_id=run_id)
    assert task is not None
    assert (task.task_kind, task.state, task.priority, task.max_attempts) == (
        "post_run_reflection", "queued", 25, 1)
    assert task.parent_run_id == run_id and task.budget_tokens == 1200
    assert task.not_before_unix_ms == T0 + 250
    assert task.expires_at_unix_ms == T0 + 30 * 60 * 1000
    assert task.input_text == "Post-run reflection"
    assert task.payload == {"trigger_policy": "post_run_learning_v1", "sampling_percent": 100,
                            "cooldown_ms": 300_000, "run_id": run_id}


def test_plan_reflection_skips() -> None:
    for state in ("in_progress", "failed", "cancelled", "accepted"):  # quirk 13.6: only done
        assert _plan(run_state=state) is None
    assert _plan(already_scheduled=True) is None
    assert _plan(config=LearningConfig(enabled=False)) is None
    assert _plan(config=LearningConfig(sampling_percent=0)) is None
    assert _plan(last_reflection_ms=T0 - 1000) is None
    assert _plan(last_reflection_ms=T0 - 300_000) is not None


def test_reflection_task_waits_250_ms_then_dispatches_first() -> None:
    clock = ManualClock(T0)
    task = _plan(now_ms=clock.now_ms())
    assert task is not None
    assert bg.poll_step(task, now_ms=clock.now_ms()).reason == "not_before"
    clock.advance(0.25)
    assert bg.poll_step(task, now_ms=clock.now_ms()).action == "dispatch"
    console = bg.BackgroundTask(
        task_id=new_ulid(), task_kind="background_prompt", session_id=SESSION,
        owner_principal="user:ada", device_id="dev-1", created_at_unix_ms=T0 - 5,
        updated_at_unix_ms=T0, priority=10)
    assert bg.next_due([console, task], clock.now_ms())[0] is task
    running = bg.dispatch(task, now_ms=clock.now_ms())
    assert running.attempt_count == 1 and not running.attempts_left


def test_config_is_validated() -> None:
    with pytest.raises(InvalidInput) as err:
        LearningConfig(sampling_percent=150)
    assert err.value.details["field"] == "sampling_percent"
    with pytest.raises(InvalidInput):
        LearningConfig(durable_fact_auto_write_threshold_bps=10_001)
