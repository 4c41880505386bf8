"""Work heartbeats and staleness thresholds (spec 5)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.clock import ManualClock
from palyra.errors import InvalidInput
from palyra.healing import heartbeats as hb

T0 = 1_700_000_000_000


def test_defaults_match_the_spec() -> None:
    d = hb.DEFAULT_THRESHOLDS
    assert (d.loop_interval_ms, d.run_ms, d.background_task_ms, d.approval_ms) == (
        15_000, 120_000, 120_000, 600_000)


def test_beat_is_an_upsert() -> None:
    clock = ManualClock(T0)
    first = hb.beat("run", "R1", now_ms=clock.now_ms(), summary="accepted", session_id="S")
    assert first.heartbeat_key == "run:R1" and first.first_beat_ms == first.last_beat_ms == T0
    clock.advance(5)
    second = hb.beat("run", "R1", now_ms=clock.now_ms(), existing=first)
    assert (second.first_beat_ms, second.last_beat_ms) == (T0, T0 + 5000)
    assert (second.summary, second.session_id) == ("accepted", "S")
    late = hb.beat("run", "R1", now_ms=T0 + 1, existing=second)  # time never runs back
    assert late.last_beat_ms == T0 + 5000
    with pytest.raises(InvalidInput):
        hb.beat("run", "R2", now_ms=T0, existing=first)
    with pytest.raises(InvalidInput) as err:
        hb.beat("robot", "R1", now_ms=T0)
    assert err.value.details["field"] == "domain"
    for blank in ("", "   "):
        with pytest.raises(InvalidInput) as err:
            hb.beat("run", blank, now_ms=T0)
        assert err.value.details["field"] == "subject_id"


@pytest.mark.parametrize(("domain", "threshold"), [
    ("run", 120_000), ("background_task", 120_000), ("approval", 600_000)])
def test_stale_strictly_after_the_threshold(domain: str, threshold: int) -> None:
    beat = hb.beat(domain, "X", now_ms=T0)
    assert hb.stale([beat], T0 + threshold) == []
    assert hb.stale([beat], T0 + threshold + 1) == [beat]


def test_stale_with_an_injected_clock_and_custom_thresholds() -> None:
    clock = ManualClock(T0)
    run = hb.beat("run", "R", now_ms=clock.now_ms())
    clock.advance(60)
    task = hb.beat("background_task", "T", now_ms=clock.now_ms())
    approval = hb.beat("approval", "A", now_ms=T0)
    clock.advance(61)  # run silent 121 s, task 61 s, approval 121 s
    assert hb.stale([task, approval, run], clock.now_ms()) == [run]
    tight = hb.Thresholds(background_task_ms=30_000, approval_ms=100_000)
    assert hb.stale([task, approval, run], clock.now_ms(), tight) == [approval, run, task]


@given(st.integers(0, 10**7), st.integers(0, 10**7))
def test_staleness_is_monotone_in_time(a: int, b: int) -> None:
    beat = hb.beat("run", "R", now_ms=T0)
    early, late = sorted((a, b))
    if hb.is_stale(beat, T0 + early):
        assert hb.is_stale(beat, T0 + late)
