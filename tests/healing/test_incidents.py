"""Runtime incidents: stable ids, open/update/re-open, resolve (spec 5)."""

from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from palyra.clock import ManualClock
from palyra.errors import InvalidInput, InvalidTransition
from palyra.healing import incidents as inc
from palyra.healing.incidents import IncidentObservation, Signal

T0 = 1_700_000_000_000


def obs(key: str = "heartbeat:run:R1", **kw: object) -> IncidentObservation:
    args: dict[str, object] = dict(domain="watchdog", dedupe_key=key, severity="high",
                                   summary="run R1 appears stuck", kind=inc.STALE_RUN)
    args.update(kw)
    return IncidentObservation(**args)  # type: ignore[arg-type]


@given(st.sampled_from(inc.DOMAINS), st.text(min_size=1, max_size=60))
def test_incident_ids_are_stable_and_well_formed(domain: str, key: str) -> None:
    iid = inc.incident_id(domain, key)
    assert re.fullmatch(r"incident_[0-9a-f]{16}", iid)
    assert iid == inc.incident_id(domain, key)
    expected = hashlib.sha256(f"incident:{domain}:{key}".encode()).hexdigest()[:16]
    assert iid == f"incident_{expected}"


def test_ids_differ_by_domain_and_key() -> None:
    ids = {inc.incident_id(d, k) for d in ("watchdog", "approval") for k in ("a", "b")}
    assert len(ids) == 4


def test_open_update_resolve_reopen() -> None:
    clock = ManualClock(T0)
    opened = inc.open_or_update(None, obs(), now_ms=clock.now_ms())
    assert opened.state == "open" and opened.incident_id == obs().incident_id
    assert (opened.created_at_unix_ms, opened.occurrences) == (T0, 1)
    clock.advance(15)
    updated = inc.open_or_update(opened, obs(summary="still stuck", severity="critical"),
                                 now_ms=clock.now_ms())
    assert (updated.state, updated.summary, updated.severity) == ("open", "still stuck",
                                                                   "critical")
    assert updated.created_at_unix_ms == T0 and updated.updated_at_unix_ms == T0 + 15_000
    clock.advance(15)
    resolved = inc.resolve(updated, now_ms=clock.now_ms())
    assert resolved.state == "resolved" and resolved.resolved_at_unix_ms == T0 + 30_000
    assert inc.resolve(resolved, now_ms=clock.now_ms() + 1) is resolved  # once
    clock.advance(15)
    reopened = inc.open_or_update(resolved, obs(), now_ms=clock.now_ms())
    assert (reopened.state, reopened.occurrences, reopened.resolved_at_unix_ms) == ("open", 2,
                                                                                    None)
    assert reopened.created_at_unix_ms == T0


def test_remediating_state() -> None:
    opened = inc.open_or_update(None, obs(), now_ms=T0)
    fixing = inc.begin_remediation(opened, now_ms=T0 + 1)
    assert fixing.state == "remediating"
    assert inc.begin_remediation(fixing, now_ms=T0 + 2) is fixing
    # A new sighting while remediating keeps the state.
    assert inc.open_or_update(fixing, obs(), now_ms=T0 + 3).state == "remediating"
    assert inc.reopen(fixing, now_ms=T0 + 4).state == "open"
    with pytest.raises(InvalidTransition):
        inc.reopen(opened, now_ms=T0)
    with pytest.raises(InvalidTransition):
        inc.begin_remediation(inc.resolve(opened, now_ms=T0), now_ms=T0)


def test_observation_validation() -> None:
    for field, bad in (("domain", {"domain": "weather"}), ("severity", {"severity": "meh"}),
                       ("dedupe_key", {"key": ""}), ("dedupe_key", {"key": "  "})):
        with pytest.raises(InvalidInput) as err:
            obs(**bad)  # type: ignore[arg-type]
        assert err.value.details["field"] == field
    opened = inc.open_or_update(None, obs("a"), now_ms=T0)
    with pytest.raises(InvalidInput):
        inc.open_or_update(opened, obs("b"), now_ms=T0)


def test_signals() -> None:
    opened = inc.apply_signal(None, Signal.observe(obs()), now_ms=T0)
    assert opened is not None and opened.state == "open"
    resolve = Signal.resolved("watchdog", "heartbeat:run:R1")
    assert resolve.incident_id == opened.incident_id
    done = inc.apply_signal(opened, resolve, now_ms=T0 + 1)
    assert done is not None and done.state == "resolved"
    assert inc.apply_signal(done, resolve, now_ms=T0 + 2) is None  # nothing to store
    assert inc.apply_signal(None, resolve, now_ms=T0 + 2) is None
    history = inc.history_entry(done)
    assert (history.state, history.recorded_at_unix_ms) == ("resolved", T0 + 1)
